// Malformed qcow2 images for the hostile-image campaign, derived from valid qemu-img images:
// header fields at and past their limits, L1/L2 entries that point where they must not,
// broken compressed clusters, and random byte and bit flips. Deterministic for a seed.
import {mkdir, readFile, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {prng as rng} from '../../cli/test/helpers/prng.js'

export interface HostileImage {
  name: string
  /** The mutation, for the report. */
  what: string
  data: Buffer
}

interface Base {
  name: string
  data: Buffer
  clusterBits: number
  l1Offset: number
  extl2: boolean
  compressed: boolean
}

const BASES: Array<{name: string; options: string; compress: boolean}> = [
  {name: 'v2-64k', options: 'compat=0.10,cluster_size=65536', compress: false},
  {name: 'v3-512', options: 'compat=1.1,cluster_size=512', compress: false},
  {name: 'v3-4k-deflate', options: 'compat=1.1,cluster_size=4096', compress: true},
  {name: 'v3-64k-zstd', options: 'compat=1.1,cluster_size=65536,compression_type=zstd', compress: true},
  {name: 'v3-64k-extl2-deflate', options: 'compat=1.1,cluster_size=65536,extended_l2=on', compress: true},
  {name: 'v3-2m-zstd', options: 'compat=1.1,cluster_size=2097152,compression_type=zstd', compress: true},
]


async function makeBases(dir: string): Promise<Base[]> {
  await mkdir(dir, {recursive: true})
  const source = join(dir, 'source.raw')
  const content = Buffer.alloc(1024 * 1024)
  const r = rng(1)
  for (let i = 0; i < content.length; i++) content[i] = i % 3 === 0 ? Math.floor(r() * 256) : (i >> 9) & 0xff
  content.fill(0, 256 * 1024, 384 * 1024)
  await writeFile(source, content)
  const bases: Base[] = []
  for (const b of BASES) {
    const file = join(dir, `${b.name}.qcow2`)
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', b.options, ...(b.compress ? ['-c'] : []), source, file])
    const data = await readFile(file)
    bases.push({
      name: b.name,
      data,
      clusterBits: data.readUInt32BE(20),
      l1Offset: Number(data.readBigUInt64BE(40)),
      extl2: /extended_l2=on/.test(b.options),
      compressed: b.compress,
    })
  }
  await rm(source)
  return bases
}

const OFFSET_MASK = 0x00fffffffffffe00n

function l2Offset(base: Base): number {
  return Number(base.data.readBigUInt64BE(base.l1Offset) & OFFSET_MASK)
}

/** The file offset of L2 entry `i` of the first L2 table. */
function l2EntryAt(base: Base, i: number): number {
  return l2Offset(base) + i * (base.extl2 ? 16 : 8)
}

function firstCompressed(base: Base): {at: number; entry: bigint} | undefined {
  const entries = (1 << base.clusterBits) / (base.extl2 ? 16 : 8)
  for (let i = 0; i < entries; i++) {
    const at = l2EntryAt(base, i)
    if (at + 8 > base.data.length) return undefined
    const entry = base.data.readBigUInt64BE(at)
    if (entry & (1n << 62n)) return {at, entry}
  }
  return undefined
}

type Mutation = {what: string; apply: (d: Buffer, base: Base) => Buffer | undefined}

const set32 = (off: number, v: number): Mutation['apply'] => (d) => (d.writeUInt32BE(v >>> 0, off), d)
const set64 = (off: number, v: bigint): Mutation['apply'] => (d) => (d.writeBigUInt64BE(BigInt.asUintN(64, v), off), d)

/** The systematic mutations of one base image. */
function mutations(base: Base): Mutation[] {
  const cs = 1 << base.clusterBits
  const size = BigInt(base.data.length)
  const m: Mutation[] = []
  for (const bits of [0, 1, 8, 9, 12, 16, 20, 21, 22, 31, 32, 63, 64, 0xffffffff]) m.push({what: `cluster_bits=${bits}`, apply: set32(20, bits)})
  for (const v of [3, 4, 0xffffffff]) m.push({what: `version=${v}`, apply: set32(4, v)})
  for (const s of [0n, 1n, 511n, 1n << 40n, 1n << 62n, (1n << 63n) - 1n, 1n << 63n, -1n]) m.push({what: `size=${s}`, apply: set64(24, s)})
  for (const n of [0, 1, 0x7fffffff, 0xffffffff]) m.push({what: `l1_size=${n}`, apply: set32(36, n)})
  for (const off of [0n, 512n, BigInt(cs), BigInt(base.l1Offset) + 8n, size, size - 8n, -512n, BigInt(l2Offset(base))]) {
    m.push({what: `l1_table_offset=${off}`, apply: set64(40, off)})
  }
  m.push({what: 'crypt_method=1', apply: set32(32, 1)})
  m.push({what: 'backing_file_offset', apply: set64(8, 512n)})
  if (base.data.readUInt32BE(4) === 3) {
    for (const o of [7, 64, 0xffffffff]) m.push({what: `refcount_order=${o}`, apply: set32(96, o)})
    for (const h of [0, 103, 105, 111, cs + 8, 0xffffffff]) m.push({what: `header_length=${h}`, apply: set32(100, h)})
    for (let bit = 0; bit < 64; bit += 1) m.push({what: `incompatible bit ${bit}`, apply: set64(72, 1n << BigInt(bit))})
    m.push({what: 'compression_type=7', apply: (d) => (d.writeBigUInt64BE(d.readBigUInt64BE(72) | 8n, 72), (d[104] = 7), d)})
    m.push({what: 'zstd on a deflate image', apply: (d) => (d.writeBigUInt64BE(d.readBigUInt64BE(72) | 8n, 72), (d[104] ^= 1), d)})
    m.push({what: 'extended L2 bit flipped', apply: (d) => (d.writeBigUInt64BE(d.readBigUInt64BE(72) ^ 16n, 72), d)})
    m.push({what: 'header extension length past the cluster', apply: (d) => (d.writeUInt32BE(0x6803f857, 112), d.writeUInt32BE(0xfffffff0, 116), d)})
  }
  // L1 entry 0
  for (const [what, v] of [
    ['into the header', 512n], ['at itself', BigInt(base.l1Offset)], ['past EOF', size + BigInt(cs)], ['unaligned', BigInt(l2Offset(base) + 512)],
    ['far past EOF', 0x00fffffffffffe00n], ['reserved bits', BigInt(l2Offset(base)) | 0x7f00000000000000n],
  ] as Array<[string, bigint]>) {
    m.push({what: `L1[0] ${what}`, apply: set64(base.l1Offset, v)})
  }
  // L2 entries of the first table
  const l2 = (i: number, v: bigint, what: string): Mutation => ({what: `L2[${i}] ${what}`, apply: (d) => (l2EntryAt(base, i) + 8 <= d.length ? set64(l2EntryAt(base, i), v)(d, base) : undefined)})
  for (const i of [0, 1]) {
    m.push(l2(i, size + BigInt(cs) * 4n, 'data past EOF'))
    m.push(l2(i, BigInt(cs) + 512n, 'data unaligned'))
    m.push(l2(i, 0n, 'data in the header'))
    m.push(l2(i, BigInt(l2Offset(base)), 'data is the L2 table'))
    m.push(l2(i, (1n << 62n) | ((1n << 62n) - 1n), 'compressed, every bit'))
    m.push(l2(i, (1n << 62n) | 512n, 'compressed in the header'))
    m.push(l2(i, (1n << 62n) | (size - 1n), 'compressed at the last byte'))
    m.push(l2(i, (1n << 62n) | (size + 4096n), 'compressed past EOF'))
    m.push(l2(i, -1n, 'all ones'))
  }
  if (base.extl2) {
    m.push({what: 'subcluster allocated and zero', apply: (d) => (d.writeBigUInt64BE(0xffffffffffffffffn, l2EntryAt(base, 0) + 8), d)})
    m.push({what: 'subclusters allocated, no cluster', apply: (d) => (d.writeBigUInt64BE(0n, l2EntryAt(base, 0)), d.writeBigUInt64BE(0xffffffffn, l2EntryAt(base, 0) + 8), d)})
  }
  if (base.compressed) {
    const c = firstCompressed(base)
    if (c) {
      const x = 62 - (base.clusterBits - 8)
      const off = Number(c.entry & ((1n << BigInt(x)) - 1n))
      m.push({what: 'compressed data zeroed', apply: (d) => (d.fill(0, off, Math.min(d.length, off + 512)), d)})
      m.push({what: 'compressed data garbage', apply: (d) => { const r = rng(off); for (let i = off; i < Math.min(d.length, off + 2048); i++) d[i] = Math.floor(r() * 256); return d }})
      m.push({what: 'compressed data truncated (one sector)', apply: (d) => set64(c.at, c.entry & ~(((1n << BigInt(base.clusterBits - 8)) - 1n) << BigInt(x)))(d, base)})
      m.push({what: 'compressed sector count maximal', apply: set64(c.at, c.entry | (((1n << BigInt(base.clusterBits - 8)) - 1n) << BigInt(x)))})
      m.push({what: 'file cut inside compressed data', apply: (d) => d.subarray(0, off + 17)})
      m.push({what: 'compressed frame header flipped', apply: (d) => ((d[off] ^= 0xff), (d[off + 4] ^= 0x55), d)})
      // a zstd frame header announcing a huge window (Window_Descriptor exponent 31)
      m.push({what: 'zstd frame with a huge window', apply: (d) => (d.writeUInt32LE(0xfd2fb528, off), (d[off + 4] = 0x00), (d[off + 5] = 0xf8), d)})
    }
  }
  m.push({what: 'file truncated to the header', apply: (d) => d.subarray(0, 104)})
  m.push({what: 'file truncated to one cluster', apply: (d) => d.subarray(0, cs)})
  m.push({what: 'file truncated in the middle', apply: (d) => d.subarray(0, Math.floor(d.length / 2))})
  return m
}

/**
 * `count` hostile images: the systematic mutations of every base (evenly sampled down to 70 %
 * of `count` when there are more), then random byte and bit flips (metadata-heavy: most flips
 * land in the first clusters). `count` 0 means every systematic mutation and no flips.
 */
export async function hostileImages(workDir: string, count: number, seed = 1, systematicToo = true): Promise<HostileImage[]> {
  const bases = await makeBases(join(workDir, 'bases'))
  const systematic: HostileImage[] = []
  for (const base of bases) {
    for (const [i, mut] of mutations(base).entries()) {
      const data = mut.apply(Buffer.from(base.data), base)
      if (data) systematic.push({name: `${base.name}-m${String(i).padStart(3, '0')}`, what: mut.what, data})
    }
  }
  const keep = !systematicToo ? 0 : count > 0 ? Math.min(systematic.length, Math.ceil(count * 0.7)) : systematic.length
  const out = systematic.filter((_, i) => Math.floor((i * keep) / systematic.length) !== Math.floor(((i + 1) * keep) / systematic.length))
  if (count === 0) return out
  const r = rng(seed)
  for (let n = 0; out.length < count; n++) {
    const base = bases[n % bases.length]!
    const data = Buffer.from(base.data)
    const flips = 1 + Math.floor(r() * 8)
    const where: string[] = []
    for (let k = 0; k < flips; k++) {
      const span = r() < 0.8 ? Math.min(data.length, 4 << base.clusterBits) : data.length
      const at = Math.floor(r() * span)
      if (r() < 0.5) {
        data[at] = Math.floor(r() * 256)
        where.push(`byte@${at}`)
      } else {
        data[at]! ^= 1 << Math.floor(r() * 8)
        where.push(`bit@${at}`)
      }
    }
    out.push({name: `${base.name}-s${seed}-r${String(n).padStart(5, '0')}`, what: `random flips ${where.join(' ')}`, data})
  }
  return out
}
