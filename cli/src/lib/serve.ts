/**
 * The HTTP server for a PXE tree's out/http: what iPXE fetches the kernel and initramfs from and
 * what the initramfs downloads the root image from. GET and HEAD only, single byte ranges
 * (iPXE and resumable downloads use them), exact Content-Length, no directory listing and no
 * way out of the served directory. Every request gets one access log line.
 *
 * Boot tests need a misbehaving server too, so startServer() takes optional faults: refuse
 * connections for a while, cut bodies short (closing or resetting the connection), throttle,
 * announce a wrong Content-Length, redirect, ignore Range.
 */
import {createReadStream} from 'node:fs'
import {appendFile, mkdir, realpath, stat} from 'node:fs/promises'
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http'
import {createServer as createNetServer} from 'node:net'
import {dirname, extname, isAbsolute, relative, resolve, sep} from 'node:path'

import {NetbootError} from './errors.js'

export interface ServeFaults {
  /** Do not listen at all for this long after start: clients get "connection refused". */
  refuseForMs?: number
  /** Close the connection after this many body bytes (the response still announces the full length). */
  truncateAfterBytes?: number
  /** How many responses to cut short before behaving again (default: all of them). */
  truncateCount?: number
  /**
   * How a body is cut: "close" ends the connection in order (the client sees EOF), "reset"
   * aborts it with a TCP RST once the bytes before the cut have left (the client sees ECONNRESET).
   */
  truncateMode?: 'close' | 'reset'
  /**
   * Announce Content-Length as the real length plus this (negative: less), and still send the
   * real body; the connection is closed after each such response since its framing is a lie.
   */
  contentLengthDelta?: number
  /** Answer these URL paths with "302 Found" and the given Location (a loop: {"/a": "/a"}). */
  redirects?: Record<string, string>
  /** Ignore Range headers and do not advertise Accept-Ranges, like a server without range support. */
  noRanges?: boolean
  /** Send bodies at about this many bytes per second. */
  throttleBytesPerSec?: number
  /** URL paths the body faults apply to, e.g. ["/root.qcow2"] (default: every file). */
  paths?: string[]
}

export interface ServeOptions {
  /** Directory to serve (out/http). */
  dir: string
  /** Address to bind (default 127.0.0.1). */
  bind?: string
  /** TCP port; 0 (the default) picks a free one. */
  port?: number
  /** Access log file (appended to). */
  logFile?: string
  /** Called with each access log line (e.g. to print it). */
  onLog?: (line: string) => void
  faults?: ServeFaults
}

export interface AccessLogEntry {
  time: Date
  remote: string
  method: string
  path: string
  status: number
  /** Body bytes actually sent. */
  bytes: number
  range?: string
  ms: number
}

export interface RunningServer {
  /** The port, known at once even while a refuseForMs fault keeps the server from listening. */
  port: number
  bind: string
  /** http://<bind>:<port> */
  url: string
  /** Resolves once the server accepts connections. */
  listening: Promise<void>
  /** Every request so far, in order of completion. */
  requests: AccessLogEntry[]
  close(): Promise<void>
}

const CONTENT_TYPES: Record<string, string> = {
  '.ipxe': 'text/plain; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.conf': 'text/plain; charset=utf-8',
  '.json': 'application/json',
  '.html': 'text/html; charset=utf-8',
}

export function contentTypeFor(path: string): string {
  return CONTENT_TYPES[extname(path).toLowerCase()] ?? 'application/octet-stream'
}

export type RangeResult = {kind: 'none'} | {kind: 'range'; start: number; end: number} | {kind: 'unsatisfiable'}

/**
 * Interprets a Range header for a body of `size` bytes. Only single "bytes=" ranges are
 * honoured; anything else (multiple ranges, other units, bad syntax) is ignored and the whole
 * body is sent, which RFC 9110 allows. `end` is inclusive.
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return {kind: 'none'}
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (!m || (m[1] === '' && m[2] === '')) return {kind: 'none'}
  if (m[1] === '') {
    // Suffix range: the last N bytes.
    const n = Number(m[2])
    if (n === 0) return {kind: 'unsatisfiable'}
    if (size === 0) return {kind: 'unsatisfiable'}
    return {kind: 'range', start: Math.max(0, size - n), end: size - 1}
  }
  const start = Number(m[1])
  let end = m[2] === '' ? size - 1 : Number(m[2])
  if (m[2] !== '' && end < start) return {kind: 'none'}
  if (start >= size) return {kind: 'unsatisfiable'}
  end = Math.min(end, size - 1)
  return {kind: 'range', start, end}
}

/**
 * Maps a request path to a file under `root` (already a realpath), or undefined when it would
 * leave the directory. Symlinks are resolved so that a link cannot point outside either.
 */
export async function resolveUnder(root: string, urlPath: string): Promise<string | undefined> {
  let decoded: string
  try {
    decoded = decodeURIComponent(urlPath)
  } catch {
    return undefined
  }
  if (decoded.includes('\0') || decoded.includes('\\')) return undefined
  const candidate = resolve(root, `.${decoded.startsWith('/') ? '' : '/'}${decoded}`)
  if (!inside(root, candidate)) return undefined
  let real: string
  try {
    real = await realpath(candidate)
  } catch {
    return candidate // does not exist: the caller answers 404
  }
  return inside(root, real) ? real : undefined
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path)
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel) && !rel.startsWith(`..${sep}`))
}

/** Asks the kernel for a free TCP port on `bind` (used when the real listen must wait). */
export async function freePort(bind = '127.0.0.1'): Promise<number> {
  return new Promise((res, rej) => {
    const s = createNetServer()
    s.once('error', rej)
    s.listen(0, bind, () => {
      const addr = s.address()
      const port = typeof addr === 'object' && addr ? addr.port : 0
      s.close(() => res(port))
    })
  })
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Starts serving `dir`. Resolves once the port is known (and listening, unless refuseForMs). */
export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const bind = opts.bind ?? '127.0.0.1'
  const faults = opts.faults ?? {}
  let root: string
  try {
    root = await realpath(opts.dir)
    if (!(await stat(root)).isDirectory()) throw new Error('not a directory')
  } catch {
    throw new NetbootError(`cannot serve ${opts.dir}: not a directory`, {
      exit: 2,
      suggestions: ['build the PXE tree first: netboot build'],
    })
  }
  if (opts.logFile) await mkdir(dirname(opts.logFile), {recursive: true})

  const requests: AccessLogEntry[] = []
  let truncatedSoFar = 0
  const faultApplies = (path: string) => faults.paths === undefined || faults.paths.includes(path)

  const log = async (entry: AccessLogEntry) => {
    requests.push(entry)
    const range = entry.range ? ` range="${entry.range}"` : ''
    const line = `${entry.time.toISOString()} ${entry.remote} "${entry.method} ${entry.path}" ${entry.status} ${entry.bytes}${range} ${entry.ms}ms`
    opts.onLog?.(line)
    if (opts.logFile) await appendFile(opts.logFile, `${line}\n`).catch(() => {})
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<{status: number; bytes: number}> => {
    const method = req.method ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, {Allow: 'GET, HEAD', 'Content-Length': 0})
      res.end()
      return {status: 405, bytes: 0}
    }
    const urlPath = (req.url ?? '/').split('?')[0] ?? '/'
    const location = faults.redirects?.[urlPath]
    if (location !== undefined) {
      res.writeHead(302, {Location: location, 'Content-Length': 0})
      res.end()
      return {status: 302, bytes: 0}
    }
    const file = await resolveUnder(root, urlPath)
    if (file === undefined) return sendText(res, method, 403, 'forbidden\n')
    let st
    try {
      st = await stat(file)
    } catch {
      return sendText(res, method, 404, 'not found\n')
    }
    if (!st.isFile()) return sendText(res, method, 404, 'not found\n')

    const size = st.size
    const faulty = faultApplies(urlPath)
    const ranges = !(faulty && faults.noRanges)
    const range = ranges ? parseRange(req.headers.range, size) : ({kind: 'none'} as const)
    const headers: Record<string, string | number> = {
      'Content-Type': contentTypeFor(file),
      'Last-Modified': st.mtime.toUTCString(),
    }
    if (ranges) headers['Accept-Ranges'] = 'bytes'
    if (range.kind === 'unsatisfiable') {
      res.writeHead(416, {...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': 0})
      res.end()
      return {status: 416, bytes: 0}
    }
    const start = range.kind === 'range' ? range.start : 0
    const end = range.kind === 'range' ? range.end : size - 1
    const length = size === 0 ? 0 : end - start + 1
    const status = range.kind === 'range' ? 206 : 200
    if (range.kind === 'range') headers['Content-Range'] = `bytes ${start}-${end}/${size}`
    const lie = faulty ? (faults.contentLengthDelta ?? 0) : 0
    headers['Content-Length'] = Math.max(0, length + lie)
    if (lie !== 0) headers.Connection = 'close'
    res.writeHead(status, headers)
    if (method === 'HEAD' || length === 0) {
      res.end()
      return {status, bytes: 0}
    }

    let limit = length
    if (
      faulty &&
      faults.truncateAfterBytes !== undefined &&
      truncatedSoFar < (faults.truncateCount ?? Number.POSITIVE_INFINITY)
    ) {
      limit = Math.min(length, faults.truncateAfterBytes)
      if (limit < length) truncatedSoFar++
    }
    const bytes = await sendBody(res, file, start, limit, faulty ? faults.throttleBytesPerSec : undefined)
    if (bytes < length && faults.truncateMode === 'reset') {
      await resetAfterFlush(res)
    } else if (bytes < length || lie !== 0) {
      // The announced length was not sent: closing the connection is how HTTP/1.1 says so.
      // End the socket (flushing what was written) rather than dropping buffered bytes.
      const socket = res.socket
      if (socket && !socket.destroyed) await new Promise<void>((r) => socket.end(() => r()))
      res.destroy()
    } else {
      res.end()
    }
    return {status, bytes}
  }

  const server: Server = createServer((req, res) => {
    const t0 = Date.now()
    const done = (status: number, bytes: number) =>
      void log({
        time: new Date(t0),
        remote: req.socket.remoteAddress ?? '-',
        method: req.method ?? '-',
        path: req.url ?? '-',
        status,
        bytes,
        range: req.headers.range,
        ms: Date.now() - t0,
      })
    handle(req, res).then(
      (r) => done(r.status, r.bytes),
      (err) => {
        if (!res.headersSent) sendText(res, req.method ?? 'GET', 500, `error: ${(err as Error).message}\n`)
        else res.destroy()
        done(500, 0)
      },
    )
  })
  // Large images over slow emulated NICs: never time a transfer out on our side.
  server.requestTimeout = 0
  server.keepAliveTimeout = 5000

  const port = opts.port && opts.port > 0 ? opts.port : await freePort(bind)
  const listen = () =>
    new Promise<void>((res, rej) => {
      server.once('error', rej)
      server.listen(port, bind, () => {
        server.off('error', rej)
        res()
      })
    })

  let closed = false
  let timer: NodeJS.Timeout | undefined
  let listening: Promise<void>
  if (faults.refuseForMs && faults.refuseForMs > 0) {
    listening = new Promise<void>((res, rej) => {
      timer = setTimeout(() => {
        if (!closed) listen().then(res, rej)
        else res()
      }, faults.refuseForMs)
    })
  } else {
    try {
      await listen()
    } catch (err) {
      throw new NetbootError(`cannot listen on ${bind}:${port}: ${(err as Error).message}`, {
        exit: 1,
        suggestions: ['pick another port with --port, or --port 0 for a free one'],
      })
    }
    listening = Promise.resolve()
  }

  return {
    port,
    bind,
    url: `http://${bind.includes(':') ? `[${bind}]` : bind}:${port}`,
    listening,
    requests,
    close: async () => {
      closed = true
      if (timer) clearTimeout(timer)
      if (!server.listening) return
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
    },
  }
}

/**
 * Aborts the response's connection with a TCP RST, but only once what was written has left:
 * an RST discards unsent data, and the cut must come at a known byte.
 */
async function resetAfterFlush(res: ServerResponse): Promise<void> {
  const socket = res.socket
  if (!socket || socket.destroyed) return
  while (socket.writableLength > 0 && !socket.destroyed) await sleep(10)
  // The kernel's send queue drains too; give the client a moment to read it before the RST.
  await sleep(200)
  if (!socket.destroyed) socket.resetAndDestroy()
}

function sendText(res: ServerResponse, method: string, status: number, body: string): {status: number; bytes: number} {
  const buf = Buffer.from(body)
  res.writeHead(status, {'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': buf.length})
  if (method === 'HEAD') res.end()
  else res.end(buf)
  return {status, bytes: method === 'HEAD' ? 0 : buf.length}
}

/**
 * Streams `count` bytes of `file` from `start`, honouring back-pressure and an optional rate.
 * Returns the number of bytes written (less than `count` only if the client went away).
 */
async function sendBody(res: ServerResponse, file: string, start: number, count: number, rate?: number): Promise<number> {
  const chunk = rate ? Math.max(1024, Math.min(64 * 1024, Math.floor(rate / 10))) : 64 * 1024
  const stream = createReadStream(file, {start, end: start + count - 1, highWaterMark: chunk})
  const t0 = Date.now()
  let sent = 0
  try {
    for await (const data of stream as AsyncIterable<Buffer>) {
      if (res.destroyed) break
      if (rate) {
        const due = t0 + ((sent + data.length) / rate) * 1000
        const wait = due - Date.now()
        if (wait > 0) await sleep(wait)
      }
      const ok = res.write(data)
      sent += data.length
      if (!ok && !res.destroyed) {
        await new Promise<void>((r) => {
          const go = () => {
            res.off('drain', go)
            res.off('close', go)
            r()
          }
          res.on('drain', go)
          res.on('close', go)
        })
      }
    }
  } finally {
    stream.destroy()
  }
  return sent
}
