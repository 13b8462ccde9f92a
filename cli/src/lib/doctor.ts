import {execFile} from 'node:child_process'
import {accessSync, constants, existsSync, openSync, readSync, closeSync, statSync} from 'node:fs'
import {delimiter, join} from 'node:path'
import {promisify} from 'node:util'

import {NetbootError} from './errors.js'
import {IPXE_BIOS, IPXE_EFI} from './pxe.js'
import {OVMF} from './qemu.js'

const execFileAsync = promisify(execFile)

/**
 * Host tools the pipeline needs, how to find each, how to read its version, and which Debian
 * package provides it. `netboot doctor` prints them all; other commands call requireTools()
 * with the names they use so they fail before doing any work, naming the package to install.
 */

export type ToolKind = 'command' | 'file'

export interface ToolSpec {
  name: string
  /** Debian package that provides it (what `doctor --install` installs). */
  pkg: string
  required: boolean
  /** What netboot uses it for, shown in the table. */
  purpose: string
  kind: ToolKind
  /** command: executable name on PATH; file: absolute path(s), first existing wins. */
  paths: string[]
  /** command: arguments that print the version. */
  versionArgs?: string[]
  /** Extra check after the file/command was found; returns a problem or undefined. */
  verify?: (path: string) => string | undefined
}

export interface ToolStatus {
  name: string
  pkg: string
  required: boolean
  purpose: string
  found: boolean
  path?: string
  version?: string
  /** Why it counts as missing although something is there (e.g. busybox not static). */
  problem?: string
}

/**
 * Reads an ELF file's program headers and reports whether it has a PT_INTERP, i.e. needs a
 * dynamic loader. The initramfs has no loader, so its busybox must be static.
 */
export function elfIsStatic(buf: Buffer): boolean {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file')
  const is64 = buf[4] === 2
  const le = buf[5] === 1
  const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o))
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o))
  const u64 = (o: number) => Number(le ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o))
  const phoff = is64 ? u64(32) : u32(28)
  const phentsize = is64 ? u16(54) : u16(42)
  const phnum = is64 ? u16(56) : u16(44)
  const PT_INTERP = 3
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize
    if (off + 4 > buf.length) throw new Error('truncated ELF program header table')
    if (u32(off) === PT_INTERP) return false
  }
  return true
}

function readHead(path: string, bytes: number): Buffer {
  const fd = openSync(path, 'r')
  try {
    const buf = Buffer.alloc(bytes)
    const n = readSync(fd, buf, 0, bytes, 0)
    return buf.subarray(0, n)
  } finally {
    closeSync(fd)
  }
}

function checkStaticBusybox(path: string): string | undefined {
  try {
    // Program headers sit right after the 64-byte ELF header; 4 KiB covers them.
    return elfIsStatic(readHead(path, 4096)) ? undefined : `${path} is dynamically linked; install busybox-static`
  } catch (err) {
    return `${path}: ${(err as Error).message}`
  }
}

export const TOOLS: ToolSpec[] = [
  {name: 'qemu-system-x86_64', pkg: 'qemu-system-x86', required: true, purpose: 'boot the client VM (TCG)', kind: 'command', paths: ['qemu-system-x86_64'], versionArgs: ['--version']},
  {name: 'qemu-img', pkg: 'qemu-utils', required: true, purpose: 'build qcow2 root images', kind: 'command', paths: ['qemu-img'], versionArgs: ['--version']},
  {name: 'qemu-io', pkg: 'qemu-utils', required: true, purpose: 'write test patterns into qcow2 images', kind: 'command', paths: ['qemu-io'], versionArgs: ['--version']},
  {name: 'ipxe-qemu', pkg: 'ipxe-qemu', required: true, purpose: 'PXE ROM of QEMU\'s virtio-net NIC', kind: 'file', paths: ['/usr/lib/ipxe/qemu/efi-virtio.rom']},
  {name: 'busybox', pkg: 'busybox-static', required: true, purpose: 'static userland of the initramfs', kind: 'file', paths: ['/bin/busybox', '/usr/bin/busybox'], versionArgs: [], verify: checkStaticBusybox},
  {name: 'gcc', pkg: 'gcc', required: true, purpose: 'kernel and loopfmt compiler', kind: 'command', paths: ['gcc'], versionArgs: ['--version']},
  {name: 'libc6-dev', pkg: 'libc6-dev', required: true, purpose: 'static libc for loopfmt (gcc -static)', kind: 'file', paths: ['/usr/lib/x86_64-linux-gnu/libc.a']},
  {name: 'make', pkg: 'make', required: true, purpose: 'kernel build', kind: 'command', paths: ['make'], versionArgs: ['--version']},
  {name: 'flex', pkg: 'flex', required: true, purpose: 'kernel build (kconfig)', kind: 'command', paths: ['flex'], versionArgs: ['--version']},
  {name: 'bison', pkg: 'bison', required: true, purpose: 'kernel build (kconfig)', kind: 'command', paths: ['bison'], versionArgs: ['--version']},
  {name: 'bc', pkg: 'bc', required: true, purpose: 'kernel build (timeconst)', kind: 'command', paths: ['bc'], versionArgs: ['--version']},
  {name: 'libelf-dev', pkg: 'libelf-dev', required: true, purpose: 'kernel build (objtool)', kind: 'file', paths: ['/usr/include/libelf.h', '/usr/include/gelf.h']},
  {name: 'libssl-dev', pkg: 'libssl-dev', required: true, purpose: 'kernel build (sign-file, certs)', kind: 'file', paths: ['/usr/include/openssl/ssl.h']},
  {name: 'ccache', pkg: 'ccache', required: true, purpose: 'compiler cache for kernel rebuilds', kind: 'command', paths: ['ccache'], versionArgs: ['--version']},
  {name: 'rsync', pkg: 'rsync', required: true, purpose: 'kernel build (make headers_install)', kind: 'command', paths: ['rsync'], versionArgs: ['--version']},
  {name: 'depmod', pkg: 'kmod', required: false, purpose: 'kernel builds with modules (config variant "modular")', kind: 'command', paths: ['depmod'], versionArgs: ['--version']},
  {name: 'xz', pkg: 'xz-utils', required: true, purpose: 'decompress kernel source tarballs', kind: 'command', paths: ['xz'], versionArgs: ['--version']},
  {name: 'git', pkg: 'git', required: true, purpose: 'kernel baseline and patch series', kind: 'command', paths: ['git'], versionArgs: ['--version']},
  {name: 'mkfs.ext4', pkg: 'e2fsprogs', required: true, purpose: 'build the root file system', kind: 'command', paths: ['mkfs.ext4'], versionArgs: ['-V']},
  {name: 'zstd', pkg: 'zstd', required: true, purpose: 'compress the initramfs', kind: 'command', paths: ['zstd'], versionArgs: ['--version']},
  {name: 'linux-source-6.1', pkg: 'linux-source-6.1', required: true, purpose: 'default kernel source', kind: 'file', paths: ['/usr/src/linux-source-6.1.tar.xz']},
  {name: 'linux-source-6.12', pkg: 'linux-source-6.12', required: false, purpose: 'kernel source for --kernel 6.12', kind: 'file', paths: ['/usr/src/linux-source-6.12.tar.xz']},
  {name: 'dnsmasq', pkg: 'dnsmasq-base', required: false, purpose: 'DHCP/TFTP server for real PXE setups (out/pxe/dnsmasq*.conf)', kind: 'command', paths: ['dnsmasq'], versionArgs: ['--version']},
  {name: 'ipxe', pkg: 'ipxe', required: false, purpose: 'undionly.kpxe: iPXE for BIOS PXE ROMs, copied into out/tftp', kind: 'file', paths: [IPXE_BIOS]},
  {name: 'ipxe-efi', pkg: 'ipxe', required: false, purpose: 'snponly.efi: iPXE for UEFI PXE clients, copied into out/tftp', kind: 'file', paths: [IPXE_EFI]},
  {name: 'ovmf', pkg: 'ovmf', required: false, purpose: 'UEFI firmware for `netboot boot --firmware uefi`', kind: 'file', paths: [OVMF]},
  {name: 'nginx', pkg: 'nginx-light', required: false, purpose: 'HTTP server for out/http with out/pxe/nginx.conf (or netboot serve)', kind: 'command', paths: ['nginx'], versionArgs: ['-v']},
  {name: 'cpio', pkg: 'cpio', required: false, purpose: 'inspect initramfs archives by hand', kind: 'command', paths: ['cpio'], versionArgs: ['--version']},
]

/** First line that carries a version number, reduced to the version itself. */
export function parseVersion(tool: string, output: string): string | undefined {
  const text = output.replace(/\r/g, '')
  const patterns: Record<string, RegExp> = {
    'qemu-system-x86_64': /QEMU emulator version (\S+)/,
    'qemu-img': /qemu-img version (\S+)/,
    'qemu-io': /qemu-io version (\S+)/,
    busybox: /BusyBox v(\S+)/,
    gcc: /^gcc \(.*\) (\S+)/m,
    make: /GNU Make (\S+)/,
    flex: /flex (\S+)/,
    bison: /bison \(GNU Bison\) (\S+)/,
    bc: /^bc (\S+)/m,
    ccache: /ccache version (\S+)/,
    xz: /xz \(XZ Utils\) (\S+)/,
    git: /git version (\S+)/,
    'mkfs.ext4': /mke2fs (\S+)/,
    zstd: /Zstandard CLI .*? v(\d[\w.]*)/,
    dnsmasq: /Dnsmasq version (\S+)/,
    nginx: /nginx version: nginx\/(\S+)/,
    cpio: /cpio \(GNU cpio\) (\S+)/,
    rsync: /rsync\s+version (\S+)/,
    depmod: /kmod version (\S+)/,
  }
  const m = patterns[tool]?.exec(text)
  if (m) return m[1].replace(/,$/, '')
  // Unknown output shape: the first dotted number is the best guess.
  const generic = /\b(\d+\.\d+(?:\.\d+)*)\b/.exec(text)
  return generic?.[1]
}

/** Parses `dpkg-query -W -f '${Package} ${Version}\n'` output into a map. */
export function parseDpkgVersions(output: string): Map<string, string> {
  const map = new Map<string, string>()
  for (const line of output.split('\n')) {
    const [pkg, version] = line.trim().split(/\s+/)
    if (pkg && version) map.set(pkg.replace(/:.*$/, ''), version)
  }
  return map
}

export function findOnPath(command: string, pathEnv = process.env.PATH ?? ''): string | undefined {
  // Debian's PATH for non-root users lacks /usr/sbin, where mkfs.ext4 and dnsmasq live.
  const dirs = [...pathEnv.split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin']
  for (const dir of dirs) {
    if (!dir) continue
    const candidate = join(dir, command)
    try {
      accessSync(candidate, constants.X_OK)
      if (statSync(candidate).isFile()) return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

async function versionOf(spec: ToolSpec, path: string): Promise<string | undefined> {
  if (spec.versionArgs === undefined) return undefined
  try {
    const {stdout, stderr} = await execFileAsync(path, spec.versionArgs, {timeout: 10_000})
    return parseVersion(spec.name, `${stdout}\n${stderr}`)
  } catch (err) {
    // Some tools (busybox without applet) exit non-zero but still print their banner.
    const e = err as {stdout?: string; stderr?: string}
    return parseVersion(spec.name, `${e.stdout ?? ''}\n${e.stderr ?? ''}`)
  }
}

async function dpkgVersions(pkgs: string[]): Promise<Map<string, string>> {
  try {
    const {stdout} = await execFileAsync('dpkg-query', ['-W', '-f', '${Package} ${Version}\n', ...pkgs], {timeout: 10_000})
    return parseDpkgVersions(stdout)
  } catch (err) {
    // dpkg-query exits 1 when some package is unknown but still prints the known ones.
    return parseDpkgVersions((err as {stdout?: string}).stdout ?? '')
  }
}

export async function checkTool(spec: ToolSpec, dpkg?: Map<string, string>): Promise<ToolStatus> {
  const base = {name: spec.name, pkg: spec.pkg, required: spec.required, purpose: spec.purpose}
  const path = spec.kind === 'command' ? findOnPath(spec.paths[0]) : spec.paths.find((p) => existsSync(p))
  if (!path) return {...base, found: false}
  const problem = spec.verify?.(path)
  let version = await versionOf(spec, path)
  if (version === undefined && spec.kind === 'file') version = dpkg?.get(spec.pkg)
  return {...base, found: problem === undefined, path, version, problem}
}

export async function checkTools(specs: ToolSpec[] = TOOLS): Promise<ToolStatus[]> {
  const filePkgs = specs.filter((s) => s.kind === 'file').map((s) => s.pkg)
  const dpkg = filePkgs.length > 0 ? await dpkgVersions(filePkgs) : new Map<string, string>()
  return Promise.all(specs.map((s) => checkTool(s, dpkg)))
}

export function toolSpec(name: string): ToolSpec {
  const spec = TOOLS.find((t) => t.name === name)
  if (!spec) throw new Error(`unknown tool "${name}" (not in doctor's TOOLS table)`)
  return spec
}

/** Debian packages providing the missing tools, deduplicated, in table order. */
export function missingPackages(statuses: ToolStatus[], includeOptional: boolean): string[] {
  const pkgs = statuses.filter((s) => !s.found && (s.required || includeOptional)).map((s) => s.pkg)
  return [...new Set(pkgs)]
}

/**
 * Fails early, before a command does any work, when a tool it needs is missing:
 * "qemu-img is missing (Debian package qemu-utils)". Exit code 1: the host, not the input, is wrong.
 */
export async function requireTools(names: string[]): Promise<void> {
  const statuses = await checkTools(names.map((n) => toolSpec(n)))
  const missing = statuses.filter((s) => !s.found)
  if (missing.length === 0) return
  const what = missing.map((s) => (s.problem ? s.problem : `${s.name} is missing (Debian package ${s.pkg})`)).join('; ')
  const pkgs = [...new Set(missing.map((s) => s.pkg))].join(' ')
  throw new NetbootError(what, {suggestions: [`apt-get install ${pkgs}`, 'or run `netboot doctor --install`']})
}
