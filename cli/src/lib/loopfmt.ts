/**
 * Builds loopfmt (initramfs/loopfmt.c), the static attach tool of the initramfs, against the
 * uAPI headers of the patched kernel: its struct loop_config must have the series' file_fmt.
 *
 * Cache: $NETBOOT_CACHE/loopfmt/<key>/loopfmt, the key hashing the source, the kernel's
 * linux/loop.h, the compiler version and the flags.
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {copyFile, mkdir, readdir, readFile, stat} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {atomicDir, cacheKey, cacheRoot, entryPath, readEntry, touchEntry} from './cache.js'
import {PACKAGE_ROOT} from './config.js'
import {elfIsStatic, requireTools} from './doctor.js'
import {NetbootError} from './errors.js'
import {run} from './exec.js'
import type {RunContext} from './log.js'

export const LOOPFMT_SOURCE = join(PACKAGE_ROOT, 'initramfs', 'loopfmt.c')
/** -s: the initramfs budget is tight and nobody debugs the initramfs copy. */
export const LOOPFMT_CFLAGS = ['-static', '-O2', '-s', '-Wall', '-Wextra'] as const

export interface BuildLoopfmtOptions {
  /** uAPI include directory of the patched kernel (holds linux/loop.h), e.g. $NETBOOT_CACHE/kernel/<key>/include. */
  includeDir: string
  /** Also copy the binary to <outDir>/loopfmt. */
  outDir?: string
  /** Source file (default: the repository's initramfs/loopfmt.c). */
  source?: string
}

export interface LoopfmtBuild {
  /** The binary: <outDir>/loopfmt, or the cached copy when no outDir was given. */
  path: string
  cachePath: string
  key: string
  /** Whether the cache already had it. */
  cached: boolean
  bytes: number
  sha256: string
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex')

/**
 * Checks that `includeDir` holds the series' linux/loop.h and returns its text; the compiler's
 * own error for an unpatched header is correct but far from the cause.
 */
export async function readLoopHeader(includeDir: string): Promise<string> {
  const header = join(includeDir, 'linux', 'loop.h')
  if (!existsSync(header)) {
    throw new NetbootError(`no linux/loop.h under ${includeDir}: expected the uAPI headers of the built kernel (make headers_install)`, {
      exit: 2,
      suggestions: ['run `netboot kernel build`, which installs them into the kernel cache entry'],
    })
  }
  const text = await readFile(header, 'utf8')
  if (!/\bLO_FILE_FMT_QCOW2\b/.test(text) || !/\bfile_fmt\s*;/.test(text)) {
    throw new NetbootError(`${header} has no LO_FILE_FMT_QCOW2 / loop_config.file_fmt: these headers come from a kernel without the loop file-format series`, {
      exit: 2,
      suggestions: ['run `netboot kernel patch` and `netboot kernel build` first'],
    })
  }
  return text
}

export async function buildLoopfmt(ctx: RunContext, options: BuildLoopfmtOptions): Promise<LoopfmtBuild> {
  const includeDir = resolve(options.includeDir)
  const source = resolve(options.source ?? LOOPFMT_SOURCE)
  const header = await readLoopHeader(includeDir)
  await requireTools(['gcc', 'libc6-dev'])
  const compiler = (await run(ctx, 'gcc', ['-dumpfullversion'])).stdout.trim()
  const manifest = {
    what: 'loopfmt',
    source: sha256(await readFile(source)),
    loopHeader: sha256(header),
    compiler: `gcc ${compiler}`,
    cflags: LOOPFMT_CFLAGS,
  }
  const key = cacheKey(manifest)
  const dir = entryPath('loopfmt', key)
  const cachePath = join(dir, 'loopfmt')
  const cached = existsSync(cachePath)
  if (cached) {
    ctx.log.write(`loopfmt: reusing ${cachePath}`)
    await touchEntry(dir)
  } else {
    ctx.log.write(`loopfmt: building (${await whyNotCached(key, manifest)})`)
    await atomicDir(
      dir,
      async (tmp) => {
        await run(ctx, 'gcc', [...LOOPFMT_CFLAGS, `-I${includeDir}`, '-o', join(tmp, 'loopfmt'), source])
        await checkStatic(join(tmp, 'loopfmt'))
      },
      {kind: 'loopfmt', key, manifest},
    )
  }

  const binary = await readFile(cachePath)
  await checkStatic(cachePath, binary)
  let path = cachePath
  if (options.outDir) {
    await mkdir(options.outDir, {recursive: true})
    path = join(resolve(options.outDir), 'loopfmt')
    await copyFile(cachePath, path)
  }
  return {path, cachePath, key, cached, bytes: binary.length, sha256: sha256(binary)}
}

/** The initramfs has no dynamic loader: a dynamically linked loopfmt would fail as "not found". */
export async function checkStatic(path: string, data?: Buffer): Promise<void> {
  const buf = data ?? (await readFile(path))
  let isStatic: boolean
  try {
    isStatic = elfIsStatic(buf)
  } catch (err) {
    throw new NetbootError(`${path} is not a usable executable: ${(err as Error).message}`)
  }
  if (!isStatic) {
    throw new NetbootError(`${path} is dynamically linked; the initramfs has no dynamic loader`, {
      suggestions: ['install the static C library (Debian package libc6-dev) and rebuild'],
    })
  }
}

/** For the log: what differs from the most recent cached build, if there is one. */
async function whyNotCached(key: string, manifest: Record<string, unknown>): Promise<string> {
  const kindDir = join(cacheRoot(), 'loopfmt')
  if (!existsSync(kindDir)) return 'no cached build yet'
  let newest: {mtime: number; manifest: Record<string, unknown>} | undefined
  for (const name of await readdir(kindDir)) {
    if (name === key) continue
    const entry = await readEntry(join(kindDir, name))
    if (!entry) continue
    const mtime = (await stat(join(kindDir, name))).mtimeMs
    if (!newest || mtime > newest.mtime) newest = {mtime, manifest: entry.manifest as Record<string, unknown>}
  }
  if (!newest) return 'no cached build yet'
  const changed = Object.keys(manifest).filter((k) => JSON.stringify(manifest[k]) !== JSON.stringify(newest!.manifest[k]))
  return `changed since the last build: ${changed.join(', ') || 'nothing (entry missing)'}`
}

/**
 * The uAPI include directory of the most recently built patched kernel in the cache, for
 * commands run without --kernel-headers.
 */
export async function findKernelHeaders(): Promise<string | undefined> {
  const kernels = join(cacheRoot(), 'kernel')
  if (!existsSync(kernels)) return undefined
  let best: {dir: string; mtime: number} | undefined
  for (const name of await readdir(kernels)) {
    const include = join(kernels, name, 'include')
    const header = join(include, 'linux', 'loop.h')
    if (!existsSync(header)) continue
    if (!/\bLO_FILE_FMT_QCOW2\b/.test(await readFile(header, 'utf8'))) continue
    const mtime = (await stat(header)).mtimeMs
    if (!best || mtime > best.mtime) best = {dir: include, mtime}
  }
  return best?.dir
}
