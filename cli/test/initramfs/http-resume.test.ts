/**
 * lib.sh's http_get against the project's own HTTP server (cli/src/lib/serve.ts) with the
 * faults the boot tests use: a reset mid-body is continued with a Range request, a server
 * without Range support is read again from the start, a lying Content-Length and a redirect
 * loop are final failures with their own reasons. Runs busybox wget as /init does.
 */
import test from 'ava'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {startServer, type ServeFaults} from '../../src/lib/serve.js'
import {q, Sandbox} from './shell.js'

const box = new Sandbox()
const dir = mkdtempSync(join(tmpdir(), 'netboot-resume-'))
const BODY = Buffer.alloc(2 * 1024 * 1024)
for (let i = 0; i < BODY.length; i++) BODY[i] = (i * 13 + (i >> 9)) & 0xff
writeFileSync(join(dir, 'img'), BODY)
test.after.always(() => {
  box.cleanup()
  rmSync(dir, {recursive: true, force: true})
})

const FAST = {NETBOOT_MAX_BACKOFF: '1'}
const CUT = 700_000

async function get(t: {teardown(fn: () => unknown): void}, faults: ServeFaults, out: string, retries: number, path = '/img') {
  const srv = await startServer({dir, faults: {paths: ['/img'], ...faults}})
  t.teardown(() => srv.close())
  const url = `${srv.url}${path}`
  const r = await box.run(`if http_get ${q(url)} ${q(out)} ${retries} ${BODY.length}; then echo OK; else echo "FAIL $REASON"; fi`, FAST)
  return {...r, url, requests: srv.requests}
}

test('a connection reset mid-body: the retry asks for the rest with Range and the file is whole', async (t) => {
  const r = await get(t, {truncateAfterBytes: CUT, truncateCount: 1, truncateMode: 'reset'}, 'reset', 2)
  t.true(r.stdout.endsWith('OK\n'), r.stdout)
  t.regex(r.stdout, new RegExp(`^netboot: attempt 1 of 2: read error: Connection reset by peer; retrying ${r.url} in 1s$`, 'm'))
  t.regex(r.stdout, new RegExp(`^netboot: resuming ${r.url} at byte ${CUT}$`, 'm'))
  t.true(readFileSync(join(box.dir, 'reset')).equals(BODY))
  t.deepEqual(
    r.requests.map((x) => [x.status, x.range ?? '', x.bytes]),
    [
      [200, '', CUT],
      [206, `bytes=${CUT}-`, BODY.length - CUT],
    ],
  )
  t.regex(r.stdout.trimEnd().split('\n').at(-2)!, /^netboot: download 100% \d+\.\d MiB\/s$/)
})

test('a cut against a server without Range support: the retry gets and keeps the whole file', async (t) => {
  const r = await get(t, {truncateAfterBytes: CUT, truncateCount: 1, noRanges: true}, 'norange', 2)
  t.true(r.stdout.endsWith('OK\n'), r.stdout)
  t.true(readFileSync(join(box.dir, 'norange')).equals(BODY))
  t.deepEqual(
    r.requests.map((x) => [x.status, x.range ?? '', x.bytes]),
    [
      [200, '', CUT],
      [200, `bytes=${CUT}-`, BODY.length],
    ],
  )
})

test('every response cut: each retry continues where the last one stopped, the reason counts all bytes', async (t) => {
  const r = await get(t, {truncateAfterBytes: 300_000}, 'cuts', 2)
  t.is(r.stdout.split('\n').filter((l) => l.startsWith('FAIL')).join(), `FAIL short download: got 900000 of ${BODY.length} bytes`)
  t.regex(r.stdout, /^netboot: attempt 2 of 2: short download: got 600000 of \d+ bytes; /m)
  t.deepEqual(r.requests.map((x) => x.range ?? ''), ['', 'bytes=300000-', 'bytes=600000-'])
  t.false(existsSync(join(box.dir, 'cuts')), 'no partial image left behind')
})

test('Content-Length smaller than the image: final failure naming both sizes, no retry', async (t) => {
  const r = await get(t, {contentLengthDelta: -4096}, 'shortlen', 3)
  t.is(r.stdout, `FAIL server announced ${BODY.length - 4096} bytes for ${r.url}, expected ${BODY.length}\n`)
  t.is(r.requests.length, 1)
  t.false(existsSync(join(box.dir, 'shortlen')))
})

test('Content-Length larger than the image: final failure naming both sizes', async (t) => {
  const r = await get(t, {contentLengthDelta: 4096}, 'longlen', 3)
  t.is(r.stdout, `FAIL server announced ${BODY.length + 4096} bytes for ${r.url}, expected ${BODY.length}\n`)
  t.is(r.requests.length, 1)
})

test('a redirect loop: "too many redirects", final', async (t) => {
  const r = await get(t, {redirects: {'/img': '/img'}}, 'loop', 3)
  t.is(r.stdout, `FAIL too many redirects from ${r.url}\n`)
  t.true(r.requests.every((x) => x.status === 302))
  t.true(r.requests.length < 30, `${r.requests.length} requests: one wget run, not retried`)
})

test('a redirect that ends somewhere is followed', async (t) => {
  const r = await get(t, {redirects: {'/old': '/img'}}, 'moved', 0, '/old')
  t.true(r.stdout.endsWith('OK\n'), r.stdout)
  t.true(readFileSync(join(box.dir, 'moved')).equals(BODY))
  t.deepEqual(r.requests.map((x) => [x.path, x.status]), [['/old', 302], ['/img', 200]])
})
