// The host-side numbers: initramfs sizes from `netboot initramfs`, `netboot build` times
// (empty cache, warm, after touching the init script) and the boot phases of
// `netboot boot --check` for the demo image and for the benchmark tree as raw and qcow2-zstd.
// The pipeline and the commands run in this process, as the boot tests run them.
import {execa} from 'execa'
import {mkdir, rm, stat, utimes} from 'node:fs/promises'
import {cpus} from 'node:os'
import {join} from 'node:path'

import InitramfsCommand, {type InitramfsCommandResult} from '../cli/src/commands/initramfs.js'
import {stageDemoRoot} from '../cli/src/lib/image.js'
import {INITRAMFS_DIR} from '../cli/src/lib/initramfs/index.js'
import {RunLog} from '../cli/src/lib/log.js'
import {runPipeline, type PipelineOptions} from '../cli/src/lib/pipeline.js'
import {bootTree} from '../cli/src/lib/qemu.js'
import {runCommand} from '../boot-tests/lib/build.js'
import type {BootBench, PipelineBench} from './results.js'

const BOOT_MIB = 1024
/** BENCH_COLD_KERNEL=0 skips the cold build that compiles the kernel (minutes). */
const COLD_KERNEL = process.env.BENCH_COLD_KERNEL !== '0'

export async function pipelineBench(work: string, treeDir: string, sizeMiB: number, log: (m: string) => void): Promise<PipelineBench> {
  const notes: string[] = []
  const kernelDir = process.env.NETBOOT_TEST_KERNEL_DIR
  const result: PipelineBench = {builds: [], boots: [], notes}
  if (!kernelDir) {
    notes.push('build times, initramfs size and boot phases: need NETBOOT_TEST_KERNEL_DIR (a prebuilt kernel); the bench never builds a kernel for them')
    return result
  }
  const savedCache = process.env.NETBOOT_CACHE
  process.env.NETBOOT_CACHE = join(work, 'cache')
  await rm(process.env.NETBOOT_CACHE, {recursive: true, force: true})
  try {
    const build = async (label: string, outDir: string, extra: Partial<PipelineOptions> = {}, note?: string) => {
      const t0 = Date.now()
      try {
        await runPipeline({log: RunLog.inOutput(outDir), verbose: false}, {outDir, kernel: '6.1', kernelDir, imageSource: 'demo', compression: 'zstd', ...extra})
        result.builds.push({label, ms: Date.now() - t0, ok: true, note})
        log(`${label}: ${((Date.now() - t0) / 1000).toFixed(1)} s`)
        return true
      } catch (error) {
        result.builds.push({label, ms: Date.now() - t0, ok: false, note: (error as Error).message.split('\n')[0]})
        log(`${label} failed: ${(error as Error).message.split('\n')[0]}`)
        return false
      }
    }
    if (COLD_KERNEL) {
      // The whole thing from nothing: kernel source extraction, patching, the kernel compile
      // with an empty ccache, initramfs, image, tree; then the same again from the cache.
      const full = join(work, 'out-full')
      process.env.NETBOOT_CACHE = join(work, 'cache-full')
      await rm(process.env.NETBOOT_CACHE, {recursive: true, force: true})
      const fromScratch = {kernelDir: undefined}
      if (await build('cold, kernel compiled (empty cache and ccache)', full, fromScratch, `-j${cpus().length}, kernel 6.1`)) {
        await build('warm, kernel from the cache', full, fromScratch)
      }
      await rm(process.env.NETBOOT_CACHE, {recursive: true, force: true})
      process.env.NETBOOT_CACHE = join(work, 'cache')
    } else {
      notes.push('cold `netboot build` with the kernel compile: BENCH_COLD_KERNEL=0')
    }

    const demo = join(work, 'out-demo')
    await rm(demo, {recursive: true, force: true})
    const prebuilt = 'prebuilt kernel (--kernel-dir): the kernel compile is not included'
    await build('cold (empty cache)', demo, {}, prebuilt)
    await build('warm (everything cached)', demo, {}, prebuilt)
    const init = join(INITRAMFS_DIR, 'init')
    const now = new Date()
    await utimes(init, now, now)
    await build('after touching initramfs/init', demo, {}, `mtime only, content unchanged; ${prebuilt}`)

    // initramfs sizes as `netboot initramfs` reports them, for both compressions
    for (const compression of ['gzip', 'zstd']) {
      const out = join(work, `initramfs.${compression}`)
      const r = await runCommand<InitramfsCommandResult>(InitramfsCommand, ['--json', '--kernel-headers', join(kernelDir, 'include'), '--compression', compression, '--out', out])
      if (r.exit !== 0 || !r.result) {
        notes.push(`netboot initramfs --compression ${compression}: exit ${r.exit}`)
        continue
      }
      // the smaller one is what `netboot build` ships when the kernel can unpack zstd
      if (!result.initramfs || r.result.bytes < result.initramfs.bytes) result.initramfs = {bytes: r.result.bytes, cpioBytes: r.result.cpioBytes, compression}
      log(`initramfs ${compression}: ${r.result.bytes} bytes (cpio ${r.result.cpioBytes})`)
    }

    const boot = async (label: string, outDir: string): Promise<void> => {
      const t0 = Date.now()
      const r = await bootTree({outDir, check: true, timeoutSec: 900, memoryMiB: BOOT_MIB})
      let imageBytes: number | undefined
      for (const name of ['root.qcow2', 'root.img']) imageBytes ??= await stat(join(outDir, 'http', name)).then((s) => s.size, () => undefined)
      const b: BootBench = {label, ok: r.ok, failure: r.failure, imageBytes, phases: r.phases.map((p) => ({name: p.name, atMs: p.atMs})), wallMs: Date.now() - t0}
      result.boots.push(b)
      log(`boot ${label}: ${r.ok ? 'ok' : `failed (${r.failure})`} in ${(b.wallMs / 1000).toFixed(0)} s`)
    }
    await boot('demo (qcow2 zstd)', demo)
    // the bench tree cannot boot by itself: the demo root (its /sbin/init prints the marker)
    // with the bench tree's files hard-linked in
    const bootRoot = join(work, 'boot-root')
    await rm(bootRoot, {recursive: true, force: true})
    await mkdir(bootRoot)
    await stageDemoRoot(bootRoot)
    await execa('cp', ['-al', `${treeDir}/.`, bootRoot])
    for (const [label, extra] of [
      [`${sizeMiB} MiB demo+bench tree, raw`, {imageFormat: 'raw', compression: 'none'}],
      [`${sizeMiB} MiB demo+bench tree, qcow2 zstd`, {imageFormat: 'qcow2', compression: 'zstd'}],
    ] as const) {
      const out = join(work, `out-${label.replace(/\W+/g, '-')}`)
      await mkdir(out, {recursive: true})
      if (await build(`tree ${label}`, out, {imageSource: bootRoot, sizeMiB, ...extra})) await boot(label, out)
    }
  } finally {
    if (savedCache === undefined) delete process.env.NETBOOT_CACHE
    else process.env.NETBOOT_CACHE = savedCache
  }
  return result
}
