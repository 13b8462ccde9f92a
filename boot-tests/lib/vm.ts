/**
 * VM helper for the boot tests: boots a netboot tree in QEMU (over PXE like `netboot boot`, or
 * directly with -kernel/-initrd, which skips the ~6 s of iPXE), serves its http/ directory
 * (optionally misbehaving), and checks an ordered list of console markers, each with its own
 * timeout. A failed marker names the marker, the QEMU command line to reproduce it, the console
 * tail and the HTTP requests the guest made. QEMU is always killed.
 *
 * Environment:
 *   NETBOOT_OUT            the PXE tree to boot (default ./out; tftp/, http/ from `netboot build`)
 *   NETBOOT_ACCEL          tcg (default) or kvm
 *   NETBOOT_TIMEOUT_SCALE  multiply every marker timeout (slow machines), default 1
 *   NETBOOT_QEMU           QEMU binary (default qemu-system-x86_64)
 *   NETBOOT_KEEP_CONSOLE   directory to keep every console log in (default: a temp dir, removed)
 */
import type {ExecutionContext} from 'ava'
import {cp, mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import {BOOT_SCRIPT, ipxeScript, MANIFEST_FILE, qemuHttpBase, type CmdlineParams, type Manifest} from '../../cli/src/lib/pxe.js'
import {
  bootCmdline,
  cleanConsole,
  ConsoleTimeoutError,
  FATAL_LINES,
  parseRootMarker,
  phaseTimings,
  QemuVm,
  readManifest,
  type Accel,
  type Firmware,
  type Match,
  type Nic,
  type PhaseTiming,
  type RootFacts,
} from '../../cli/src/lib/qemu.js'
import {startServer, type RunningServer, type ServeFaults} from '../../cli/src/lib/serve.js'

export interface Marker {
  /** Name used in failure messages ("root marker"). */
  name: string
  match: string | RegExp
  /** Seconds this marker may take, counted from the previous one (scaled by NETBOOT_TIMEOUT_SCALE). */
  timeoutSec: number
  /** Lines that fail this marker at once; default: kernel panic and "netboot: <step> failed:". */
  failOn?: RegExp[]
}

export interface VmConfig {
  /** PXE tree (default $NETBOOT_OUT or ./out). */
  tree?: string
  /** Directory to serve instead of <tree>/http (e.g. a modified copy from copyHttpDir). */
  httpDir?: string
  /** 'pxe' (default) boots from the NIC ROM; 'direct' passes -kernel/-initrd from the served dir. */
  mode?: 'pxe' | 'direct'
  memoryMiB?: number
  nic?: Nic
  accel?: Accel
  /** bios (default) or uefi (OVMF). */
  firmware?: Firmware
  /** /init parameters on top of the tree's (onfail, retries, sha256, demo...). Default demo=poweroff, onfail=poweroff. */
  params?: Omit<CmdlineParams, 'url' | 'manifest' | 'extra'>
  cmdlineExtra?: string[]
  /** Make the HTTP server misbehave (refuse at first, cut bodies, throttle). */
  faults?: ServeFaults
  /** Further QEMU arguments. */
  qemuArgs?: string[]
}

export interface BootedVm {
  vm: QemuVm
  server: RunningServer
  cmdline: string
  /** Checks markers in order (continuing after earlier expect calls). */
  expect(markers: Marker[]): Promise<Match[]>
  /** The full console so far. */
  readonly console: string
  phases(): PhaseTiming[]
  /** Kills QEMU, stops the server, removes temporary files. */
  close(): Promise<void>
}

export function timeoutScale(): number {
  const s = Number(process.env.NETBOOT_TIMEOUT_SCALE ?? '1')
  return Number.isFinite(s) && s > 0 ? s : 1
}

export function defaultTree(): string {
  return resolve(process.env.NETBOOT_OUT ?? 'out')
}

/** Boots a VM as configured. Prefer withVm(), which always cleans up. */
export async function bootVm(cfg: VmConfig = {}): Promise<BootedVm> {
  const tree = resolve(cfg.tree ?? defaultTree())
  const httpDir = resolve(cfg.httpDir ?? join(tree, 'http'))
  const manifest: Manifest = await readManifest(join(httpDir, MANIFEST_FILE)).catch(async (err) => {
    // A test may have removed the manifest on purpose; the tree's own still describes the boot.
    if (cfg.httpDir) return readManifest(join(tree, 'http', MANIFEST_FILE))
    throw err
  })
  const work = await mkdtemp(join(tmpdir(), 'netboot-vm-'))
  const keep = process.env.NETBOOT_KEEP_CONSOLE
  const consoleLog = keep ? join(resolve(keep), `console-${Date.now()}-${process.pid}.log`) : join(work, 'console.log')
  if (keep) await mkdir(resolve(keep), {recursive: true})

  const server = await startServer({dir: httpDir, bind: '127.0.0.1', port: 0, faults: cfg.faults})
  let vm: QemuVm | undefined
  let cmdline: string
  try {
    const httpBase = qemuHttpBase(server.port)
    cmdline = bootCmdline(manifest, httpBase, {demo: 'poweroff', onfail: 'poweroff', ...cfg.params}, cfg.cmdlineExtra)
    const common = {
      accel: cfg.accel ?? (process.env.NETBOOT_ACCEL as Accel | undefined) ?? 'tcg',
      memoryMiB: cfg.memoryMiB ?? 512,
      nic: cfg.nic ?? 'virtio',
      firmware: cfg.firmware,
      consoleLog,
      extraArgs: cfg.qemuArgs,
    }
    if ((cfg.mode ?? 'pxe') === 'pxe') {
      const tftpDir = join(work, 'tftp')
      await mkdir(tftpDir)
      await writeFile(join(tftpDir, BOOT_SCRIPT), ipxeScript({httpBase, cmdline}))
      vm = await QemuVm.start({...common, pxe: {tftpDir}})
    } else {
      const kernel = join(httpDir, manifest.kernel.file)
      const initrd = join(httpDir, manifest.kernel.initramfs)
      vm = await QemuVm.start({...common, kernel, initrd, append: cmdline})
    }
  } catch (err) {
    await vm?.kill()
    await server.close()
    await rm(work, {recursive: true, force: true})
    throw err
  }

  const running = vm
  let closed = false
  return {
    vm: running,
    server,
    cmdline,
    get console() {
      return running.console
    },
    phases: () => phaseTimings(running.console, (o) => running.timeAt(o)),
    expect: (markers: Marker[]) =>
      expectMarkers(running, markers, () => {
        const requests = server.requests.slice(-10).map((r) => `  ${r.method} ${r.path} -> ${r.status} (${r.bytes} bytes)`)
        return ['HTTP requests (last 10):', ...(requests.length > 0 ? requests : ['  (none)'])]
      }),
    async close() {
      if (closed) return
      closed = true
      await running.kill()
      await server.close()
      await rm(work, {recursive: true, force: true})
    },
  }
}

/**
 * Checks `markers` in order on a running VM's console (continuing after earlier calls), each
 * with its own timeout. A failure names the marker, the QEMU command line and the console tail,
 * plus the lines `context` gives (what the servers saw).
 */
export async function expectMarkers(vm: QemuVm, markers: Marker[], context?: () => string[]): Promise<Match[]> {
  const scale = timeoutScale()
  const matches: Match[] = []
  for (const m of markers) {
    try {
      matches.push(await vm.waitFor(m.match, {name: m.name, timeoutMs: m.timeoutSec * 1000 * scale, failOn: m.failOn ?? FATAL_LINES}))
    } catch (err) {
      if (err instanceof ConsoleTimeoutError && context) err.message = [err.message, ...context()].join('\n')
      throw err
    }
  }
  return matches
}

/** Boots, runs `fn`, and always kills QEMU and stops the server, whatever `fn` does. */
export async function withVm<T>(cfg: VmConfig, fn: (vm: BootedVm) => Promise<T>): Promise<T> {
  const booted = await bootVm(cfg)
  try {
    return await fn(booted)
  } finally {
    await booted.close()
  }
}

/** Markers of a successful boot to the demo root, in order, per the project contract. */
export function demoRootMarkers(opts: {pxe?: boolean; format?: 'qcow2' | 'raw'} = {}): Marker[] {
  const fmt = opts.format ?? 'qcow2'
  return [
    // iPXE's last line ("netboot: iPXE booting the kernel") loses its tail when the kernel resets
    // the serial port, so the marker is iPXE's complete "...initramfs.img... ok" line before it.
    ...(opts.pxe === false ? [] : [{name: 'iPXE loads kernel and initramfs', match: /\/initramfs\.img\.\.\. ok/, timeoutSec: 60}]),
    {name: 'kernel start', match: /Linux version \S+/, timeoutSec: 60},
    {name: 'network up', match: /netboot: network up: \S+ \d+\.\d+\.\d+\.\d+/, timeoutSec: 60},
    {name: 'download start', match: /netboot: downloading \S+ \(\d+ bytes\)/, timeoutSec: 60},
    {name: 'verified', match: /netboot: verified sha256 [0-9a-f]{64}/, timeoutSec: 120},
    {name: 'attached', match: new RegExp(`netboot: attached \\S+ as /dev/loop\\d+ format=${fmt}`), timeoutSec: 30},
    {name: 'mounted', match: /netboot: mounted \/dev\/loop\d+ on \S+ type ext4/, timeoutSec: 30},
    {name: 'switching root', match: 'netboot: switching root', timeoutSec: 30},
    {name: 'demo data check', match: /NETBOOT-DATA-(OK|BAD)/, timeoutSec: 60},
    {name: 'root marker', match: /NETBOOT-ROOT-OK root=\S+ format=\S+ overlay=\S+ write=\S+ kernel=\S+/, timeoutSec: 30},
  ]
}

/**
 * The console of a boot that reached the demo root, checked line by line in order: the image
 * verified with the manifest's sha256, attached as qcow2 (format from sysfs), mounted, an
 * overlay on top, the demo root's data checksums OK, and its marker naming the same loop
 * device with format=qcow2, overlay=yes, write=ok.
 */
export function assertDemoRoot(t: ExecutionContext, consoleText: string, manifest: Manifest): void {
  const text = cleanConsole(consoleText)
  const lines = text.split('\n').map((l) => l.trimEnd())
  const at = (re: RegExp) => lines.findIndex((l) => re.test(l))
  const imageSha = manifest.files[manifest.image]!.sha256

  t.deepEqual(lines.filter((l) => / failed: /.test(l) && l.startsWith('netboot: ')), [], 'no failure lines')
  const verified = at(new RegExp(`^netboot: verified sha256 ${imageSha}$`))
  const attachedAt = at(/^netboot: attached root\.qcow2 as \/dev\/loop\d+ format=qcow2$/)
  t.true(verified >= 0, 'verified the manifest sha256')
  t.true(attachedAt > verified, 'attached after verifying')
  const loop = /as (\/dev\/loop\d+) /.exec(lines[attachedAt] ?? '')?.[1]
  const mounted = lines.indexOf(`netboot: mounted ${loop} on /newroot/lower type ext4`)
  const overlay = lines.indexOf('netboot: overlay on /newroot: ext4 image below, tmpfs above')
  const switching = lines.indexOf('netboot: switching root')
  const dataOk = lines.indexOf('NETBOOT-DATA-OK')
  const markerAt = at(/^NETBOOT-ROOT-OK /)
  t.true(mounted > attachedAt, 'mounted the loop device')
  t.true(overlay > mounted, 'overlay over it')
  t.true(switching > overlay, 'switched root')
  t.true(dataOk > switching, 'the demo root checked its files: NETBOOT-DATA-OK')
  t.false(lines.includes('NETBOOT-DATA-BAD'))
  t.true(markerAt > dataOk, 'root marker')

  const facts = parseRootMarker(lines[markerAt] ?? '')
  t.truthy(facts)
  t.is(facts?.root, loop, 'the root is the attached loop device')
  t.is(facts?.format, 'qcow2', 'sysfs says the loop device uses the qcow2 format')
  t.is(facts?.overlay, 'yes')
  t.is(facts?.write, 'ok', 'a file written to / reads back')
  if (manifest.kernel.release) t.is(facts?.kernel, manifest.kernel.release)
}

/** A failure of /init: the exact contract line "netboot: <step> failed: <reason>". */
export function failureMarker(step: string, reason: string | RegExp, timeoutSec = 180): Marker {
  const r = typeof reason === 'string' ? escapeRegExp(reason) : reason.source
  // The failure itself is what is awaited here, so only a panic fails it early.
  return {name: `${step} failure`, match: new RegExp(`netboot: ${step} failed: ${r}`), timeoutSec, failOn: [/Kernel panic - not syncing/]}
}

export function rootFacts(matches: Match[]): RootFacts | undefined {
  for (const m of matches) {
    const f = parseRootMarker(m.line)
    if (f) return f
  }
  return undefined
}

/**
 * A private copy of a tree's http/ directory for a test to break: remove files, corrupt bytes
 * at known offsets, rewrite the manifest. Returns its path (remove it with rm when done).
 */
export async function copyHttpDir(
  tree: string = defaultTree(),
  edits: {
    remove?: string[]
    corrupt?: Array<{file: string; offset: number; bytes: Buffer}>
    manifest?: (m: Manifest) => Manifest
  } = {},
): Promise<string> {
  const to = await mkdtemp(join(tmpdir(), 'netboot-http-'))
  await cp(join(resolve(tree), 'http'), to, {recursive: true})
  for (const f of edits.remove ?? []) await rm(join(to, f), {force: true})
  for (const c of edits.corrupt ?? []) {
    const buf = await readFile(join(to, c.file))
    c.bytes.copy(buf, c.offset)
    await writeFile(join(to, c.file), buf)
  }
  if (edits.manifest) {
    const m = JSON.parse(await readFile(join(to, MANIFEST_FILE), 'utf8')) as Manifest
    await writeFile(join(to, MANIFEST_FILE), `${JSON.stringify(edits.manifest(m), null, 2)}\n`)
  }
  return to
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
