/**
 * Reads a qcow2 header and decides, the way the kernel's read-only loop qcow2 driver does,
 * whether the image can be attached. `netboot image --source X.qcow2` runs this before it
 * publishes an image, so an image the guest would refuse at boot is refused on the host,
 * with the same reason and the same error class (errno) the kernel would use.
 *
 * The on-disk layout is the QCOW2 specification (docs/interop/qcow2.rst in QEMU); all
 * integers are big-endian.
 */
import {open} from 'node:fs/promises'

import {NetbootError} from './errors.js'

export const QCOW2_MAGIC = 0x51_46_49_fb // "QFI\xfb"

/** The v2 header is 72 bytes; v3 adds fields up to byte 104 (header_length says how many). */
const V2_HEADER_SIZE = 72
const V3_MIN_HEADER_SIZE = 104

/** qemu-img creates 512 B .. 2 MiB clusters; the kernel driver accepts the same range. */
export const MIN_CLUSTER_BITS = 9
export const MAX_CLUSTER_BITS = 21

/** QEMU's own cap on the L1 table (32 MiB); a larger table is refused as too big. */
const MAX_L1_BYTES = 32 * 1024 * 1024

/** Refcount entries are at most 64 bits wide (order 6). */
const MAX_REFCOUNT_ORDER = 6

/** The backing file name is at most 1023 bytes in QEMU. */
const MAX_BACKING_NAME = 1023

export const INCOMPAT_DIRTY = 1n << 0n
export const INCOMPAT_CORRUPT = 1n << 1n
export const INCOMPAT_DATA_FILE = 1n << 2n
export const INCOMPAT_COMPRESSION = 1n << 3n
export const INCOMPAT_EXTL2 = 1n << 4n
/** Bits the specification defines; any other set bit means the image must be refused. */
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2

const EXT_END = 0x0000_0000
const EXT_BACKING_FORMAT = 0xe2_79_2a_ca
const EXT_FEATURE_NAMES = 0x68_03_f8_57
const EXT_BITMAPS = 0x23_85_28_75
const EXT_CRYPTO = 0x05_37_be_77
const EXT_DATA_FILE = 0x44_41_54_41

const EXTENSION_NAMES: Record<number, string> = {
  [EXT_BACKING_FORMAT]: 'backing-format',
  [EXT_FEATURE_NAMES]: 'feature-names',
  [EXT_BITMAPS]: 'bitmaps',
  [EXT_CRYPTO]: 'crypto',
  [EXT_DATA_FILE]: 'data-file',
}

export type CompressionType = 'deflate' | 'zstd'
export type CryptMethod = 'none' | 'aes' | 'luks' | `unknown(${number})`

export interface Qcow2Extension {
  type: number
  name: string
  length: number
}

export interface Qcow2Header {
  version: 2 | 3
  clusterBits: number
  clusterSize: number
  virtualSize: bigint
  cryptMethod: CryptMethod
  l1Size: number
  l1TableOffset: bigint
  backingFileOffset: bigint
  backingFileSize: number
  /** Name of the backing file when the header has one (it is read from the image). */
  backingFile?: string
  incompatibleFeatures: bigint
  compatibleFeatures: bigint
  autoclearFeatures: bigint
  refcountOrder: number
  headerLength: number
  compressionType: CompressionType | `unknown(${number})`
  dirty: boolean
  extendedL2: boolean
  extensions: Qcow2Extension[]
  /** Name of the external data file (extension 0x44415441), if any. */
  dataFile?: string
  fileSize: number
}

/**
 * Why an image cannot be attached, with the errno class the kernel driver returns for it:
 * EINVAL malformed, EOPNOTSUPP unsupported feature, EUCLEAN corrupt bit, EFBIG too big.
 */
export type Qcow2Errno = 'EINVAL' | 'EOPNOTSUPP' | 'EUCLEAN' | 'EFBIG'

export class Qcow2RefusedError extends NetbootError {
  readonly errno: Qcow2Errno
  readonly reason: string

  constructor(file: string, errno: Qcow2Errno, reason: string) {
    super(`${file}: the kernel qcow2 loop driver would refuse this image (${errno}): ${reason}`, {
      exit: 1,
      suggestions: suggestionFor(errno),
    })
    this.name = 'Qcow2RefusedError'
    this.errno = errno
    this.reason = reason
  }
}

function suggestionFor(errno: Qcow2Errno): string[] {
  switch (errno) {
    case 'EOPNOTSUPP':
      return ['make a standalone copy: qemu-img convert -O qcow2 <in> <out> (drops backing files, encryption, data files)']
    case 'EUCLEAN':
      return ['repair it first: qemu-img check -r all <image>']
    default:
      return ['rebuild the image with `netboot image`']
  }
}

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`
}

function bitsOf(mask: bigint): number[] {
  const bits: number[] = []
  for (let i = 0; i < 64; i++) if (mask & (1n << BigInt(i))) bits.push(i)
  return bits
}

class Refusal extends Error {
  constructor(readonly errno: Qcow2Errno, readonly reason: string) {
    super(reason)
  }
}

function refuse(errno: Qcow2Errno, reason: string): never {
  throw new Refusal(errno, reason)
}

/**
 * Parses the header in `buf` (the first bytes of the image: at least the header, ideally the
 * whole first cluster so that header extensions can be read) of an image that is `fileSize`
 * bytes long, and checks it. Throws a Refusal for anything the kernel driver refuses.
 */
function parseAndCheck(buf: Buffer, fileSize: number): Qcow2Header {
  if (buf.length < 8 || fileSize < 8) refuse('EINVAL', `truncated: ${fileSize} bytes is shorter than a qcow2 header`)
  const magic = buf.readUInt32BE(0)
  if (magic !== QCOW2_MAGIC) refuse('EINVAL', `bad magic ${hex(magic)} (expected ${hex(QCOW2_MAGIC)}, "QFI\\xfb"): not a qcow2 image`)
  const version = buf.readUInt32BE(4)
  if (version !== 2 && version !== 3) refuse('EOPNOTSUPP', `unsupported qcow2 version ${version} (only 2 and 3 exist)`)

  const minHeader = version === 2 ? V2_HEADER_SIZE : V3_MIN_HEADER_SIZE
  if (fileSize < minHeader || buf.length < minHeader) {
    refuse('EINVAL', `truncated: ${fileSize} bytes is shorter than the ${minHeader}-byte qcow2 v${version} header`)
  }

  const backingFileOffset = buf.readBigUInt64BE(8)
  const backingFileSize = buf.readUInt32BE(16)
  const clusterBits = buf.readUInt32BE(20)
  const virtualSize = buf.readBigUInt64BE(24)
  const cryptRaw = buf.readUInt32BE(32)
  const l1Size = buf.readUInt32BE(36)
  const l1TableOffset = buf.readBigUInt64BE(40)

  let incompatibleFeatures = 0n
  let compatibleFeatures = 0n
  let autoclearFeatures = 0n
  let refcountOrder = 4 // v2 refcounts are 16 bits
  let headerLength = V2_HEADER_SIZE
  let compressionRaw = 0
  if (version === 3) {
    incompatibleFeatures = buf.readBigUInt64BE(72)
    compatibleFeatures = buf.readBigUInt64BE(80)
    autoclearFeatures = buf.readBigUInt64BE(88)
    refcountOrder = buf.readUInt32BE(96)
    headerLength = buf.readUInt32BE(100)
  }

  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    refuse('EINVAL', `cluster_bits ${clusterBits} out of range ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`)
  }
  const clusterSize = 2 ** clusterBits

  if (version === 3) {
    if (headerLength < V3_MIN_HEADER_SIZE) refuse('EINVAL', `header_length ${headerLength} is below ${V3_MIN_HEADER_SIZE}`)
    if (headerLength > clusterSize) refuse('EINVAL', `header_length ${headerLength} is larger than a cluster (${clusterSize})`)
    if (headerLength > fileSize) refuse('EINVAL', `truncated: header_length ${headerLength} but the file has ${fileSize} bytes`)
    if (refcountOrder > MAX_REFCOUNT_ORDER) refuse('EINVAL', `refcount_order ${refcountOrder} is above ${MAX_REFCOUNT_ORDER}`)
  }

  const {extensions, dataFile} = readExtensions(buf, version === 2 ? V2_HEADER_SIZE : headerLength, clusterSize)

  // Feature bits first: they decide whether the rest of the header can be understood.
  const unknown = incompatibleFeatures & ~INCOMPAT_KNOWN
  if (unknown !== 0n) {
    refuse('EOPNOTSUPP', `unknown incompatible feature bit(s) ${bitsOf(unknown).join(', ')} (mask ${hex(unknown)})`)
  }
  if (incompatibleFeatures & INCOMPAT_CORRUPT) refuse('EUCLEAN', 'the corrupt bit is set (incompatible feature bit 1)')
  if (incompatibleFeatures & INCOMPAT_DATA_FILE) {
    const named = dataFile === undefined ? '' : `, data file "${dataFile}"`
    refuse('EOPNOTSUPP', `external data files are not supported (incompatible feature bit 2${named})`)
  }
  if (incompatibleFeatures & INCOMPAT_COMPRESSION) {
    if (headerLength <= 104) refuse('EINVAL', `compression type bit set but header_length ${headerLength} has no room for the field`)
    compressionRaw = buf.readUInt8(104)
    if (compressionRaw > 1) refuse('EOPNOTSUPP', `unknown compression type ${compressionRaw} (0 deflate, 1 zstd)`)
  } else if (version === 3 && headerLength > 104 && buf.readUInt8(104) !== 0) {
    // Without the bit the field must say deflate (the spec's rule; QEMU refuses otherwise).
    refuse('EINVAL', `compression type ${buf.readUInt8(104)} without incompatible feature bit 3`)
  }

  const cryptMethod: CryptMethod =
    cryptRaw === 0 ? 'none' : cryptRaw === 1 ? 'aes' : cryptRaw === 2 ? 'luks' : `unknown(${cryptRaw})`
  if (cryptRaw !== 0) refuse('EOPNOTSUPP', `encrypted images are not supported (crypt_method ${cryptRaw}, ${cryptMethod})`)

  const extendedL2 = (incompatibleFeatures & INCOMPAT_EXTL2) !== 0n
  if (extendedL2 && clusterBits < 14) {
    // QEMU never makes this (subclusters would be smaller than 512 bytes).
    refuse('EINVAL', `extended L2 entries need clusters of at least 16 KiB, not ${clusterSize}`)
  }

  let backingFile: string | undefined
  if (backingFileOffset !== 0n) {
    if (backingFileSize > MAX_BACKING_NAME) refuse('EINVAL', `backing file name length ${backingFileSize} exceeds ${MAX_BACKING_NAME}`)
    const end = backingFileOffset + BigInt(backingFileSize)
    if (end > BigInt(fileSize)) refuse('EINVAL', `backing file name at ${hex(backingFileOffset)} runs past end of file`)
    if (end <= BigInt(buf.length)) {
      backingFile = buf.subarray(Number(backingFileOffset), Number(end)).toString('utf8')
    }
    refuse('EOPNOTSUPP', `backing files are not supported${backingFile === undefined ? '' : ` (backing file "${backingFile}")`}`)
  }

  if (virtualSize % 512n !== 0n) refuse('EINVAL', `virtual size ${virtualSize} is not a multiple of 512`)

  // L1 table: big enough for the virtual size, cluster aligned, inside the file, not the header.
  const l2EntryBytes = extendedL2 ? 16n : 8n
  const bytesPerL1Entry = BigInt(clusterSize) * (BigInt(clusterSize) / l2EntryBytes)
  const l1Needed = (virtualSize + bytesPerL1Entry - 1n) / bytesPerL1Entry
  if (BigInt(l1Size) * 8n > BigInt(MAX_L1_BYTES)) {
    refuse('EFBIG', `L1 table of ${l1Size} entries is larger than ${MAX_L1_BYTES} bytes`)
  }
  if (BigInt(l1Size) < l1Needed) {
    refuse('EINVAL', `L1 table has ${l1Size} entries but virtual size ${virtualSize} needs ${l1Needed}`)
  }
  if (l1Size > 0) {
    if (l1TableOffset % BigInt(clusterSize) !== 0n) {
      refuse('EINVAL', `L1 table offset ${hex(l1TableOffset)} is not aligned to the ${clusterSize}-byte cluster`)
    }
    if (l1TableOffset === 0n) refuse('EINVAL', 'L1 table offset 0 points into the header')
    const l1End = l1TableOffset + BigInt(l1Size) * 8n
    if (l1End > BigInt(fileSize)) {
      refuse('EINVAL', `L1 table at ${hex(l1TableOffset)} (${l1Size} entries) runs past end of file (${fileSize} bytes)`)
    }
  }

  return {
    version,
    clusterBits,
    clusterSize,
    virtualSize,
    cryptMethod,
    l1Size,
    l1TableOffset,
    backingFileOffset,
    backingFileSize,
    backingFile,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType: compressionRaw === 0 ? 'deflate' : compressionRaw === 1 ? 'zstd' : `unknown(${compressionRaw})`,
    dirty: (incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
    extendedL2,
    extensions,
    dataFile,
    fileSize,
  }
}

/**
 * Walks the header extensions (type, length, data padded to 8) that follow the header in the
 * first cluster. Unknown types are skipped, as the specification demands. Only as much as `buf`
 * holds is read: the extensions carry nothing the attach decision needs except the names.
 */
function readExtensions(buf: Buffer, start: number, clusterSize: number): {extensions: Qcow2Extension[]; dataFile?: string} {
  const extensions: Qcow2Extension[] = []
  let dataFile: string | undefined
  const limit = Math.min(buf.length, clusterSize)
  let off = start
  while (off + 8 <= limit) {
    const type = buf.readUInt32BE(off)
    const length = buf.readUInt32BE(off + 4)
    if (type === EXT_END) break
    const dataEnd = off + 8 + length
    if (dataEnd > clusterSize) refuse('EINVAL', `header extension ${hex(type)} at offset ${off} runs past the first cluster`)
    if (dataEnd > limit) break
    extensions.push({type, name: EXTENSION_NAMES[type] ?? `unknown-${hex(type)}`, length})
    if (type === EXT_DATA_FILE) dataFile = buf.subarray(off + 8, dataEnd).toString('utf8')
    off = dataEnd + ((8 - (length % 8)) % 8)
  }
  return {extensions, dataFile}
}

/**
 * Parses and checks a header held in memory. `buf` should hold the image's first cluster (or
 * the whole image when it is smaller); `fileSize` is the size of the whole image file.
 * Throws Qcow2RefusedError naming `name` and the reason.
 */
export function checkQcow2Buffer(buf: Buffer, fileSize: number, name = 'image'): Qcow2Header {
  try {
    return parseAndCheck(buf, fileSize)
  } catch (err) {
    if (err instanceof Refusal) throw new Qcow2RefusedError(name, err.errno, err.reason)
    throw err
  }
}

/** Does the file start with the qcow2 magic? (Cheap sniffing for `--source`.) */
export async function looksLikeQcow2(path: string): Promise<boolean> {
  const fh = await open(path, 'r')
  try {
    const head = Buffer.alloc(4)
    const {bytesRead} = await fh.read(head, 0, 4, 0)
    return bytesRead === 4 && head.readUInt32BE(0) === QCOW2_MAGIC
  } finally {
    await fh.close()
  }
}

/**
 * Reads the header of the qcow2 image at `path` and checks that the kernel driver would
 * attach it. Returns the parsed header; throws Qcow2RefusedError (exit 1) with the reason.
 */
export async function checkQcow2File(path: string): Promise<Qcow2Header> {
  const fh = await open(path, 'r')
  try {
    const {size} = await fh.stat()
    // Read the header first to learn the cluster size, then the whole first cluster
    // (header extensions live there).
    const head = Buffer.alloc(Math.min(size, 4096))
    await fh.read(head, 0, head.length, 0)
    let buf = head
    if (head.length >= 24) {
      const bits = head.readUInt32BE(20)
      if (bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS && 2 ** bits > head.length && size > head.length) {
        buf = Buffer.alloc(Math.min(size, 2 ** bits))
        await fh.read(buf, 0, buf.length, 0)
      }
    }
    return checkQcow2Buffer(buf, size, path)
  } finally {
    await fh.close()
  }
}

/** A short human description, e.g. "qcow2 v3, 64 KiB clusters, zstd, 32 MiB virtual". */
export function describeQcow2(h: Qcow2Header): string {
  const parts = [`qcow2 v${h.version}`, `${h.clusterSize >= 1024 ? `${h.clusterSize / 1024} KiB` : `${h.clusterSize} B`} clusters`]
  parts.push(`compression ${h.compressionType}`)
  if (h.extendedL2) parts.push('extended L2')
  if (h.dirty) parts.push('dirty')
  parts.push(`${Number(h.virtualSize) / 1024 / 1024} MiB virtual`)
  return parts.join(', ')
}
