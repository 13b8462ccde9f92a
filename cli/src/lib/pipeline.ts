/**
 * `netboot build`: the whole pipeline as named stages over one context, in the manner of mkosi's
 * build_image. Each stage reads what earlier stages left in the context and adds its own result:
 *
 *   kernel     buildKernel (cached by its inputs) or a prebuilt bzImage + include/ directory
 *   loopfmt    the attach tool, compiled against the kernel's uAPI headers (cached)
 *   initramfs  busybox + loopfmt + /init             -> <out>/http/initramfs.img
 *   image      demo root / dir / tarball / qcow2      -> <out>/http/root.qcow2 (or root.img)
 *   pxe        tftp/boot.ipxe, http/{vmlinuz,manifest.json}, pxe/ server configs
 *
 * Artifacts are written straight into their place in the PXE tree, so nothing is copied twice.
 * Every stage says whether it reused a cached result and why (or why not); the initramfs and the
 * image are rebuilt on every run (seconds, reproducible) and report whether the bytes changed
 * compared with the tree's previous manifest.
 */
import {existsSync} from 'node:fs'
import {mkdir, readFile, stat} from 'node:fs/promises'
import {join, relative, resolve} from 'node:path'
import type {ListrTask} from 'listr2'

import {formatBytes} from './cache.js'
import {NetbootError, usageError} from './errors.js'
import {sha256File, buildImage, checkClusterSize, classifySource, sourceDateEpoch, type Compression, type ImageFormat, type ImageResult} from './image.js'
import {buildInitramfs, type Compression as InitramfsCompression, type InitramfsResult} from './initramfs/index.js'
import {buildKernel} from './kernel.js'
import type {RunContext} from './log.js'
import {buildLoopfmt, checkStatic} from './loopfmt.js'
import {INITRAMFS_FILE, layoutPxeTree, MANIFEST_FILE, type Manifest, type PxeOptions, type PxeTree} from './pxe.js'

export type StageName = 'kernel' | 'loopfmt' | 'initramfs' | 'image' | 'pxe'

export interface PipelineOptions {
  /** Output directory (the PXE tree and netboot.log). */
  outDir: string
  /** Kernel spec for buildKernel: 6.1, 6.12, a tarball or a source directory. */
  kernel: string
  series?: string
  jobs?: number
  /**
   * A prebuilt kernel instead of building one: a directory with bzImage, include/ (uAPI
   * headers, needed unless `loopfmt` is given) and optionally .config or config.
   */
  kernelDir?: string
  /** A prebuilt static loopfmt instead of compiling one. */
  loopfmt?: string
  busybox?: string
  /** Default: zstd when the kernel's config has CONFIG_RD_ZSTD=y (or is unknown), else gzip. */
  initramfsCompression?: InitramfsCompression
  /** "demo", a root directory, a root tarball or a .qcow2 image. */
  imageSource: string
  imageFormat?: ImageFormat
  compression: Compression
  clusterSize?: number
  sizeMiB?: number
  /** Base URL of <out>/http as clients see it (default http://10.0.2.2:8080, QEMU). */
  httpBase?: string
  /** /init parameters written into the tree's command line (onfail, retries...). */
  params?: PxeOptions['params']
}

export interface Artifact {
  path: string
  sha256: string
  size: number
}

export interface StageReport {
  name: StageName
  /** One line: what the stage produced. */
  summary: string
  /** Whether a cached or previous result was reused (kernel, loopfmt), or the bytes are unchanged. */
  reused: boolean
  /** Why it was (or was not) reused. */
  reason: string
  ms: number
}

export interface KernelOutput {
  bzImage: string
  headers?: string
  config?: string
  /** Release string read from the bzImage header, e.g. "6.1.192+". */
  release?: string
  key?: string
}

/** The one context every stage reads and extends. */
export interface PipelineState {
  options: PipelineOptions
  outDir: string
  httpDir: string
  /** The tree's manifest before this build, to say whether artifacts changed. */
  previous?: Manifest
  kernel?: KernelOutput
  loopfmt?: {path: string; cached: boolean}
  initramfs?: InitramfsResult
  image?: ImageResult
  tree?: PxeTree
  stages: StageReport[]
}

export interface PipelineResult {
  outDir: string
  log: string
  httpBase: string
  cmdline: string
  kernelRelease?: string
  stages: StageReport[]
  /**
   * Every file of the tree by its path under outDir ("http/root.qcow2"), plus the two inputs
   * that live outside it: "bzImage" (the kernel build) and "loopfmt".
   */
  artifacts: Record<string, Artifact>
  totalMs: number
}

interface Stage {
  name: StageName
  title: string
  run(state: PipelineState, ctx: RunContext): Promise<Omit<StageReport, 'name' | 'ms'>>
}

/**
 * Reads the release string the kernel's boot header points at (Documentation/x86/boot.rst:
 * "HdrS" at 0x202, kernel_version at 0x20e is an offset from 0x200 to a NUL-terminated string).
 */
export function bzImageRelease(data: Buffer): string | undefined {
  if (data.length < 0x210 || data.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined
  const at = data.readUInt16LE(0x20e) + 0x200
  if (at >= data.length) return undefined
  const end = data.indexOf(0, at)
  const text = data.toString('latin1', at, end === -1 ? Math.min(data.length, at + 256) : end)
  return text.split(' ')[0] || undefined
}

/** Whether a kernel .config can unpack a zstd initramfs; undefined when there is no config to ask. */
export function configSupportsZstdInitrd(dotConfig: string | undefined): boolean | undefined {
  if (dotConfig === undefined) return undefined
  return /^CONFIG_RD_ZSTD=y$/m.test(dotConfig)
}

async function artifact(path: string): Promise<Artifact> {
  return {path, sha256: await sha256File(path), size: (await stat(path)).size}
}

async function readPrevious(httpDir: string): Promise<Manifest | undefined> {
  try {
    return JSON.parse(await readFile(join(httpDir, MANIFEST_FILE), 'utf8')) as Manifest
  } catch {
    return undefined
  }
}

/** "unchanged since the last build" / "changed" / "first build", from the previous manifest. */
function comparedWithPrevious(state: PipelineState, name: string, sha256: string): {reused: boolean; reason: string} {
  const before = state.previous?.files?.[name]?.sha256
  if (before === undefined) return {reused: false, reason: 'rebuilt (no earlier build in this output directory)'}
  if (before === sha256) return {reused: true, reason: 'rebuilt reproducibly: same bytes as the previous build'}
  return {reused: false, reason: 'rebuilt: differs from the previous build (inputs changed)'}
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`

export const STAGES: Stage[] = [
  {
    name: 'kernel',
    title: 'Kernel',
    async run(state, ctx) {
      const o = state.options
      if (o.kernelDir) {
        const dir = resolve(o.kernelDir)
        const bzImage = join(dir, 'bzImage')
        if (!existsSync(bzImage)) throw usageError(`--kernel-dir ${dir} has no bzImage`)
        const headers = existsSync(join(dir, 'include', 'linux', 'loop.h')) ? join(dir, 'include') : undefined
        const config = ['.config', 'config'].map((f) => join(dir, f)).find((f) => existsSync(f))
        const release = bzImageRelease(await readFile(bzImage))
        state.kernel = {bzImage, headers, config, release}
        return {summary: `prebuilt kernel ${release ?? '(unknown release)'} from ${dir}`, reused: true, reason: `prebuilt kernel directory ${dir} (--kernel-dir), nothing built`}
      }
      const r = await buildKernel(ctx, {kernel: o.kernel, series: o.series, jobs: o.jobs})
      if (!r.bzImage || !r.headers) throw new NetbootError(`kernel ${o.kernel}: the build left no bzImage or headers in ${r.dir}`)
      const release = bzImageRelease(await readFile(r.bzImage)) ?? r.version
      state.kernel = {bzImage: r.bzImage, headers: r.headers, config: r.config, release, key: r.key}
      return {
        summary: `kernel ${release} (${r.patches.length} patches), cache key ${r.key.slice(0, 12)}`,
        reused: r.reused,
        reason: r.reused ? `cached: ${r.reason}` : `built: ${r.reason}`,
      }
    },
  },
  {
    name: 'loopfmt',
    title: 'Attach tool (loopfmt)',
    async run(state, ctx) {
      if (state.options.loopfmt) {
        const path = resolve(state.options.loopfmt)
        if (!existsSync(path)) throw usageError(`loopfmt ${path} does not exist`)
        await checkStatic(path)
        state.loopfmt = {path, cached: true}
        return {summary: `prebuilt ${path}`, reused: true, reason: 'prebuilt binary given, nothing compiled'}
      }
      const headers = state.kernel?.headers
      if (!headers) {
        throw usageError(`the kernel has no uAPI headers (include/linux/loop.h) to build loopfmt against`, [
          'give a --kernel-dir that has include/ from `make headers_install`, or build the kernel with `netboot kernel build`',
        ])
      }
      const r = await buildLoopfmt(ctx, {includeDir: headers})
      state.loopfmt = {path: r.path, cached: r.cached}
      return {
        summary: `loopfmt ${formatBytes(r.bytes)}, cache key ${r.key.slice(0, 12)}`,
        reused: r.cached,
        reason: r.cached ? 'cached: same source, kernel header, compiler and flags' : 'compiled: not in the cache for this source, header and compiler',
      }
    },
  },
  {
    name: 'initramfs',
    title: 'Initramfs',
    async run(state, ctx) {
      const kernelConfig = state.kernel?.config ? await readFile(state.kernel.config, 'utf8') : undefined
      const zstdOk = configSupportsZstdInitrd(kernelConfig)
      let compression = state.options.initramfsCompression
      if (compression === 'zstd' && zstdOk === false) {
        throw usageError(`--initramfs-compression zstd: the kernel's config (${state.kernel?.config}) lacks CONFIG_RD_ZSTD=y`, ['use --initramfs-compression gzip'])
      }
      compression ??= zstdOk === false ? 'gzip' : 'zstd'
      await mkdir(state.httpDir, {recursive: true})
      const r = await buildInitramfs(ctx, {
        loopfmt: state.loopfmt!.path,
        busybox: state.options.busybox,
        compression,
        out: join(state.httpDir, INITRAMFS_FILE),
      })
      state.initramfs = r
      return {
        summary: `${r.entries} entries, ${formatBytes(r.bytes)} ${r.compression}${r.overTarget ? ' (over the 1.5 MiB target)' : ''}`,
        ...comparedWithPrevious(state, INITRAMFS_FILE, r.sha256),
      }
    },
  },
  {
    name: 'image',
    title: 'Root image',
    async run(state, ctx) {
      const o = state.options
      const kind = await classifySource(o.imageSource)
      const format = kind === 'qcow2' ? 'qcow2' : (o.imageFormat ?? 'qcow2')
      const name = format === 'qcow2' ? 'root.qcow2' : 'root.img'
      const r = await buildImage(ctx, {
        source: o.imageSource,
        out: join(state.httpDir, name),
        format,
        compression: o.compression,
        clusterSize: o.clusterSize,
        sizeMiB: o.sizeMiB,
        busybox: o.busybox,
      })
      state.image = r
      return {summary: `${r.description}, ${formatBytes(r.size)}`, ...comparedWithPrevious(state, name, r.sha256)}
    },
  },
  {
    name: 'pxe',
    title: 'PXE tree',
    async run(state) {
      const tree = await layoutPxeTree({
        outDir: state.outDir,
        kernel: state.kernel!.bzImage,
        initramfs: state.initramfs!.path,
        image: state.image!.path,
        httpBase: state.options.httpBase,
        params: {...state.options.params, format: state.image!.format},
        kernelRelease: state.kernel!.release,
        sourceDateEpoch: sourceDateEpoch(),
      })
      state.tree = tree
      const warn = tree.warnings.map((w) => `; ${w}`).join('')
      return {summary: `${tree.files.length} files, served from ${tree.httpBase}${warn}`, reused: false, reason: 'laid out on every build'}
    },
  },
]

/**
 * The context before the first stage: options, paths, and the tree's previous manifest. Bad
 * input is refused here, before minutes go into a kernel build.
 */
export async function newPipelineState(options: PipelineOptions): Promise<PipelineState> {
  await classifySource(options.imageSource)
  if (options.clusterSize !== undefined) checkClusterSize(options.clusterSize)
  if (options.kernelDir && !existsSync(join(options.kernelDir, 'bzImage'))) throw usageError(`--kernel-dir ${resolve(options.kernelDir)} has no bzImage`)
  if (options.httpBase !== undefined && !/^https?:\/\/[^\s"'\\]+$/.test(options.httpBase)) {
    throw usageError(`--http-url "${options.httpBase}" is not an http:// URL without spaces or quotes`, ['e.g. --http-url http://192.168.100.1'])
  }
  const outDir = resolve(options.outDir)
  const httpDir = join(outDir, 'http')
  return {options, outDir, httpDir, previous: await readPrevious(httpDir), stages: []}
}

/** Runs one stage, timing it and recording its report in the state and the run log. */
async function runStage(stage: Stage, state: PipelineState, ctx: RunContext): Promise<StageReport> {
  const t0 = Date.now()
  ctx.log.write(`--- stage ${stage.name}`)
  const r = await stage.run(state, ctx)
  const report: StageReport = {name: stage.name, ...r, ms: Date.now() - t0}
  state.stages.push(report)
  ctx.log.write(`stage ${stage.name}: ${report.summary}; ${report.reason} (${seconds(report.ms)})`)
  return report
}

/**
 * The stages as listr2 tasks over one state: each task's title becomes the stage's summary
 * when it is done, and `progress(task)` turns a task into the stage's progress callback.
 */
export function pipelineTasks(
  ctx: RunContext,
  progress: (task: {output: string | undefined}) => (text: string) => void = () => () => {},
): ListrTask<PipelineState>[] {
  return STAGES.map((stage) => ({
    title: stage.title,
    task: async (state: PipelineState, task) => {
      const report = await runStage(stage, state, {...ctx, progress: progress(task)})
      const prebuilt = stage.name === 'kernel' ? state.options.kernelDir : stage.name === 'loopfmt' ? state.options.loopfmt : undefined
      const cachedStage = stage.name === 'kernel' || stage.name === 'loopfmt'
      const how = prebuilt ? ', prebuilt' : cachedStage ? (report.reused ? ', cached' : ', built') : ''
      task.title = `${stage.title}: ${report.summary} (${seconds(report.ms)}${how})`
    },
  }))
}

/** Runs every stage in order without a progress display (tests, library use). */
export async function runPipeline(ctx: RunContext, options: PipelineOptions): Promise<PipelineResult> {
  const state = await newPipelineState(options)
  const t0 = Date.now()
  for (const stage of STAGES) await runStage(stage, state, ctx)
  return pipelineResult(state, ctx, Date.now() - t0)
}

/** The --json result: every artifact with path, sha256 and size, and each stage's report. */
export async function pipelineResult(state: PipelineState, ctx: RunContext, totalMs: number): Promise<PipelineResult> {
  const tree = state.tree
  if (!tree) throw new NetbootError('the pipeline stopped before laying out the PXE tree')
  const artifacts: Record<string, Artifact> = {}
  for (const file of tree.files) artifacts[file] = await artifact(join(tree.outDir, file))
  artifacts.bzImage = await artifact(state.kernel!.bzImage)
  artifacts.loopfmt = await artifact(state.loopfmt!.path)
  ctx.log.write(`build done in ${seconds(totalMs)}: ${tree.outDir}`)
  return {
    outDir: tree.outDir,
    log: ctx.log.path,
    httpBase: tree.httpBase,
    cmdline: tree.cmdline,
    kernelRelease: state.kernel?.release,
    stages: state.stages,
    artifacts,
    totalMs,
  }
}

/** Human summary of a build: stages with timings and reuse, then the tree's files. */
export function describeBuild(r: PipelineResult): string {
  const lines = ['stages:']
  for (const s of r.stages) lines.push(`  ${s.name.padEnd(10)} ${seconds(s.ms).padStart(7)}  ${s.summary}; ${s.reason}`)
  lines.push(`PXE tree in ${r.outDir} (total ${seconds(r.totalMs)}):`)
  for (const [name, a] of Object.entries(r.artifacts)) {
    if (!name.includes('/')) continue
    lines.push(`  ${name.padEnd(24)} ${formatBytes(a.size).padStart(10)}  sha256 ${a.sha256.slice(0, 16)}…`)
  }
  lines.push(`kernel command line: ${r.cmdline}`, `log: ${relative(process.cwd(), r.log) || r.log}`)
  return lines.join('\n')
}
