/**
 * Bad input to the netboot commands, run as real processes (cli/test/commands/cli-main.ts runs a
 * command from the sources like bin/run.js runs the compiled one): each case must end with exit
 * code 1 or 2, one "netboot: <what>" line on stderr (plus "hint:" lines saying what to do), and
 * no half-written artifact. The read-only and full-disk cases mount small tmpfs file systems
 * (root only; skipped with a log line otherwise); Ctrl-C is a SIGINT to the process group.
 */
import test, {type ExecutionContext} from 'ava'
import {spawn, execFileSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

const MAIN = resolve('cli/test/commands/cli-main.ts')
// The scratch working directories have no node_modules: hand Node the loader by URL.
const TSX = import.meta.resolve('tsx')
const work = mkdtempSync(join(tmpdir(), 'netboot-cli-errors-'))
const mounts: string[] = []
test.after.always(() => {
  for (const m of mounts.reverse()) {
    try {
      execFileSync('umount', ['-l', m])
    } catch {
      // Already gone.
    }
  }
  rmSync(work, {recursive: true, force: true})
})

interface CliRun {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/**
 * Runs `netboot <id> args` in its own process group (so a SIGINT can reach it and its tools, as
 * Ctrl-C does), in a scratch directory (its run log lands there), with its own cache.
 * `whileRunning` gets the pid and may signal it.
 */
function netboot(
  id: string,
  args: string[],
  opts: {whileRunning?: (pid: number) => Promise<void>; cwd?: string; env?: Record<string, string>} = {},
): Promise<CliRun> {
  const cwd = opts.cwd ?? mkdtempSync(join(work, 'cwd-'))
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', TSX, MAIN, id, ...args], {
      cwd,
      detached: true,
      env: {...process.env, NETBOOT_CACHE: join(work, 'cache'), NO_COLOR: '1', ...opts.env},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', fail)
    child.on('close', (code, signal) => done({code, signal, stdout, stderr}))
    if (opts.whileRunning) opts.whileRunning(child.pid!).catch(fail)
  })
}

/**
 * The error as a user reads it: stderr is exactly one "netboot: ..." line followed only by
 * "hint:" lines (task progress goes to stdout). Returns the message (without "netboot: ") and
 * the hints.
 */
function oneLineError(t: ExecutionContext, r: CliRun, exit: 1 | 2): {message: string; hints: string[]} {
  t.is(r.code, exit, `exit code; stderr:\n${r.stderr}`)
  const lines = r.stderr.split('\n').filter((l) => l !== '')
  const errors = lines.filter((l) => l.startsWith('netboot: '))
  t.is(errors.length, 1, `one error line in:\n${r.stderr}`)
  t.false(/\n\s+at /.test(r.stderr), 'no stack trace')
  const hints = lines.filter((l) => l.startsWith('  hint: ')).map((l) => l.slice(8))
  t.deepEqual(lines, [errors[0], ...hints.map((h) => `  hint: ${h}`)], 'nothing but the error and its hints')
  return {message: (errors[0] ?? '').slice('netboot: '.length), hints}
}

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], {cwd, encoding: 'utf8'})
}

/** A scratch directory; its entries (hidden ones too) tell what a failed run left behind. */
function scratch(name: string): string {
  const dir = join(work, name)
  mkdirSync(dir, {recursive: true})
  return dir
}

/** Mounts a tmpfs of `size` on a new directory, or logs why not and returns undefined. */
function tmpfs(t: ExecutionContext, name: string, size: string, readOnly = false): string | undefined {
  const dir = scratch(name)
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${readOnly ? ',ro' : ''}`, 'netboot-test', dir], {stdio: 'pipe'})
  } catch (err) {
    t.log(`skipped: cannot mount a tmpfs (${(err as Error).message.split('\n')[0]}); needs root`)
    return undefined
  }
  mounts.push(dir)
  return dir
}

// --- kernel sources --------------------------------------------------------------------

test('kernel prepare: a kernel source that does not exist is exit 2, naming it', async (t) => {
  // a cache of its own: the other tests of this file run at the same time and use theirs
  const cache = join(work, 'cache-missing-source')
  const r = await netboot('kernel:prepare', ['--kernel', join(work, 'no-such-linux')], {env: {NETBOOT_CACHE: cache}})
  const {message} = oneLineError(t, r, 2)
  t.is(message, `kernel source ${join(work, 'no-such-linux')} does not exist`)
  t.false(existsSync(join(cache, 'src')) && readdirSync(join(cache, 'src')).length > 0, 'nothing extracted')
})

test('kernel prepare: a directory that is not a kernel tree is exit 2 and stays untouched', async (t) => {
  const dir = scratch('not-a-kernel')
  writeFileSync(join(dir, 'Makefile'), 'all:\n\techo hi\n')
  const r = await netboot('kernel:prepare', ['--kernel', dir])
  const {message, hints} = oneLineError(t, r, 2)
  t.is(message, `${dir} is not a Linux kernel source tree (no Kconfig)`)
  t.true(hints.length > 0, 'says what to pass instead')
  t.deepEqual(readdirSync(dir), ['Makefile'], 'no .git or anything else created in it')
})

test('kernel prepare: a tarball that is not a kernel is exit 2', async (t) => {
  const dir = scratch('fake-tarball')
  writeFileSync(join(dir, 'linux.zip'), 'PK\x03\x04')
  const r = await netboot('kernel:prepare', ['--kernel', join(dir, 'linux.zip')])
  const {message} = oneLineError(t, r, 2)
  t.regex(message, /is neither a directory nor a \.tar\.xz/)
})

/** A miniature kernel tree and a one-patch series whose hunk context is not in the tree. */
function treeAndBadSeries(): {tree: string; series: string} {
  const root = scratch('patch')
  const tree = join(root, 'linux-6.1')
  mkdirSync(join(tree, 'drivers/block'), {recursive: true})
  writeFileSync(join(tree, 'Makefile'), 'VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n')
  writeFileSync(join(tree, 'Kconfig'), 'mainmenu "Linux"\n')
  writeFileSync(join(tree, 'drivers/block/loop.c'), Array.from({length: 30}, (_, i) => `int line${i};`).join('\n') + '\n')
  const series = join(root, 'series')
  mkdirSync(series)
  // A well-formed patch written against a loop.c that has "int line9_renamed;" where ours has "int line9;".
  const patch = [
    'From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001',
    'From: T <t@t>',
    'Date: Thu, 1 Jan 1970 00:00:00 +0000',
    'Subject: [PATCH] loop: change line 10',
    '',
    '---',
    ' drivers/block/loop.c | 2 +-',
    ' 1 file changed, 1 insertion(+), 1 deletion(-)',
    '',
    'diff --git a/drivers/block/loop.c b/drivers/block/loop.c',
    '--- a/drivers/block/loop.c',
    '+++ b/drivers/block/loop.c',
    '@@ -8,5 +8,5 @@',
    ' int line7;',
    ' int line8;',
    ' int line9_renamed;',
    '-int line10;',
    '+int line10_changed;',
    ' int line11;',
    '-- ',
    '2.39.5',
    '',
  ].join('\n')
  writeFileSync(join(series, '0001-loop-change-line-10.patch'), patch)
  writeFileSync(join(series, 'series'), '0001-loop-change-line-10.patch\n')
  writeFileSync(join(series, 'config'), 'CONFIG_BLK_DEV_LOOP=y\n')
  return {tree, series}
}

test('kernel patch: a series that does not apply names the patch and the hunk; the tree is left at its baseline', async (t) => {
  const {tree, series} = treeAndBadSeries()
  const before = readFileSync(join(tree, 'drivers/block/loop.c'), 'utf8')
  const r = await netboot('kernel:patch', ['--kernel', tree, '--series', series])
  const {message} = oneLineError(t, r, 1)
  t.regex(message, /^patch 0001-loop-change-line-10\.patch does not apply to .*: hunk at drivers\/block\/loop\.c:\d+ does not apply$/)
  t.is(readFileSync(join(tree, 'drivers/block/loop.c'), 'utf8'), before)
  t.is(git(tree, 'status', '--porcelain'), '', 'no stray changes')
  t.is(git(tree, 'rev-parse', 'HEAD'), git(tree, 'rev-parse', 'netboot-base^{commit}'), 'HEAD is the baseline')
  t.false(existsSync(join(tree, '.git', 'rebase-apply')), 'no git am left half-way')
})

// --- qcow2 images given to `netboot image` -----------------------------------------------

function qemuImg(...args: string[]): void {
  execFileSync('qemu-img', args, {stdio: 'pipe'})
}

/** `netboot image --source <file> --out <fresh dir>/root.qcow2`, and what it left in that dir. */
async function imageOf(t: ExecutionContext, source: string, exit: 1 | 2) {
  const out = mkdtempSync(join(work, 'out-'))
  const r = await netboot('image', ['--source', source, '--out', join(out, 'root.qcow2')])
  const e = oneLineError(t, r, exit)
  t.deepEqual(readdirSync(out), [], 'nothing written, not even a temporary file')
  return e
}

test('image: a qcow2 with a backing file is refused (exit 1) with the reason and how to flatten it', async (t) => {
  const dir = scratch('qcow2-backing')
  qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '16M')
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(dir, 'child.qcow2'))
  const {message, hints} = await imageOf(t, join(dir, 'child.qcow2'), 1)
  t.is(message, `${join(dir, 'child.qcow2')}: the kernel qcow2 loop driver would refuse this image (EOPNOTSUPP): backing files are not supported (backing file "base.qcow2")`)
  t.true(hints.some((h) => h.startsWith('make a standalone copy: qemu-img convert')))
})

test('image: an encrypted qcow2 is refused (exit 1)', async (t) => {
  const dir = scratch('qcow2-encrypted')
  const file = join(dir, 'enc.qcow2')
  qemuImg('create', '-q', '-f', 'qcow2', file, '16M')
  // crypt_method (big-endian u32 at offset 32) = 1: AES, as old qemu-img wrote it.
  const buf = readFileSync(file)
  buf.writeUInt32BE(1, 32)
  writeFileSync(file, buf)
  const {message} = await imageOf(t, file, 1)
  t.is(message, `${file}: the kernel qcow2 loop driver would refuse this image (EOPNOTSUPP): encrypted images are not supported (crypt_method 1, aes)`)
})

test('image: a truncated (corrupt) qcow2 is refused (exit 1) naming the broken table', async (t) => {
  const dir = scratch('qcow2-truncated')
  qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'whole.qcow2'), '16M')
  writeFileSync(join(dir, 'cut.qcow2'), readFileSync(join(dir, 'whole.qcow2')).subarray(0, 1000))
  const {message} = await imageOf(t, join(dir, 'cut.qcow2'), 1)
  t.regex(message, /: the kernel qcow2 loop driver would refuse this image \(EINVAL\): L1 table at 0x[0-9a-f]+ \(1 entries\) runs past end of file \(1000 bytes\)$/)
})

test('image: a file that is neither qcow2 nor a tarball is a usage error (exit 2)', async (t) => {
  const file = join(scratch('garbage'), 'root.qcow2')
  writeFileSync(file, Buffer.alloc(4096, 0x58))
  const {message} = await imageOf(t, file, 2)
  t.regex(message, /^image source ".*root\.qcow2" is not a qcow2 image and not a tarball/)
})

// --- where the output goes -----------------------------------------------------------------

test.serial('an output directory that is not writable: one line naming it, exit 1', async (t) => {
  const ro = tmpfs(t, 'ro', '1m', true)
  if (!ro) return t.pass()
  for (const [id, args, file] of [
    ['image', [], 'root.qcow2'],
    ['initramfs', ['--loopfmt', '/bin/busybox'], 'initramfs.img'],
  ] as const) {
    const r = await netboot(id, [...args, '--out', join(ro, file)])
    const {message, hints} = oneLineError(t, r, 1)
    t.is(message, `cannot write ${join(ro, file)}: read-only file system (EROFS)`, id)
    t.deepEqual(hints, ['choose a writable location with --out (or "output" in netboot.config.json)'])
  }
  // A source qcow2 copied into it fails the same way.
  const src = join(scratch('ro-src'), 'ok.qcow2')
  qemuImg('create', '-q', '-f', 'qcow2', src, '16M')
  const r = await netboot('image', ['--source', src, '--out', join(ro, 'root.qcow2')])
  t.is(oneLineError(t, r, 1).message, `cannot write ${join(ro, 'root.qcow2')}: read-only file system (EROFS)`)
})

test.serial('disk full while building the image or the initramfs: one line, exit 1, nothing left behind', async (t) => {
  // 1 MiB: the demo root's staging copy fails; 5 MiB: mkfs.ext4 fills it; 7 MiB: qemu-img does.
  for (const size of ['1m', '5m', '7m']) {
    const full = tmpfs(t, `full-image-${size}`, size)
    if (!full) return t.pass()
    const out = join(full, 'root.qcow2')
    const r = await netboot('image', ['--out', out])
    const {message, hints} = oneLineError(t, r, 1)
    t.is(message, `no space left on device writing ${out}`, `tmpfs of ${size}`)
    t.deepEqual(hints, [`free some space in ${full}, or write elsewhere with --out (or "output" in netboot.config.json)`])
    t.deepEqual(readdirSync(full), [], `tmpfs of ${size} is empty again`)
  }
  const small = tmpfs(t, 'full-initramfs', '512k')
  if (!small) return
  for (const compression of ['gzip', 'zstd']) {
    const out = join(small, 'initramfs.img')
    const r = await netboot('initramfs', ['--loopfmt', '/bin/busybox', '--compression', compression, '--out', out])
    t.is(oneLineError(t, r, 1).message, `no space left on device writing ${out} (ENOSPC)`, compression)
    t.deepEqual(readdirSync(small), [], `${compression}: nothing left behind`)
  }
})

// --- Ctrl-C ----------------------------------------------------------------------------------

test.serial('Ctrl-C during `netboot image` of a big directory: exit 130, no partial image; the next run completes', async (t) => {
  const source = scratch('big-root')
  // 160 MiB that deflate cannot shrink: mkfs.ext4 and qemu-img take a few seconds on it.
  const block = execFileSync('head', ['-c', String(1 << 20), '/dev/urandom'])
  for (let i = 0; i < 160; i++) writeFileSync(join(source, `blob-${i}`), block)
  const out = mkdtempSync(join(work, 'out-sigint-'))
  const target = join(out, 'root.qcow2')
  let sentAfterMs = 0
  const r = await netboot('image', ['--source', source, '--out', target, '--compression', 'deflate'], {
    async whileRunning(pid) {
      const t0 = Date.now()
      // Wait until the build is writing into the output directory, then press "Ctrl-C".
      while (Date.now() - t0 < 60_000 && !readdirSync(out).some((n) => n.includes('.tmp-'))) await new Promise((r) => setTimeout(r, 50))
      await new Promise((r) => setTimeout(r, 300))
      sentAfterMs = Date.now() - t0
      process.kill(-pid, 'SIGINT')
    },
  })
  t.log(`SIGINT after ${sentAfterMs} ms`)
  t.is(r.code, 130, r.stderr)
  t.regex(r.stderr, new RegExp(`^netboot: interrupted \\(SIGINT\\); removed the partial ${out}/\\.root\\.qcow2\\.tmp-\\w+$`, 'm'))
  t.deepEqual(readdirSync(out), [], 'no image and no staging directory left')

  const again = await netboot('image', ['--source', source, '--out', target, '--compression', 'deflate'])
  t.is(again.code, 0, again.stderr)
  t.deepEqual(readdirSync(out), ['root.qcow2'])
  execFileSync('qemu-img', ['check', '-q', target])
})

// A stand-in `make` for the targets `netboot kernel build` runs, so that a "kernel build" takes
// no compiler time; with $NETBOOT_TEST_STALL set, bzImage hangs after its first object, as a long
// build does, and says so in that file.
const STAND_IN_MAKE = `#!/bin/bash
set -e
tree= out= hdr= target= next=
for a in "$@"; do
  case "$a" in
    -C) next=tree ;;
    O=*) out=\${a#O=} ;;
    INSTALL_HDR_PATH=*) hdr=\${a#INSTALL_HDR_PATH=} ;;
    tinyconfig|olddefconfig|bzImage|headers_install) target=$a ;;
    *) if [ "$next" = tree ]; then tree=$a; next=; fi ;;
  esac
done
case "$target" in
  tinyconfig) printf 'CONFIG_64BIT=y\\n' > "$out/.config" ;;
  olddefconfig) sort -u "$out/.config" -o "$out/.config" ;;
  bzImage)
    echo "  CC      init/main.o"
    if [ -n "$NETBOOT_TEST_STALL" ]; then echo "$$" > "$NETBOOT_TEST_STALL"; sleep 60; fi
    mkdir -p "$out/arch/x86/boot"; echo "bzImage" > "$out/arch/x86/boot/bzImage" ;;
  headers_install) mkdir -p "$hdr/include/linux"; echo "/* loop */" > "$hdr/include/linux/loop.h" ;;
esac
`

test.serial('Ctrl-C during `netboot kernel build`: nothing cached; the next run takes the lock over and finishes', async (t) => {
  const root = scratch('kbuild')
  const bin = join(root, 'bin')
  const tree = join(root, 'linux-6.1')
  const series = join(root, 'series')
  mkdirSync(bin)
  mkdirSync(join(tree, 'scripts/kconfig'), {recursive: true})
  mkdirSync(series)
  writeFileSync(join(bin, 'make'), STAND_IN_MAKE, {mode: 0o755})
  writeFileSync(join(tree, 'Makefile'), 'VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\n')
  writeFileSync(join(tree, 'Kconfig'), 'config 64BIT\nconfig BLK_DEV_LOOP\n')
  // merge_config.sh -m -O <dir> <base> <fragment>: the fragment's lines win.
  writeFileSync(join(tree, 'scripts/kconfig/merge_config.sh'), '#!/bin/sh\ncat "$4" "$5" > "$3/.config.m" && mv "$3/.config.m" "$3/.config"\n', {mode: 0o755})
  writeFileSync(
    join(series, '0001-loop-add-a-file.patch'),
    [
      'From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001',
      'From: T <t@t>',
      'Date: Thu, 1 Jan 1970 00:00:00 +0000',
      'Subject: [PATCH] loop: add a file',
      '',
      '---',
      'diff --git a/drivers/block/loop_fmt.c b/drivers/block/loop_fmt.c',
      'new file mode 100644',
      '--- /dev/null',
      '+++ b/drivers/block/loop_fmt.c',
      '@@ -0,0 +1 @@',
      '+int fmt;',
      '-- ',
      '2.39.5',
      '',
    ].join('\n'),
  )
  writeFileSync(join(series, 'series'), '0001-loop-add-a-file.patch\n')
  writeFileSync(join(series, 'config'), 'CONFIG_BLK_DEV_LOOP=y\n')

  const cache = join(root, 'cache')
  const env = {PATH: `${bin}:${process.env.PATH}`, NETBOOT_CACHE: cache}
  const stall = join(root, 'stalled')
  const args = ['--kernel', tree, '--series', series, '-j', '1']
  const first = await netboot('kernel:build', args, {
    env: {...env, NETBOOT_TEST_STALL: stall},
    async whileRunning(pid) {
      const t0 = Date.now()
      while (!existsSync(stall) && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 50))
      process.kill(-pid, 'SIGINT')
    },
  })
  // Killed by the signal, or 130 after cleaning up; not listr2's 127.
  t.true(first.code === 130 || first.signal === 'SIGINT', `ended by the interrupt: ${first.code}/${first.signal}\n${first.stderr}`)
  t.false(existsSync(join(cache, 'kernel')) && readdirSync(join(cache, 'kernel')).length > 0, 'no kernel in the cache')
  const locks = readdirSync(join(cache, 'src'), {recursive: true}).map(String).filter((p) => p.endsWith('build.lock'))
  t.is(locks.length, 1, 'the interrupted build still holds its lock')

  const second = await netboot('kernel:build', args, {env})
  t.is(second.code, 0, second.stderr)
  const kernels = readdirSync(join(cache, 'kernel'))
  t.is(kernels.length, 1)
  t.is(readFileSync(join(cache, 'kernel', kernels[0]!, 'bzImage'), 'utf8'), 'bzImage\n')
  t.is(git(tree, 'log', '--format=%s', 'netboot-base..HEAD').trim(), 'loop: add a file', 'the series applied once')
  t.false(existsSync(join(cache, 'src', locks[0]!)), 'the lock of the dead build was taken over and released')
})
