// What a benchmark run records, and what is computed from it: medians over the repetitions,
// ratios against the raw loop device and against qemu-nbd of the same run, and the issue's
// targets with how far each result is from its goal.

export interface TargetLine {
  name: string
  dev: string
  fmt: string
  bytes?: number
}

export interface RunLine {
  rep: number
  target: string
  workload: string
  bytes: number
  ns: number
  mibps: number
  iops: number
}

/** MemAvailable (KiB) at each step of holding one image: see bench/guest/bench.sh. */
export interface MemLine {
  name: string
  beforeKiB: number
  copiedKiB: number
  attachedKiB: number
  readKiB: number
  droppedKiB: number
}

/** bench-qdecomp in the guest: every compressed cluster of one image, decompressed in user space. */
export interface DecompRow {
  target: string
  algo: string
  clusterBytes: number
  deviceClusters: number
  clusters: number
  inBytes: number
  /** Fastest of the rounds, for all `clusters`. */
  ns: number
}

/**
 * A compressed target's read time split into the algorithm's cost on the guest CPU and the
 * rest (driver, copies, I/O), from the same run.
 */
export interface CostSplit {
  target: string
  algo: string
  clusterBytes: number
  /** Compressed clusters / clusters of the device: the share of random reads that decompress. */
  compressedShare: number
  seqDeviceMs: number
  seqDecompMs: number
  seqRawMs?: number
  usPerCluster: number
  randUs: number
  randRawUs?: number
}

export interface Stat {
  /** Medians over the repetitions. */
  mibps: number
  iops: number
  minMibps: number
  maxMibps: number
  n: number
}

export interface KernelRun {
  name: string
  bzImage: string
  bzImageBytes: number
  command: string
  wallMs: number
  /** 1-minute load averages of the host, sampled every 15 s while the guest ran. */
  hostLoad?: number[]
  guest: {kernel?: string; cpus: number; memTotalKiB: number}
  targets: TargetLine[]
  runs: RunLine[]
  memory: MemLine[]
  errors: string[]
  dmesg: string[]
  decomp?: DecompRow[]
  costSplit?: CostSplit[]
  stats?: Record<string, Record<string, Stat>>
  /** target → workload → median MiB/s of the target / median MiB/s of the raw loop device. */
  vsRaw?: Record<string, Record<string, number>>
  /** "<image> loop/nbd" → workload → loop device MiB/s / NBD device MiB/s for the same image. */
  vsNbd?: Record<string, Record<string, number>>
}

export interface PhaseRow {
  name: string
  atMs?: number
}

export interface BootBench {
  label: string
  ok: boolean
  failure?: string
  imageBytes?: number
  phases: PhaseRow[]
  wallMs: number
}

export interface PipelineBench {
  initramfs?: {bytes: number; cpioBytes?: number; compression?: string}
  builds: Array<{label: string; ms: number; ok: boolean; note?: string}>
  boots: BootBench[]
  notes: string[]
}

export interface TargetCheck {
  goal: string
  item: string
  value: number
  threshold: number
  met: boolean
  /** value / threshold - 1 (≥ 0 when met, for "at least" goals; ≤ 0 when met for "at most" goals). */
  distance: number
  kind: 'min' | 'max'
}

export interface Results {
  date: string
  config: {sizeMiB: number; repeat: number; randCount: number; seed: number; workloads: string[]; guestMiB: number; guestCpus: number; accel: string}
  host: {cpus: string; qemu: string}
  tree: {files: number; bytes: number; digest: string; parts: Record<string, number>}
  images: Array<{name: string; description: string; bytes: number}>
  virtualBytes: number
  squashfsZstdBytes?: number
  kernels: KernelRun[]
  /** bench-decomp natively and under user-mode TCG, or why it did not run. */
  decomp?: Record<string, Array<{algo: string; clusters: number; mibps: number; usPerCluster: number}>> | string
  pipeline?: PipelineBench
  targets?: TargetCheck[]
  notMeasured?: string[]
  /** Findings written after looking at the numbers (evidence and what to try), kept with them. */
  analysis?: string[]
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

const UNCOMPRESSED = ['qcow2-64k', 'qcow2-2m', 'qcow2-extl2']

function stats(runs: RunLine[]): Record<string, Record<string, Stat>> {
  const out: Record<string, Record<string, Stat>> = {}
  for (const r of runs) {
    out[r.target] ??= {}
    out[r.target][r.workload] ??= {mibps: 0, iops: 0, minMibps: 0, maxMibps: 0, n: 0}
  }
  for (const [target, byWorkload] of Object.entries(out)) {
    for (const workload of Object.keys(byWorkload)) {
      const rs = runs.filter((r) => r.target === target && r.workload === workload)
      const m = rs.map((r) => r.mibps)
      byWorkload[workload] = {mibps: median(m), iops: median(rs.map((r) => r.iops)), minMibps: Math.min(...m), maxMibps: Math.max(...m), n: rs.length}
    }
  }
  return out
}

function check(goal: string, item: string, value: number | undefined, threshold: number, kind: 'min' | 'max' = 'min'): TargetCheck[] {
  if (value === undefined || !Number.isFinite(value)) return []
  return [{goal, item, value, threshold, kind, met: kind === 'min' ? value >= threshold : value <= threshold, distance: value / threshold - 1}]
}

function costSplit(k: KernelRun): CostSplit[] {
  const out: CostSplit[] = []
  const rawSeq = k.stats?.raw?.seq1
  const rawRand = k.stats?.raw?.rand1
  for (const d of k.decomp ?? []) {
    const seq = k.stats?.[d.target]?.seq1
    const rand = k.stats?.[d.target]?.rand1
    const bytes = median(k.runs.filter((r) => r.target === d.target && r.workload === 'seq1').map((r) => r.bytes))
    if (!seq || !rand || !bytes) continue
    const share = d.clusters / d.deviceClusters
    const usPerCluster = d.ns / 1e3 / d.clusters
    const randRawUs = rawRand ? 1e6 / rawRand.iops : undefined
    out.push({
      target: d.target, algo: d.algo, clusterBytes: d.clusterBytes, compressedShare: share,
      seqDeviceMs: (bytes / MiB / seq.mibps) * 1e3, seqDecompMs: d.ns / 1e6,
      seqRawMs: rawSeq ? (bytes / MiB / rawSeq.mibps) * 1e3 : undefined,
      usPerCluster, randUs: 1e6 / rand.iops, randRawUs,
    })
  }
  return out
}

const MiB = 1048576

/** Fills in stats, ratios, target checks and the list of what was not measured. */
export function summarize(r: Results): Results {
  const targets: TargetCheck[] = []
  const notMeasured: string[] = []
  for (const k of r.kernels) {
    k.stats = stats(k.runs)
    const raw = k.stats.raw
    k.vsRaw = {}
    for (const [t, byW] of Object.entries(k.stats)) {
      if (!raw) break
      k.vsRaw[t] = {}
      for (const [w, s] of Object.entries(byW)) if (raw[w]) k.vsRaw[t][w] = s.mibps / raw[w].mibps
    }
    k.vsNbd = {}
    for (const t of Object.keys(k.stats)) {
      const m = /^(host-)?nbd-(.+)$/.exec(t)
      if (!m || !k.stats[m[2]]) continue
      const key = `${m[2]} loop / ${m[1] ? 'host' : 'in-guest'} qemu-nbd`
      k.vsNbd[key] = {}
      for (const [w, s] of Object.entries(k.stats[t])) if (k.stats[m[2]][w]) k.vsNbd[key][w] = k.stats[m[2]][w].mibps / s.mibps
    }

    k.costSplit = costSplit(k)

    const tag = r.kernels.length > 1 ? ` [${k.name}]` : ''
    for (const t of UNCOMPRESSED) {
      for (const w of ['seq1', 'seq4']) targets.push(...check('qcow2 uncompressed / raw loop ≥ 0.95 sequential', `${t} ${w}${tag}`, k.vsRaw[t]?.[w], 0.95))
      for (const w of ['rand1', 'rand4']) targets.push(...check('qcow2 uncompressed / raw loop ≥ 0.9 random 4K', `${t} ${w}${tag}`, k.vsRaw[t]?.[w], 0.9))
    }
    for (const [key, byW] of Object.entries(k.vsNbd)) {
      if (!key.includes('in-guest')) continue
      for (const w of ['rand1', 'rand4']) targets.push(...check('qcow2 loop / in-guest qemu-nbd ≥ 4× random 4K', `${key.split(' ')[0]} ${w}${tag}`, byW[w], 4))
    }
    const s = k.stats
    for (const w of r.config.workloads) {
      if (s['qcow2-zstd']?.[w] && s['qcow2-deflate']?.[w]) {
        targets.push(...check('zstd read throughput ≥ deflate', `${w}${tag}`, s['qcow2-zstd'][w].mibps / s['qcow2-deflate'][w].mibps, 1))
      }
      for (const c of ['qcow2-deflate', 'qcow2-zstd', 'qcow2-zstd-32k', 'qcow2-zstd-16k']) {
        if (s[c]?.[w] && s['qcow2-64k']?.[w]) targets.push(...check('compressed ≥ 50 % of uncompressed', `${c} / qcow2-64k ${w}${tag}`, s[c][w].mibps / s['qcow2-64k'][w].mibps, 0.5))
      }
    }
    if (!Object.keys(k.stats).some((t) => t.startsWith('nbd-'))) notMeasured.push(`in-guest qemu-nbd [${k.name}]: no NBD results (${k.errors.find((e) => /nbd/i.test(e)) ?? 'kernel without CONFIG_BLK_DEV_NBD?'})`)
    if (!Object.keys(k.stats).some((t) => t.startsWith('host-nbd-'))) notMeasured.push(`qemu-nbd on the host over user networking [${k.name}]: no results`)
    if (k.runs.length === 0) notMeasured.push(`read throughput [${k.name}]: the guest reported no runs`)
  }
  const p = r.pipeline
  if (p?.initramfs) targets.push(...check('initramfs ≤ 1.5 MiB', `netboot initramfs (${p.initramfs.compression ?? '?'})`, p.initramfs.bytes / 1048576, 1.5, 'max'))
  const warm = p?.builds.find((b) => b.label.startsWith('warm') && b.ok)
  if (warm) targets.push(...check('warm netboot build ≤ 30 s', warm.label, warm.ms / 1000, 30, 'max'))
  if (!p) notMeasured.push('boot phases, initramfs size and build times: BENCH_BOOT=0')
  else notMeasured.push(...p.notes)
  for (const k of r.kernels) {
    if (k.guest.cpus === 1) notMeasured.push(`true concurrency [${k.name}]: the guest kernel has one CPU (no CONFIG_SMP), so the 4 readers take turns on it; contention on the driver's per-image mutex cannot show`)
  }
  notMeasured.push('perf in the guest (the bench kernel has no perf events); the compressed targets are split into algorithm and driver cost by bench-qdecomp instead')
  return {...r, targets, notMeasured}
}
