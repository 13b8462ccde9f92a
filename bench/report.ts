// Turns a results JSON into bench/results/<date>.{json,md,svg,png}. Also runs on its own to
// redraw a report: `tsx bench/report.ts bench/results/<date>.json`.
import {execa} from 'execa'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {basename, join} from 'node:path'
import {pathToFileURL} from 'node:url'

import type {KernelRun, Results, TargetCheck} from './results.js'

const MiB = 1048576
const WORKLOAD_TITLES: Record<string, string> = {
  seq1: 'sequential 1 MiB O_DIRECT, 1 reader',
  seq4: 'sequential 1 MiB O_DIRECT, 4 readers',
  rand1: 'random 4 KiB O_DIRECT, 1 reader',
  rand4: 'random 4 KiB O_DIRECT, 4 readers',
}

const f2 = (x: number | undefined) => (x === undefined ? '–' : x.toFixed(2))
const mib = (b: number | undefined) => (b === undefined ? '–' : `${(b / MiB).toFixed(1)} MiB`)
const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`

function loadText(load: number[] | undefined, hostCpus: string): string {
  if (!load?.length) return 'not sampled'
  const s = [...load].sort((a, b) => a - b)
  const busy = s[s.length - 1] > 1.5 ? ` (above 1.5 on this ${hostCpus}-CPU host: other work competed with the guest, so single numbers are noisy; the ratios come from interleaved runs)` : ''
  return `min ${s[0].toFixed(2)}, median ${s[s.length >> 1].toFixed(2)}, max ${s[s.length - 1].toFixed(2)}${busy}`
}

function kernelTables(k: KernelRun, cfg: Results['config'], hostCpus: string): string[] {
  const out: string[] = []
  const ws = cfg.workloads
  const targets = Object.keys(k.stats ?? {})
  out.push(`### Read throughput — kernel ${k.name}`, '')
  out.push(`Guest: Linux ${k.guest.kernel ?? '?'}, ${k.guest.cpus} vCPUs, ${Math.round(k.guest.memTotalKiB / 1024)} MiB, TCG; ${k.runs.length} runs in ${(k.wallMs / 1000).toFixed(0)} s. ` +
    `Host load average (1 min) during the run: ${loadText(k.hostLoad, hostCpus)}. Median of ${cfg.repeat} repetitions (min–max in MiB/s); random workloads: ${cfg.randCount} reads per reader, seed ${cfg.seed}.`, '')
  out.push(`| target | ${ws.map((w) => `${w} MiB/s (min–max)`).join(' | ')} | ${ws.map((w) => `${w} vs raw`).join(' | ')} |`)
  out.push(`|---|${ws.map(() => '--:').join('|')}|${ws.map(() => '--:').join('|')}|`)
  for (const t of targets) {
    const s = k.stats![t]
    const cells = ws.map((w) => (s[w] ? `${s[w].mibps.toFixed(1)} (${s[w].minMibps.toFixed(1)}–${s[w].maxMibps.toFixed(1)})` : '–'))
    const iops = ws.map((w) => f2(k.vsRaw?.[t]?.[w]))
    out.push(`| ${t} | ${cells.join(' | ')} | ${iops.join(' | ')} |`)
  }
  out.push('')
  const rand = targets.filter((t) => k.stats![t].rand1)
  if (rand.length) {
    // per-request cost: what a target adds to every 4 KiB read on top of the raw loop device
    const us = (iops?: number) => (iops ? 1e6 / iops : undefined)
    const rawUs = us(k.stats!.raw?.rand1?.iops)
    out.push('Random 4 KiB reads as IOPS (median), and the time per read of one reader:', '')
    out.push('| target | rand1 IOPS | rand4 IOPS | µs per read (rand1) | µs added to each read vs raw |', '|---|--:|--:|--:|--:|')
    for (const t of rand) {
      const u = us(k.stats![t].rand1?.iops)
      out.push(`| ${t} | ${Math.round(k.stats![t].rand1?.iops ?? 0)} | ${Math.round(k.stats![t].rand4?.iops ?? 0)} | ${f2(u)} | ${u !== undefined && rawUs !== undefined ? f2(u - rawUs) : '–'} |`)
    }
    out.push('')
  }
  if (k.costSplit?.length) out.push(...costSplitTable(k))
  if (Object.keys(k.vsNbd ?? {}).length) {
    out.push('#### qcow2 loop device / qemu-nbd (same image, same run)', '')
    out.push(`| comparison | ${ws.join(' | ')} |`, `|---|${ws.map(() => '--:').join('|')}|`)
    for (const [key, byW] of Object.entries(k.vsNbd!)) out.push(`| ${key} | ${ws.map((w) => f2(byW[w])).join(' | ')} |`)
    out.push('')
  }
  if (k.memory.length) {
    out.push('#### Guest memory (MemAvailable, MiB; deltas against "before")', '')
    out.push('| image | before | after copy to tmpfs | after attach | after reading all (cached) | after drop_caches |', '|---|--:|--:|--:|--:|--:|')
    for (const m of k.memory) {
      const d = (x: number) => `${(x / 1024).toFixed(0)} (${((x - m.beforeKiB) / 1024).toFixed(0)})`
      out.push(`| ${m.name} | ${(m.beforeKiB / 1024).toFixed(0)} | ${d(m.copiedKiB)} | ${d(m.attachedKiB)} | ${d(m.readKiB)} | ${d(m.droppedKiB)} |`)
    }
    out.push('')
  }
  if (k.errors.length) out.push('Errors and notes from the guest:', '', ...k.errors.map((e) => `- \`${e}\``), '')
  if (k.dmesg.length) out.push('Kernel messages (loop_qcow2, nbd, warnings):', '', '```', ...k.dmesg.slice(0, 30), '```', '')
  return out
}

function costSplitTable(k: KernelRun): string[] {
  const ms = (x: number | undefined) => (x === undefined ? '–' : x.toFixed(0))
  const out = ['#### Compressed reads against the decompressor alone (bench/qdecomp.c in the same guest)', '',
    'bench-qdecomp reads every compressed cluster of the image into memory and decompresses them all with the user-space ' +
    'library (libzstd, zlib; fastest of 3 rounds) on the same guest CPU, after the read runs. Random 4 KiB reads land in a ' +
    'compressed cluster with the probability "share"; the others cost what a raw read costs, so the loop device spends ' +
    '(µs per read − raw µs per read) / share on each read that decompresses. Sequential: the whole device read once (median seq1) ' +
    'against decompressing all of its compressed clusters.', '',
    '| target | cluster | compressed clusters (share) | user space: µs per cluster | loop device: µs per decompressing random read | seq: loop device reads the device, ms | seq: user space decompresses its clusters, ms | raw device, ms |',
    '|---|--:|--:|--:|--:|--:|--:|--:|']
  for (const c of k.costSplit ?? []) {
    const perRead = c.randRawUs === undefined ? undefined : (c.randUs - c.randRawUs) / c.compressedShare
    out.push(`| ${c.target} | ${c.clusterBytes / 1024} KiB | ${(c.compressedShare * 100).toFixed(0)} % | ${c.usPerCluster.toFixed(1)} | ${perRead === undefined ? '–' : perRead.toFixed(1)} | ${ms(c.seqDeviceMs)} | ${ms(c.seqDecompMs)} | ${ms(c.seqRawMs)} |`)
  }
  out.push('')
  return out
}

function targetTable(checks: TargetCheck[]): string[] {
  const out = ['## Targets (from issue 5)', '', '| goal | item | value | goal | met | distance |', '|---|---|--:|--:|:-:|--:|']
  for (const c of checks) {
    out.push(`| ${c.goal} | ${c.item} | ${c.value.toFixed(2)} | ${c.kind === 'min' ? '≥' : '≤'} ${c.threshold} | ${c.met ? 'yes' : '**no**'} | ${pct(c.distance)} |`)
  }
  out.push('', 'Distance is value / goal − 1: for "at least" goals, negative means missed; for "at most" goals, positive means missed.', '')
  return out
}

export function markdown(r: Results, chart?: string): string {
  const out: string[] = [`# netboot benchmark ${r.date}`, '']
  out.push(`Host: ${r.host.cpus} CPUs, ${r.host.qemu}, accel ${r.config.accel}. Image: ext4 of ${r.config.sizeMiB} MiB holding ` +
    `${r.tree.files} files, ${mib(r.tree.bytes)} (text ${mib(r.tree.parts.text)}, ELF binaries ${mib(r.tree.parts.binaries)}, zeros ${mib(r.tree.parts.zeros)}, random ${mib(r.tree.parts.random)}; tree digest \`${r.tree.digest.slice(0, 16)}\`). ` +
    'Every image is copied into tmpfs in the guest before it is attached; the page cache is dropped before each run.', '')
  if (chart) out.push(`![read throughput relative to the raw loop device](${chart})`, '')
  if (r.targets?.length) out.push(...targetTable(r.targets))
  for (const k of r.kernels) out.push(...kernelTables(k, r.config, r.host.cpus))

  out.push('## Sizes', '', '| artifact | bytes | MiB |', '|---|--:|--:|')
  for (const k of r.kernels) out.push(`| bzImage (${k.name}) | ${k.bzImageBytes} | ${(k.bzImageBytes / MiB).toFixed(2)} |`)
  const ini = r.pipeline?.initramfs
  if (ini) {
    out.push(`| initramfs, ${ini.compression ?? 'compressed'} | ${ini.bytes} | ${(ini.bytes / MiB).toFixed(2)} |`)
    if (ini.cpioBytes) out.push(`| initramfs, uncompressed cpio | ${ini.cpioBytes} | ${(ini.cpioBytes / MiB).toFixed(2)} |`)
  }
  for (const i of r.images) out.push(`| ${i.name}: ${i.description} | ${i.bytes} | ${(i.bytes / MiB).toFixed(1)} |`)
  if (r.squashfsZstdBytes) out.push(`| squashfs, zstd, of the same tree (mksquashfs) | ${r.squashfsZstdBytes} | ${(r.squashfsZstdBytes / MiB).toFixed(1)} |`)
  out.push('')

  if (r.decomp) {
    out.push('## Decompression of 64 KiB clusters outside the kernel (bench/decomp.c)', '')
    if (typeof r.decomp === 'string') out.push(r.decomp, '')
    else {
      out.push('The raw image cut into 64 KiB clusters, each compressed as qemu-img does (zstd level 3; raw deflate, 4 KiB window), decompressed in user space: ' +
        'natively, and under qemu-x86_64 (the same TCG code generator as the guest, without the system emulation).', '')
      out.push('| where | algorithm | clusters | MiB/s | µs per cluster |', '|---|---|--:|--:|--:|')
      for (const [where, lines] of Object.entries(r.decomp)) for (const l of lines) out.push(`| ${where} | ${l.algo} | ${l.clusters} | ${l.mibps.toFixed(1)} | ${l.usPerCluster.toFixed(1)} |`)
      out.push('')
    }
  }
  const p = r.pipeline
  if (p?.boots.length) {
    out.push('## Boot phases (`netboot boot --check`, PXE over user networking, TCG)', '')
    const names = p.boots[0].phases.map((ph) => ph.name)
    out.push(`| phase (s since QEMU start) | ${p.boots.map((b) => b.label).join(' | ')} |`, `|---|${p.boots.map(() => '--:').join('|')}|`)
    for (const n of names) {
      out.push(`| ${n} | ${p.boots.map((b) => {
        const at = b.phases.find((ph) => ph.name === n)?.atMs
        return at === undefined ? '–' : (at / 1000).toFixed(2)
      }).join(' | ')} |`)
    }
    out.push(`| result | ${p.boots.map((b) => (b.ok ? 'ok' : `failed: ${b.failure ?? '?'}`)).join(' | ')} |`)
    out.push(`| root image bytes | ${p.boots.map((b) => (b.imageBytes ? String(b.imageBytes) : '–')).join(' | ')} |`, '')
  }
  if (p?.builds.length) {
    out.push('## Host build times (`netboot build`)', '', '| build | seconds | note |', '|---|--:|---|')
    for (const b of p.builds) out.push(`| ${b.label} | ${b.ok ? (b.ms / 1000).toFixed(1) : 'failed'} | ${b.note ?? ''} |`)
    out.push('')
  }
  if (r.analysis?.length) out.push('## Analysis', '', ...r.analysis.map((a) => `- ${a}`), '')
  if (r.notMeasured?.length) out.push('## Not measured', '', ...r.notMeasured.map((n) => `- ${n}`), '')
  return out.join('\n')
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;')

/** Horizontal bars: every target's median throughput as a multiple of the raw loop device's. */
export function chartSvg(r: Results): string {
  const k = r.kernels[0]
  const targets = Object.keys(k?.stats ?? {})
  const ws = r.config.workloads
  const W = 900
  const labelW = 170
  const barW = 560
  const rowH = 18
  const groupGap = 34
  let maxRatio = 1.1
  for (const t of targets) for (const w of ws) maxRatio = Math.max(maxRatio, k.vsRaw?.[t]?.[w] ?? 0)
  maxRatio = Math.ceil(maxRatio * 10) / 10
  const x = (ratio: number) => labelW + (ratio / maxRatio) * barW
  const H = 60 + ws.length * (groupGap + targets.length * rowH) + 30
  const colour = (t: string) =>
    t === 'raw' ? '#777' : t.startsWith('host-nbd') ? '#b07aa1' : t.startsWith('nbd') ? '#e15759' : /deflate|zstd/.test(t) ? '#f28e2b' : '#4e79a7'
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">Read throughput relative to the raw loop device (${esc(k?.guest.kernel ?? '')}, TCG, ${r.config.sizeMiB} MiB image in tmpfs)</text>`,
    `<text x="${W / 2}" y="40" text-anchor="middle" fill="#444">median of ${r.config.repeat}; grey raw loop, blue qcow2 loop, orange compressed qcow2 loop, red in-guest qemu-nbd, purple host qemu-nbd</text>`,
  ]
  let y = 60
  for (const w of ws) {
    y += groupGap
    out.push(`<text x="${labelW}" y="${y - 8}" font-weight="bold">${esc(WORKLOAD_TITLES[w] ?? w)} (raw: ${k.stats?.raw?.[w]?.mibps.toFixed(1) ?? '?'} MiB/s)</text>`)
    const top = y
    for (const t of targets) {
      const ratio = k.vsRaw?.[t]?.[w]
      out.push(`<text x="${labelW - 6}" y="${y + 13}" text-anchor="end">${esc(t)}</text>`)
      if (ratio !== undefined) {
        out.push(`<rect x="${labelW}" y="${y + 2}" width="${Math.max(1, x(ratio) - labelW).toFixed(1)}" height="${rowH - 4}" fill="${colour(t)}"/>`)
        out.push(`<text x="${(x(ratio) + 4).toFixed(1)}" y="${y + 13}">${ratio.toFixed(2)}× (${k.stats![t][w].mibps.toFixed(1)} MiB/s)</text>`)
      }
      y += rowH
    }
    out.push(`<line x1="${x(1)}" y1="${top}" x2="${x(1)}" y2="${y}" stroke="#000" stroke-dasharray="3,3"/>`)
  }
  out.push(`<text x="${x(1)}" y="${y + 16}" text-anchor="middle" fill="#444">1.0 = raw loop</text>`, '</svg>')
  return out.join('\n')
}

/** Writes <date>.json, .md, .svg and .png (when rsvg-convert is there) into `dir`. */
export async function writeReport(r: Results, dir: string): Promise<string[]> {
  await mkdir(dir, {recursive: true})
  // one report per day, unless that day already has another run's: then the time tells them apart
  let stem = r.date.slice(0, 10)
  const previous = await readFile(join(dir, `${stem}.json`), 'utf8').then((t) => (JSON.parse(t) as Results).date, () => undefined)
  if (previous !== undefined && previous !== r.date) stem = `${stem}-${r.date.slice(11, 16).replace(':', '')}`
  const written: string[] = []
  const json = join(dir, `${stem}.json`)
  await writeFile(json, JSON.stringify(r, null, 2) + '\n')
  written.push(json)
  let chart: string | undefined
  if (r.kernels[0]?.stats && Object.keys(r.kernels[0].stats).length) {
    const svg = join(dir, `${stem}.svg`)
    await writeFile(svg, chartSvg(r))
    written.push(svg)
    try {
      await execa('rsvg-convert', ['-f', 'png', '-o', join(dir, `${stem}.png`), svg])
      chart = `${stem}.png`
      written.push(join(dir, chart))
    } catch {
      console.error('bench: no PNG chart (apt-get install librsvg2-bin); the SVG is there')
      chart = basename(svg)
    }
  }
  const md = join(dir, `${stem}.md`)
  await writeFile(md, markdown(r, chart))
  written.push(md)
  return written
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = process.argv[2]
  if (!file) {
    console.error('usage: tsx bench/report.ts bench/results/<date>.json')
    process.exit(2)
  }
  const r = JSON.parse(await readFile(file, 'utf8')) as Results
  const {summarize} = await import('./results.js')
  console.log((await writeReport(summarize(r), join(file, '..'))).join('\n'))
}
