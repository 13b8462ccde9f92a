// The faults of serve.ts that the network boot tests use, checked on the wire: a reset cut,
// a lying Content-Length, redirects, a server that ignores Range.
import test from 'ava'
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import net from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {startServer} from '../../src/lib/serve.js'

const base = mkdtempSync(join(tmpdir(), 'netboot-serve-faults-'))
const dir = join(base, 'http')
mkdirSync(dir)
const blob = Buffer.alloc(200_000, 7)
writeFileSync(join(dir, 'root.qcow2'), blob)
test.after.always(() => rmSync(base, {recursive: true, force: true}))

/** One raw HTTP/1.1 exchange: everything the server sent until it closed, and how it closed. */
function exchange(port: number, path: string, headers: Record<string, string> = {}) {
  return new Promise<{head: string; body: Buffer; error?: string}>((resolve) => {
    const chunks: Buffer[] = []
    const socket = net.connect(port, '127.0.0.1', () => {
      const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`)
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${extra.join('')}\r\n`)
    })
    let error: string | undefined
    socket.on('data', (d: Buffer) => chunks.push(d))
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code))
    socket.on('close', () => {
      const all = Buffer.concat(chunks)
      const split = all.indexOf('\r\n\r\n')
      resolve({head: all.subarray(0, split).toString('latin1'), body: all.subarray(split + 4), error})
    })
  })
}

test('truncateMode reset: the bytes before the cut arrive, then ECONNRESET', async (t) => {
  const srv = await startServer({dir, faults: {truncateAfterBytes: 50_000, truncateMode: 'reset'}})
  t.teardown(() => srv.close())
  const r = await exchange(srv.port, '/root.qcow2')
  t.regex(r.head, /Content-Length: 200000/)
  t.is(r.body.length, 50_000)
  t.is(r.error, 'ECONNRESET')
})

test('contentLengthDelta announces a wrong length and closes the connection', async (t) => {
  const srv = await startServer({dir, faults: {contentLengthDelta: -1000}})
  t.teardown(() => srv.close())
  const r = await exchange(srv.port, '/root.qcow2')
  t.regex(r.head, /Content-Length: 199000\r\n/)
  t.regex(r.head, /Connection: close/i)
  t.is(r.body.length, blob.length, 'the real body is sent regardless')
  const longer = await startServer({dir, faults: {contentLengthDelta: 1000}})
  t.teardown(() => longer.close())
  const l = await exchange(longer.port, '/root.qcow2')
  t.regex(l.head, /Content-Length: 201000\r\n/)
  t.is(l.body.length, blob.length)
})

test('redirects answer 302 with the Location, for the listed paths only', async (t) => {
  const srv = await startServer({dir, faults: {redirects: {'/a': '/a', '/old.qcow2': '/root.qcow2'}}})
  t.teardown(() => srv.close())
  const loop = await exchange(srv.port, '/a')
  t.regex(loop.head, /^HTTP\/1\.1 302 /)
  t.regex(loop.head, /\r\nLocation: \/a\r\n/)
  const moved = await fetch(`${srv.url}/old.qcow2`)
  t.is(moved.status, 200)
  t.is(Buffer.from(await moved.arrayBuffer()).length, blob.length)
  // The access log entry lands just after the body ends.
  for (let i = 0; i < 50 && srv.requests.length < 3; i++) await new Promise((r) => setTimeout(r, 20))
  t.deepEqual(srv.requests.map((r) => [r.path, r.status]), [['/a', 302], ['/old.qcow2', 302], ['/root.qcow2', 200]])
})

test('noRanges: Range is ignored and Accept-Ranges not sent', async (t) => {
  const srv = await startServer({dir, faults: {noRanges: true}})
  t.teardown(() => srv.close())
  const r = await exchange(srv.port, '/root.qcow2', {Range: 'bytes=100-'})
  t.regex(r.head, /^HTTP\/1\.1 200 /)
  t.notRegex(r.head, /Accept-Ranges/i)
  t.is(r.body.length, blob.length)
})
