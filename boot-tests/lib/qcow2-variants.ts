// Builds the qcow2 images of the kernel correctness matrix with qemu-img and qemu-io, the
// reference implementation, and records what each must read as: the sha256 of
// `qemu-img convert -O raw`.
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, open, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout} from 'node:timers/promises'
import {execa} from 'execa'

export interface Variant {
  name: string
  /** qcow2 creation options (-o). */
  options: string[]
  /** How the content is made. */
  content: 'convert' | 'io' | 'snapshot' | 'dirty'
  compression: 'none' | 'deflate' | 'zstd'
}

export interface RefusedVariant {
  name: string
  /** loopfmt's exit code for the errno the kernel must return. */
  exitCode: number
  errno: string
  /** What the kernel's one-line message must contain. */
  message: string
}

/** An image that attaches but whose tables go wrong where a read follows them: EIO, never data. */
export interface CorruptVariant {
  name: string
  file: string
  /** What the kernel's corruption report must contain. */
  message: string
}

export interface BuiltImages {
  dir: string
  good: Array<Variant & {file: string; sha256: string}>
  refused: Array<RefusedVariant & {file: string}>
  corrupt: CorruptVariant[]
}

export const VIRTUAL_SIZE = 8 * 1024 * 1024
const CLUSTERS = [512, 1024, 4096, 16384, 65536, 262144, 2097152]

const kib = (n: number) => (n >= 1048576 ? `${n / 1048576}M` : n >= 1024 ? `${n / 1024}k` : `${n}`)

/** The matrix: compat 0.10 and 1.1 × cluster sizes × compression × extended L2, plus snapshot and dirty images. */
export function variants(): Variant[] {
  const out: Variant[] = []
  for (const cluster of CLUSTERS) {
    for (const compat of ['0.10', '1.1']) {
      const compressions = compat === '0.10' ? (['none', 'deflate'] as const) : (['none', 'deflate', 'zstd'] as const)
      for (const compression of compressions) {
        const extl2s = compat === '1.1' && cluster >= 16384 ? [false, true] : [false]
        for (const extl2 of extl2s) {
          const options = [`compat=${compat}`, `cluster_size=${cluster}`]
          if (compression === 'zstd') options.push('compression_type=zstd')
          if (extl2) options.push('extended_l2=on')
          const base = `c${kib(cluster)}-v${compat === '0.10' ? 2 : 3}-${compression}${extl2 ? '-extl2' : ''}`
          // Converted images carry the mixed content; qemu-io images carry partial-cluster,
          // zero and discarded ranges (subclusters with extended L2).
          out.push({name: `${base}-conv`, options, content: 'convert', compression})
          if (compression === 'none' || cluster === 65536) out.push({name: `${base}-io`, options, content: 'io', compression})
        }
      }
    }
  }
  out.push({name: 'c64k-v3-snapshot', options: ['compat=1.1', 'cluster_size=65536'], content: 'snapshot', compression: 'none'})
  out.push({name: 'c4k-v2-snapshot', options: ['compat=0.10', 'cluster_size=4096'], content: 'snapshot', compression: 'none'})
  out.push({name: 'c64k-v3-dirty', options: ['compat=1.1', 'cluster_size=65536', 'lazy_refcounts=on'], content: 'dirty', compression: 'none'})
  out.push({name: 'c64k-v3-refcount1', options: ['compat=1.1', 'cluster_size=65536', 'refcount_bits=1'], content: 'io', compression: 'none'})
  out.push({name: 'c64k-v3-refcount64', options: ['compat=1.1', 'cluster_size=65536', 'refcount_bits=64'], content: 'io', compression: 'none'})
  return out
}

/** Deterministic pseudo-random bytes (xorshift), so the content is the same on every machine. */
function noise(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes)
  let x = seed >>> 0 || 1
  for (let i = 0; i < bytes; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    out.writeUInt32LE(x, i)
  }
  return out
}

/** 8 MiB of mixed content: text, an ELF binary, random bytes, zeroes and a hole. */
async function writeSource(path: string): Promise<void> {
  const fh = await open(path, 'w')
  try {
    const text = Buffer.from(Array.from({length: 40000}, (_, i) => `line ${i}: the quick brown fox jumps over the lazy dog\n`).join(''))
    await fh.write(text.subarray(0, 1536 * 1024), 0, undefined, 0)
    const {readFile} = await import('node:fs/promises')
    const elf = await readFile('/bin/busybox')
    await fh.write(elf.subarray(0, 1024 * 1024), 0, undefined, 1536 * 1024 + 777)
    await fh.write(noise(1536 * 1024, 7), 0, undefined, 3 * 1024 * 1024 + 4096)
    // 4.5M..6M zeroes written explicitly, 6M..7.5M a hole, then a tail that is not cluster aligned
    await fh.write(Buffer.alloc(1536 * 1024), 0, undefined, 4608 * 1024)
    await fh.write(noise(300000, 99), 0, undefined, 7680 * 1024 + 123)
    await fh.truncate(VIRTUAL_SIZE)
  } finally {
    await fh.close()
  }
}

// Writes at odd offsets and lengths: partial clusters, runs across clusters and L2 slices,
// zeroed and discarded ranges over earlier data.
const IO_COMMANDS = [
  'write -P 0x11 0 1M',
  'write -P 0x22 4095 70000',
  'write -P 0x33 1500000 2500000',
  'write -z 1600000 300000',
  'discard 2097152 1048576',
  'write -P 0x44 7340000 500000',
  'write -P 0x55 5000000 1000',
]

async function qemuIo(file: string, commands: string[], extra: string[] = []): Promise<void> {
  await execa('qemu-io', ['-f', 'qcow2', ...extra, ...commands.flatMap((c) => ['-c', c]), file])
}

async function makeVariant(dir: string, source: string, v: Variant): Promise<string> {
  const file = join(dir, `${v.name}.qcow2`)
  const options = v.options.join(',')
  if (v.content === 'convert') {
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', options, ...(v.compression === 'none' ? [] : ['-c']), source, file])
    return file
  }
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, file, String(VIRTUAL_SIZE)])
  await qemuIo(file, IO_COMMANDS)
  if (v.compression !== 'none') {
    // compressed writes must cover whole clusters
    const cluster = Number(/cluster_size=(\d+)/.exec(options)![1])
    await qemuIo(file, [`write -c -P 0x66 ${4 * 1024 * 1024} ${cluster}`, `write -c -P 0x77 ${6 * 1024 * 1024} ${cluster}`])
  }
  if (v.content === 'snapshot') {
    await execa('qemu-img', ['snapshot', '-c', 'before', file])
    await qemuIo(file, ['write -P 0x99 0 300000', 'write -z 1M 64k'])
  }
  if (v.content === 'dirty') {
    // what a crash with lazy refcounts leaves behind: the dirty bit set, refcounts stale
    await qemuIo(file, ['write -P 0xab 65536 200000'])
    const fh = await open(file, 'r+')
    try {
      const bit = Buffer.alloc(1)
      await fh.read(bit, 0, 1, 79)
      await fh.write(Buffer.from([bit[0]! | 1]), 0, 1, 79)
    } finally {
      await fh.close()
    }
    const {stdout} = await execa('qemu-img', ['info', '--output=json', '-U', file])
    if (!JSON.parse(stdout)['dirty-flag']) throw new Error(`${file}: expected the dirty flag to be set`)
  }
  return file
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function expectedSha(file: string, dir: string): Promise<string> {
  const raw = join(dir, 'expected.raw')
  await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw])
  try {
    return await sha256File(raw)
  } finally {
    await rm(raw, {force: true})
  }
}

async function setBytes(file: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    await fh.write(bytes, 0, bytes.length, offset)
  } finally {
    await fh.close()
  }
}

/** Images the driver must refuse, each with its errno (as loopfmt's exit code) and message. */
async function makeRefused(dir: string): Promise<BuiltImages['refused']> {
  const out: BuiltImages['refused'] = []
  const create = async (name: string, args: string[]) => {
    const file = join(dir, `${name}.qcow2`)
    // LUKS creation times its PBKDF on the thread CPU clock and gives up ("Unable to get
    // accurate CPU usage") when that clock did not move, in about a third of runs on this
    // kind of VM and in runs of several under load: retry, spaced out
    for (let attempt = 1; ; attempt++) {
      const r = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, file, '4M'], {reject: false})
      if (r.exitCode === 0) return file
      if (attempt === 30 || !/accurate CPU usage/.test(r.stderr)) throw new Error(`qemu-img create ${name}: ${r.stderr}`)
      await setTimeout(100 * Math.min(attempt, 10))
    }
  }
  out.push({
    name: 'refuse-encrypted', exitCode: 6, errno: 'EOPNOTSUPP', message: 'encrypted images are not supported',
    file: await create('refuse-encrypted', ['--object', 'secret,id=s0,data=netboot', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=250']),
  })
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '4M'])
  out.push({
    name: 'refuse-backing', exitCode: 6, errno: 'EOPNOTSUPP', message: 'backing files are not supported',
    file: await create('refuse-backing', ['-b', join(dir, 'base.qcow2'), '-F', 'qcow2']),
  })
  out.push({
    name: 'refuse-datafile', exitCode: 6, errno: 'EOPNOTSUPP', message: 'external data files are not supported',
    file: await create('refuse-datafile', ['-o', `data_file=${join(dir, 'refuse-datafile.raw')}`]),
  })
  const unknown = await create('refuse-unknown-bit', [])
  await setBytes(unknown, 72, Buffer.from([0, 0, 0, 0, 0, 0, 0x04, 0]))
  out.push({name: 'refuse-unknown-bit', exitCode: 6, errno: 'EOPNOTSUPP', message: 'unknown incompatible features 0x400', file: unknown})
  const corrupt = await create('refuse-corrupt', [])
  await setBytes(corrupt, 79, Buffer.from([0x02]))
  out.push({name: 'refuse-corrupt', exitCode: 7, errno: 'EUCLEAN', message: 'image is marked corrupt', file: corrupt})
  const magic = await create('refuse-magic', [])
  await setBytes(magic, 0, Buffer.from('QFI\0'))
  out.push({name: 'refuse-magic', exitCode: 5, errno: 'EINVAL', message: 'not a qcow2 image (bad magic)', file: magic})
  // L1 table past the end of the file: keep only the first cluster (the header)
  const truncated = await create('refuse-truncated-l1', ['-o', 'cluster_size=65536'])
  const fh = await open(truncated, 'r+')
  await fh.truncate(65536)
  await fh.close()
  out.push({name: 'refuse-truncated-l1', exitCode: 5, errno: 'EINVAL', message: 'past end of file', file: truncated})
  return out
}

/**
 * Valid headers over broken tables, each broken in its first entry so that the first read
 * meets it: an L1 entry far past the end of the file, an unaligned data cluster, a compressed
 * cluster past the end of the file.
 */
async function makeCorrupt(dir: string): Promise<CorruptVariant[]> {
  const out: CorruptVariant[] = []
  const data = join(dir, 'corrupt-source.raw')
  await writeFile(data, Buffer.alloc(1024 * 1024, 'netboot corrupt tables '))
  const make = async (name: string, compress: boolean, edit: (l1Offset: number, l2Offset: number) => Promise<void>, message: string) => {
    const file = join(dir, `${name}.qcow2`)
    await execa('qemu-img', ['convert', '-q', ...(compress ? ['-c'] : []), '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', data, file])
    const fh = await open(file, 'r')
    const buf = Buffer.alloc(8)
    await fh.read(buf, 0, 8, 40)
    const l1Offset = Number(buf.readBigUInt64BE())
    await fh.read(buf, 0, 8, l1Offset)
    const l2Offset = Number(buf.readBigUInt64BE() & 0x00fffffffffffe00n)
    await fh.close()
    await edit(l1Offset, l2Offset)
    out.push({name, file, message})
  }
  const be64 = (x: bigint) => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(x)
    return b
  }
  await make('corrupt-l1-past-eof', false, (l1) => setBytes(join(dir, 'corrupt-l1-past-eof.qcow2'), l1, be64((1n << 63n) | 0x00fffffffffffe00n)),
    'L2 table offset 0xfffffffffffe00 unaligned or past end of file')
  await make('corrupt-data-unaligned', false, async (_l1, l2) => {
    const file = join(dir, 'corrupt-data-unaligned.qcow2')
    const fh = await open(file, 'r')
    const entry = Buffer.alloc(8)
    await fh.read(entry, 0, 8, l2)
    await fh.close()
    await setBytes(file, l2, be64(entry.readBigUInt64BE() + 0x200n))
  }, 'unaligned')
  // compressed descriptor for 64 KiB clusters: host offset in bits 0..53, all ones = past EOF
  await make('corrupt-compressed-past-eof', true, (_l1, l2) => setBytes(join(dir, 'corrupt-compressed-past-eof.qcow2'), l2, be64((1n << 62n) | ((1n << 54n) - 1n))),
    'past end of file')
  await rm(data)
  return out
}

/** Builds every image into `dir` and computes the expected contents. */
export async function buildImages(dir: string): Promise<BuiltImages> {
  await rm(dir, {recursive: true, force: true})
  await mkdir(dir, {recursive: true})
  const source = join(dir, 'source.raw')
  await writeSource(source)
  const good: BuiltImages['good'] = []
  for (const v of variants()) {
    const file = await makeVariant(dir, source, v)
    good.push({...v, file, sha256: await expectedSha(file, dir)})
  }
  await rm(source)
  const refused = await makeRefused(dir)
  const corrupt = await makeCorrupt(dir)
  await writeFile(join(dir, 'expected.json'), JSON.stringify({good, refused, corrupt}, null, 2))
  return {dir, good, refused, corrupt}
}
