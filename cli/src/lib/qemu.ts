/**
 * Runs QEMU for netboot: a PXE boot over user networking (QEMU's iPXE ROM fetches boot.ipxe by
 * TFTP, then kernel, initramfs and image come from our HTTP server on the host loopback, which the
 * guest reaches as 10.0.2.2) or a direct -kernel/-initrd boot. The serial console is captured
 * with the arrival time of every byte, so callers can wait for ordered console markers and
 * measure boot phases. Success is read from the console, never from QEMU's exit code (QEMU
 * exits 0 on SIGTERM, and -no-reboot turns a panic=-1 reboot into a clean exit).
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {createWriteStream, existsSync, type WriteStream} from 'node:fs'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {dirname, join, resolve} from 'node:path'
import {StringDecoder} from 'node:string_decoder'

import {NetbootError} from './errors.js'
import {formatCommand} from './exec.js'
import {
  BOOT_SCRIPT,
  buildKernelCmdline,
  ipxeScript,
  MANIFEST_FILE,
  qemuHttpBase,
  type CmdlineParams,
  type Manifest,
} from './pxe.js'
import {startServer, type RunningServer, type ServeFaults} from './serve.js'

export type Accel = 'tcg' | 'kvm'
export type Nic = 'virtio' | 'e1000'
export type Firmware = 'bios' | 'uefi'

/** UEFI firmware from Debian's ovmf package; its NIC ROMs (ipxe-qemu) carry iPXE for EFI too. */
export const OVMF = '/usr/share/ovmf/OVMF.fd'

export interface QemuOptions {
  /** QEMU binary (default qemu-system-x86_64, or $NETBOOT_QEMU). */
  qemu?: string
  accel?: Accel
  memoryMiB?: number
  nic?: Nic
  /** bios (SeaBIOS, the default) or uefi (OVMF). */
  firmware?: Firmware
  /** PXE boot from QEMU's NIC ROM, with the TFTP root and boot file of user networking. */
  pxe?: {tftpDir: string; bootfile?: string}
  /**
   * Put the NIC on this existing tap device instead of user networking, and PXE-boot from it
   * (DHCP and TFTP then come from a real server on the tap's network, e.g. dnsmasq on a bridge).
   */
  tap?: string
  /** Run QEMU inside this network namespace (`ip netns exec`), where the tap device lives. */
  netns?: string
  /** The NIC's MAC address (clients on one network need different ones). */
  mac?: string
  /**
   * The NIC's option ROM: false for none, so that the firmware's own PXE client boots (OVMF's
   * UEFI PXE, which then chainloads iPXE from the TFTP server); default QEMU's iPXE ROM.
   */
  nicRom?: false | string
  /** Direct boot instead of PXE. */
  kernel?: string
  initrd?: string
  append?: string
  /** Further QEMU arguments, appended last. */
  extraArgs?: string[]
  /** File the raw console is written to as it arrives. */
  consoleLog?: string
  /** Called with every console chunk as it arrives (e.g. to echo it to the terminal). */
  onConsole?: (chunk: string) => void
  /** Connect the terminal's stdin to the guest console (interactive boots). */
  interactive?: boolean
}

/** The QEMU command line for `opts` (without the binary). */
export function qemuArgs(opts: QemuOptions): string[] {
  const args = ['-accel', opts.accel ?? 'tcg', '-m', String(opts.memoryMiB ?? 512), '-nographic', '-no-reboot']
  if (opts.firmware === 'uefi') {
    if (!existsSync(OVMF)) {
      throw new NetbootError(`UEFI boot needs ${OVMF}, which is missing (Debian package ovmf)`, {suggestions: ['apt-get install ovmf', 'or run `netboot doctor --install`']})
    }
    args.push('-bios', OVMF)
  }
  let netdev = 'user,id=n0'
  if (opts.tap) {
    if (opts.pxe) throw new NetbootError('QEMU: a tap NIC gets its boot file from the network\'s own DHCP/TFTP server, not from pxe.tftpDir')
    if (!/^[\w.-]{1,15}$/.test(opts.tap)) throw new NetbootError(`bad tap device name "${opts.tap}"`)
    // script=no: the caller has already attached the tap to its bridge.
    netdev = `tap,id=n0,ifname=${opts.tap},script=no,downscript=no`
  } else if (opts.pxe) {
    if (/[,\s]/.test(opts.pxe.tftpDir)) {
      throw new NetbootError(`TFTP directory "${opts.pxe.tftpDir}" contains a comma or space, which QEMU's -netdev cannot take`)
    }
    netdev += `,tftp=${opts.pxe.tftpDir},bootfile=${opts.pxe.bootfile ?? BOOT_SCRIPT}`
  }
  let device = `${opts.nic === 'e1000' ? 'e1000' : 'virtio-net-pci'},netdev=n0`
  if (opts.mac !== undefined) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(opts.mac)) throw new NetbootError(`bad MAC address "${opts.mac}"`)
    device += `,mac=${opts.mac}`
  }
  if (opts.nicRom !== undefined) {
    if (opts.nicRom !== false && /[,\s]/.test(opts.nicRom)) throw new NetbootError(`NIC ROM path "${opts.nicRom}" contains a comma or space`)
    device += `,romfile=${opts.nicRom === false ? '' : opts.nicRom}`
  }
  args.push('-netdev', netdev, '-device', device)
  if (opts.kernel) {
    args.push('-kernel', opts.kernel)
    if (opts.initrd) args.push('-initrd', opts.initrd)
    if (opts.append) args.push('-append', opts.append)
  } else if (opts.pxe || opts.tap) {
    args.push('-boot', 'n')
  } else {
    throw new NetbootError('QEMU needs either a kernel (direct boot), a TFTP directory or a tap device (PXE boot)')
  }
  return [...args, ...(opts.extraArgs ?? [])]
}

export interface Match {
  /** The matched text. */
  text: string
  /** The whole console line holding the match. */
  line: string
  /** Milliseconds from QEMU's start to the arrival of the match. */
  atMs: number
}

export class ConsoleTimeoutError extends NetbootError {
  constructor(
    message: string,
    readonly marker: string,
    readonly consoleText: string,
  ) {
    super(message)
    this.name = 'ConsoleTimeoutError'
  }
}

export interface WaitOptions {
  timeoutMs: number
  /** Patterns that end the wait at once as a failure (e.g. a kernel panic). */
  failOn?: RegExp[]
  /** Name for error messages (default: the pattern). */
  name?: string
  /** Also match in the unfinished last line (a shell prompt); default: complete lines only. */
  partialLine?: boolean
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[A-Za-z=>78]|[\x00-\x08\x0b\x0c\x0e-\x1f]/g

/** Console text as tests see it: no escape sequences, no carriage returns or backspaces. */
export function cleanConsole(raw: string): string {
  return raw.replace(/\r/g, '').replace(ANSI, '')
}

/** Every QEMU still running: killed when this process exits, however it exits. */
const live = new Set<ChildProcess>()
let exitHookInstalled = false
function trackChild(child: ChildProcess): void {
  live.add(child)
  child.once('exit', () => live.delete(child))
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL')
    })
  }
}

/**
 * A running QEMU with its console. waitFor() calls consume the console in order: each one
 * searches from the end of the previous match, which is how ordered markers are checked.
 */
export class QemuVm {
  readonly argv: string[]
  readonly startedAt: number
  private readonly child: ChildProcess
  private text = ''
  /** (offset in `text`, ms since start) of each chunk, to time a match. */
  private readonly arrivals: Array<[number, number]> = []
  private cursor = 0
  private readonly waiters = new Set<() => void>()
  private log?: WriteStream
  private exitInfo?: {code: number | null; signal: NodeJS.Signals | null}
  readonly exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>

  private constructor(argv: string[], opts: QemuOptions) {
    this.argv = argv
    this.startedAt = Date.now()
    if (opts.consoleLog) this.log = createWriteStream(opts.consoleLog)
    this.child = spawn(argv[0], argv.slice(1), {stdio: [opts.interactive ? 'inherit' : 'pipe', 'pipe', 'pipe']})
    trackChild(this.child)
    // Serial output arrives in arbitrary pieces: keep split UTF-8 characters and escape
    // sequences whole until their end arrives.
    const decoder = new StringDecoder('utf8')
    let held = ''
    const onData = (buf: Buffer) => {
      this.log?.write(buf)
      const raw = decoder.write(buf)
      opts.onConsole?.(raw)
      let data = held + raw
      const partial = /\x1b(\[[0-9;?]*|[()])?$/.exec(data)
      held = partial ? data.slice(partial.index) : ''
      if (partial) data = data.slice(0, partial.index)
      const clean = cleanConsole(data)
      if (clean.length > 0) {
        this.arrivals.push([this.text.length, Date.now() - this.startedAt])
        this.text += clean
      }
      for (const w of this.waiters) w()
    }
    this.child.stdout?.on('data', onData)
    this.child.stderr?.on('data', onData)
    this.exited = new Promise((res) => {
      this.child.on('error', (err) => {
        onData(Buffer.from(`\n[netboot: cannot start ${argv[0]}: ${err.message}]\n`))
        this.exitInfo = {code: 127, signal: null}
        res(this.exitInfo)
        for (const w of this.waiters) w()
      })
      this.child.on('exit', (code, signal) => {
        this.exitInfo = {code, signal}
        res(this.exitInfo)
        for (const w of this.waiters) w()
      })
    })
  }

  /** Starts QEMU. The VM runs until it powers off, kill() is called, or QEMU fails. */
  static async start(opts: QemuOptions): Promise<QemuVm> {
    if (opts.consoleLog) await mkdir(dirname(opts.consoleLog), {recursive: true})
    const qemu = opts.qemu ?? process.env.NETBOOT_QEMU ?? 'qemu-system-x86_64'
    // `ip netns exec` and setpriv exec QEMU in place: the child (its pid, its signals) is QEMU
    // itself. --pdeathsig: a QEMU in a namespace must not outlive a caller that is killed
    // outright, or it keeps the namespace's tap device busy.
    const prefix = opts.netns ? ['ip', 'netns', 'exec', opts.netns, 'setpriv', '--pdeathsig', 'KILL', '--'] : []
    return new QemuVm([...prefix, qemu, ...qemuArgs(opts)], opts)
  }

  /** The command line, quoted for a shell: printed so that a failure can be reproduced. */
  get commandLine(): string {
    return formatCommand(this.argv[0], this.argv.slice(1))
  }

  /** Everything the console printed so far (escape sequences and CRs removed). */
  get console(): string {
    return this.text
  }

  get running(): boolean {
    return this.exitInfo === undefined
  }

  elapsedMs(): number {
    return Date.now() - this.startedAt
  }

  /** The last `n` lines of the console. */
  tail(n = 40): string {
    return this.text.split('\n').slice(-n).join('\n')
  }

  /** Milliseconds from start to the arrival of the console byte at `offset`. */
  timeAt(offset: number): number {
    let t = 0
    for (const [off, ms] of this.arrivals) {
      if (off > offset) break
      t = ms
    }
    return t
  }

  private lineAround(start: number, end: number): string {
    const s = this.text.lastIndexOf('\n', start - 1) + 1
    const e = this.text.indexOf('\n', end)
    return this.text.slice(s, e === -1 ? undefined : e)
  }

  /**
   * Finds `pattern` after `from`. Only complete lines are searched (unless `partial`, for
   * prompts without a newline, or once QEMU has exited): a line arrives in pieces, and a
   * pattern like /kernel=\S+/ must not match half of it.
   */
  private search(pattern: string | RegExp, from: number, partial = false): {index: number; text: string} | undefined {
    const hay = partial || !this.running ? this.text : this.text.slice(0, this.text.lastIndexOf('\n') + 1)
    if (typeof pattern === 'string') {
      const i = hay.indexOf(pattern, from)
      return i === -1 ? undefined : {index: i, text: pattern}
    }
    const re = new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`)
    re.lastIndex = from
    const m = re.exec(hay)
    return m ? {index: m.index, text: m[0]} : undefined
  }

  /**
   * Waits for `pattern` on the console after the previous match. Throws ConsoleTimeoutError
   * naming the marker, the QEMU command line and the console tail when it does not come in
   * time, QEMU exits first, or a failOn pattern shows up first.
   */
  async waitFor(pattern: string | RegExp, opts: WaitOptions): Promise<Match> {
    const name = opts.name ?? String(pattern)
    const started = Date.now()
    return new Promise<Match>((res, rej) => {
      let timer: NodeJS.Timeout | undefined
      const finish = (fn: () => void) => {
        this.waiters.delete(check)
        if (timer) clearTimeout(timer)
        fn()
      }
      const fail = (why: string) =>
        finish(() => rej(new ConsoleTimeoutError(this.failureReport(why, name), name, this.text)))
      const check = () => {
        const found = this.search(pattern, this.cursor, opts.partialLine)
        // A failure pattern counts only if it comes before the marker.
        for (const bad of opts.failOn ?? []) {
          const b = this.search(bad, this.cursor)
          if (b && (!found || b.index < found.index)) {
            this.cursor = b.index + b.text.length
            return fail(`saw "${this.lineAround(b.index, b.index + b.text.length).trim()}" while waiting for marker ${JSON.stringify(name)}`)
          }
        }
        if (found) {
          const end = found.index + found.text.length
          this.cursor = end
          return finish(() => res({text: found.text, line: this.lineAround(found.index, end), atMs: this.timeAt(end - 1)}))
        }
        if (!this.running) {
          const how = this.exitInfo?.signal ? `signal ${this.exitInfo.signal}` : `code ${this.exitInfo?.code}`
          return fail(`QEMU exited (${how}) while waiting for marker ${JSON.stringify(name)}`)
        }
      }
      this.waiters.add(check)
      timer = setTimeout(
        () => fail(`timed out after ${Math.round((Date.now() - started) / 1000)} s waiting for marker ${JSON.stringify(name)}`),
        opts.timeoutMs,
      )
      check()
    })
  }

  /** The message of a failed wait: what was awaited, how to reproduce it, the console tail. */
  failureReport(why: string, _marker: string): string {
    return [
      why,
      'reproduce with:',
      `  ${this.commandLine}`,
      'console tail:',
      ...this.tail(30).split('\n').map((l) => `  | ${l}`),
    ].join('\n')
  }

  /** Stops QEMU (SIGTERM, then SIGKILL) and waits for it. Safe to call more than once. */
  async kill(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM')
      const t = setTimeout(() => this.child.kill('SIGKILL'), 3000)
      await this.exited
      clearTimeout(t)
    }
    // A child of QEMU's (or of a wrapper script) could still hold the pipes open.
    this.child.stdout?.destroy()
    this.child.stderr?.destroy()
    await new Promise<void>((r) => (this.log ? this.log.end(() => r()) : r()))
    this.log = undefined
  }

  /** Waits up to `timeoutMs` for QEMU to exit by itself (e.g. after poweroff -f). */
  async waitForExit(timeoutMs: number): Promise<boolean> {
    if (!this.running) return true
    let timer: NodeJS.Timeout | undefined
    const done = await Promise.race([
      this.exited.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs))),
    ])
    if (timer) clearTimeout(timer)
    return done
  }
}

// ---------------------------------------------------------------------------------------------
// Boot phases

export interface Phase {
  name: string
  pattern: RegExp
}

/** The phases of a netboot PXE boot, in order, as console lines show them. */
export const BOOT_PHASES: Phase[] = [
  {name: 'iPXE start', pattern: /iPXE initialising devices|iPXE \(PCI/},
  {name: 'kernel start', pattern: /Linux version \S+/},
  {name: 'network up', pattern: /netboot: network up: /},
  {name: 'download start', pattern: /netboot: downloading /},
  {name: 'download done', pattern: /netboot: download 100%|netboot: verified sha256 /},
  {name: 'verified', pattern: /netboot: verified sha256 [0-9a-f]{64}/},
  {name: 'attached', pattern: /netboot: attached \S+ as \/dev\/loop\d+ format=\S+/},
  {name: 'mounted', pattern: /netboot: mounted \/dev\/loop\d+ on /},
  {name: 'switching root', pattern: /netboot: switching root/},
  {name: 'root init', pattern: /NETBOOT-ROOT-OK /},
]

export interface PhaseTiming {
  name: string
  /** Milliseconds from QEMU's start to the first line of the phase; undefined if not seen. */
  atMs?: number
  line?: string
}

/** Finds each phase's first console line (after the previous phase's) in a captured console. */
export function phaseTimings(consoleText: string, timeAt: (offset: number) => number): PhaseTiming[] {
  const out: PhaseTiming[] = []
  let from = 0
  for (const phase of BOOT_PHASES) {
    const re = new RegExp(phase.pattern.source, 'g')
    re.lastIndex = from
    const m = re.exec(consoleText)
    if (!m) {
      out.push({name: phase.name})
      continue
    }
    from = m.index + m[0].length
    const s = consoleText.lastIndexOf('\n', m.index - 1) + 1
    const e = consoleText.indexOf('\n', m.index)
    out.push({name: phase.name, atMs: timeAt(m.index), line: consoleText.slice(s, e === -1 ? undefined : e).trim()})
  }
  return out
}

export function formatPhases(phases: PhaseTiming[]): string {
  const rows: string[] = []
  let prev = 0
  for (const p of phases) {
    if (p.atMs === undefined) {
      rows.push(`  ${p.name.padEnd(15)}       -`)
      continue
    }
    rows.push(`  ${p.name.padEnd(15)} ${(p.atMs / 1000).toFixed(2).padStart(7)} s  (+${((p.atMs - prev) / 1000).toFixed(2)} s)`)
    prev = p.atMs
  }
  return rows.join('\n')
}

/** The facts of the demo root's marker line. */
export interface RootFacts {
  root: string
  format: string
  overlay: string
  write: string
  kernel: string
}

export const ROOT_MARKER = /NETBOOT-ROOT-OK root=(\S+) format=(\S+) overlay=(\S+) write=(\S+) kernel=(\S+)/

export function parseRootMarker(line: string): RootFacts | undefined {
  const m = ROOT_MARKER.exec(line)
  return m ? {root: m[1], format: m[2], overlay: m[3], write: m[4], kernel: m[5]} : undefined
}

/** Lines that end a boot as failed, whatever is being waited for. */
export const FATAL_LINES: RegExp[] = [/Kernel panic - not syncing/, /netboot: [a-z_]+ failed: .*/, /netboot: iPXE failed: .*/]

// ---------------------------------------------------------------------------------------------
// `netboot boot`: PXE-boot a tree

export interface BootOptions {
  /** The output directory holding tftp/ and http/ (from `netboot build`). */
  outDir: string
  timeoutSec?: number
  memoryMiB?: number
  nic?: Nic
  accel?: Accel
  firmware?: Firmware
  /** Wait for the demo root's marker and stop the VM (the demo root powers off). */
  check?: boolean
  /** /init parameters to set or override (onfail, retries, demo...). */
  params?: Omit<CmdlineParams, 'url' | 'manifest' | 'sha256' | 'extra'>
  /** Extra kernel parameters. */
  cmdlineExtra?: string[]
  onConsole?: (chunk: string) => void
  onServerLog?: (line: string) => void
  interactive?: boolean
  faults?: ServeFaults
}

export interface BootResult {
  ok: boolean
  /** Why the boot failed (first line of the failure report). */
  failure?: string
  marker?: string
  facts?: RootFacts
  phases: PhaseTiming[]
  consoleLog: string
  command: string
  cmdline: string
  httpUrl: string
  wallMs: number
}

/**
 * PXE-boots the tree in `outDir` in QEMU: serves out/http on a free loopback port, writes a
 * boot.ipxe for that port into <out>/boot/tftp (the tree's own boot.ipxe, written for the
 * deployment address, stays as it is), runs QEMU with user networking, and streams the console.
 * With `check`, it waits for the demo root's marker and returns ok/failure with phase timings;
 * without, it runs until QEMU exits.
 */
export async function bootTree(opts: BootOptions): Promise<BootResult> {
  const outDir = resolve(opts.outDir)
  const httpDir = join(outDir, 'http')
  const manifest = await readManifest(join(httpDir, MANIFEST_FILE))
  const consoleLog = join(outDir, 'boot-console.log')
  const timeoutMs = (opts.timeoutSec ?? 300) * 1000

  const server: RunningServer = await startServer({
    dir: httpDir,
    bind: '127.0.0.1',
    port: 0,
    logFile: join(outDir, 'boot-http.log'),
    onLog: opts.onServerLog,
    faults: opts.faults,
  })
  let vm: QemuVm | undefined
  const t0 = Date.now()
  // Stopping `netboot boot` (SIGTERM, SIGHUP; Ctrl-C when not interactive) stops the VM too; the
  // console wait then ends as "QEMU exited" and the server is closed below.
  const stop = () => void vm?.kill()
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const sig of signals) process.on(sig, stop)
  try {
    const httpBase = qemuHttpBase(server.port)
    const cmdline = bootCmdline(manifest, httpBase, {...(opts.check ? {demo: 'poweroff', onfail: 'poweroff'} : {}), ...opts.params}, opts.cmdlineExtra)
    const tftpDir = join(outDir, 'boot', 'tftp')
    await mkdir(tftpDir, {recursive: true})
    await writeFile(join(tftpDir, BOOT_SCRIPT), ipxeScript({httpBase, cmdline}))

    vm = await QemuVm.start({
      accel: opts.accel,
      memoryMiB: opts.memoryMiB,
      nic: opts.nic,
      firmware: opts.firmware,
      pxe: {tftpDir},
      consoleLog,
      onConsole: opts.onConsole,
      interactive: opts.interactive,
    })
    const base = {consoleLog, command: vm.commandLine, cmdline, httpUrl: server.url}

    if (!opts.check) {
      await vm.exited
      return {ok: true, phases: timings(vm), ...base, wallMs: Date.now() - t0}
    }
    try {
      const m = await vm.waitFor(ROOT_MARKER, {timeoutMs, failOn: FATAL_LINES, name: 'NETBOOT-ROOT-OK'})
      const facts = parseRootMarker(m.line)
      // The demo root powers off right after its marker; give it a moment to do so.
      await vm.waitForExit(10_000)
      return {ok: true, marker: m.line.trim(), facts, phases: timings(vm), ...base, wallMs: Date.now() - t0}
    } catch (err) {
      if (!(err instanceof ConsoleTimeoutError)) throw err
      return {ok: false, failure: err.message.split('\n')[0], phases: timings(vm), ...base, wallMs: Date.now() - t0}
    }
  } finally {
    for (const sig of signals) process.off(sig, stop)
    await vm?.kill()
    await server.close()
  }
}

function timings(vm: QemuVm): PhaseTiming[] {
  return phaseTimings(vm.console, (offset) => vm.timeAt(offset))
}

/**
 * The kernel command line for booting a tree served at `httpBase`: the tree's own parameters
 * (from its manifest), the URLs pointed at `httpBase`, then `overrides` and `extra`.
 */
export function bootCmdline(
  manifest: Manifest,
  httpBase: string,
  overrides: Omit<CmdlineParams, 'url' | 'manifest' | 'extra'> = {},
  extra: string[] = [],
): string {
  const inherited = parseKernelCmdline(manifest.kernel.cmdline)
  return buildKernelCmdline({
    ...inherited.params,
    ...overrides,
    url: `${httpBase}/${manifest.image}`,
    manifest: `${httpBase}/${MANIFEST_FILE}`,
    extra: [...inherited.extra, ...extra],
  })
}

/** Reads and checks out/http/manifest.json. */
export async function readManifest(path: string): Promise<Manifest> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch {
    throw new NetbootError(`no PXE tree: ${path} does not exist`, {exit: 2, suggestions: ['build it first: netboot build']})
  }
  const m = JSON.parse(text) as Manifest
  if (m.version !== 1 || typeof m.image !== 'string' || typeof m.kernel?.cmdline !== 'string') {
    throw new NetbootError(`${path} is not a netboot manifest (version 1)`, {exit: 2})
  }
  return m
}

const PARAM_KEYS: Record<string, keyof CmdlineParams> = {
  'netboot.url': 'url',
  'netboot.manifest': 'manifest',
  'netboot.sha256': 'sha256',
  'netboot.format': 'format',
  'netboot.fstype': 'fstype',
  'netboot.overlay': 'overlay',
  'netboot.retries': 'retries',
  'netboot.onfail': 'onfail',
  'netboot.init': 'init',
  'netboot.demo': 'demo',
  console: 'console',
  ip: 'ip',
}

/** The inverse of buildKernelCmdline: known parameters, and the other words as `extra`. */
export function parseKernelCmdline(cmdline: string): {params: Partial<CmdlineParams>; extra: string[]} {
  const params: Record<string, unknown> = {}
  const extra: string[] = []
  for (const word of cmdline.trim().split(/\s+/).filter(Boolean)) {
    const eq = word.indexOf('=')
    const key = eq === -1 ? word : word.slice(0, eq)
    const value = eq === -1 ? '' : word.slice(eq + 1)
    const field = PARAM_KEYS[key]
    if (field) params[field] = field === 'retries' ? Number(value) : value
    else if (key !== 'panic') extra.push(word) // panic=-1 is always added
  }
  return {params: params as Partial<CmdlineParams>, extra}
}
