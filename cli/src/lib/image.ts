/**
 * Root images: a root file system (the built-in demo root, a directory, or a tarball) becomes an
 * ext4 file system made by `mkfs.ext4 -d` (no loop mount, no root needed on the host), which
 * becomes a qcow2 image by `qemu-img convert`. An existing qcow2 image is checked (the header
 * checks the kernel driver makes) and published as is.
 *
 * Stages: stage the tree → describe it (sizes, digest) → mkfs.ext4 → pin metadata (debugfs)
 * → convert → check the result's header.
 *
 * Reproducible: the same tree and SOURCE_DATE_EPOCH give the same bytes. mkfs.ext4 gets a UUID
 * and directory hash seed derived from the tree's digest and a fake clock; every inode's times
 * and owner are then pinned with debugfs (mkfs copies ctime and atime from the staging files,
 * which no tool can set).
 */
import {spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream, existsSync, type Stats} from 'node:fs'
import {
  chmod,
  copyFile,
  link,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  statfs,
  symlink,
  writeFile,
} from 'node:fs/promises'
import {basename, dirname, join, posix, relative, resolve} from 'node:path'
import {pipeline} from 'node:stream/promises'
import {createGunzip} from 'node:zlib'
import * as tar from 'tar-stream'

import {PACKAGE_ROOT} from './config.js'
import {NetbootError, usageError} from './errors.js'
import {run} from './exec.js'
import {removeOnInterrupt} from './interrupt.js'
import type {RunContext} from './log.js'
import {checkQcow2File, describeQcow2, looksLikeQcow2, type Qcow2Header} from './qcow2-header.js'

export type Compression = 'none' | 'deflate' | 'zstd'
export type ImageFormat = 'qcow2' | 'raw'
export type SourceKind = 'demo' | 'directory' | 'tarball' | 'qcow2'

export const DEFAULT_CLUSTER_SIZE = 65_536
/**
 * Compressed images default to 32 KiB clusters: a random 4 KiB read decompresses a whole
 * cluster, and against 64 KiB the bench measured 1.8x the random-read IOPS for 1.8 % more
 * image and 6 % less sequential throughput (bench/results/2026-11-26.md).
 */
export const DEFAULT_COMPRESSED_CLUSTER_SIZE = 32_768
export const MIN_CLUSTER_SIZE = 512
export const MAX_CLUSTER_SIZE = 2 * 1024 * 1024
/** The ext4 label; /init does not depend on it but it identifies our images. */
export const ROOT_LABEL = 'netboot-root'
/** Where the demo root's own files live in the repository. */
export const DEMO_ROOT_DIR = join(PACKAGE_ROOT, 'initramfs', 'demo-root')
export const DEMO_CHECKSUMS = 'etc/netboot-demo/SHA256SUMS'

const MiB = 1024 * 1024
const BLOCK = 4096
/** The smallest file system we make: mkfs needs room for its own metadata. */
const MIN_EXT4_BYTES = 8 * MiB
/** Free space added on top of the content (directories grow, metadata, reserved blocks). */
const HEADROOM = 1.3

export interface ImageOptions {
  /** "demo", a directory, a tarball (.tar, .tar.gz/.tgz, .tar.xz, .tar.zst) or a .qcow2 image. */
  source: string
  /** Output file. */
  out: string
  format?: ImageFormat
  compression?: Compression
  clusterSize?: number
  /** Size of the ext4 file system in MiB; default: content + 30 %, at least 8 MiB. */
  sizeMiB?: number
  /** Timestamp of every file and of the file system (default $SOURCE_DATE_EPOCH or 0). */
  sourceDateEpoch?: number
  /** busybox-static binary for the demo root (default /bin/busybox). */
  busybox?: string
}

export interface ImageResult {
  path: string
  format: ImageFormat
  source: SourceKind
  /** Bytes of the output file (what the client downloads). */
  size: number
  sha256: string
  /** Size of the disk the client sees (the ext4 file system). */
  virtualSize: number
  compression: Compression
  clusterSize?: number
  /** Inodes in the root tree (files, directories, links, devices). */
  files?: number
  /** The checked header of a qcow2 output. */
  header?: Qcow2Header
  description: string
}

/** Accepts the CLI's and the config file's spellings ("zlib" is qemu-img's name for deflate). */
export function parseCompression(value: string): Compression {
  if (value === 'none' || value === 'deflate' || value === 'zstd') return value
  if (value === 'zlib') return 'deflate'
  throw usageError(`bad compression "${value}": use none, deflate or zstd`)
}

/** The cluster size when none is given: smaller for compressed images (see above). */
export function defaultClusterSize(compression: Compression): number {
  return compression === 'none' ? DEFAULT_CLUSTER_SIZE : DEFAULT_COMPRESSED_CLUSTER_SIZE
}

export function checkClusterSize(size: number): number {
  if (!Number.isInteger(size) || size < MIN_CLUSTER_SIZE || size > MAX_CLUSTER_SIZE || (size & (size - 1)) !== 0) {
    throw usageError(`bad cluster size ${size}: use a power of two from ${MIN_CLUSTER_SIZE} to ${MAX_CLUSTER_SIZE} (2M)`)
  }
  return size
}

/** Parses "64k", "2M", "65536". */
export function parseSize(value: string): number {
  const m = /^(\d+)\s*([kKmM]?)[iI]?[bB]?$/.exec(value.trim())
  if (!m) throw usageError(`bad size "${value}": use bytes or a k/M suffix, e.g. 64k`)
  const mult = m[2] === '' ? 1 : m[2].toLowerCase() === 'k' ? 1024 : MiB
  return Number(m[1]) * mult
}

export function sourceDateEpoch(): number {
  const env = process.env.SOURCE_DATE_EPOCH
  if (env === undefined || env === '') return 0
  if (!/^\d+$/.test(env)) throw usageError(`bad SOURCE_DATE_EPOCH "${env}": must be seconds since 1970`)
  return Number(env)
}

/** What kind of source a --source value names. */
export async function classifySource(source: string): Promise<SourceKind> {
  if (source === 'demo') return 'demo'
  let st
  try {
    st = await stat(source)
  } catch {
    throw usageError(`image source "${source}" does not exist`, ['use "demo", a root directory, a root tarball or a qcow2 image'])
  }
  if (st.isDirectory()) return 'directory'
  if (!st.isFile()) throw usageError(`image source "${source}" is neither a directory nor a file`)
  if (await looksLikeQcow2(source)) return 'qcow2'
  if (/\.(tar|tar\.gz|tgz|tar\.xz|txz|tar\.zst|tzst)$/.test(source)) return 'tarball'
  throw usageError(`image source "${source}" is not a qcow2 image and not a tarball (.tar, .tar.gz, .tar.xz, .tar.zst)`)
}

// ---------------------------------------------------------------------------------------------
// Staging

/** One inode of the staged tree, with the owner it must have in the image. */
interface TreeEntry {
  /** Path inside the root, "/" for the root itself. */
  path: string
  type: 'dir' | 'file' | 'symlink' | 'char' | 'block' | 'fifo'
  mode: number
  uid: number
  gid: number
  size: number
  /** Devices and fifos are made in the image by debugfs: files cannot be staged without root. */
  devMajor?: number
  devMinor?: number
}

interface Staged {
  dir: string
  /** Special files that only exist in the image (created by debugfs after mkfs). */
  specials: TreeEntry[]
  /** Owners to set in the image, when they differ from the staging files' owners. */
  owners: Map<string, {uid: number; gid: number}>
  /** Set every owner to root (the demo root, staged by whoever runs netboot). */
  allRoot: boolean
}

/** Lays out the demo root: busybox-static, its applet links, the files from initramfs/demo-root. */
export async function stageDemoRoot(dir: string, busybox = '/bin/busybox'): Promise<void> {
  if (!existsSync(busybox)) {
    throw new NetbootError(`${busybox} is missing: the demo root is made of busybox-static`, {
      suggestions: ['apt-get install busybox-static'],
    })
  }
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'run', 'root', 'mnt', 'var/log']) {
    await mkdir(join(dir, d), {recursive: true})
  }
  await chmod(join(dir, 'tmp'), 0o1777)
  await chmod(join(dir, 'root'), 0o700)
  await copyTree(DEMO_ROOT_DIR, dir)
  await copyFile(busybox, join(dir, 'bin', 'busybox'))
  await chmod(join(dir, 'bin', 'busybox'), 0o755)

  // busybox knows where each applet belongs; our own files (sbin/init) win over applets.
  const {stdout} = await capture(busybox, ['--list-full'])
  for (const applet of stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (applet.includes('..') || applet.startsWith('/')) continue
    const at = join(dir, applet)
    if (await exists(at)) continue
    await mkdir(dirname(at), {recursive: true})
    await symlink('/bin/busybox', at)
  }

  // Data with known content spread over many clusters, checked in the guest by sha256sum -c.
  await writeFile(join(dir, 'etc/netboot-demo/pattern.bin'), demoPattern(1 * MiB))
  await writeChecksums(dir, DEMO_CHECKSUMS)
}

/** Deterministic pseudo-random bytes (a sha256 chain): incompressible, reproducible. */
export function demoPattern(bytes: number): Buffer {
  const out = Buffer.alloc(bytes)
  let block = createHash('sha256').update('netboot-demo-pattern').digest()
  for (let off = 0; off < bytes; off += block.length) {
    block.copy(out, off)
    block = createHash('sha256').update(block).digest()
  }
  return out
}

/** Writes "<sha256>  <path>" for every regular file of the tree (paths relative to its root). */
export async function writeChecksums(root: string, listPath: string): Promise<number> {
  const lines: string[] = []
  for (const rel of (await walk(root)).filter((r) => r !== '' && r !== listPath)) {
    const st = await lstat(join(root, rel))
    if (!st.isFile()) continue
    lines.push(`${await sha256File(join(root, rel))}  ${rel}`)
  }
  await mkdir(dirname(join(root, listPath)), {recursive: true})
  await writeFile(join(root, listPath), lines.join('\n') + '\n')
  return lines.length
}

async function copyTree(from: string, to: string): Promise<void> {
  for (const rel of await walk(from)) {
    if (rel === '') continue
    const src = join(from, rel)
    const dst = join(to, rel)
    const st = await lstat(src)
    if (st.isDirectory()) {
      await mkdir(dst, {recursive: true})
      await chmod(dst, st.mode & 0o7777)
    } else if (st.isSymbolicLink()) {
      await rm(dst, {force: true})
      await symlink(await readlink(src), dst)
    } else if (st.isFile()) {
      await copyFile(src, dst)
      await chmod(dst, st.mode & 0o7777)
    }
  }
}

/** Every path under root, relative, sorted, parents before children ("" is the root). */
async function walk(root: string): Promise<string[]> {
  const out: string[] = ['']
  const visit = async (rel: string) => {
    const names = (await readdir(join(root, rel))).sort()
    for (const name of names) {
      const r = rel === '' ? name : `${rel}/${name}`
      out.push(r)
      const st = await lstat(join(root, r))
      if (st.isDirectory()) await visit(r)
    }
  }
  await visit('')
  return out
}

/**
 * Unpacks a root tarball into `dir` without root: regular files, directories, symlinks and hard
 * links are written; devices and fifos, and the owners of everything, are recorded and applied to
 * the image by debugfs. Entries that would land outside `dir` are refused.
 */
export async function extractTarball(tarball: string, dir: string): Promise<{specials: TreeEntry[]; owners: Map<string, {uid: number; gid: number}>}> {
  const specials: TreeEntry[] = []
  const owners = new Map<string, {uid: number; gid: number}>()
  const dirModes: Array<[string, number]> = []
  const extract = tar.extract()

  const done = (async () => {
    for await (const entry of extract) {
      const h = entry.header
      const rel = safeTarPath(h.name)
      if (rel === undefined) {
        entry.resume()
        throw usageError(`tarball ${tarball}: entry "${h.name}" points outside the root`)
      }
      const dst = rel === '' ? dir : join(dir, rel)
      const path = rel === '' ? '/' : `/${rel}`
      const mode = (h.mode ?? 0o644) & 0o7777
      owners.set(path, {uid: h.uid ?? 0, gid: h.gid ?? 0})
      if (rel !== '') await mkdir(dirname(dst), {recursive: true})
      switch (h.type) {
        case 'directory':
          await mkdir(dst, {recursive: true})
          dirModes.push([dst, mode])
          entry.resume()
          break
        case 'file':
        case 'contiguous-file':
          await rm(dst, {force: true, recursive: true})
          await pipeline(entry, createWriteStream(dst, {mode: 0o600}))
          await chmod(dst, mode)
          break
        case 'symlink':
          await rm(dst, {force: true, recursive: true})
          await symlink(h.linkname ?? '', dst)
          entry.resume()
          break
        case 'link': {
          const target = safeTarPath(h.linkname ?? '')
          if (target === undefined || target === '') throw usageError(`tarball ${tarball}: hard link "${h.name}" points outside the root`)
          await rm(dst, {force: true, recursive: true})
          await link(join(dir, target), dst)
          entry.resume()
          break
        }
        case 'character-device':
        case 'block-device':
        case 'fifo':
          specials.push({
            path,
            type: h.type === 'fifo' ? 'fifo' : h.type === 'block-device' ? 'block' : 'char',
            mode,
            uid: h.uid ?? 0,
            gid: h.gid ?? 0,
            size: 0,
            devMajor: h.devmajor ?? 0,
            devMinor: h.devminor ?? 0,
          })
          entry.resume()
          break
        default:
          entry.resume()
      }
    }
  })()

  const input = createReadStream(tarball)
  const head = await readHead(tarball, 6)
  let decompressed: NodeJS.ReadableStream
  if (head[0] === 0x1f && head[1] === 0x8b) {
    decompressed = input.pipe(createGunzip())
  } else if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    decompressed = decompressWith('xz', tarball)
  } else if (head.readUInt32LE(0) === 0xfd2fb528) {
    decompressed = decompressWith('zstd', tarball)
  } else {
    decompressed = input
  }
  try {
    await Promise.all([pipeline(decompressed, extract), done])
  } catch (err) {
    if (err instanceof NetbootError) throw err
    throw usageError(`cannot read tarball ${tarball}: ${(err as Error).message}`)
  }
  // Directory modes last: a read-only directory would have stopped its own extraction.
  for (const [d, mode] of dirModes.reverse()) await chmod(d, mode)
  return {specials, owners}
}

/** A tar member name as a path relative to the root, or undefined if it escapes. */
export function safeTarPath(name: string): string | undefined {
  // Normalise as a relative path: an absolute one would silently swallow leading "..".
  const norm = posix.normalize(name.replace(/^\/+/, '') || '.')
  if (norm === '..' || norm.startsWith('../')) return undefined
  return norm === '.' || norm === './' ? '' : norm.replace(/\/+$/, '')
}

function decompressWith(tool: 'xz' | 'zstd', file: string): NodeJS.ReadableStream {
  const child = spawn(tool, ['-dc', file], {stdio: ['ignore', 'pipe', 'inherit']})
  child.on('error', () => {})
  return child.stdout
}

async function readHead(file: string, n: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of createReadStream(file, {start: 0, end: n - 1})) chunks.push(c as Buffer)
  const buf = Buffer.concat(chunks)
  return buf.length >= n ? buf : Buffer.concat([buf, Buffer.alloc(n - buf.length)])
}

// ---------------------------------------------------------------------------------------------
// Describing the tree

interface TreeSummary {
  entries: TreeEntry[]
  /** Bytes the content needs in 4 KiB blocks (files, directories, long symlinks). */
  blockBytes: number
  /** sha256 over paths, types, modes, owners and contents: the identity of the tree. */
  digest: string
}

async function describeTree(staged: Staged): Promise<TreeSummary> {
  const entries: TreeEntry[] = []
  const hash = createHash('sha256')
  let blockBytes = 0
  const seen = new Set<string>() // hard links share blocks
  for (const rel of await walk(staged.dir)) {
    const path = rel === '' ? '/' : `/${rel}`
    if (/["\n\r\\]/.test(path)) {
      throw usageError(`root file name ${JSON.stringify(path)} has a quote, backslash or newline, which debugfs cannot address`)
    }
    const st = await lstat(join(staged.dir, rel))
    const owner = staged.allRoot ? {uid: 0, gid: 0} : (staged.owners.get(path) ?? {uid: st.uid, gid: st.gid})
    const type = inodeType(st)
    if (type === undefined) continue // sockets: mkfs.ext4 -d skips them too
    const entry: TreeEntry = {path, type, mode: st.mode & 0o7777, uid: owner.uid, gid: owner.gid, size: st.size}
    entries.push(entry)
    let content = ''
    if (type === 'file') {
      const id = `${st.dev}:${st.ino}`
      if (!seen.has(id)) blockBytes += roundUp(st.size, BLOCK)
      seen.add(id)
      content = await sha256File(join(staged.dir, rel))
    } else if (type === 'symlink') {
      content = await readlink(join(staged.dir, rel))
      if (content.length >= 60) blockBytes += BLOCK // short targets live in the inode
    } else if (type === 'dir') {
      blockBytes += roundUp(Math.max(st.size, BLOCK), BLOCK)
    } else {
      content = `${st.rdev}`
    }
    hash.update(`${path}\0${type}\0${entry.mode}\0${entry.uid}\0${entry.gid}\0${content}\n`)
  }
  for (const s of staged.specials) {
    entries.push(s)
    hash.update(`${s.path}\0${s.type}\0${s.mode}\0${s.uid}\0${s.gid}\0${s.devMajor}:${s.devMinor}\n`)
  }
  return {entries, blockBytes, digest: hash.digest('hex')}
}

function inodeType(st: Stats): TreeEntry['type'] | undefined {
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFile()) return 'file'
  if (st.isCharacterDevice()) return 'char'
  if (st.isBlockDevice()) return 'block'
  if (st.isFIFO()) return 'fifo'
  return undefined
}

/** ext4 size for content needing `blockBytes`: +30 %, at least 8 MiB, whole MiB. */
export function ext4SizeFor(blockBytes: number, inodes: number): number {
  // Inode tables (256 B per inode at the default 16 KiB per inode) and group metadata.
  const metadata = inodes * 256 + MiB
  return Math.max(MIN_EXT4_BYTES, roundUp(Math.ceil(blockBytes * HEADROOM) + metadata, MiB))
}

/** Inode count: the default ratio (one per 16 KiB), or more when the tree has many small files. */
function inodeCountFor(sizeBytes: number, entries: number): number {
  return Math.max(Math.floor(sizeBytes / 16_384), Math.ceil(entries * HEADROOM) + 64)
}

/** A UUID (version 4 layout) derived from a digest, so equal trees get equal file systems. */
export function uuidFrom(digest: string, purpose: string): string {
  const b = createHash('sha256').update(`${purpose}\0${digest}`).digest()
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const h = b.subarray(0, 16).toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`
}

// ---------------------------------------------------------------------------------------------
// mkfs, debugfs, qemu-img

/** Whether `err` (ours, a tool's or Node's) comes from a full disk. */
function isNoSpace(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC' || (err instanceof Error && /No space left on device/.test(err.message))
}

/** One message for a full disk under the output, whichever step (staging, mkfs, qemu-img) hit it. */
function noSpaceError(out: string, cause: unknown): NetbootError {
  return new NetbootError(`no space left on device writing ${out}`, {
    cause,
    suggestions: [`free some space in ${dirname(out)}, or write elsewhere with --out (or "output" in netboot.config.json)`],
  })
}

async function makeExt4(ctx: RunContext, staged: Staged, tree: TreeSummary, file: string, epoch: number, sizeMiB?: number): Promise<number> {
  let size = sizeMiB ? sizeMiB * MiB : ext4SizeFor(tree.blockBytes, tree.entries.length)
  const env = {...process.env, E2FSPROGS_FAKE_TIME: fakeClock(epoch)}
  // A computed size can fall short for trees of many tiny files; grow and retry. An explicit size is final.
  for (let attempt = 0; ; attempt++) {
    await rm(file, {force: true})
    const args = [
      '-q', '-F',
      '-t', 'ext4',
      '-T', 'default',
      '-L', ROOT_LABEL,
      '-U', uuidFrom(tree.digest, 'ext4-uuid'),
      '-E', `root_owner=0:0,hash_seed=${uuidFrom(tree.digest, 'ext4-hash-seed')}`,
      // The image is only ever mounted read-only below an overlay: a journal would be dead weight.
      '-O', '^has_journal',
      '-N', String(inodeCountFor(size, tree.entries.length)),
      '-d', staged.dir,
      file,
      `${size / 1024}k`,
    ]
    const r = await run(ctx, 'mkfs.ext4', args, {env, allowFailure: true})
    if (r.exitCode === 0) break
    // "No space left on device" also means a too small image; only a full disk is not fixed by growing it.
    if (/No space left on device/.test(r.all)) {
      const fs = await statfs(dirname(file))
      if (fs.bavail * fs.bsize < size) throw Object.assign(new Error(`mkfs.ext4: ${lastLines(r.all, 1)}`), {code: 'ENOSPC'})
    }
    const full = /no space|could not allocate|not enough space|No free space/i.test(r.all)
    if (!full || sizeMiB || attempt >= 3) {
      throw new NetbootError(`mkfs.ext4 failed for ${staged.dir} (${size / MiB} MiB): ${lastLines(r.all, 3)}`, {
        suggestions: full ? ['give a larger size with --size'] : [`full output in ${ctx.log.path}`],
      })
    }
    size = roundUp(Math.ceil(size * 1.5), MiB)
  }
  await pinMetadata(ctx, staged, tree, file, epoch)
  await run(ctx, 'e2fsck', ['-f', '-n', file], {env})
  return size
}

/**
 * The clock e2fsprogs tools run with: E2FSPROGS_FAKE_TIME=0 means "no fake time", so the epoch
 * 0 becomes 1 second (the superblock's times; inode times are pinned to the epoch itself).
 */
function fakeClock(epoch: number): string {
  return String(Math.max(epoch, 1))
}

/**
 * Creates the special files and pins owners and timestamps of every inode with one debugfs
 * batch: mkfs.ext4 -d copies ctime/atime of the staging files (the time they were written) and
 * their owners (whoever ran netboot), neither of which belongs in a reproducible root.
 */
async function pinMetadata(ctx: RunContext, staged: Staged, tree: TreeSummary, file: string, epoch: number): Promise<void> {
  const cmds: string[] = []
  const q = (p: string) => `"${p}"`
  for (const s of staged.specials) {
    const kind = s.type === 'fifo' ? 'p' : s.type === 'block' ? `b ${s.devMajor} ${s.devMinor}` : `c ${s.devMajor} ${s.devMinor}`
    // debugfs's mknod takes a name in the current directory, not a path.
    cmds.push(`cd ${q(posix.dirname(s.path))}`, `mknod ${q(posix.basename(s.path))} ${kind}`, 'cd /')
    const typeBits = s.type === 'fifo' ? 0o010000 : s.type === 'block' ? 0o060000 : 0o020000
    cmds.push(`sif ${q(s.path)} mode 0${(typeBits | s.mode).toString(8)}`)
  }
  for (const e of tree.entries) {
    cmds.push(`sif ${q(e.path)} uid ${e.uid}`, `sif ${q(e.path)} gid ${e.gid}`)
  }
  // lost+found is made by mkfs itself, with the fake clock.
  for (const path of [...tree.entries.map((e) => e.path), '/lost+found']) {
    for (const field of ['atime', 'ctime', 'mtime', 'crtime']) cmds.push(`sif ${q(path)} ${field} @${epoch}`)
  }
  const batch = `${file}.debugfs`
  await writeFile(batch, cmds.join('\n') + '\n')
  try {
    // Not through run(): debugfs echoes every command, which would bury the log.
    ctx.log.write(`$ debugfs -w -f ${batch} ${file}   (${cmds.length} commands: owners, times, special files)`)
    const r = await capture('debugfs', ['-w', '-f', batch, file], {E2FSPROGS_FAKE_TIME: fakeClock(epoch)})
    // debugfs reports per-command errors on stderr but exits 0.
    const errors = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('debugfs '))
    if (errors.length > 0) throw new NetbootError(`debugfs could not finish the image: ${errors.slice(0, 3).join('; ')}`)
  } finally {
    await rm(batch, {force: true})
  }
}

async function convertToQcow2(ctx: RunContext, raw: string, out: string, compression: Compression, clusterSize: number): Promise<void> {
  const opts = [`cluster_size=${clusterSize}`]
  if (compression !== 'none') opts.push(`compression_type=${compression === 'zstd' ? 'zstd' : 'zlib'}`)
  const args = ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', opts.join(',')]
  if (compression !== 'none') args.push('-c')
  await run(ctx, 'qemu-img', [...args, raw, out])
}

// ---------------------------------------------------------------------------------------------
// The pipeline

/** Builds a root image. The output appears atomically (complete, or not at all). */
export async function buildImage(ctx: RunContext, opts: ImageOptions): Promise<ImageResult> {
  const format = opts.format ?? 'qcow2'
  const compression = opts.compression ?? 'none'
  const clusterSize = checkClusterSize(opts.clusterSize ?? defaultClusterSize(compression))
  const epoch = opts.sourceDateEpoch ?? sourceDateEpoch()
  const out = resolve(opts.out)
  const source = await classifySource(opts.source)
  await mkdir(dirname(out), {recursive: true})

  if (source === 'qcow2') {
    if (format !== 'qcow2') throw usageError(`--source ${opts.source} is a qcow2 image: it can only be published as qcow2`)
    const header = await checkQcow2File(opts.source)
    ctx.log.write(`${opts.source}: ${describeQcow2(header)}; the kernel driver accepts it`)
    const tmp = `${out}.tmp-${process.pid}`
    if (resolve(opts.source) !== out) {
      const forget = removeOnInterrupt(tmp)
      try {
        await copyFile(opts.source, tmp)
        await rename(tmp, out)
      } catch (err) {
        // A full disk must not leave a partial copy next to the output.
        await rm(tmp, {force: true})
        throw isNoSpace(err) ? noSpaceError(out, err) : err
      } finally {
        forget()
      }
    }
    return {
      path: out,
      format,
      source,
      size: (await stat(out)).size,
      sha256: await sha256File(out),
      virtualSize: Number(header.virtualSize),
      compression: header.compressionType === 'zstd' ? 'zstd' : compression,
      clusterSize: header.clusterSize,
      header,
      description: `${describeQcow2(header)} (${basename(opts.source)}, checked)`,
    }
  }

  const work = await mkdtemp(join(dirname(out), `.${basename(out)}.tmp-`))
  // Ctrl-C while mkfs.ext4 or qemu-img write a large image: remove the staging directory too.
  const forgetWork = removeOnInterrupt(work)
  try {
    const root = join(work, 'root')
    await mkdir(root)
    const staged: Staged = {dir: root, specials: [], owners: new Map(), allRoot: source === 'demo'}
    if (source === 'demo') {
      await stageDemoRoot(root, opts.busybox)
    } else if (source === 'directory') {
      staged.dir = resolve(opts.source)
    } else {
      const t = await extractTarball(opts.source, root)
      staged.specials = t.specials
      staged.owners = t.owners
    }
    if (source !== 'directory') await pinStagingTimes(root, epoch)
    const tree = await describeTree(staged)
    ctx.log.write(`image: ${tree.entries.length} inodes, ${tree.blockBytes} bytes of content, digest ${tree.digest}`)

    const ext4 = join(work, 'root.ext4')
    const virtualSize = await makeExt4(ctx, staged, tree, ext4, epoch, opts.sizeMiB)
    let header: Qcow2Header | undefined
    const built = join(work, 'out')
    if (format === 'qcow2') {
      await convertToQcow2(ctx, ext4, built, compression, clusterSize)
      header = await checkQcow2File(built)
    } else {
      await rename(ext4, built)
    }
    await rename(built, out)
    const size = (await stat(out)).size
    const what = format === 'qcow2' ? `qcow2, ${clusterSize / 1024} KiB clusters, compression ${compression}` : 'raw'
    return {
      path: out,
      format,
      source,
      size,
      sha256: await sha256File(out),
      virtualSize,
      compression: format === 'qcow2' ? compression : 'none',
      clusterSize: format === 'qcow2' ? clusterSize : undefined,
      files: tree.entries.length,
      header,
      description: `ext4 ${virtualSize / MiB} MiB (${tree.entries.length} inodes) as ${what}`,
    }
  } catch (err) {
    throw isNoSpace(err) ? noSpaceError(out, err) : err
  } finally {
    await rm(work, {recursive: true, force: true})
    forgetWork()
  }
}

/** mkfs copies mtimes from the staging tree: set them (debugfs pins them again anyway). */
async function pinStagingTimes(root: string, epoch: number): Promise<void> {
  const paths = await walk(root)
  for (const rel of paths.reverse()) await lutimes(join(root, rel), epoch, epoch)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch {
    return false
  }
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' / ')
}

/** Runs a tool quietly and collects its output; a failure to start or a non-zero exit throws. */
function capture(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{stdout: string; stderr: string}> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...env}})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', (err) => rej(new NetbootError(`cannot run ${cmd}: ${err.message}`, {suggestions: ['run `netboot doctor --install`']})))
    child.on('close', (code) =>
      code === 0 ? res({stdout, stderr}) : rej(new NetbootError(`${cmd} exited with ${code}: ${lastLines(stderr, 3)}`)),
    )
  })
}

/** Reads the demo root's checksum list back (tests, and `netboot image` output). */
export async function readChecksums(root: string): Promise<Map<string, string>> {
  const text = await readFile(join(root, DEMO_CHECKSUMS), 'utf8')
  return new Map(text.trim().split('\n').map((l) => {
    const [sum, path] = l.split(/ {2}/)
    return [path, sum] as [string, string]
  }))
}

/** For log lines: a path relative to the current directory when that is shorter. */
export function shortPath(p: string): string {
  const r = relative(process.cwd(), p)
  return r.length < p.length && !r.startsWith('..') ? r : p
}
