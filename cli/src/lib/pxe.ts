/**
 * The PXE tree: everything a network boot needs, laid out for the servers that hand it out.
 *
 *   out/tftp/boot.ipxe      iPXE script (fetched by TFTP): kernel + initramfs over HTTP, command line
 *   out/tftp/undionly.kpxe  iPXE for plain PXE ROMs (chainloaded by dnsmasq), when the ipxe package is there
 *   out/http/vmlinuz, initramfs.img, root.qcow2 (or root.img), manifest.json (sha256 and size of each)
 *   out/pxe/dnsmasq.conf, dnsmasq-proxy.conf, nginx.conf   configs for a real PXE server
 *
 * The kernel command line is built by one function (buildKernelCmdline) so that every consumer (the
 * iPXE script, `netboot boot` with direct kernel boot, tests) speaks the /init contract the same way.
 */
import {copyFile, mkdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {existsSync} from 'node:fs'
import {join, resolve} from 'node:path'

import {usageError} from './errors.js'
import {sha256File} from './image.js'
import {removeOnInterrupt} from './interrupt.js'
import {looksLikeQcow2} from './qcow2-header.js'

/** Where QEMU's user networking puts the host, seen from the guest. */
export const QEMU_HOST_ADDRESS = '10.0.2.2'
export const BOOT_SCRIPT = 'boot.ipxe'
export const KERNEL_FILE = 'vmlinuz'
export const INITRAMFS_FILE = 'initramfs.img'
export const MANIFEST_FILE = 'manifest.json'
/** iPXE binaries from Debian's ipxe package, for PXE ROMs that are not iPXE. */
export const IPXE_BIOS = '/usr/lib/ipxe/undionly.kpxe'
export const IPXE_EFI = '/usr/lib/ipxe/snponly.efi'

export type OnFail = 'shell' | 'reboot' | 'poweroff'

/** The /init parameters of the contract, plus the console and the demo root's switch. */
export interface CmdlineParams {
  /** URL of the image (optional when a manifest names it). */
  url?: string
  /** URL of manifest.json (gives the image name, sha256 and size). */
  manifest?: string
  /** sha256 of the image, hex. */
  sha256?: string
  format?: 'qcow2' | 'raw'
  fstype?: string
  overlay?: 'tmpfs' | 'none'
  retries?: number
  onfail?: OnFail
  /** "dhcp" or "<ip>::<gw>:<mask>::<iface>". */
  ip?: string
  init?: string
  /** Demo root: power off after printing its marker (tests) or give a shell. */
  demo?: 'poweroff' | 'shell'
  /** Serial console device (default ttyS0). */
  console?: string
  /** Further parameters, each one "key" or "key=value" without spaces. */
  extra?: string[]
}

const URL_RE = /^https?:\/\/[^\s"'\\]+$/

/**
 * Builds the kernel command line for the netboot initramfs. Values cannot be quoted on a kernel
 * command line in a way every consumer (iPXE, the kernel, busybox sh in /init) agrees on, so a
 * value with whitespace or quotes is refused rather than quoted.
 */
export function buildKernelCmdline(p: CmdlineParams): string {
  if (!p.url && !p.manifest) throw usageError('kernel command line: netboot.url or netboot.manifest is required')
  if (!p.sha256 && !p.manifest) {
    throw usageError('kernel command line: netboot.sha256 or netboot.manifest is required: /init never mounts an unverified image')
  }
  if (p.url && !URL_RE.test(p.url)) throw usageError(`kernel command line: bad netboot.url "${p.url}": an http(s) URL without spaces or quotes`)
  if (p.manifest && !URL_RE.test(p.manifest)) {
    throw usageError(`kernel command line: bad netboot.manifest "${p.manifest}": an http(s) URL without spaces or quotes`)
  }
  if (p.sha256 && !/^[0-9a-fA-F]{64}$/.test(p.sha256)) throw usageError(`kernel command line: bad netboot.sha256 "${p.sha256}": 64 hex digits`)
  if (p.retries !== undefined && (!Number.isInteger(p.retries) || p.retries < 0)) {
    throw usageError(`kernel command line: bad netboot.retries ${p.retries}: a whole number >= 0`)
  }
  if (p.init !== undefined && !p.init.startsWith('/')) throw usageError(`kernel command line: bad netboot.init "${p.init}": an absolute path`)

  const params: Array<[string, string | number | undefined]> = [
    ['console', p.console ?? 'ttyS0'],
    // A panic must end the VM (with -no-reboot) instead of hanging until a test times out.
    ['panic', -1],
    ['ip', p.ip],
    ['netboot.url', p.url],
    ['netboot.manifest', p.manifest],
    ['netboot.sha256', p.sha256?.toLowerCase()],
    ['netboot.format', p.format],
    ['netboot.fstype', p.fstype],
    ['netboot.overlay', p.overlay],
    ['netboot.retries', p.retries],
    ['netboot.onfail', p.onfail],
    ['netboot.init', p.init],
    ['netboot.demo', p.demo],
  ]
  const words: string[] = []
  for (const [key, value] of params) {
    if (value === undefined || value === '') continue
    const v = String(value)
    checkWord(`${key}=${v}`)
    words.push(`${key}=${v}`)
  }
  for (const w of p.extra ?? []) {
    checkWord(w)
    words.push(w)
  }
  return words.join(' ')
}

/** Splits user-given extra parameters ("a=1 b=2") into words, refusing quotes. */
export function splitExtraCmdline(extra: string | undefined): string[] {
  if (!extra) return []
  const words = extra.trim().split(/\s+/).filter(Boolean)
  for (const w of words) checkWord(w)
  return words
}

function checkWord(word: string): void {
  if (/[\s"'\\]/.test(word) || word === '' || word.startsWith('=')) {
    throw usageError(`kernel command line: bad parameter ${JSON.stringify(word)}: no spaces, quotes or backslashes in values`)
  }
  // iPXE expands ${...} in script lines: a literal one would be replaced or dropped.
  if (word.includes('${')) throw usageError(`kernel command line: bad parameter ${JSON.stringify(word)}: "\${" would be expanded by iPXE`)
}

/**
 * The iPXE script: configure the network unless the PXE stage already did, fetch kernel and
 * initramfs over HTTP, boot; retry the whole fetch a few times (the server may still be coming
 * up) and print why it gave up. Lines starting "netboot: iPXE" are console markers.
 */
export function ipxeScript(opts: {httpBase: string; cmdline: string; attempts?: number}): string {
  const base = opts.httpBase.replace(/\/+$/, '')
  if (!URL_RE.test(base)) throw usageError(`bad HTTP base URL "${opts.httpBase}"`)
  const attempts = opts.attempts ?? 5
  return `#!ipxe
# Generated by netboot. Loads the netboot kernel and initramfs over HTTP; the initramfs then
# fetches, verifies and mounts the root image named on the kernel command line.
set netboot-base ${base}
set netboot-try:int32 0

:fetch
inc netboot-try
echo netboot: iPXE attempt \${netboot-try} loading \${netboot-base}/${KERNEL_FILE}
# Chainloaded from a PXE ROM or run by QEMU's iPXE, the network is already up.
isset \${ip} || dhcp || goto retry
# initrd=: under UEFI the kernel's EFI stub loads the initramfs itself, by this name, from the
# files iPXE downloaded; under BIOS iPXE hands it over and the kernel ignores the parameter.
kernel \${netboot-base}/${KERNEL_FILE} initrd=${INITRAMFS_FILE} ${opts.cmdline} || goto retry
initrd \${netboot-base}/${INITRAMFS_FILE} || goto retry
echo netboot: iPXE booting the kernel
boot || goto retry

:retry
iseq \${netboot-try} ${attempts} && goto failed ||
echo netboot: iPXE attempt \${netboot-try} failed, retrying in 3 s
sleep 3
goto fetch

:failed
echo netboot: iPXE failed: could not load ${KERNEL_FILE} and ${INITRAMFS_FILE} from \${netboot-base} after ${attempts} attempts
shell
`
}

export interface FileEntry {
  sha256: string
  size: number
}

export interface Manifest {
  version: 1
  /** The root image's file name (next to the manifest). */
  image: string
  format: 'qcow2' | 'raw'
  files: Record<string, FileEntry>
  kernel: {file: string; initramfs: string; cmdline: string; release?: string}
  /** ISO time from SOURCE_DATE_EPOCH, so that equal inputs give an equal manifest. */
  created: string
}

/** Which addresses a PXE tree is served from. */
export interface ServeAddress {
  /** Base URL the client uses for out/http, e.g. http://10.0.2.2:8080 (QEMU) or http://192.168.1.5. */
  httpBase: string
}

export function qemuHttpBase(port: number): string {
  return `http://${QEMU_HOST_ADDRESS}:${port}`
}

export interface PxeOptions {
  /** Output directory; tftp/, http/ and pxe/ are made in it. */
  outDir: string
  kernel: string
  initramfs: string
  image: string
  /** Base URL of out/http as the client sees it (default http://10.0.2.2:8080 for QEMU). */
  httpBase?: string
  /** /init parameters besides the URLs (retries, onfail, demo...). */
  params?: Omit<CmdlineParams, 'url' | 'manifest' | 'sha256'>
  /** Kernel release string for the manifest, when known. */
  kernelRelease?: string
  sourceDateEpoch?: number
  /** Real-network settings for the generated dnsmasq/nginx configs. */
  network?: Partial<LabNetwork>
}

export interface PxeTree {
  outDir: string
  tftpDir: string
  httpDir: string
  pxeDir: string
  bootScript: string
  manifestPath: string
  manifest: Manifest
  imageName: string
  cmdline: string
  httpBase: string
  /** Files written, relative to outDir. */
  files: string[]
  /** What the tree lacks for some clients (e.g. the iPXE binaries for chainloading). */
  warnings: string[]
}

/** The default port in generated files; `netboot boot` rewrites boot.ipxe with its own. */
export const DEFAULT_HTTP_PORT = 8080

/**
 * Lays out the PXE tree in opts.outDir. Files are copied (the tree is self-contained and can be
 * rsynced to a server); each is written under a temporary name and renamed.
 */
export async function layoutPxeTree(opts: PxeOptions): Promise<PxeTree> {
  const outDir = resolve(opts.outDir)
  const tftpDir = join(outDir, 'tftp')
  const httpDir = join(outDir, 'http')
  const pxeDir = join(outDir, 'pxe')
  for (const [what, path] of [['kernel', opts.kernel], ['initramfs', opts.initramfs], ['image', opts.image]] as const) {
    if (!existsSync(path)) throw usageError(`${what} ${path} does not exist`, ['build it first: netboot build'])
  }
  await Promise.all([tftpDir, httpDir, pxeDir].map((d) => mkdir(d, {recursive: true})))

  const format = opts.params?.format ?? ((await looksLikeQcow2(opts.image)) ? 'qcow2' : 'raw')
  const imageName = format === 'qcow2' ? 'root.qcow2' : 'root.img'
  const written: string[] = []
  const place = async (src: string, name: string) => {
    const dst = join(httpDir, name)
    if (resolve(src) !== dst) {
      const tmp = `${dst}.tmp-${process.pid}`
      // Ctrl-C while a large image is copied must not leave the partial copy in http/.
      const forget = removeOnInterrupt(tmp)
      try {
        await copyFile(src, tmp)
        await rename(tmp, dst)
      } catch (err) {
        await rm(tmp, {force: true})
        throw err
      } finally {
        forget()
      }
    }
    written.push(`http/${name}`)
    return {sha256: await sha256File(dst), size: (await stat(dst)).size}
  }
  const files: Record<string, FileEntry> = {}
  files[KERNEL_FILE] = await place(opts.kernel, KERNEL_FILE)
  files[INITRAMFS_FILE] = await place(opts.initramfs, INITRAMFS_FILE)
  files[imageName] = await place(opts.image, imageName)
  // A stale image of the other format would be served next to the right one: remove it.
  await rm(join(httpDir, imageName === 'root.qcow2' ? 'root.img' : 'root.qcow2'), {force: true})

  const httpBase = (opts.httpBase ?? qemuHttpBase(DEFAULT_HTTP_PORT)).replace(/\/+$/, '')
  const cmdline = treeCmdline(httpBase, imageName, {...opts.params, format})
  const epoch = opts.sourceDateEpoch ?? 0
  const manifest: Manifest = {
    version: 1,
    image: imageName,
    format,
    files,
    kernel: {file: KERNEL_FILE, initramfs: INITRAMFS_FILE, cmdline, release: opts.kernelRelease},
    created: new Date(epoch * 1000).toISOString(),
  }
  const manifestPath = join(httpDir, MANIFEST_FILE)
  await writeAtomic(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`)
  written.push(`http/${MANIFEST_FILE}`)

  const bootScript = join(tftpDir, BOOT_SCRIPT)
  await writeAtomic(bootScript, ipxeScript({httpBase, cmdline}))
  written.push(`tftp/${BOOT_SCRIPT}`)
  // QEMU's NIC ROMs are iPXE already; real PXE ROMs (and OVMF's own PXE) need these to chainload.
  const missing: string[] = []
  for (const [src, name] of [[IPXE_BIOS, 'undionly.kpxe'], [IPXE_EFI, 'snponly.efi']]) {
    if (existsSync(src)) {
      await copyFile(src, join(tftpDir, name))
      written.push(`tftp/${name}`)
    } else {
      await rm(join(tftpDir, name), {force: true})
      missing.push(`tftp/${name} (${src})`)
    }
  }
  const warnings = missing.length > 0 ? [`no ${missing.join(', ')}: PXE clients that are not iPXE cannot boot from dnsmasq; install Debian package ipxe and rebuild`] : []

  const given = Object.fromEntries(Object.entries(opts.network ?? {}).filter(([, v]) => v !== undefined))
  const net = labNetwork({...(opts.httpBase ? networkFromHttpBase(opts.httpBase) : {}), ...given}, tftpDir, httpDir)
  await writeAtomic(join(pxeDir, 'dnsmasq.conf'), dnsmasqConfig({...net, mode: 'full'}))
  await writeAtomic(join(pxeDir, 'dnsmasq-proxy.conf'), dnsmasqConfig({...net, mode: 'proxy'}))
  await writeAtomic(join(pxeDir, 'nginx.conf'), nginxConfig({root: httpDir, listen: net.httpPort, serverName: net.serverAddress}))
  written.push('pxe/dnsmasq.conf', 'pxe/dnsmasq-proxy.conf', 'pxe/nginx.conf')

  return {outDir, tftpDir, httpDir, pxeDir, bootScript, manifestPath, manifest, imageName, cmdline, httpBase, files: written, warnings}
}

/** The command line of a tree served at `httpBase`: the manifest gives the sha256 and size. */
export function treeCmdline(httpBase: string, imageName: string, params: PxeOptions['params'] = {}): string {
  const base = httpBase.replace(/\/+$/, '')
  return buildKernelCmdline({...params, url: `${base}/${imageName}`, manifest: `${base}/${MANIFEST_FILE}`})
}

/**
 * Rewrites boot.ipxe for another HTTP base (`netboot boot` serves on a free port). Returns the
 * new command line.
 */
export async function rewriteBootScript(tree: Pick<PxeTree, 'tftpDir' | 'imageName'>, httpBase: string, params: PxeOptions['params'] = {}): Promise<string> {
  const cmdline = treeCmdline(httpBase, tree.imageName, params)
  await writeAtomic(join(tree.tftpDir, BOOT_SCRIPT), ipxeScript({httpBase, cmdline}))
  return cmdline
}

// ---------------------------------------------------------------------------------------------
// Configs for a real PXE server

export interface LabNetwork {
  /** Interface dnsmasq listens on. */
  iface: string
  /** Address of the boot server (TFTP and HTTP) on that interface. */
  serverAddress: string
  /** Full-DHCP pool "start,end,netmask,lease". */
  dhcpRange: string
  /** The existing network for proxy-DHCP mode (e.g. 192.168.1.0). */
  proxySubnet: string
  httpPort: number
  tftpRoot: string
  httpRoot: string
}

export function labNetwork(n: Partial<LabNetwork> = {}, tftpRoot: string, httpRoot: string): LabNetwork {
  return {
    iface: n.iface ?? 'br0',
    serverAddress: n.serverAddress ?? '192.168.100.1',
    dhcpRange: n.dhcpRange ?? '192.168.100.50,192.168.100.150,255.255.255.0,1h',
    proxySubnet: n.proxySubnet ?? '192.168.100.0',
    httpPort: n.httpPort ?? 80,
    tftpRoot: n.tftpRoot ?? tftpRoot,
    httpRoot: n.httpRoot ?? httpRoot,
  }
}

/**
 * The lab network implied by the HTTP base URL clients use: when its host is an IPv4 address,
 * that is the boot server's address on the lab network, so the DHCP pool (.50-.150 of its /24),
 * the proxy-DHCP subnet and the HTTP port follow from it. `netboot build --http-url
 * http://10.1.2.3:8080` thus writes dnsmasq/nginx configs for 10.1.2.0/24 without further flags.
 * A host name implies nothing (the defaults stay).
 */
export function networkFromHttpBase(httpBase: string): Partial<LabNetwork> {
  let url: URL
  try {
    url = new URL(httpBase)
  } catch {
    return {}
  }
  const octets = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(url.hostname)?.slice(1).map(Number)
  const port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80
  if (!octets || octets.some((o) => o > 255)) return {httpPort: port}
  const net = octets.slice(0, 3).join('.')
  // The pool must not hold the server's own address.
  const [first, last] = octets[3] >= 50 && octets[3] <= 150 ? [160, 250] : [50, 150]
  return {
    serverAddress: octets.join('.'),
    dhcpRange: `${net}.${first},${net}.${last},255.255.255.0,1h`,
    proxySubnet: `${net}.0`,
    httpPort: port,
  }
}

/**
 * dnsmasq: DHCP (or proxy-DHCP next to an existing DHCP server) + TFTP + iPXE chainload.
 * Plain PXE ROMs get undionly.kpxe (BIOS) or snponly.efi (UEFI); iPXE (DHCP option 175
 * present) gets boot.ipxe. The options that make iPXE's DHCP fast (measured ~0.1 s instead of
 * several seconds): no ping before offering, option 175.176 (tells iPXE not to wait for
 * ProxyDHCP offers), and IPv6 router advertisements (iPXE otherwise waits for an IPv6 router).
 */
export function dnsmasqConfig(n: LabNetwork & {mode: 'full' | 'proxy'}): string {
  const lines = [
    `# netboot PXE server, ${n.mode === 'full' ? 'full DHCP' : 'proxy DHCP (next to an existing DHCP server)'} mode.`,
    `# Run: dnsmasq --conf-file=${n.mode === 'full' ? 'dnsmasq.conf' : 'dnsmasq-proxy.conf'} --no-daemon`,
    `# HTTP: serve ${n.httpRoot} at http://${n.serverAddress}${n.httpPort === 80 ? '' : `:${n.httpPort}`}/ (netboot serve --bind ${n.serverAddress} --port ${n.httpPort}, or nginx.conf)`,
    'port=0', // no DNS
    `interface=${n.iface}`,
    'bind-interfaces',
    'log-dhcp',
    '',
    '# TFTP: the iPXE binaries and boot.ipxe',
    'enable-tftp',
    `tftp-root=${n.tftpRoot}`,
    '',
    '# Clients that are already iPXE send DHCP option 175.',
    'dhcp-match=set:ipxe,175',
    'dhcp-match=set:efi64,option:client-arch,7',
    'dhcp-match=set:efi64,option:client-arch,9',
  ]
  if (n.mode === 'full') {
    lines.push(
      '',
      `dhcp-range=${n.dhcpRange}`,
      `dhcp-option=option:router,${n.serverAddress}`,
      '# Fast iPXE DHCP: offer without pinging the address first,',
      'no-ping',
      '# tell iPXE not to wait for ProxyDHCP offers (175.176 = 1),',
      'dhcp-option=tag:ipxe,encap:175,176,1b',
      '# and announce an IPv6 router, or iPXE waits for one.',
      'enable-ra',
      `dhcp-range=::,constructor:${n.iface},ra-only`,
      '',
      'dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe',
      'dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi',
      'dhcp-boot=tag:ipxe,boot.ipxe',
    )
  } else {
    lines.push(
      '',
      '# Addresses come from the existing DHCP server; dnsmasq only adds the boot information.',
      `dhcp-range=${n.proxySubnet},proxy`,
      'dhcp-option=tag:ipxe,encap:175,176,1b',
      'pxe-prompt="netboot",0',
      '# dnsmasq >= 2.76 sends a basename with a suffix unchanged (no ".0" added).',
      'pxe-service=tag:!ipxe,x86PC,"netboot (BIOS)",undionly.kpxe',
      'pxe-service=tag:!ipxe,X86-64_EFI,"netboot (UEFI)",snponly.efi',
      '# iPXE asks again with option 175 set: hand it the script.',
      'pxe-service=tag:ipxe,x86PC,"netboot",boot.ipxe',
      'pxe-service=tag:ipxe,X86-64_EFI,"netboot",boot.ipxe',
    )
  }
  return `${lines.join('\n')}\n`
}

/** nginx site serving out/http: Range is on by default for static files; sendfile for speed. */
export function nginxConfig(opts: {root: string; listen: number; serverName?: string}): string {
  return `# netboot: serves the PXE tree's http/ directory (kernel, initramfs, root image, manifest).
# Install as /etc/nginx/sites-enabled/netboot and reload nginx.
server {
    listen ${opts.listen};
    server_name ${opts.serverName ?? '_'};
    root ${opts.root};

    # Byte ranges (resumable downloads, iPXE) are served for static files; keep them on.
    max_ranges 1;
    sendfile on;
    tcp_nopush on;
    autoindex off;
    access_log /var/log/nginx/netboot.access.log;

    types {
        application/octet-stream qcow2 img;
        application/json json;
        text/plain ipxe;
    }
    default_type application/octet-stream;

    location / {
        try_files $uri =404;
    }
}
`
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, text)
  await rename(tmp, path)
}

export function describeTree(tree: PxeTree): string {
  return [`PXE tree in ${tree.outDir}:`, ...tree.files.map((f) => `  ${f}`), `kernel command line: ${tree.cmdline}`, ...tree.warnings.map((w) => `warning: ${w}`)].join('\n')
}
