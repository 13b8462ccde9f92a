/**
 * Two independent readers for the archives under test: a strict newc parser that also checks
 * every padding and trailer rule, and cpio-stream's extractor (a third-party reader).
 */
import cpio, {type CpioStreamHeader} from 'cpio-stream'
import {Readable} from 'node:stream'

export {prng} from '../helpers/prng.js'

export interface ParsedEntry {
  offset: number
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  mtime: number
  rdevMajor: number
  rdevMinor: number
  name: string
  data: Buffer
}

/** Parses a newc archive and throws on any violation of the format's layout rules. */
export function parseNewcStrict(buf: Buffer): {entries: ParsedEntry[]; trailerEnd: number} {
  const entries: ParsedEntry[] = []
  let off = 0
  for (;;) {
    if (off % 4 !== 0) throw new Error(`header at ${off} is not 4-byte aligned`)
    const magic = buf.toString('ascii', off, off + 6)
    if (magic !== '070701') throw new Error(`bad magic '${magic}' at ${off}`)
    const field = (i: number): number => {
      const text = buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8)
      if (!/^[0-9A-F]{8}$/.test(text)) throw new Error(`field ${i} at ${off} is '${text}', not 8 upper-case hex digits`)
      return Number.parseInt(text, 16)
    }
    const [ino, mode, uid, gid, nlink, mtime, size, , , rdevMajor, rdevMinor, nameSize, check] = Array.from({length: 13}, (_, i) => field(i))
    if (check !== 0) throw new Error(`check field is ${check} at ${off}`)
    const nameStart = off + 110
    if (buf[nameStart + nameSize! - 1] !== 0) throw new Error(`name at ${off} is not NUL-terminated`)
    const name = buf.toString('utf8', nameStart, nameStart + nameSize! - 1)
    if (name.includes('\0')) throw new Error(`name at ${off} has an embedded NUL`)
    let p = nameStart + nameSize!
    while (p % 4 !== 0) if (buf[p++] !== 0) throw new Error(`non-zero name padding after '${name}'`)
    const data = buf.subarray(p, p + size!)
    if (data.length !== size) throw new Error(`'${name}' data runs past the end`)
    p += size!
    while (p % 4 !== 0) if (buf[p++] !== 0) throw new Error(`non-zero data padding after '${name}'`)
    if (name === 'TRAILER!!!') {
      if (size !== 0) throw new Error('trailer has data')
      return {entries, trailerEnd: p}
    }
    entries.push({offset: off, ino: ino!, mode: mode!, uid: uid!, gid: gid!, nlink: nlink!, mtime: mtime!, rdevMajor: rdevMajor!, rdevMinor: rdevMinor!, name, data: Buffer.from(data)})
    off = p
    if (off >= buf.length) throw new Error('archive ends without TRAILER!!!')
  }
}

export interface ExtractedEntry {
  header: CpioStreamHeader
  data: Buffer
}

/** Reads an archive with cpio-stream. */
export async function extractWithCpioStream(buf: Buffer): Promise<ExtractedEntry[]> {
  const out: ExtractedEntry[] = []
  const extract = cpio.extract()
  return new Promise((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => {
        out.push({header, data: Buffer.concat(chunks)})
        next()
      })
      stream.resume()
    })
    extract.on('finish', () => resolve(out))
    extract.on('error', reject)
    Readable.from([buf]).pipe(extract)
  })
}

