import test from 'ava'
import {createHash} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {request} from 'node:http'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {parseRange, startServer} from '../../src/lib/serve.js'

const base = mkdtempSync(join(tmpdir(), 'netboot-serve-'))
const dir = join(base, 'http')
mkdirSync(join(dir, 'sub'), {recursive: true})
const blob = Buffer.alloc(300_000)
for (let i = 0; i < blob.length; i++) blob[i] = (i * 7 + (i >> 8)) & 0xff
writeFileSync(join(dir, 'root.qcow2'), blob)
writeFileSync(join(dir, 'manifest.json'), '{"version":1}\n')
writeFileSync(join(dir, 'sub', 'boot.ipxe'), '#!ipxe\n')
writeFileSync(join(dir, 'empty.bin'), '')
writeFileSync(join(base, 'secret.txt'), 'secret\n')
symlinkSync(join(base, 'secret.txt'), join(dir, 'escape.txt'))
test.after.always(() => rmSync(base, {recursive: true, force: true}))

const sha = (b: Buffer | Uint8Array) => createHash('sha256').update(b).digest('hex')

/** A raw request, so that paths reach the server exactly as written (fetch would normalise "..").*/
function raw(port: number, path: string, method = 'GET', headers: Record<string, string> = {}) {
  return new Promise<{status: number; headers: Record<string, unknown>; body: Buffer}>((res, rej) => {
    const req = request({host: '127.0.0.1', port, path, method, headers}, (r) => {
      const chunks: Buffer[] = []
      r.on('data', (c: Buffer) => chunks.push(c))
      r.on('end', () => res({status: r.statusCode ?? 0, headers: r.headers, body: Buffer.concat(chunks)}))
      r.on('error', rej)
    })
    req.on('error', rej)
    req.end()
  })
}

test('parseRange handles the single-range forms and ignores the rest', (t) => {
  t.deepEqual(parseRange(undefined, 100), {kind: 'none'})
  t.deepEqual(parseRange('bytes=0-9', 100), {kind: 'range', start: 0, end: 9})
  t.deepEqual(parseRange('bytes=90-', 100), {kind: 'range', start: 90, end: 99})
  t.deepEqual(parseRange('bytes=-10', 100), {kind: 'range', start: 90, end: 99})
  t.deepEqual(parseRange('bytes=-500', 100), {kind: 'range', start: 0, end: 99})
  t.deepEqual(parseRange('bytes=50-5000', 100), {kind: 'range', start: 50, end: 99})
  t.deepEqual(parseRange('bytes=100-', 100), {kind: 'unsatisfiable'})
  t.deepEqual(parseRange('bytes=-0', 100), {kind: 'unsatisfiable'})
  t.deepEqual(parseRange('bytes=0-1,5-6', 100), {kind: 'none'})
  t.deepEqual(parseRange('items=0-1', 100), {kind: 'none'})
  t.deepEqual(parseRange('bytes=9-1', 100), {kind: 'none'})
})

test('GET, HEAD and Range with exact lengths and types', async (t) => {
  const lines: string[] = []
  const logFile = join(base, 'access.log')
  const srv = await startServer({dir, onLog: (l) => lines.push(l), logFile})
  t.teardown(() => srv.close())
  t.true(srv.port > 0)
  t.is(srv.url, `http://127.0.0.1:${srv.port}`)

  const full = await fetch(`${srv.url}/root.qcow2`)
  t.is(full.status, 200)
  t.is(full.headers.get('content-length'), String(blob.length))
  t.is(full.headers.get('content-type'), 'application/octet-stream')
  t.is(full.headers.get('accept-ranges'), 'bytes')
  t.is(sha(Buffer.from(await full.arrayBuffer())), sha(blob))

  const json = await fetch(`${srv.url}/manifest.json`)
  t.is(json.headers.get('content-type'), 'application/json')
  t.deepEqual(await json.json(), {version: 1})

  const head = await fetch(`${srv.url}/root.qcow2`, {method: 'HEAD'})
  t.is(head.status, 200)
  t.is(head.headers.get('content-length'), String(blob.length))
  t.is((await head.arrayBuffer()).byteLength, 0)

  const part = await fetch(`${srv.url}/root.qcow2`, {headers: {Range: 'bytes=1000-1999'}})
  t.is(part.status, 206)
  t.is(part.headers.get('content-range'), `bytes 1000-1999/${blob.length}`)
  t.is(part.headers.get('content-length'), '1000')
  t.deepEqual(Buffer.from(await part.arrayBuffer()), blob.subarray(1000, 2000))

  const tail = await fetch(`${srv.url}/root.qcow2`, {headers: {Range: 'bytes=-16'}})
  t.is(tail.status, 206)
  t.deepEqual(Buffer.from(await tail.arrayBuffer()), blob.subarray(blob.length - 16))

  const bad = await fetch(`${srv.url}/root.qcow2`, {headers: {Range: `bytes=${blob.length}-`}})
  t.is(bad.status, 416)
  t.is(bad.headers.get('content-range'), `bytes */${blob.length}`)

  const empty = await fetch(`${srv.url}/empty.bin`)
  t.is(empty.status, 200)
  t.is(empty.headers.get('content-length'), '0')

  const nested = await fetch(`${srv.url}/sub/boot.ipxe`)
  t.is(await nested.text(), '#!ipxe\n')
  t.is(nested.headers.get('content-type'), 'text/plain; charset=utf-8')

  t.is((await fetch(`${srv.url}/missing`)).status, 404)
  t.is((await fetch(`${srv.url}/sub`)).status, 404)
  t.is((await fetch(`${srv.url}/root.qcow2`, {method: 'POST', body: 'x'})).status, 405)

  t.true(lines.some((l) => l.includes('"GET /root.qcow2" 206 1000 range="bytes=1000-1999"')))
  t.true(lines.some((l) => l.includes('"HEAD /root.qcow2" 200 0')))
  t.true(lines.some((l) => l.includes('"GET /missing" 404')))
  // log lines are appended as responses finish: give the last one a moment on a busy machine
  const logged = () => readFileSync(logFile, 'utf8').trim().split('\n').length
  for (let i = 0; i < 100 && logged() < srv.requests.length; i++) await new Promise((r) => setTimeout(r, 20))
  t.is(logged(), srv.requests.length)
})

test('no way out of the served directory', async (t) => {
  const srv = await startServer({dir})
  t.teardown(() => srv.close())
  for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/sub/../../secret.txt', '/..%2fsecret.txt', '/escape.txt', '/a%00b']) {
    const r = await raw(srv.port, path)
    t.not(r.status, 200, path)
    t.false(r.body.toString().includes('secret'), path)
  }
  // ".." that stays inside is fine.
  const ok = await raw(srv.port, '/sub/../manifest.json')
  t.is(ok.status, 200)
})

test('fault: refuses connections at first, then serves', async (t) => {
  const srv = await startServer({dir, faults: {refuseForMs: 700}})
  t.teardown(() => srv.close())
  const err = await t.throwsAsync(fetch(`${srv.url}/manifest.json`))
  t.is((err?.cause as NodeJS.ErrnoException | undefined)?.code, 'ECONNREFUSED')
  await srv.listening
  t.is((await fetch(`${srv.url}/manifest.json`)).status, 200)
})

test('fault: cuts a body short after N bytes, a given number of times', async (t) => {
  const srv = await startServer({dir, faults: {truncateAfterBytes: 5000, truncateCount: 1, paths: ['/root.qcow2']}})
  t.teardown(() => srv.close())
  const cut = await raw(srv.port, '/root.qcow2').catch((e: Error) => e)
  // Node's client reports the early close as an error ("aborted") or a short body.
  if (cut instanceof Error) t.regex(cut.message, /aborted|socket hang up|ECONNRESET/)
  else t.true(cut.body.length < blob.length)
  t.is(srv.requests.at(-1)?.bytes, 5000)
  // The other files and the second attempt are whole.
  t.is((await fetch(`${srv.url}/manifest.json`)).status, 200)
  const again = await fetch(`${srv.url}/root.qcow2`)
  t.is(sha(Buffer.from(await again.arrayBuffer())), sha(blob))
})

test('fault: throttles the body', async (t) => {
  const srv = await startServer({dir, faults: {throttleBytesPerSec: 400_000}})
  t.teardown(() => srv.close())
  const t0 = Date.now()
  const r = await fetch(`${srv.url}/root.qcow2`)
  t.is(sha(Buffer.from(await r.arrayBuffer())), sha(blob))
  const ms = Date.now() - t0
  // 300 000 bytes at 400 000 B/s: about 750 ms.
  t.true(ms >= 600, `took ${ms} ms`)
  t.true(ms < 3000, `took ${ms} ms`)
})

test('refuses to serve a directory that does not exist', async (t) => {
  const err = await t.throwsAsync(startServer({dir: join(base, 'nope')}))
  t.regex(err?.message ?? '', /not a directory/)
})
