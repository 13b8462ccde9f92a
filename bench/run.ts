// `npm run bench`: the in-kernel qcow2 loop format against a raw loop device and against
// qemu-nbd, in one guest boot per kernel (TCG), plus sizes, guest memory, boot phases and
// build times. Writes bench/results/<date>.json, <date>.md and <date>.png (see report.ts).
//
// Environment:
//   NETBOOT_TEST_KERNEL_DIR  prebuilt kernel (bzImage + include/), as for the boot tests;
//                            else BENCH_KERNELS (default 6.1) are built/reused via the cache
//   BENCH_MIB=256            size of the image (the ext4 file system)
//   BENCH_REPEAT=5           repetitions of every workload (the median is reported)
//   BENCH_RAND_COUNT=16384   4 KiB reads per reader in the random workloads
//   BENCH_HOST_NBD=1         also read the qcow2 through a qemu-nbd on the host (0: skip)
//   BENCH_BOOT=1             boot phases and build times through the CLI pipeline (0: skip)
//   BENCH_WORK               work directory (default a fresh one under the OS temp dir)
//
// `tsx bench/run.ts --pipeline-only bench/results/<date>.json` redoes only the host side
// (build times, initramfs sizes, boot phases) of an earlier run and rewrites its report.
import {execa} from 'execa'
import {readFileSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {createServer} from 'node:net'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {gzipSync} from 'node:zlib'

import {CpioArchive} from '../cli/src/lib/initramfs/cpio.js'
import {QemuVm} from '../cli/src/lib/qemu.js'
import {busyboxInitramfs, ext4Disk, loopfmtBinary} from '../boot-tests/lib/guest.js'
import {testKernel, type TestKernel} from '../boot-tests/lib/kernel.js'
import {makeTree, MiB} from './content.js'
import {buildImages, VARIANTS} from './images.js'
import {hostSide} from './host.js'
import {summarize, type DecompRow, type KernelRun, type Results, type RunLine, type MemLine, type TargetLine} from './results.js'
import {writeReport} from './report.js'

const BENCH_DIR = import.meta.dirname
const env = (name: string, dflt: number) => (process.env[name] === undefined ? dflt : Number(process.env[name]))

const SIZE_MIB = env('BENCH_MIB', 256)
const REPEAT = env('BENCH_REPEAT', 5)
const RAND_COUNT = env('BENCH_RAND_COUNT', 16384)
const HOST_NBD = env('BENCH_HOST_NBD', 1) === 1
const BOOT = env('BENCH_BOOT', 1) === 1
const SEED = 42
const WORKLOADS = ['seq1', 'seq4', 'rand1', 'rand4']
const NBD_IMAGES = ['qcow2-64k', 'qcow2-zstd']
const MEM_IMAGES = ['raw', 'qcow2-zstd']
const GUEST_MIB = 2048
const GUEST_CPUS = 2

function log(msg: string): void {
  console.log(`bench: ${msg}`)
}

async function gccStatic(src: string, out: string, include?: string, libs: string[] = []): Promise<Buffer> {
  await execa('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-Werror', ...(include ? ['-I', include] : []), '-o', out, src, ...libs])
  return readFile(out)
}

/**
 * qemu-nbd with its shared libraries and the dynamic loader, as a second gzip'd cpio archive:
 * the kernel unpacks concatenated archives in turn, so it extends the busybox initramfs.
 */
async function qemuNbdArchive(): Promise<Buffer> {
  const bin = '/usr/bin/qemu-nbd'
  const {stdout} = await execa('ldd', [bin])
  const archive = new CpioArchive()
  archive.file(bin.slice(1), await readFile(bin), 0o755)
  for (const line of stdout.split('\n')) {
    // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)
    if (m) archive.file(m[1].slice(1), await readFile(m[1]), 0o755)
  }
  return gzipSync(archive.encode())
}

export interface DecompLine {
  algo: string
  clusters: number
  mibps: number
  usPerCluster: number
}

/**
 * bench-decomp on the raw image, natively and under qemu-x86_64 (user-mode TCG): how fast
 * zstd and deflate decompress 64 KiB clusters outside the kernel, to tell emulator cost from
 * kernel cost in the guest's numbers. Needs libzstd-dev and qemu-user; skipped without.
 */
async function decompCheck(work: string, rawImage: string): Promise<Record<string, DecompLine[]> | string> {
  const bin = join(work, 'bench-decomp')
  try {
    await execa('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-o', bin, join(BENCH_DIR, 'decomp.c'), '-lzstd', '-lz'])
  } catch {
    return 'bench-decomp not built (apt-get install libzstd-dev)'
  }
  const parse = (out: string) =>
    out.trim().split('\n').map((l) => {
      const f = fields(l)
      return {algo: f.algo, clusters: Number(f.clusters), mibps: Number(f.mibps), usPerCluster: Number(f.us_per_cluster)}
    })
  const out: Record<string, DecompLine[]> = {native: parse((await execa(bin, [rawImage])).stdout)}
  try {
    out['qemu-x86_64 TCG'] = parse((await execa('qemu-x86_64', ['-cpu', 'qemu64', bin, rawImage])).stdout)
  } catch {
    // qemu-user missing: the native numbers alone
  }
  return out
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer()
    srv.once('error', rej)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as {port: number}).port
      srv.close(() => res(port))
    })
  })
}

/** Console lines "KEY k=v k=v ..." as records. */
function fields(line: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const m of line.matchAll(/(\w+)=(\S+)/g)) out[m[1]] = m[2]
  return out
}

function parseConsole(text: string): Pick<KernelRun, 'guest' | 'targets' | 'runs' | 'memory' | 'errors' | 'dmesg' | 'decomp'> {
  const lines = text.split('\n').map((l) => l.trim())
  // the first guest line shares its console line with the firmware's last words
  const start = fields(/BENCH-START (.*)/.exec(text)?.[1] ?? '')
  const targets: TargetLine[] = []
  const runs: RunLine[] = []
  const memory: MemLine[] = []
  const errors: string[] = []
  const dmesg: string[] = []
  const decomp: DecompRow[] = []
  for (const l of lines) {
    if (l.startsWith('TARGET ')) {
      const f = fields(l)
      targets.push({name: f.name, dev: f.dev, fmt: f.fmt, bytes: f.bytes ? Number(f.bytes) : undefined})
    } else if (l.startsWith('BENCH rep=')) {
      const f = fields(l)
      runs.push({rep: Number(f.rep), target: f.target, workload: f.workload, bytes: Number(f.bytes), ns: Number(f.ns), mibps: Number(f.mibps), iops: Number(f.iops)})
    } else if (l.startsWith('MEM ')) {
      const f = fields(l)
      memory.push({name: f.name, beforeKiB: Number(f.before), copiedKiB: Number(f.copied), attachedKiB: Number(f.attached), readKiB: Number(f.read), droppedKiB: Number(f.dropped)})
    } else if (l.startsWith('BENCH-ERROR') || l.startsWith('BENCH-FATAL') || l.startsWith('BENCH-NOTE')) {
      errors.push(l)
    } else if (l.startsWith('DECOMP ')) {
      const f = fields(l)
      decomp.push({target: f.target, algo: f.algo, clusterBytes: Number(f.cluster), deviceClusters: Number(f.device_clusters), clusters: Number(f.clusters), inBytes: Number(f.in_bytes), ns: Number(f.ns)})
    } else if (l.startsWith('DMESG ')) {
      dmesg.push(l.slice(6))
    }
  }
  return {guest: {kernel: start.kernel, cpus: Number(start.cpus), memTotalKiB: Number(start.memtotal_kib)}, targets, runs, memory, errors, dmesg, decomp}
}

async function benchKernel(name: string, kernel: TestKernel, work: string, disk: string): Promise<KernelRun> {
  const kwork = join(work, `kernel-${name.replace(/[^\w.-]+/g, '_')}`)
  await mkdir(kwork, {recursive: true})
  const reader = await gccStatic(join(BENCH_DIR, 'reader.c'), join(kwork, 'bench-read'))
  const nbd = await gccStatic(join(BENCH_DIR, 'nbd-attach.c'), join(kwork, 'nbd-attach'))
  // static libzstd and libz come from libzstd-dev and zlib1g-dev; without them the split is skipped
  const qdecomp = await gccStatic(join(BENCH_DIR, 'qdecomp.c'), join(kwork, 'bench-qdecomp'), undefined, ['-lzstd', '-lz']).catch(() => undefined)
  const base = await busyboxInitramfs(join(BENCH_DIR, 'guest', 'bench.sh'), {
    loopfmt: await loopfmtBinary(kernel.headers),
    'bench-read': reader,
    'nbd-attach': nbd,
    ...(qdecomp ? {'bench-qdecomp': qdecomp} : {}),
  })
  const initrd = join(kwork, 'initrd.gz')
  await writeFile(initrd, Buffer.concat([base, await qemuNbdArchive()]))

  const consoleLog = join(kwork, 'console.log')
  const vm = await QemuVm.start({
    kernel: kernel.bzImage,
    initrd,
    memoryMiB: GUEST_MIB,
    append: 'console=ttyS0 panic=-1 loglevel=4',
    extraArgs: ['-smp', String(GUEST_CPUS), '-drive', `file=${disk},format=raw,if=virtio,readonly=on`],
    consoleLog,
  })
  log(`kernel ${name}: guest started, console in ${consoleLog}`)
  const t0 = Date.now()
  // other work on the host (another QEMU) slows a TCG guest: the 1-minute load average while
  // the guest runs says whether this run had the host to itself
  const load: number[] = []
  try {
    const failOn = [/Kernel panic/, /BENCH-FATAL.*/]
    await vm.waitFor('BENCH-START', {timeoutMs: 180_000, failOn})
    load.push(Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]))
    let seen = 0
    const progress = setInterval(() => {
      load.push(Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]))
      const n = (vm.console.match(/^BENCH rep=/gm) ?? []).length
      if (n !== seen) log(`kernel ${name}: ${n} runs done (${Math.round((Date.now() - t0) / 1000)} s)`)
      seen = n
    }, 15_000)
    try {
      await vm.waitFor('BENCH-DONE', {timeoutMs: 3 * 3600_000, failOn})
    } finally {
      clearInterval(progress)
    }
    await vm.waitForExit(10_000)
  } finally {
    await vm.kill()
  }
  const parsed = parseConsole(vm.console)
  return {name, bzImage: kernel.bzImage, bzImageBytes: (await stat(kernel.bzImage)).size, command: vm.commandLine, wallMs: Date.now() - t0, hostLoad: load, ...parsed}
}

async function main(): Promise<void> {
  const work = process.env.BENCH_WORK ? resolve(process.env.BENCH_WORK) : await mkdtemp(join(tmpdir(), 'netboot-bench-'))
  await mkdir(work, {recursive: true})
  log(`work directory ${work}`)
  const started = new Date()

  const treeDir = join(work, 'tree')
  await rm(treeDir, {recursive: true, force: true})
  // content at 80 % of the file system: ext4's own metadata and some free space fill the rest
  const tree = await makeTree(treeDir, Math.floor(SIZE_MIB * 0.8) * MiB)
  log(`tree: ${tree.files} files, ${(tree.bytes / MiB).toFixed(1)} MiB, digest ${tree.digest.slice(0, 16)}`)

  const diskDir = join(work, 'disk')
  await rm(diskDir, {recursive: true, force: true})
  await mkdir(diskDir)
  const imageSet = await buildImages(treeDir, diskDir, SIZE_MIB)
  for (const i of imageSet.images) log(`image ${i.name}: ${(i.bytes / MiB).toFixed(1)} MiB`)
  const conf = [
    `IMAGES="${VARIANTS.map((v) => v.name).join(' ')}"`,
    `NBD_IMAGES="${NBD_IMAGES.join(' ')}"`,
    `MEM_IMAGES="${MEM_IMAGES.join(' ')}"`,
    `DECOMP_IMAGES="${VARIANTS.filter((v) => v.compressed).map((v) => v.name).join(' ')}"`,
    `WORKLOADS="${WORKLOADS.join(' ')}"`,
    `REPEAT=${REPEAT}`,
    `RAND_COUNT=${RAND_COUNT}`,
    `SEED=${SEED}`,
  ]
  await rm(join(diskDir, 'tree.squashfs'), {force: true})
  let host: Awaited<ReturnType<typeof hostSide>> | undefined
  const hostImage = imageSet.images.find((i) => i.name === 'qcow2-64k')!
  if (HOST_NBD) {
    const port = await freePort()
    conf.push(`HOST_NBD=qcow2-64k`, `HOST_NBD_PORT=${port}`)
    host = await hostSide(hostImage.file, port, join(work, 'host-qemu-nbd.log'))
  }
  await writeFile(join(diskDir, 'bench.conf'), conf.join('\n') + '\n')
  const disk = join(work, 'disk.ext4')
  await ext4Disk(diskDir, disk)

  const decomp = await decompCheck(work, imageSet.images[0].file)
  const kernels: KernelRun[] = []
  try {
    const kdir = process.env.NETBOOT_TEST_KERNEL_DIR
    const versions = kdir ? ['6.1'] : (process.env.BENCH_KERNELS ?? '6.1').split(',')
    for (const version of versions) {
      const kernel = await testKernel(version)
      kernels.push(await benchKernel(kdir ? `${version} (${kdir})` : version, kernel, work, disk))
    }
  } finally {
    await host?.stop()
  }

  const results: Results = summarize({
    date: started.toISOString(),
    config: {sizeMiB: SIZE_MIB, repeat: REPEAT, randCount: RAND_COUNT, seed: SEED, workloads: WORKLOADS, guestMiB: GUEST_MIB, guestCpus: GUEST_CPUS, accel: 'tcg'},
    host: {cpus: (await execa('nproc')).stdout.trim(), qemu: (await execa('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0]},
    tree: {files: tree.files, bytes: tree.bytes, digest: tree.digest, parts: tree.parts},
    images: imageSet.images.map((i) => ({name: i.name, description: i.description, bytes: i.bytes})),
    virtualBytes: imageSet.virtualBytes,
    squashfsZstdBytes: imageSet.squashfsZstdBytes,
    kernels,
    decomp,
    pipeline: BOOT ? await (await import('./pipeline.js')).pipelineBench(work, treeDir, SIZE_MIB, log) : undefined,
  })
  const written = await writeReport(results, join(BENCH_DIR, 'results'))
  log(`wrote ${written.join(', ')}`)
}

/** Redoes the host-side part of the run recorded in `jsonPath`, keeping its guest numbers. */
async function pipelineOnly(jsonPath: string): Promise<void> {
  const r = JSON.parse(await readFile(jsonPath, 'utf8')) as Results
  const work = process.env.BENCH_WORK ? resolve(process.env.BENCH_WORK) : await mkdtemp(join(tmpdir(), 'netboot-bench-'))
  const treeDir = join(work, 'tree')
  await rm(treeDir, {recursive: true, force: true})
  const tree = await makeTree(treeDir, Math.floor(r.config.sizeMiB * 0.8) * MiB)
  if (tree.digest !== r.tree.digest) throw new Error(`the tree differs from the recorded run's (${tree.digest} vs ${r.tree.digest})`)
  const pipeline = await (await import('./pipeline.js')).pipelineBench(work, treeDir, r.config.sizeMiB, log)
  const {targets: _t, notMeasured: _n, ...rest} = r
  const written = await writeReport(summarize({...rest, pipeline}), join(jsonPath, '..'))
  log(`wrote ${written.join(', ')}`)
}

const only = process.argv.indexOf('--pipeline-only')
;(only !== -1 ? pipelineOnly(process.argv[only + 1]) : main()).catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error)
  process.exit(1)
})
