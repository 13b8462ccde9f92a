import test from 'ava'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {gunzipSync} from 'node:zlib'

import {NetbootError} from '../../src/lib/errors.js'
import {APPLETS, buildInitramfs, SIZE_TARGET_BYTES} from '../../src/lib/initramfs/index.js'
import {S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG} from '../../src/lib/initramfs/cpio.js'
import {quietContext} from '../../src/lib/log.js'
import {buildLoopfmt} from '../../src/lib/loopfmt.js'
import {parseNewcStrict} from './helpers.js'
import {seriesIncludeDir} from './uapi-fixture.js'

const work = mkdtempSync(join(tmpdir(), 'initramfs-test-'))
process.env.NETBOOT_CACHE = join(work, 'cache')
test.after.always(() => rmSync(work, {recursive: true, force: true}))
const ctx = quietContext()
const loopfmt = buildLoopfmt(ctx, {includeDir: seriesIncludeDir(work)}).then((r) => r.path)

const build = async (name: string, extra: Partial<Parameters<typeof buildInitramfs>[1]> = {}) =>
  buildInitramfs(ctx, {loopfmt: await loopfmt, out: join(work, name), mtime: 0, ...extra})

test('gzip: identical bytes on every build, under the size target', async (t) => {
  const a = await build('a.img')
  const b = await build('b.img')
  t.true(readFileSync(a.path).equals(readFileSync(b.path)))
  t.is(a.sha256, b.sha256)
  t.is(a.compression, 'gzip')
  t.true(a.bytes <= SIZE_TARGET_BYTES, `${a.bytes} bytes`)
  t.false(a.overTarget)
  t.is(readFileSync(a.path).subarray(0, 2).toString('hex'), '1f8b')
})

test('zstd: identical bytes, and the same archive inside as the gzip build', async (t) => {
  const a = await build('a.zst', {compression: 'zstd'})
  const b = await build('b.zst', {compression: 'zstd'})
  t.true(readFileSync(a.path).equals(readFileSync(b.path)))
  t.is(readFileSync(a.path).readUInt32LE(0), 0xfd2fb528) // zstd frame magic
  const cpio = execFileSync('zstd', ['-d', '-c', a.path], {maxBuffer: 64 << 20})
  const gz = await build('same.img')
  t.true(cpio.equals(gunzipSync(readFileSync(gz.path))))
  t.is(a.cpioBytes, cpio.length)
})

test('contents: scripts, binaries, applet links, device nodes, mount points', async (t) => {
  const r = await build('contents.img')
  const {entries} = parseNewcStrict(gunzipSync(readFileSync(r.path)))
  t.is(entries.length, r.entries)
  const by = new Map(entries.map((e) => [e.name, e]))
  const file = (name: string, mode: number, data: Buffer) => {
    t.is(by.get(name)?.mode, S_IFREG | mode, name)
    t.true(by.get(name)?.data.equals(data), name)
  }
  file('init', 0o755, readFileSync(resolve('initramfs/init')))
  file('lib/netboot.sh', 0o644, readFileSync(resolve('initramfs/lib.sh')))
  file('usr/share/udhcpc/default.script', 0o755, readFileSync(resolve('initramfs/udhcpc.script')))
  file('bin/busybox', 0o755, readFileSync('/bin/busybox'))
  file('sbin/loopfmt', 0o755, readFileSync(await loopfmt))
  for (const applet of APPLETS) {
    t.is(by.get(`bin/${applet}`)?.mode, S_IFLNK | 0o777, applet)
    t.is(by.get(`bin/${applet}`)?.data.toString(), 'busybox', applet)
  }
  t.deepEqual([by.get('dev/console')?.mode, by.get('dev/console')?.rdevMajor, by.get('dev/console')?.rdevMinor], [S_IFCHR | 0o600, 5, 1])
  t.deepEqual([by.get('dev/null')?.mode, by.get('dev/null')?.rdevMajor, by.get('dev/null')?.rdevMinor], [S_IFCHR | 0o666, 1, 3])
  for (const dir of ['proc', 'sys', 'dev', 'run', 'newroot', 'etc']) t.is(by.get(dir)?.mode, S_IFDIR | 0o755, dir)
  t.is(by.get('tmp')?.mode, S_IFDIR | 0o1777)
  // Every applet the scripts call is linked (sh builtins aside).
  const scripts = ['init', 'lib.sh', 'udhcpc.script'].map((f) => readFileSync(resolve('initramfs', f), 'utf8')).join('\n')
  for (const tool of ['wget', 'timeout', 'sha256sum', 'udhcpc', 'switch_root', 'loopfmt', 'awk', 'sed', 'stat', 'setsid', 'cttyhack']) {
    t.true(scripts.includes(tool), `${tool} no longer used? update APPLETS`)
    t.true(by.has(`bin/${tool}`) || by.has(`sbin/${tool}`), tool)
  }
})

test('SOURCE_DATE_EPOCH sets every mtime', async (t) => {
  const previous = process.env.SOURCE_DATE_EPOCH
  process.env.SOURCE_DATE_EPOCH = '1700000000'
  try {
    const r = await buildInitramfs(ctx, {loopfmt: await loopfmt, out: join(work, 'epoch.img')})
    const {entries} = parseNewcStrict(gunzipSync(readFileSync(r.path)))
    t.true(entries.every((e) => e.mtime === 1_700_000_000))
  } finally {
    if (previous === undefined) delete process.env.SOURCE_DATE_EPOCH
    else process.env.SOURCE_DATE_EPOCH = previous
  }
})

test('a different /init and extra entries (test harnesses)', async (t) => {
  const init = join(work, 'test-init')
  writeFileSync(init, '#!/bin/sh\necho test\n')
  const r = await build('custom.img', {init, extra: [{kind: 'file', path: 'images/a.qcow2', mode: 0o644, data: Buffer.from('QFI\xfb')}]})
  const by = new Map(parseNewcStrict(gunzipSync(readFileSync(r.path))).entries.map((e) => [e.name, e]))
  t.is(by.get('init')?.data.toString(), '#!/bin/sh\necho test\n')
  t.is(by.get('images')?.mode, S_IFDIR | 0o755)
  t.true(by.has('images/a.qcow2'))
  t.true(by.has('lib/netboot.sh'))
})

test('refuses dynamic binaries and missing inputs with the path in the message', async (t) => {
  const dynamic = await t.throwsAsync(build('x.img', {busybox: '/bin/ls'}), {instanceOf: NetbootError})
  t.regex(dynamic!.message, /busybox \/bin\/ls is dynamically linked/)
  const missing = await t.throwsAsync(buildInitramfs(ctx, {loopfmt: join(work, 'none'), out: join(work, 'y.img')}), {instanceOf: NetbootError})
  t.regex(missing!.message, /loopfmt .*none does not exist/)
  const badCompression = await t.throwsAsync(build('z.img', {compression: 'xz' as never}), {instanceOf: NetbootError})
  t.regex(badCompression!.message, /compression 'xz' is not gzip or zstd/)
})

test('the scripts parse with busybox sh', (t) => {
  for (const f of ['init', 'lib.sh', 'udhcpc.script']) {
    t.notThrows(() => execFileSync('/bin/busybox', ['sh', '-n', resolve('initramfs', f)]), f)
  }
})
