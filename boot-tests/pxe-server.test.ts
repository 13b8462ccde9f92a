// A lab deployment in miniature: `netboot build --http-url http://10.77.0.1:8080` lays out the
// tree and writes the dnsmasq configs for that network; a private network namespace stands in
// for the lab LAN (bridge br0 with the boot server's address, one tap device per client), and
// the real servers run inside it: dnsmasq with the generated config unchanged, `netboot serve`
// bound to the bridge address. Clients are QEMU VMs on the taps, PXE-booting through dnsmasq.
//
//  - BIOS, full DHCP: QEMU's iPXE ROM gets an address and boot.ipxe from dnsmasq.
//  - two BIOS clients at once from the same servers, each with its own address.
//  - proxy DHCP: addresses come from a plain DHCP server (a second dnsmasq that knows nothing of
//    PXE), the boot information from dnsmasq with the generated dnsmasq-proxy.conf.
//  - UEFI: OVMF's own PXE client (no iPXE ROM on the NIC) is handed snponly.efi (Debian's ipxe
//    package, copied into the tree) by the generated config, which then fetches boot.ipxe, and
//    the kernel's EFI stub boots with the initramfs iPXE downloaded (also in proxy mode).
//  - `netboot boot --firmware uefi`: OVMF with QEMU's own iPXE EFI ROM on user networking.
//  - nginx instead of `netboot serve`, with the generated site config: nginx -t, Range, a boot.
//  - a test that fails half-way leaves no server, VM, device or namespace behind.
//
// Needs root (namespaces, taps) and dnsmasq. Uses no address outside the namespaces it creates
// (but loopback, for the user-networking UEFI boot), and removes them, their servers and VMs
// however a test ends.
import test, {type ExecutionContext} from 'ava'
import {execa} from 'execa'
import {existsSync} from 'node:fs'
import {chmod, mkdtemp, open, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import Boot from '../cli/src/commands/boot.js'
import {findOnPath} from '../cli/src/lib/doctor.js'
import {IPXE_EFI, type Manifest} from '../cli/src/lib/pxe.js'
import {formatPhases, OVMF, phaseTimings, QemuVm, type BootResult, type Firmware} from '../cli/src/lib/qemu.js'
import {buildTree, keepConsole, runCommand} from './lib/build.js'
import {DNSMASQ, destroyAll, LabNet, namespaces, startDnsmasq, startServe, type Daemon, type ServeDaemon} from './lib/netns.js'
import {assertDemoRoot, demoRootMarkers, expectMarkers} from './lib/vm.js'

const SERVER = '10.77.0.1'
const HTTP_PORT = 8080
const HTTP_BASE = `http://${SERVER}:${HTTP_PORT}`
const NGINX = '/usr/sbin/nginx'

const work = await mkdtemp(join(tmpdir(), 'netboot-pxe-server-'))
// dnsmasq drops root for user nobody before serving TFTP: the tree must be readable to it.
await chmod(work, 0o755)
const out = join(work, 'out')
test.after.always(async () => {
  await destroyAll()
  await rm(work, {recursive: true, force: true})
})

let built: Promise<Manifest> | undefined
/** The tree, built once: clients power off after the root's marker so a boot ends by itself. */
function tree(): Promise<Manifest> {
  built ??= buildTree(out, {httpBase: HTTP_BASE, params: {demo: 'poweroff', onfail: 'poweroff'}}).then(async () =>
    JSON.parse(await readFile(join(out, 'http', 'manifest.json'), 'utf8')) as Manifest,
  )
  return built
}

function requireHost(t: ExecutionContext): boolean {
  const missing = [
    process.getuid?.() === 0 ? undefined : 'root (network namespaces and tap devices)',
    existsSync(DNSMASQ) ? undefined : `${DNSMASQ} (Debian package dnsmasq-base)`,
    findOnPath('ip') ? undefined : 'ip (Debian package iproute2)',
  ].filter(Boolean)
  if (missing.length > 0) t.fail(`this test needs ${missing.join(' and ')}`)
  return missing.length === 0
}

interface Client {
  name: string
  firmware?: Firmware
}

interface LabRun {
  net: LabNet
  http: HttpServer
  /** The `netboot serve` process, when it is the HTTP server. */
  serve?: ServeDaemon
  dnsmasq: Daemon[]
  consoles: string[]
}

/** The lab's HTTP server for out/http, and what it can tell when a boot fails. */
interface HttpServer {
  daemon: Daemon
  serve?: ServeDaemon
  /** Lines for a failure report (requests seen, or the server's log). */
  report(): string[]
}

interface LabSetup {
  clients: Client[]
  /** The DHCP/TFTP servers, started in the namespace. */
  dhcp: (net: LabNet) => Promise<Daemon[]>
  /** The HTTP server (default `netboot serve` on SERVER:HTTP_PORT). */
  http?: (net: LabNet) => Promise<HttpServer>
  /** Assertions on the servers' logs and the consoles after every client reached its root. */
  check?: (run: LabRun) => void | Promise<void>
}

async function netbootServe(net: LabNet): Promise<HttpServer> {
  const serve = await startServe(net, {dir: join(out, 'http'), bind: SERVER, port: HTTP_PORT})
  if (serve.url !== HTTP_BASE) throw new Error(`netboot serve listens at ${serve.url}, not ${HTTP_BASE}`)
  return {
    serve,
    daemon: serve.daemon,
    report: () => ['HTTP requests (last 10):', ...serve.requests().slice(-10).map((r) => `  ${r.remote} ${r.method} ${r.path} -> ${r.status} (${r.bytes} bytes)`)],
  }
}

/**
 * Starts the lab (namespace, DHCP/TFTP and HTTP servers), boots the clients at once on its
 * taps, waits for each to reach the demo root, and always tears everything down. Consoles are
 * kept under the test log directory as pxe-server-<client>.console.log.
 */
async function labBoot(t: ExecutionContext, setup: LabSetup): Promise<void> {
  const {clients} = setup
  const manifest = await tree()
  const net = await LabNet.create({address: `${SERVER}/24`, taps: clients.length})
  const vms: QemuVm[] = []
  const started = Date.now()
  try {
    const dnsmasq = await setup.dhcp(net)
    const http = await (setup.http ?? netbootServe)(net)
    const context = () => [
      ...http.report(),
      ...dnsmasq.flatMap((d) => [`${d.name} (last 15 lines):`, ...d.output.trimEnd().split('\n').slice(-15).map((l) => `  | ${l}`)]),
    ]
    for (const [i, c] of clients.entries()) {
      vms.push(
        await QemuVm.start({
          netns: net.name,
          tap: net.taps[i],
          // Distinct MACs, or dnsmasq would hand both clients one lease.
          mac: `52:54:00:77:00:${(0x10 + i).toString(16)}`,
          firmware: c.firmware,
          // UEFI: no iPXE ROM on the NIC, so that OVMF's own PXE client boots and the
          // generated config's EFI chainload (snponly.efi) is what brings iPXE.
          nicRom: c.firmware === 'uefi' ? false : undefined,
          memoryMiB: 512,
        }),
      )
    }
    const consoles: string[] = []
    try {
      await Promise.all(
        vms.map((vm, i) =>
          expectMarkers(vm, demoRootMarkers(), context).then(() => t.log(`${clients[i]!.name}: demo root after ${(vm.elapsedMs() / 1000).toFixed(1)} s\n${formatPhases(phaseTimings(vm.console, (o) => vm.timeAt(o)))}`)),
        ),
      )
    } finally {
      for (const [i, vm] of vms.entries()) {
        await vm.kill()
        consoles.push(vm.console)
        await keepConsole(`pxe-server-${clients[i]!.name}`, {text: vm.console})
      }
    }
    for (const c of consoles) assertDemoRoot(t, c, manifest)
    await setup.check?.({net, http, serve: http.serve, dnsmasq, consoles})
    t.log(`${clients.length} client(s), lab up to all roots: ${((Date.now() - started) / 1000).toFixed(1)} s`)
  } finally {
    for (const vm of vms) await vm.kill()
    await net.destroy()
  }
  t.false((await namespaces()).includes(net.name), 'namespace removed')
}

/** Whether `pid` is gone within 3 s (a child that was just killed may wait a moment to be reaped). */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 30; i++) {
    try {
      process.kill(pid, 0)
    } catch {
      return true
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return false
}

/**
 * The generated site config inside a minimal main config, the way Debian's /etc/nginx/nginx.conf
 * includes sites-enabled/: the site itself is used unchanged.
 */
async function nginxMainConfig(): Promise<string> {
  const file = join(work, 'nginx-main.conf')
  const lines = ['daemon off;', `pid ${join(work, 'nginx.pid')};`, 'error_log stderr notice;', 'events {}', 'http {', `    include ${join(out, 'pxe', 'nginx.conf')};`, '}', '']
  await writeFile(file, lines.join('\n'))
  return file
}

/** nginx serving out/http with the generated site config, inside the namespace. */
async function startNginx(net: LabNet): Promise<HttpServer> {
  const daemon = net.spawn('nginx', NGINX, ['-e', 'stderr', '-c', await nginxMainConfig()])
  await daemon.waitForLine(/start worker process/, 15_000)
  return {daemon, report: () => ['nginx (last 15 lines):', ...daemon.output.trimEnd().split('\n').slice(-15).map((l) => `  | ${l}`)]}
}

/** A Range request made from inside the namespace (where the lab's address is). */
async function rangeRequest(net: LabNet, url: string, range: string): Promise<{status: number; contentRange: string | null; hex: string}> {
  const script = `const r = await fetch(${JSON.stringify(url)}, {headers: {Range: ${JSON.stringify(range)}}})
const body = Buffer.from(await r.arrayBuffer())
console.log(JSON.stringify({status: r.status, contentRange: r.headers.get('content-range'), hex: body.toString('hex')}))`
  return JSON.parse(await net.exec(process.execPath, ['--input-type=module', '-e', script]))
}

/** dnsmasq as the lab's only DHCP + TFTP server, with the generated dnsmasq.conf. */
async function fullDnsmasq(net: LabNet): Promise<Daemon[]> {
  return [await startDnsmasq(net, {name: 'dnsmasq', conf: join(out, 'pxe', 'dnsmasq.conf'), workDir: work})]
}

/** The address each console's /init got ("netboot: network up: eth0 10.77.0.63"). */
function clientAddress(consoleText: string): string | undefined {
  return /netboot: network up: \S+ (\d+\.\d+\.\d+\.\d+)/.exec(consoleText)?.[1]
}

test.serial('the generated dnsmasq configs name the lab network of --http-url and the fast-DHCP options', async (t) => {
  await tree()
  const full = (await readFile(join(out, 'pxe', 'dnsmasq.conf'), 'utf8')).split('\n')
  for (const line of [
    'interface=br0',
    `tftp-root=${join(out, 'tftp')}`,
    'dhcp-range=10.77.0.50,10.77.0.150,255.255.255.0,1h',
    'no-ping',
    'dhcp-option=tag:ipxe,encap:175,176,1b',
    'enable-ra',
    'dhcp-range=::,constructor:br0,ra-only',
    'dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi',
    'dhcp-boot=tag:ipxe,boot.ipxe',
  ]) {
    t.true(full.includes(line), `dnsmasq.conf: ${line}`)
  }
  const proxy = (await readFile(join(out, 'pxe', 'dnsmasq-proxy.conf'), 'utf8')).split('\n')
  t.true(proxy.includes('dhcp-range=10.77.0.0,proxy'))
  t.true((await readFile(join(out, 'tftp', 'boot.ipxe'), 'utf8')).includes(`set netboot-base ${HTTP_BASE}\n`))
  t.true(existsSync(join(out, 'tftp', 'snponly.efi')), 'iPXE for UEFI PXE ROMs copied into the tree')
})

test.serial('BIOS client PXE-boots through dnsmasq (full DHCP, generated config) and netboot serve to the demo root', async (t) => {
  if (!requireHost(t)) return
  await labBoot(t, {
    clients: [{name: 'bios'}],
    dhcp: fullDnsmasq,
    check: ({dnsmasq, serve, consoles}) => {
      const log = dnsmasq[0]!
      t.true(log.lines(/user class: iPXE/).length > 0, 'the client asked as iPXE (option 175)')
      t.true(log.lines(new RegExp(`sent ${join(out, 'tftp', 'boot.ipxe')} to 10\\.77\\.0\\.`)).length > 0, 'dnsmasq sent boot.ipxe by TFTP')
      const addr = clientAddress(consoles[0]!)
      t.regex(addr ?? '', /^10\.77\.0\.(\d+)$/)
      t.true(log.lines(new RegExp(`DHCPACK\\(br0\\) ${addr?.replace(/\./g, '\\.')} `)).length > 0, '/init got its address from dnsmasq')
      const got = serve!.requests().filter((r) => r.remote === addr && r.method === 'GET' && r.status === 200).map((r) => r.path)
      t.deepEqual(got, ['/vmlinuz', '/initramfs.img', '/manifest.json', '/root.qcow2'], 'iPXE and /init fetched everything from netboot serve')
    },
  })
})

test.serial('two clients booting at once from the same servers both reach their root', async (t) => {
  if (!requireHost(t)) return
  await labBoot(t, {
    clients: [{name: 'client-a'}, {name: 'client-b'}],
    dhcp: fullDnsmasq,
    check: ({serve, consoles}) => {
      const addrs = consoles.map(clientAddress)
      t.is(new Set(addrs).size, 2, `two different addresses: ${addrs.join(', ')}`)
      for (const a of addrs) {
        t.truthy(serve!.requests().find((r) => r.remote === a && r.path === '/root.qcow2' && r.status === 200), `${a} downloaded the image`)
      }
    },
  })
})

test.serial('proxy DHCP: a plain DHCP server gives the addresses, dnsmasq with the generated proxy config the boot information (BIOS + UEFI client at once)', async (t) => {
  if (!requireHost(t)) return
  // The "existing" DHCP server of the lab: addresses and a router, nothing about PXE. Like a
  // real LAN's router it also advertises IPv6, which keeps iPXE from waiting for one.
  const plainConf = join(work, 'plain-dhcp.conf')
  await writeFile(
    plainConf,
    ['port=0', 'interface=br0', 'bind-interfaces', 'log-dhcp', 'dhcp-range=10.77.0.100,10.77.0.120,255.255.255.0,1h', `dhcp-option=option:router,${SERVER}`, 'enable-ra', 'dhcp-range=::,constructor:br0,ra-only', ''].join('\n'),
  )
  await labBoot(t, {
    clients: [{name: 'proxy-bios'}, {name: 'proxy-uefi', firmware: 'uefi'}],
    dhcp: async (net) => [
      await startDnsmasq(net, {name: 'plain-dhcp', conf: plainConf, workDir: work}),
      await startDnsmasq(net, {name: 'dnsmasq-proxy', conf: join(out, 'pxe', 'dnsmasq-proxy.conf'), workDir: work}),
    ],
    check: ({dnsmasq, consoles}) => {
      const [plain, proxy] = dnsmasq as [Daemon, Daemon]
      for (const c of consoles) t.regex(clientAddress(c) ?? '', /^10\.77\.0\.1[0-2]\d$/, 'the address is from the plain DHCP server\'s pool')
      t.true(plain.lines(/DHCPACK/).length > 0, 'the plain server acknowledged leases')
      t.deepEqual(proxy.lines(/DHCPACK|DHCPOFFER\(br0\) 10/), [], 'the proxy handed out no address')
      t.true(proxy.lines(/sent .*\/snponly\.efi to 10\.77\.0\./).length > 0, 'the proxy chainloaded the UEFI client into iPXE')
      t.true(proxy.lines(/PXE\(br0\) .*boot\.ipxe/).length > 0, 'the proxy pointed iPXE at boot.ipxe')
      t.is(proxy.lines(/sent .*boot\.ipxe to 10\.77\.0\./).length, 2, 'and served it to both clients by TFTP')
    },
  })
})

test.serial('UEFI client (OVMF PXE -> snponly.efi -> boot.ipxe) boots the same tree to the demo root', async (t) => {
  if (!requireHost(t)) return
  for (const f of [OVMF, IPXE_EFI]) if (!existsSync(f)) return t.fail(`UEFI boot needs ${f} (Debian packages ovmf, ipxe)`)
  await labBoot(t, {
    clients: [{name: 'uefi', firmware: 'uefi'}],
    dhcp: fullDnsmasq,
    check: ({dnsmasq, consoles}) => {
      const log = dnsmasq[0]!
      t.true(log.lines(/vendor class: PXEClient:Arch:00007/).length > 0, 'the firmware asked as an x86-64 UEFI PXE client')
      t.true(log.lines(/sent .*\/snponly\.efi to /).length > 0, 'dnsmasq chainloaded iPXE for UEFI (snponly.efi)')
      t.true(log.lines(/sent .*\/boot\.ipxe to /).length > 0, 'iPXE then fetched boot.ipxe')
      t.regex(consoles[0]!, /EFI stub: Loaded initrd/, 'the kernel booted through its EFI stub with the initramfs')
    },
  })
})

test.serial('netboot boot --firmware uefi: OVMF with QEMU\'s iPXE EFI ROM and user networking boots the same tree', async (t) => {
  if (!existsSync(OVMF)) return t.fail(`UEFI boot needs ${OVMF} (Debian package ovmf)`)
  const manifest = await tree()
  const boot = await runCommand<BootResult>(Boot, ['--check', '--json', '--out', out, '--firmware', 'uefi', '--timeout', '240'])
  const kept = await keepConsole('pxe-server-uefi-usernet', {file: boot.result?.consoleLog ?? join(out, 'boot-console.log')})
  t.is(boot.exit, 0, `${boot.result?.failure ?? boot.stderr}\nconsole: ${kept}`)
  t.log(`UEFI, user networking: ${(boot.result.wallMs / 1000).toFixed(1)} s wall\n${formatPhases(boot.result.phases)}`)
  const consoleText = await readFile(boot.result.consoleLog, 'utf8')
  t.regex(consoleText, /EFI stub: Loaded initrd/)
  assertDemoRoot(t, consoleText, manifest)
})

test.serial('nginx with the generated site config: nginx -t accepts it, Range gets 206 with the right bytes, and a client boots from it', async (t) => {
  if (!requireHost(t)) return
  if (!existsSync(NGINX)) return t.fail(`this test needs ${NGINX} (Debian package nginx-light)`)
  await tree()
  const syntax = await execa(NGINX, ['-t', '-e', 'stderr', '-c', await nginxMainConfig()], {reject: false, all: true})
  t.is(syntax.exitCode, 0, syntax.all)
  t.regex(syntax.all ?? '', /syntax is ok/)
  await labBoot(t, {
    clients: [{name: 'nginx-bios'}],
    dhcp: fullDnsmasq,
    http: startNginx,
    check: async ({net}) => {
      const r = await rangeRequest(net, `${HTTP_BASE}/root.qcow2`, 'bytes=65536-66559')
      const expected = Buffer.alloc(1024)
      const fh = await open(join(out, 'http', 'root.qcow2'))
      await fh.read(expected, 0, 1024, 65536)
      await fh.close()
      t.is(r.status, 206)
      t.regex(r.contentRange ?? '', /^bytes 65536-66559\/\d+$/)
      t.is(r.hex, expected.toString('hex'), 'the requested bytes of the image')
    },
  })
})

test.serial('a failing test leaves nothing behind: servers, VMs, taps, bridge and namespace are gone', async (t) => {
  if (!requireHost(t)) return
  await tree()
  const net = await LabNet.create({address: `${SERVER}/24`, taps: 2})
  const pids: number[] = []
  await t.throwsAsync(async () => {
    try {
      pids.push((await startDnsmasq(net, {name: 'dnsmasq-teardown', conf: join(out, 'pxe', 'dnsmasq.conf'), workDir: work})).pid!)
      pids.push((await startServe(net, {dir: join(out, 'http'), bind: SERVER, port: HTTP_PORT})).daemon.pid!)
      // A VM that is still booting when the test fails: destroy() must find it in the namespace.
      const vm = await QemuVm.start({netns: net.name, tap: net.taps[1], mac: '52:54:00:77:00:20'})
      await vm.waitFor(/iPXE/, {timeoutMs: 60_000})
      pids.push(...(await net.exec('ip', ['netns', 'pids', net.name])).split(/\s+/).filter(Boolean).map(Number))
      throw new Error('the test failed here')
    } finally {
      await net.destroy()
    }
  }, {message: 'the test failed here'})
  t.true(pids.length >= 3, `pids seen: ${pids.join(' ')}`)
  for (const pid of pids) t.true(await gone(pid), `process ${pid} is gone`)
  t.false((await namespaces()).includes(net.name), 'namespace removed')
})
