/**
 * The netboot initramfs: busybox-static, loopfmt, /init and its helpers, packed with our own
 * newc writer (cpio.ts) and compressed with gzip (node zlib) or zstd (the zstd tool).
 *
 * Layout:
 *   /init                               initramfs/init
 *   /lib/netboot.sh                     initramfs/lib.sh (functions /init sources)
 *   /usr/share/udhcpc/default.script    initramfs/udhcpc.script
 *   /bin/busybox + /bin/<applet>        only the applets the scripts and a rescue shell use
 *   /sbin/loopfmt                       the attach tool (loopfmt.ts)
 *   /dev/console, /dev/null             the kernel opens /dev/console for /init before
 *                                       anything could mount devtmpfs
 *   /proc /sys /run /tmp /newroot /etc  mount points and scratch
 */
import {existsSync} from 'node:fs'
import {readFile, rm, stat, writeFile} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'
import {createHash} from 'node:crypto'
import {gzipSync, constants as zlibConstants} from 'node:zlib'

import {atomicWrite} from '../cache.js'
import {PACKAGE_ROOT} from '../config.js'
import {elfIsStatic} from '../doctor.js'
import {NetbootError} from '../errors.js'
import {run} from '../exec.js'
import type {RunContext} from '../log.js'
import {CpioArchive, type CpioRecord, encodeNewc, sourceDateEpoch} from './cpio.js'

export type Compression = 'gzip' | 'zstd'

export const INITRAMFS_DIR = join(PACKAGE_ROOT, 'initramfs')
export const DEFAULT_BUSYBOX = '/bin/busybox'
/** The goal for the compressed image: small enough that PXE loading it is not a phase of its own. */
export const SIZE_TARGET_BYTES = 1.5 * 1024 * 1024

/**
 * Applets linked into /bin. Those /init, lib.sh and the DHCP script run, plus a few for the
 * rescue shell (netboot.onfail=shell). `sh` is needed as the #! interpreter of the scripts.
 */
export const APPLETS = [
  // the scripts
  'awk', 'cat', 'cttyhack', 'cut', 'echo', 'grep', 'head', 'ip', 'kill', 'mkdir', 'mount',
  'poweroff', 'reboot', 'rm', 'sed', 'setsid', 'sh', 'sha256sum', 'sleep', 'stat', 'switch_root',
  'tail', 'timeout', 'tr', 'udhcpc', 'umount', 'uname', 'wget',
  // the rescue shell
  'df', 'dmesg', 'free', 'less', 'ls', 'ps', 'vi',
] as const

export interface BuildInitramfsOptions {
  /** Static busybox binary (default /bin/busybox). */
  busybox?: string
  /** Static loopfmt binary (buildLoopfmt()). */
  loopfmt: string
  /** Directory holding init, lib.sh and udhcpc.script (default: the repository's initramfs/). */
  scriptsDir?: string
  /** A different /init, e.g. a test harness; lib.sh and the DHCP script are still included. */
  init?: string
  /** Extra entries (test images, tools) added as they are. */
  extra?: CpioRecord[]
  compression?: Compression
  /** mtime of every entry; default SOURCE_DATE_EPOCH or 0. */
  mtime?: number
  /** Output file. */
  out: string
}

export interface InitramfsResult {
  path: string
  compression: Compression
  /** Compressed size. */
  bytes: number
  /** Size of the uncompressed cpio archive. */
  cpioBytes: number
  sha256: string
  entries: number
  /** Over SIZE_TARGET_BYTES: the build is usable but slower to load. */
  overTarget: boolean
}

const HOW_TO_GET: Record<string, string> = {
  busybox: 'apt-get install busybox-static',
  loopfmt: 'build it with `netboot initramfs --kernel-headers DIR` (or `netboot kernel build` first)',
}

async function readExecutable(path: string, what: 'busybox' | 'loopfmt'): Promise<Buffer> {
  if (!existsSync(path)) throw new NetbootError(`${what} ${path} does not exist`, {exit: 2, suggestions: [HOW_TO_GET[what]!]})
  const data = await readFile(path)
  let isStatic: boolean
  try {
    isStatic = elfIsStatic(data)
  } catch (err) {
    throw new NetbootError(`${what} ${path} is not an ELF executable: ${(err as Error).message}`, {exit: 2})
  }
  if (!isStatic) {
    throw new NetbootError(`${what} ${path} is dynamically linked; the initramfs has no dynamic loader`, {exit: 2, suggestions: [HOW_TO_GET[what]!]})
  }
  return data
}

/** The applets this busybox binary provides (`busybox --list`). */
export async function busyboxApplets(ctx: RunContext, busybox: string): Promise<Set<string>> {
  const {stdout} = await run(ctx, busybox, ['--list'])
  return new Set(stdout.split('\n').map((l) => l.trim()).filter(Boolean))
}

/** Every record of the initramfs, in no particular order (the encoder sorts). */
export async function initramfsRecords(ctx: RunContext, options: Omit<BuildInitramfsOptions, 'out' | 'compression' | 'mtime'>): Promise<CpioRecord[]> {
  const busyboxPath = resolve(options.busybox ?? DEFAULT_BUSYBOX)
  const scripts = resolve(options.scriptsDir ?? INITRAMFS_DIR)
  const busybox = await readExecutable(busyboxPath, 'busybox')
  const loopfmt = await readExecutable(resolve(options.loopfmt), 'loopfmt')

  const available = await busyboxApplets(ctx, busyboxPath)
  const missing = APPLETS.filter((a) => !available.has(a))
  if (missing.length > 0) {
    throw new NetbootError(`${busyboxPath} lacks applets the initramfs needs: ${missing.join(', ')}`, {
      suggestions: ['use Debian\'s busybox-static (apt-get install busybox-static)'],
    })
  }

  const script = async (name: string, path = join(scripts, name)): Promise<Buffer> => {
    if (!existsSync(path)) throw new NetbootError(`initramfs script ${path} does not exist`, {exit: 2})
    return readFile(path)
  }

  const archive = new CpioArchive()
    .file('init', await script('init', options.init && resolve(options.init)), 0o755)
    .file('lib/netboot.sh', await script('lib.sh'), 0o644)
    .file('usr/share/udhcpc/default.script', await script('udhcpc.script'), 0o755)
    .file('bin/busybox', busybox, 0o755)
    .file('sbin/loopfmt', loopfmt, 0o755)
    .charDev('dev/console', 5, 1, 0o600)
    .charDev('dev/null', 1, 3, 0o666)
  for (const dir of ['proc', 'sys', 'dev', 'run', 'newroot', 'etc']) archive.dir(dir, 0o755)
  archive.dir('tmp', 0o1777)
  for (const applet of APPLETS) archive.symlink(`bin/${applet}`, 'busybox')
  for (const rec of options.extra ?? []) archive.add(rec)
  return archive.entries()
}

/** Compresses a cpio archive the way the kernel's initramfs unpacker expects it. */
export async function compress(ctx: RunContext, cpio: Buffer, compression: Compression, scratch: string): Promise<Buffer> {
  if (compression === 'gzip') {
    // zlib writes mtime 0 and a fixed OS byte into the gzip header: reproducible.
    return gzipSync(cpio, {level: zlibConstants.Z_BEST_COMPRESSION})
  }
  // -T1: multi-threaded zstd may cut frames differently; one thread is reproducible.
  const input = `${scratch}.cpio`
  const output = `${scratch}.zst`
  try {
    await writeFile(input, cpio)
    await run(ctx, 'zstd', ['-19', '-T1', '-q', '-f', '--no-progress', '-o', output, input])
    return await readFile(output)
  } finally {
    await rm(input, {force: true})
    await rm(output, {force: true})
  }
}

export async function buildInitramfs(ctx: RunContext, options: BuildInitramfsOptions): Promise<InitramfsResult> {
  const compression = options.compression ?? 'gzip'
  if (compression !== 'gzip' && compression !== 'zstd') {
    throw new NetbootError(`compression '${compression as string}' is not gzip or zstd`, {exit: 2})
  }
  const out = resolve(options.out)
  const records = await initramfsRecords(ctx, options)
  const cpio = encodeNewc(records, {mtime: options.mtime ?? sourceDateEpoch()})
  const data = await compress(ctx, cpio, compression, join(dirname(out), `.${basename(out)}.${process.pid}`))
  await atomicWrite(out, data)
  const bytes = (await stat(out)).size
  ctx.log.write(`initramfs: ${out}: ${records.length} entries, cpio ${cpio.length} bytes, ${compression} ${bytes} bytes`)
  return {
    path: out,
    compression,
    bytes,
    cpioBytes: cpio.length,
    sha256: createHash('sha256').update(data).digest('hex'),
    entries: records.length,
    overTarget: bytes > SIZE_TARGET_BYTES,
  }
}
