/**
 * A private lab network for boot tests with real PXE servers: a network namespace holding a
 * bridge (the lab LAN, with the boot server's address on it) and tap devices (one per client
 * VM), and the servers of a real deployment running inside it: dnsmasq with the configs
 * `netboot build` generated, and `netboot serve` bound to the bridge address. QEMU joins with
 * `-netdev tap` from inside the namespace (QemuOptions.netns + tap).
 *
 * Nothing outside the namespace is touched, and the only addresses used are the namespace's own
 * (10.77.0.0/24 and fd77::/64 by default). destroy() stops every process in the namespace and
 * deletes it with its devices; destroyAll() (for test.after.always) and a process exit hook do
 * the same for every namespace this process created, however a test ends. Needs root.
 */
import {spawn, spawnSync, type ChildProcess} from 'node:child_process'
import {createWriteStream, type WriteStream} from 'node:fs'
import {join} from 'node:path'

import {execa} from 'execa'

import {PACKAGE_ROOT} from '../../cli/src/lib/config.js'
import type {AccessLogEntry} from '../../cli/src/lib/serve.js'

/** Namespaces are named <prefix><pid>-<n>, so leftovers of a dead test run can be recognised. */
const NAME_PREFIX = 'netboot-test-'
export const DNSMASQ = '/usr/sbin/dnsmasq'

// ---------------------------------------------------------------------------------------------
// Processes inside the namespace

/** A long-running process (server) with its output kept, to wait for lines in it. */
export class Daemon {
  private text = ''
  private readonly waiters = new Set<() => void>()
  private exitInfo?: string
  readonly exited: Promise<void>
  private readonly log?: WriteStream

  constructor(
    readonly name: string,
    readonly argv: string[],
    private readonly child: ChildProcess,
    logFile?: string,
  ) {
    if (logFile) this.log = createWriteStream(logFile)
    const onData = (buf: Buffer) => {
      this.log?.write(buf)
      this.text += buf.toString('utf8')
      for (const w of this.waiters) w()
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    this.exited = new Promise<void>((res) => {
      child.on('error', (err) => {
        this.exitInfo ??= `could not start: ${err.message}`
        res()
      })
      child.on('exit', (code, signal) => {
        this.exitInfo = signal ? `killed by ${signal}` : `exited with code ${code}`
        res()
      })
    }).then(() => {
      for (const w of this.waiters) w()
    })
  }

  get pid(): number | undefined {
    return this.child.pid
  }

  get output(): string {
    return this.text
  }

  get running(): boolean {
    return this.exitInfo === undefined
  }

  /** Output lines matching `re`. */
  lines(re: RegExp): string[] {
    return this.text.split('\n').filter((l) => re.test(l))
  }

  /** Waits for a line matching `re`; fails naming the daemon, its command and its output when it exits first or time runs out. */
  async waitForLine(re: RegExp, timeoutMs: number): Promise<string> {
    return new Promise((res, rej) => {
      const fail = (why: string) => {
        done()
        rej(new Error([`${this.name} ${why} while waiting for ${re}`, `command: ${this.argv.join(' ')}`, 'output:', ...this.text.trimEnd().split('\n').slice(-20).map((l) => `  | ${l}`)].join('\n')))
      }
      const check = () => {
        const line = this.text.split('\n').find((l) => re.test(l))
        if (line !== undefined) {
          done()
          res(line)
        } else if (!this.running) fail(this.exitInfo!)
      }
      const timer = setTimeout(() => fail(`gave no sign of life in ${timeoutMs / 1000} s`), timeoutMs)
      const done = () => {
        clearTimeout(timer)
        this.waiters.delete(check)
      }
      this.waiters.add(check)
      check()
    })
  }

  /** SIGTERM, SIGKILL after 3 s; waits for the exit. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.running && this.child.pid !== undefined) {
      this.child.kill('SIGTERM')
      const t = setTimeout(() => this.child.kill('SIGKILL'), 3000)
      await this.exited
      clearTimeout(t)
    }
    await new Promise<void>((r) => (this.log ? this.log.end(() => r()) : r()))
  }
}

// ---------------------------------------------------------------------------------------------
// The namespace

export interface LabNetOptions {
  /** Boot server address on the bridge, with prefix length (default 10.77.0.1/24). */
  address?: string
  /**
   * IPv6 address on the bridge (default fd77::1/64): dnsmasq's router advertisements
   * (`dhcp-range=::,constructor:br0,ra-only`) are built from it, and iPXE only stops waiting
   * for an IPv6 router once it hears one.
   */
  address6?: string
  /** Number of tap devices (client NICs), tap0..tapN-1 (default 1). */
  taps?: number
}

const live = new Set<LabNet>()
let counter = 0
let exitHookInstalled = false

export class LabNet {
  readonly bridge = 'br0'
  private readonly daemons: Daemon[] = []
  private destroyed = false

  private constructor(
    readonly name: string,
    readonly serverAddress: string,
    readonly taps: string[],
  ) {}

  /** Creates the namespace, bridge and taps. On any failure, what was made is removed again. */
  static async create(opts: LabNetOptions = {}): Promise<LabNet> {
    installExitHook()
    await removeStaleNamespaces()
    const address = opts.address ?? '10.77.0.1/24'
    const address6 = opts.address6 ?? 'fd77::1/64'
    const name = `${NAME_PREFIX}${process.pid}-${counter++}`
    const taps = Array.from({length: opts.taps ?? 1}, (_, i) => `tap${i}`)
    const net = new LabNet(name, address.split('/')[0]!, taps)
    live.add(net)
    try {
      await ip('netns', 'add', name)
      await ip('-n', name, 'link', 'set', 'lo', 'up')
      // No STP and no forwarding delay: a port forwards as soon as it is up, or the first DHCP
      // packets of a client would be dropped.
      await ip('-n', name, 'link', 'add', net.bridge, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0')
      await ip('-n', name, 'addr', 'add', address, 'dev', net.bridge)
      // nodad: usable at once instead of after duplicate address detection.
      await ip('-n', name, 'addr', 'add', address6, 'dev', net.bridge, 'nodad')
      await ip('-n', name, 'link', 'set', net.bridge, 'up')
      for (const tap of taps) {
        await net.exec('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap'])
        await ip('-n', name, 'link', 'set', tap, 'master', net.bridge)
        await ip('-n', name, 'link', 'set', tap, 'up')
      }
    } catch (err) {
      await net.destroy()
      throw err
    }
    return net
  }

  /** Runs a command inside the namespace to completion. */
  async exec(cmd: string, args: string[]): Promise<string> {
    const r = await execa('ip', ['netns', 'exec', this.name, cmd, ...args])
    return r.stdout
  }

  /** Starts a long-running process inside the namespace; destroy() stops it. */
  spawn(name: string, cmd: string, args: string[], opts: {cwd?: string; logFile?: string} = {}): Daemon {
    if (this.destroyed) throw new Error(`lab network ${this.name} is already destroyed`)
    // `ip netns exec` and setpriv exec the command in place, so the child's pid is the daemon's.
    // --pdeathsig: the daemon dies with this process even when it is killed without a chance
    // to clean up (the namespace itself is then removed by the next run, see removeStaleNamespaces).
    const argv = ['ip', 'netns', 'exec', this.name, 'setpriv', '--pdeathsig', 'KILL', '--', cmd, ...args]
    const child = spawn(argv[0]!, argv.slice(1), {cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe']})
    const d = new Daemon(name, argv, child, opts.logFile)
    this.daemons.push(d)
    return d
  }

  /**
   * Stops every process this namespace runs (its daemons, then anything else inside, such as
   * QEMU), deletes the taps and the bridge, then the namespace. Never throws; safe to call twice.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    await Promise.all(this.daemons.map((d) => d.stop().catch(() => {})))
    await killNamespacePids(this.name)
    for (const dev of [...this.taps, this.bridge]) await ip('-n', this.name, 'link', 'del', dev).catch(() => {})
    await ip('netns', 'del', this.name).catch(() => {})
    live.delete(this)
  }
}

/** Destroys every lab network this process created (test.after.always). */
export async function destroyAll(): Promise<void> {
  await Promise.all([...live].map((n) => n.destroy()))
}

/** Names of the namespaces that exist right now. */
export async function namespaces(): Promise<string[]> {
  const {stdout} = await execa('ip', ['netns', 'list'])
  return stdout
    .split('\n')
    .map((l) => l.split(/\s+/)[0]!)
    .filter(Boolean)
}

async function ip(...args: string[]): Promise<void> {
  await execa('ip', args)
}

async function killNamespacePids(ns: string): Promise<void> {
  // Only processes inside a namespace this test created: they are all the test's own.
  const pids = async () => {
    const r = await execa('ip', ['netns', 'pids', ns], {reject: false})
    return r.stdout.split(/\s+/).filter(Boolean).map(Number)
  }
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    const left = await pids()
    if (left.length === 0) return
    for (const pid of left) {
      try {
        process.kill(pid, signal)
      } catch {
        // already gone
      }
    }
    for (let i = 0; i < 30 && (await pids()).length > 0; i++) await new Promise((r) => setTimeout(r, 100))
  }
}

/** Namespaces of earlier test runs whose process is gone (killed before it could clean up). */
async function removeStaleNamespaces(): Promise<void> {
  for (const ns of await namespaces()) {
    const pid = Number(new RegExp(`^${NAME_PREFIX}(\\d+)-\\d+$`).exec(ns)?.[1] ?? NaN)
    if (!Number.isInteger(pid) || pid === process.pid || processAlive(pid)) continue
    await killNamespacePids(ns)
    await ip('netns', 'del', ns).catch(() => {})
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** A test process that dies without its after hooks still takes its namespaces (and their processes) along. */
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const net of live) {
      const r = spawnSync('ip', ['netns', 'pids', net.name], {encoding: 'utf8'})
      for (const pid of (r.stdout ?? '').split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {
          // gone
        }
      }
      spawnSync('ip', ['netns', 'del', net.name])
    }
  })
}

// ---------------------------------------------------------------------------------------------
// Servers of a real deployment

/**
 * Runs dnsmasq in the namespace with `conf` unchanged. The command-line options only say how
 * this instance runs: in the foreground, logging to stderr, leases and pid in the test's own
 * directory instead of the host's /var/lib/misc and /run. Resolves once its DHCP sockets are bound.
 */
export async function startDnsmasq(net: LabNet, opts: {name: string; conf: string; workDir: string}): Promise<Daemon> {
  const d = net.spawn(
    opts.name,
    DNSMASQ,
    [
      `--conf-file=${opts.conf}`,
      '--no-daemon',
      '--log-facility=-',
      `--dhcp-leasefile=${join(opts.workDir, `${opts.name}.leases`)}`,
      `--pid-file=${join(opts.workDir, `${opts.name}.pid`)}`,
    ],
    {logFile: join(opts.workDir, `${opts.name}.log`)},
  )
  // Printed after the DHCP sockets are bound (every generated config has bind-interfaces);
  // a bad config or a port in use makes dnsmasq exit first instead.
  await d.waitForLine(/DHCP, sockets bound exclusively to interface/, 15_000)
  return d
}

/** `netboot serve` as a process inside the namespace, with its access log. */
export class ServeDaemon {
  constructor(
    readonly daemon: Daemon,
    readonly url: string,
  ) {}

  /** Requests so far, parsed from the access log lines `netboot serve` prints. */
  requests(): Array<Pick<AccessLogEntry, 'remote' | 'method' | 'path' | 'status' | 'bytes'>> {
    const out = []
    for (const line of this.daemon.output.split('\n')) {
      const m = /^\S+ (\S+) "(\S+) (\S+)" (\d+) (\d+)/.exec(line)
      if (m) out.push({remote: m[1]!, method: m[2]!, path: m[3]!, status: Number(m[4]), bytes: Number(m[5])})
    }
    return out
  }
}

/**
 * Runs the `netboot serve` command (this checkout's source, through tsx) inside the namespace,
 * bound to `bind`:`port`, serving `dir`. Resolves once it listens.
 */
export async function startServe(net: LabNet, opts: {dir: string; bind: string; port: number; logFile?: string}): Promise<ServeDaemon> {
  const argv = JSON.stringify(['--dir', opts.dir, '--bind', opts.bind, '--port', String(opts.port)])
  const script = `const {default: Serve} = await import(${JSON.stringify(join(PACKAGE_ROOT, 'cli/src/commands/serve.ts'))})
await Serve.run(${argv}, ${JSON.stringify(PACKAGE_ROOT)})`
  const d = net.spawn('netboot serve', process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {cwd: PACKAGE_ROOT, logFile: opts.logFile})
  const line = await d.waitForLine(/^serving .* at http:\/\/\S+\//, 30_000)
  return new ServeDaemon(d, /at (http:\/\/\S+?)\/? /.exec(line)![1]!)
}
