/**
 * The download functions of lib.sh against a local HTTP server that misbehaves on purpose:
 * busybox wget under timeout, progress lines, retries with backoff, and the failure reasons the
 * boot tests look for on the console.
 */
import test from 'ava'
import {readFileSync, existsSync} from 'node:fs'
import net from 'node:net'
import {join} from 'node:path'

import {q, Sandbox} from './shell.js'

const box = new Sandbox()
const BODY = Buffer.alloc(3 * 1024 * 1024)
for (let i = 0; i < BODY.length; i++) BODY[i] = (i * 7 + (i >> 10)) & 0xff

type Handler = (socket: net.Socket, method: string, hit: number) => void

const respond = (socket: net.Socket, method: string, status: string, headers: Record<string, string | number>, body?: Buffer) => {
  const head = [`HTTP/1.1 ${status}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), 'Connection: close', '', ''].join('\r\n')
  socket.write(head)
  if (body && method !== 'HEAD') socket.write(body)
  socket.end()
}

const routes: Record<string, Handler> = {
  '/img': (s, m) => respond(s, m, '200 OK', {'Content-Length': BODY.length}, BODY),
  '/missing': (s, m) => respond(s, m, '404 Not Found', {'Content-Length': 0}),
  '/forbidden': (s, m) => respond(s, m, '403 Forbidden', {'Content-Length': 0}),
  '/nolength': (s, m) => respond(s, m, '200 OK', {}, Buffer.from('abc')),
  '/short': (s, m) => {
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n`)
    if (m !== 'HEAD') s.write(Buffer.alloc(100, 1))
    s.end()
  },
  '/short-once': (s, m, hit) => (hit === 1 ? routes['/short']!(s, m, hit) : respond(s, m, '200 OK', {'Content-Length': 1000}, Buffer.alloc(1000, 1))),
  '/busy-twice': (s, m, hit) => (hit <= 2 ? respond(s, m, '503 Service Unavailable', {'Content-Length': 0}) : respond(s, m, '200 OK', {'Content-Length': 5}, Buffer.from('hello'))),
  '/stall': (s) => {
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n`)
    s.write(Buffer.alloc(100, 1))
    // ...and nothing more until the client gives up.
  },
  '/slow': (s, m) => {
    const total = 1536 * 1024
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${total}\r\nConnection: close\r\n\r\n`)
    if (m === 'HEAD') return s.end()
    let sent = 0
    const timer = setInterval(() => {
      if (s.destroyed) return clearInterval(timer)
      s.write(BODY.subarray(sent, sent + 64 * 1024))
      sent += 64 * 1024
      if (sent >= total) {
        clearInterval(timer)
        s.end()
      }
    }, 100)
  },
}

class FakeServer {
  readonly hits = new Map<string, number>()
  private readonly sockets = new Set<net.Socket>()
  private readonly server = net.createServer((socket) => {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => undefined)
    let buf = ''
    socket.on('data', (d) => {
      buf += d.toString('latin1')
      if (!buf.includes('\r\n\r\n')) return
      const [method = 'GET', path = '/'] = buf.split(' ')
      buf = ''
      const hit = (this.hits.get(path) ?? 0) + 1
      this.hits.set(path, hit)
      const handler = routes[path] ?? ((s, m) => respond(s, m, '404 Not Found', {'Content-Length': 0}))
      handler(socket, method, hit)
    })
  })

  listen(port = 0): Promise<number> {
    return new Promise((resolve) => this.server.listen(port, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)))
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }
}

const server = new FakeServer()
let base = ''
test.before(async () => {
  base = `http://127.0.0.1:${await server.listen()}`
})
test.after.always(async () => {
  await server.close()
  box.cleanup()
})

async function freePort(): Promise<number> {
  const s = new FakeServer()
  const port = await s.listen()
  await s.close()
  return port
}

// Fast backoff keeps the retry tests short; the doubling itself is checked in the messages.
const FAST = {NETBOOT_MAX_BACKOFF: '1'}

async function get(url: string, out: string, retries: number, size = '', env: Record<string, string> = {}) {
  return box.run(`if http_get ${q(url)} ${q(out)} ${retries} ${q(size)}; then echo OK; else echo "FAIL $REASON"; fi`, {...FAST, ...env})
}

test('a good download: file complete, last line 100% with the speed', async (t) => {
  const r = await get(`${base}/img`, 'img1', 3, String(BODY.length))
  t.true(readFileSync(join(box.dir, 'img1')).equals(BODY))
  const lines = r.stdout.trim().split('\n')
  t.is(lines.at(-1), 'OK')
  t.regex(lines.at(-2)!, /^netboot: download 100% \d+\.\d MiB\/s$/)
  t.false(existsSync(join(box.dir, 'img1.err')))
})

test('progress lines while a slow download runs', async (t) => {
  const r = await get(`${base}/slow`, 'slow', 0, String(1536 * 1024))
  const progress = r.stdout.split('\n').filter((l) => l.startsWith('netboot: download '))
  t.true(progress.length >= 2, r.stdout)
  for (const l of progress) t.regex(l, /^netboot: download \d{1,3}% \d+\.\d MiB\/s$/)
  const pcts = progress.map((l) => Number(/(\d+)%/.exec(l)![1]))
  t.deepEqual(pcts, [...pcts].sort((a, b) => a - b))
  t.true(pcts[0]! < 100)
  t.is(pcts.at(-1), 100)
  t.true(r.stdout.endsWith('OK\n'))
})

test('HTTP 404 is final: one request, no retry', async (t) => {
  // A path of its own: tests run concurrently and count hits.
  const r = await get(`${base}/not-there`, 'm', 3, '10')
  t.is(r.stdout, `FAIL HTTP 404 for ${base}/not-there\n`)
  t.is(server.hits.get('/not-there'), 1)
  t.false(existsSync(join(box.dir, 'm')))
})

test('other 4xx are final too; 5xx are retried', async (t) => {
  const r = await get(`${base}/forbidden`, 'f', 3)
  t.is(r.stdout, `FAIL HTTP 403 for ${base}/forbidden\n`)
  const busy = await get(`${base}/busy-twice`, 'b', 3, '5')
  t.regex(busy.stdout, new RegExp(`^netboot: attempt 1 of 3: HTTP 503 for ${base}/busy-twice; retrying ${base}/busy-twice in 1s$`, 'm'))
  t.regex(busy.stdout, /^netboot: attempt 2 of 3: HTTP 503/m)
  t.true(busy.stdout.endsWith('OK\n'))
  t.is(readFileSync(join(box.dir, 'b'), 'utf8'), 'hello')
})

test('connection refused: reason, and retried', async (t) => {
  const port = await freePort()
  const r = await get(`http://127.0.0.1:${port}/img`, 'r', 0, '10')
  t.is(r.stdout, 'FAIL connection refused\n')
  const r2 = await get(`http://127.0.0.1:${port}/img`, 'r', 2, '10')
  t.is(r2.stdout.match(/connection refused; retrying/g)?.length, 2)
  t.true(r2.stdout.endsWith('FAIL connection refused\n'))
})

test('a server that refuses at first and then comes up: the retry succeeds', async (t) => {
  const port = await freePort()
  const late = new FakeServer()
  const started = new Promise<void>((resolve) => setTimeout(() => void late.listen(port).then(() => resolve()), 1500))
  try {
    const r = await get(`http://127.0.0.1:${port}/img`, 'late', 5, String(BODY.length), {NETBOOT_MAX_BACKOFF: '2'})
    await started
    t.regex(r.stdout, new RegExp(`^netboot: attempt 1 of 5: connection refused; retrying http://127.0.0.1:${port}/img in 1s$`, 'm'))
    t.true(r.stdout.endsWith('OK\n'), r.stdout)
    t.true(readFileSync(join(box.dir, 'late')).equals(BODY))
  } finally {
    await started
    await late.close()
  }
})

test('short downloads: retried, then reported with both byte counts', async (t) => {
  const before = server.hits.get('/short') ?? 0
  const r = await get(`${base}/short`, 's', 1, '1000')
  t.regex(r.stdout, /^netboot: attempt 1 of 1: short download: got 100 of 1000 bytes; retrying/m)
  t.true(r.stdout.endsWith('FAIL short download: got 100 of 1000 bytes\n'))
  t.is(server.hits.get('/short'), before + 2)
  t.false(existsSync(join(box.dir, 's')), 'a partial image must not be left behind')
  const once = await get(`${base}/short-once`, 'so', 2, '1000')
  t.true(once.stdout.endsWith('OK\n'), once.stdout)
})

test('a stalled transfer is cut after NETBOOT_STALL_TIMEOUT', async (t) => {
  const r = await get(`${base}/stall`, 'st', 0, '1000', {NETBOOT_STALL_TIMEOUT: '2'})
  t.is(r.stdout.split('\n').filter((l) => l.startsWith('FAIL')).join(), `FAIL no data for 2s from ${base}/stall`)
})

test('the whole request is bounded by timeout(1) (NETBOOT_HTTP_TIMEOUT)', async (t) => {
  const r = await get(`${base}/stall`, 'to', 0, '1000', {NETBOOT_HTTP_TIMEOUT: '2'})
  t.true(r.stdout.endsWith(`FAIL timed out after 2s fetching ${base}/stall\n`), r.stdout)
})

test('a mismatched size is a short download even when wget is satisfied', async (t) => {
  const r = await get(`${base}/nolength`, 'nl', 0, '10')
  t.is(r.stdout, 'FAIL short download: got 3 of 10 bytes\n')
  const longer = await get(`${base}/nolength`, 'nl2', 0, '2')
  t.is(longer.stdout, 'FAIL download longer than announced: got 3 of 2 bytes\n')
  const unknown = await get(`${base}/nolength`, 'nl3', 0)
  t.is(unknown.stdout, 'OK\n')
})

test('http_size: Content-Length of a HEAD-style request, 404 and missing length', async (t) => {
  const run = (path: string) => box.run(`if http_size ${q(base + path)} 0; then echo "SIZE $HTTP_SIZE"; else echo "FAIL $REASON"; fi`, FAST)
  t.is((await run('/img')).stdout, `SIZE ${BODY.length}\n`)
  t.is((await run('/missing')).stdout, `FAIL HTTP 404 for ${base}/missing\n`)
  t.is((await run('/nolength')).stdout, `FAIL server sent no Content-Length for ${base}/nolength and there is no manifest to give the size\n`)
})
