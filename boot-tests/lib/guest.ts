// Pieces of the kernel test VMs: a busybox initramfs whose /init is a test script, the
// static test tools built against the series' uAPI headers, and a read-only ext4 test disk.
import {execa} from 'execa'
import {readFile, readdir, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'
import {CpioArchive} from '../../cli/src/lib/initramfs/cpio.js'
import {buildLoopfmt} from '../../cli/src/lib/loopfmt.js'
import {quietContext} from '../../cli/src/lib/log.js'

export const GUEST_DIR = join(import.meta.dirname, '..', 'guest')

/** Regular files and directories below `dir` into the archive under `at` (links are left out). */
async function addTree(archive: CpioArchive, dir: string, at: string): Promise<void> {
  archive.dir(at)
  for (const entry of await readdir(dir, {withFileTypes: true})) {
    const from = join(dir, entry.name)
    if (entry.isDirectory()) await addTree(archive, from, `${at}/${entry.name}`)
    else if (entry.isFile()) archive.file(`${at}/${entry.name}`, await readFile(from), (await stat(from)).mode & 0o777)
  }
}

/**
 * gzip'd newc archive: busybox with every applet, the given binaries in /bin, `init` as /init,
 * and `trees` (archive path → host directory), such as lib/modules.
 */
export async function busyboxInitramfs(init: string, binaries: Record<string, Buffer>, trees: Record<string, string> = {}): Promise<Buffer> {
  const archive = new CpioArchive()
  archive.file('bin/busybox', await readFile('/bin/busybox'), 0o755)
  const {stdout} = await execa('/bin/busybox', ['--list'])
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) archive.symlink(`bin/${applet}`, 'busybox')
  for (const [name, data] of Object.entries(binaries)) archive.file(`bin/${name}`, data, 0o755)
  archive.file('init', await readFile(init), 0o755)
  for (const dir of ['dev', 'proc', 'sys', 'img', 'mnt', 'tmp', 'sbin']) archive.dir(dir)
  archive.charDev('dev/console', 5, 1)
  for (const [at, dir] of Object.entries(trees)) await addTree(archive, dir, at)
  return gzipSync(archive.encode())
}

/** loopfmt, built (and cached) against the kernel's uAPI headers. */
export async function loopfmtBinary(headers: string): Promise<Buffer> {
  const built = await buildLoopfmt(quietContext(), {includeDir: headers})
  return readFile(built.path)
}

/** A read-only ext4 disk image holding `dir`, sized to fit. */
export async function ext4Disk(dir: string, out: string): Promise<void> {
  let bytes = 0
  for (const f of await readdir(dir)) bytes += (await stat(join(dir, f))).size
  await execa('mkfs.ext4', ['-q', '-F', '-N', '20000', '-d', dir, out, `${Math.ceil((bytes * 1.25) / 1048576) + 64}M`])
}
