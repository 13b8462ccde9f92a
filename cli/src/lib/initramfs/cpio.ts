/**
 * A newc ("070701") cpio writer for initramfs images, written for reproducibility:
 * identical records give identical bytes, whatever order they were added in.
 *
 * Records are format-neutral (a path, an info part and, for files, the data); encodeNewc()
 * sorts them, adds missing parent directories, numbers inodes in archive order, fixes owner
 * to 0:0 and every mtime to one value, and checks its own output as it goes.
 *
 * newc layout (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst):
 * a 110-byte ASCII header of "070701" and 13 eight-digit hex fields, the NUL-terminated name
 * padded so header+name is a multiple of 4, the data padded to a multiple of 4; the archive
 * ends with an entry named "TRAILER!!!" and is padded to a 512-byte block.
 */
import {NetbootError} from '../errors.js'

export type CpioRecord =
  | {kind: 'file'; path: string; mode: number; data: Uint8Array}
  | {kind: 'dir'; path: string; mode: number}
  | {kind: 'symlink'; path: string; target: string}
  | {kind: 'chardev' | 'blockdev'; path: string; mode: number; major: number; minor: number}

export interface EncodeOptions {
  /** mtime of every entry, seconds since the epoch; default sourceDateEpoch(). */
  mtime?: number
}

export const NEWC_MAGIC = '070701'
export const HEADER_SIZE = 110
export const TRAILER_NAME = 'TRAILER!!!'
/** cpio's traditional block: the archive length is a multiple of this. */
export const ARCHIVE_BLOCK = 512

const S_IFMT = 0o170000
export const S_IFREG = 0o100000
export const S_IFDIR = 0o040000
export const S_IFLNK = 0o120000
export const S_IFCHR = 0o020000
export const S_IFBLK = 0o060000
const PERM_MASK = 0o7777
/** Every header field is 8 hex digits. */
const FIELD_MAX = 0xffff_ffff

/** Mode of directories created because a child needed them. */
const IMPLICIT_DIR_MODE = 0o755

function invalid(message: string): NetbootError {
  return new NetbootError(`cpio: ${message}`)
}

/**
 * The mtime for reproducible builds: $SOURCE_DATE_EPOCH when set (it must be a
 * non-negative integer), else 0.
 */
export function sourceDateEpoch(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SOURCE_DATE_EPOCH
  if (raw === undefined || raw === '') return 0
  if (!/^\d+$/.test(raw) || Number(raw) > FIELD_MAX) {
    throw new NetbootError(`SOURCE_DATE_EPOCH='${raw}' is not a number of seconds since 1970 that fits in 32 bits`, {exit: 2})
  }
  return Number(raw)
}

/**
 * Canonical archive name of a path: relative ("bin/sh", not "/bin/sh"), no empty, "." or
 * ".." components, no NUL. The archive root itself is never an entry: the kernel's rootfs
 * already exists.
 */
export function normalizePath(path: string): string {
  if (path.includes('\0')) throw invalid(`path ${JSON.stringify(path)} contains a NUL byte`)
  const parts = path.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw invalid(`path '${path}' contains '..'`)
  if (parts.length === 0) throw invalid(`path '${path}' names the archive root`)
  const name = parts.join('/')
  if (name === TRAILER_NAME) throw invalid(`path '${path}' would read as the end-of-archive marker`)
  return name
}

function modeOf(rec: CpioRecord): number {
  switch (rec.kind) {
    case 'file':
      return S_IFREG | (rec.mode & PERM_MASK)
    case 'dir':
      return S_IFDIR | (rec.mode & PERM_MASK)
    case 'symlink':
      // Symlink permissions mean nothing on Linux; 0777 is what lstat shows.
      return S_IFLNK | 0o777
    case 'chardev':
      return S_IFCHR | (rec.mode & PERM_MASK)
    case 'blockdev':
      return S_IFBLK | (rec.mode & PERM_MASK)
  }
}

function dataOf(rec: CpioRecord): Uint8Array {
  if (rec.kind === 'file') return rec.data
  if (rec.kind === 'symlink') return Buffer.from(rec.target, 'utf8')
  return new Uint8Array(0)
}

function checkRecord(rec: CpioRecord): void {
  if (rec.kind !== 'symlink') {
    if (!Number.isInteger(rec.mode) || rec.mode < 0 || (rec.mode & ~PERM_MASK) !== 0) {
      throw invalid(`mode ${rec.mode} of '${rec.path}' is not a permission mask (0 to 0o7777)`)
    }
  }
  if (rec.kind === 'symlink' && (rec.target === '' || rec.target.includes('\0'))) {
    throw invalid(`symlink '${rec.path}' has an empty target or one containing NUL`)
  }
  if (rec.kind === 'chardev' || rec.kind === 'blockdev') {
    for (const [what, n] of [['major', rec.major], ['minor', rec.minor]] as const) {
      if (!Number.isInteger(n) || n < 0 || n > FIELD_MAX) throw invalid(`device ${what} ${n} of '${rec.path}' is out of range`)
    }
  }
  if (dataOf(rec).length > FIELD_MAX) throw invalid(`'${rec.path}' is larger than newc's 4 GiB limit`)
}

/** Byte-wise, component by component: a directory sorts right before its own children. */
function comparePaths(a: string, b: string): number {
  const pa = a.split('/')
  const pb = b.split('/')
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const c = Buffer.compare(Buffer.from(pa[i]!), Buffer.from(pb[i]!))
    if (c !== 0) return c
  }
  return pa.length - pb.length
}

/**
 * The records as they will appear in the archive: normalized, de-duplicated (a clash is an
 * error unless both are the same directory), missing parent directories added, sorted.
 */
export function planEntries(records: Iterable<CpioRecord>): CpioRecord[] {
  const byPath = new Map<string, CpioRecord>()
  for (const given of records) {
    const rec = {...given, path: normalizePath(given.path)} as CpioRecord
    checkRecord(rec)
    const prev = byPath.get(rec.path)
    if (prev) {
      const sameDir = prev.kind === 'dir' && rec.kind === 'dir' && prev.mode === rec.mode
      if (!sameDir) throw invalid(`'${rec.path}' is added twice (${prev.kind} and ${rec.kind})`)
      continue
    }
    byPath.set(rec.path, rec)
  }
  for (const path of [...byPath.keys()]) {
    const parts = path.split('/')
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/')
      const existing = byPath.get(parent)
      if (!existing) byPath.set(parent, {kind: 'dir', path: parent, mode: IMPLICIT_DIR_MODE})
      else if (existing.kind !== 'dir') throw invalid(`'${path}' needs '${parent}' to be a directory, but it is a ${existing.kind}`)
    }
  }
  return [...byPath.values()].sort((a, b) => comparePaths(a.path, b.path))
}

interface Header {
  ino: number
  mode: number
  nlink: number
  mtime: number
  size: number
  rdevMajor: number
  rdevMinor: number
  name: string
}

function hex8(value: number, field: string, name: string): string {
  if (!Number.isInteger(value) || value < 0 || value > FIELD_MAX) throw invalid(`${field} ${value} of '${name}' does not fit a newc field`)
  return value.toString(16).toUpperCase().padStart(8, '0')
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4

/** Header plus NUL-terminated, padded name. */
function encodeHeader(h: Header): Buffer {
  const name = Buffer.from(h.name + '\0', 'utf8')
  const fields = [
    NEWC_MAGIC,
    hex8(h.ino, 'inode', h.name),
    hex8(h.mode, 'mode', h.name),
    hex8(0, 'uid', h.name),
    hex8(0, 'gid', h.name),
    hex8(h.nlink, 'nlink', h.name),
    hex8(h.mtime, 'mtime', h.name),
    hex8(h.size, 'size', h.name),
    hex8(0, 'dev major', h.name), // the device the file came from: meaningless here
    hex8(0, 'dev minor', h.name),
    hex8(h.rdevMajor, 'rdev major', h.name),
    hex8(h.rdevMinor, 'rdev minor', h.name),
    hex8(name.length, 'name size', h.name),
    hex8(0, 'check', h.name), // only the "070702" crc format uses it
  ].join('')
  const out = Buffer.alloc(HEADER_SIZE + name.length + pad4(HEADER_SIZE + name.length))
  out.write(fields, 0, 'ascii')
  name.copy(out, HEADER_SIZE)
  return out
}

/** Length of a header plus its NUL-terminated name, padded to 4 bytes. */
export function headerLength(name: string): number {
  const unpadded = HEADER_SIZE + Buffer.byteLength(name, 'utf8') + 1
  return unpadded + pad4(unpadded)
}

/** Accumulates chunks and checks each against the length the format prescribes. */
class Output {
  private readonly chunks: Buffer[] = []
  offset = 0

  push(chunk: Uint8Array, what: string, expectedLength: number, aligned: boolean): void {
    if (chunk.byteLength !== expectedLength) {
      throw invalid(`wrote ${chunk.byteLength} bytes instead of ${expectedLength} for ${what}; archive is now corrupt`)
    }
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))
    this.offset += chunk.byteLength
    if (aligned && this.offset % 4 !== 0) throw invalid(`${what} ends at offset ${this.offset}, not on a 4-byte boundary; archive is now corrupt`)
  }

  result(): Buffer {
    return Buffer.concat(this.chunks, this.offset)
  }
}

function expectedDataLength(rec: CpioRecord): number {
  if (rec.kind === 'file') return rec.data.byteLength
  if (rec.kind === 'symlink') return Buffer.byteLength(rec.target, 'utf8')
  return 0
}

/** Encodes records (in any order) into a complete newc archive. */
export function encodeNewc(records: Iterable<CpioRecord>, options: EncodeOptions = {}): Buffer {
  const mtime = options.mtime ?? sourceDateEpoch()
  const entries = planEntries(records)

  // A directory's link count is 2 (itself and ".") plus one ".." per subdirectory.
  const subdirs = new Map<string, number>()
  for (const e of entries) {
    if (e.kind !== 'dir') continue
    const slash = e.path.lastIndexOf('/')
    if (slash > 0) subdirs.set(e.path.slice(0, slash), (subdirs.get(e.path.slice(0, slash)) ?? 0) + 1)
  }

  const out = new Output()
  let ino = 0
  for (const e of entries) {
    const data = dataOf(e)
    const header = encodeHeader({
      // Numbered in archive order from 1: the kernel treats equal inode numbers of files
      // with nlink > 1 as hard links, so they must be unique.
      ino: ++ino,
      mode: modeOf(e),
      nlink: e.kind === 'dir' ? 2 + (subdirs.get(e.path) ?? 0) : 1,
      mtime,
      size: data.length,
      rdevMajor: e.kind === 'chardev' || e.kind === 'blockdev' ? e.major : 0,
      rdevMinor: e.kind === 'chardev' || e.kind === 'blockdev' ? e.minor : 0,
      name: e.path,
    })
    out.push(header, `header of '${e.path}'`, headerLength(e.path), true)
    out.push(data, `data of '${e.path}'`, expectedDataLength(e), false)
    out.push(Buffer.alloc(pad4(data.length)), `padding of '${e.path}'`, pad4(data.length), true)
  }

  const trailer = encodeHeader({ino: 0, mode: 0, nlink: 1, mtime: 0, size: 0, rdevMajor: 0, rdevMinor: 0, name: TRAILER_NAME})
  out.push(trailer, 'trailer', headerLength(TRAILER_NAME), true)
  const tail = (ARCHIVE_BLOCK - (out.offset % ARCHIVE_BLOCK)) % ARCHIVE_BLOCK
  out.push(Buffer.alloc(tail), 'final block padding', tail, true)
  if (out.offset % ARCHIVE_BLOCK !== 0) throw invalid(`archive length ${out.offset} is not a multiple of ${ARCHIVE_BLOCK}`)
  return out.result()
}

/**
 * Builder over encodeNewc() for callers that add entries one by one:
 * `new CpioArchive().dir('proc').file('init', data, 0o755).symlink('bin/sh', 'busybox').encode()`.
 */
export class CpioArchive {
  private readonly records: CpioRecord[] = []

  add(record: CpioRecord): this {
    this.records.push(record)
    return this
  }

  file(path: string, data: Uint8Array | string, mode = 0o644): this {
    return this.add({kind: 'file', path, mode, data: typeof data === 'string' ? Buffer.from(data, 'utf8') : data})
  }

  dir(path: string, mode = 0o755): this {
    return this.add({kind: 'dir', path, mode})
  }

  symlink(path: string, target: string): this {
    return this.add({kind: 'symlink', path, target})
  }

  charDev(path: string, major: number, minor: number, mode = 0o600): this {
    return this.add({kind: 'chardev', path, mode, major, minor})
  }

  blockDev(path: string, major: number, minor: number, mode = 0o600): this {
    return this.add({kind: 'blockdev', path, mode, major, minor})
  }

  /** The entries in archive order, parents included (what encode() will write). */
  entries(): CpioRecord[] {
    return planEntries(this.records)
  }

  encode(options: EncodeOptions = {}): Buffer {
    return encodeNewc(this.records, options)
  }
}

export const fileTypeBits = (mode: number): number => mode & S_IFMT
