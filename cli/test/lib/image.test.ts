import test from 'ava'
import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync, chmodSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {
  buildImage,
  checkClusterSize,
  classifySource,
  demoPattern,
  ext4SizeFor,
  parseCompression,
  parseSize,
  safeTarPath,
  uuidFrom,
} from '../../src/lib/image.js'
import {quietContext} from '../../src/lib/log.js'
import {Qcow2RefusedError} from '../../src/lib/qcow2-header.js'

const dir = mkdtempSync(join(tmpdir(), 'netboot-image-'))
test.after.always(() => rmSync(dir, {recursive: true, force: true}))
const ctx = quietContext()
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** The ext4 inside an image, as a raw file (qemu-img is the reference reader). */
function toRaw(image: string): string {
  const raw = `${image}.raw`
  execFileSync('qemu-img', ['convert', '-O', 'raw', image, raw])
  return raw
}

function debugfs(raw: string, request: string): string {
  return execFileSync('debugfs', ['-R', request, raw], {stdio: ['ignore', 'pipe', 'ignore']}).toString()
}

/** Copies the whole file system out (debugfs rdump, no mount needed). */
function dumpTree(raw: string, name: string): string {
  const to = join(dir, name)
  mkdirSync(to)
  execFileSync('debugfs', ['-R', `rdump / ${to}`, raw], {stdio: 'ignore'})
  return to
}

test('option parsing: compression names, cluster sizes, sizes', (t) => {
  t.is(parseCompression('zlib'), 'deflate')
  t.is(parseCompression('zstd'), 'zstd')
  t.is(t.throws(() => parseCompression('lz4'))?.message, 'bad compression "lz4": use none, deflate or zstd')
  t.is(parseSize('64k'), 65536)
  t.is(parseSize('2M'), 2 * 1024 * 1024)
  t.is(parseSize('512'), 512)
  t.is(checkClusterSize(512), 512)
  t.is(checkClusterSize(2 * 1024 * 1024), 2 * 1024 * 1024)
  for (const bad of [256, 3000, 4 * 1024 * 1024]) t.is((t.throws(() => checkClusterSize(bad)) as {exit?: number}).exit, 2)
})

test('ext4 size: content + 30 %, at least 8 MiB, whole MiB', (t) => {
  t.is(ext4SizeFor(0, 10), 8 * 1024 * 1024)
  const big = ext4SizeFor(100 * 1024 * 1024, 1000)
  t.true(big >= 130 * 1024 * 1024)
  t.is(big % (1024 * 1024), 0)
})

test('tar paths cannot leave the root', (t) => {
  t.is(safeTarPath('./etc/passwd'), 'etc/passwd')
  t.is(safeTarPath('/etc/passwd'), 'etc/passwd')
  t.is(safeTarPath('./'), '')
  t.is(safeTarPath('etc/../bin/sh'), 'bin/sh')
  t.is(safeTarPath('../etc/passwd'), undefined)
  t.is(safeTarPath('a/../../b'), undefined)
})

test('uuids derived from a digest are stable, distinct per purpose and well formed', (t) => {
  const a = uuidFrom('abc', 'ext4-uuid')
  t.is(a, uuidFrom('abc', 'ext4-uuid'))
  t.not(a, uuidFrom('abc', 'ext4-hash-seed'))
  t.regex(a, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
})

test('compressed images default to 32 KiB clusters, uncompressed ones to 64 KiB; --cluster-size wins', async (t) => {
  const zstd = await buildImage(ctx, {source: 'demo', out: join(dir, 'demo-zstd.qcow2'), compression: 'zstd'})
  t.is(zstd.header?.clusterSize, 32768)
  t.is(zstd.header?.compressionType, 'zstd')
  const pinned = await buildImage(ctx, {source: 'demo', out: join(dir, 'demo-zstd-64k.qcow2'), compression: 'zstd', clusterSize: 65536})
  t.is(pinned.header?.clusterSize, 65536)
})

test('demo root: qcow2 image with busybox, init, checksummed data; reproducible', async (t) => {
  const a = await buildImage(ctx, {source: 'demo', out: join(dir, 'demo-a.qcow2'), sourceDateEpoch: 1_700_000_000})
  const b = await buildImage(ctx, {source: 'demo', out: join(dir, 'demo-b.qcow2'), sourceDateEpoch: 1_700_000_000})
  t.is(a.format, 'qcow2')
  t.is(a.source, 'demo')
  t.is(a.sha256, b.sha256, 'same input, same bytes')
  t.is(a.sha256, sha(readFileSync(a.path)))
  t.is(a.header?.clusterSize, 65536)
  t.is(a.virtualSize, 8 * 1024 * 1024)
  t.false(existsSync(`${a.path}.tmp`))

  const raw = toRaw(a.path)
  t.regex(execFileSync('dumpe2fs', ['-h', raw], {stdio: ['ignore', 'pipe', 'ignore']}).toString(), /Filesystem volume name:\s+netboot-root/)
  const root = dumpTree(raw, 'demo-tree')
  // Every regular file matches the list the guest checks with sha256sum -c.
  const out = execFileSync('sha256sum', ['-c', 'etc/netboot-demo/SHA256SUMS'], {cwd: root}).toString()
  t.true(out.includes('bin/busybox: OK'))
  t.true(out.includes('sbin/init: OK'))
  t.true(out.includes('etc/netboot-demo/pattern.bin: OK'))
  t.deepEqual(readFileSync(join(root, 'etc/netboot-demo/pattern.bin')), demoPattern(1024 * 1024))
  t.regex(readFileSync(join(root, 'sbin/init'), 'utf8'), /NETBOOT-ROOT-OK root=\$lower_dev format=\$format overlay=\$overlay write=\$write kernel=/)
  // Applet links point at busybox; owners are root; times are the epoch.
  t.regex(debugfs(raw, 'stat /bin/sh'), /Fast link dest: "\/bin\/busybox"/)
  t.regex(debugfs(raw, 'stat /sbin/init'), /User:\s+0\s+Group:\s+0/)
  t.regex(debugfs(raw, 'stat /sbin/init'), /mtime: 0x6553f100/)
  t.regex(debugfs(raw, 'stat /sbin/init'), /Mode:\s+0755/)
})

test('demo root with zstd and deflate compression, other cluster sizes, raw', async (t) => {
  const z = await buildImage(ctx, {source: 'demo', out: join(dir, 'z.qcow2'), compression: 'zstd', clusterSize: 131072})
  t.is(z.header?.compressionType, 'zstd')
  t.is(z.header?.clusterSize, 131072)
  const d = await buildImage(ctx, {source: 'demo', out: join(dir, 'd.qcow2'), compression: 'deflate', clusterSize: 4096})
  t.is(d.header?.compressionType, 'deflate')
  t.is(d.header?.clusterSize, 4096)
  const n = await buildImage(ctx, {source: 'demo', out: join(dir, 'n.qcow2')})
  t.true(z.size < n.size, `zstd ${z.size} < none ${n.size}`)
  t.true(d.size < n.size, `deflate ${d.size} < none ${n.size}`)
  // All three hold the same file system.
  const rawOf = (p: string) => sha(readFileSync(toRaw(p)))
  t.is(rawOf(z.path), rawOf(n.path))
  t.is(rawOf(d.path), rawOf(n.path))
  // qemu-img agrees that the compressed images are consistent.
  t.notThrows(() => execFileSync('qemu-img', ['check', z.path], {stdio: 'pipe'}))

  const r = await buildImage(ctx, {source: 'demo', out: join(dir, 'root.img'), format: 'raw'})
  t.is(r.format, 'raw')
  t.is(r.size, r.virtualSize)
  t.is(sha(readFileSync(r.path)), rawOf(n.path))
})

test('directory source keeps files, links and modes', async (t) => {
  const src = join(dir, 'src-dir')
  mkdirSync(join(src, 'etc'), {recursive: true})
  mkdirSync(join(src, 'sbin'))
  writeFileSync(join(src, 'etc/motd'), 'hello from a directory\n')
  writeFileSync(join(src, 'sbin/init'), '#!/bin/sh\necho hi\n')
  chmodSync(join(src, 'sbin/init'), 0o755)
  symlinkSync('../etc/motd', join(src, 'sbin/motd'))
  const r = await buildImage(ctx, {source: src, out: join(dir, 'dir.qcow2')})
  t.is(r.source, 'directory')
  const raw = toRaw(r.path)
  t.is(debugfs(raw, 'cat /etc/motd'), 'hello from a directory\n')
  t.regex(debugfs(raw, 'stat /sbin/init'), /Mode:\s+0755/)
  t.regex(debugfs(raw, 'stat /sbin/motd'), /Fast link dest: "..\/etc\/motd"/)
})

test('tarball source: owners, hard links, devices and fifos without root on the host', async (t) => {
  const tarball = join(dir, 'root.tar.gz')
  // Written with tar-stream: a tarball can describe devices and foreign owners that the test
  // (like a non-root user) cannot create on disk.
  const tarStream = await import('tar-stream')
  const {createGzip} = await import('node:zlib')
  const {pipeline} = await import('node:stream/promises')
  const {createWriteStream} = await import('node:fs')
  const pack = tarStream.pack()
  pack.entry({name: './', type: 'directory', mode: 0o755})
  pack.entry({name: './etc/', type: 'directory', mode: 0o755})
  pack.entry({name: './etc/hello', type: 'file', mode: 0o640, uid: 1000, gid: 1001}, 'hello\n')
  pack.entry({name: './etc/hello2', type: 'link', linkname: './etc/hello', mode: 0o640, uid: 1000, gid: 1001})
  pack.entry({name: './dev/', type: 'directory', mode: 0o755})
  pack.entry({name: './dev/console', type: 'character-device', mode: 0o600, devmajor: 5, devminor: 1})
  pack.entry({name: './dev/initctl', type: 'fifo', mode: 0o600})
  pack.entry({name: './bin/sh', type: 'symlink', linkname: 'busybox', mode: 0o777})
  pack.finalize()
  await pipeline(pack, createGzip(), createWriteStream(tarball))

  t.is(await classifySource(tarball), 'tarball')
  const r = await buildImage(ctx, {source: tarball, out: join(dir, 'tar.qcow2')})
  const raw = toRaw(r.path)
  t.regex(debugfs(raw, 'stat /etc/hello'), /User:\s+1000\s+Group:\s+1001/)
  t.regex(debugfs(raw, 'stat /etc/hello'), /Links: 2/)
  t.regex(debugfs(raw, 'stat /etc/hello'), /Mode:\s+0640/)
  t.regex(debugfs(raw, 'stat /dev/console'), /Type: character special/)
  t.regex(debugfs(raw, 'stat /dev/console'), /Device major\/minor number: 05:01/)
  t.regex(debugfs(raw, 'stat /dev/initctl'), /Type: FIFO/)
  t.regex(debugfs(raw, 'stat /bin/sh'), /Fast link dest: "busybox"/)
  t.regex(execFileSync('e2fsck', ['-fn', raw], {stdio: ['ignore', 'pipe', 'pipe']}).toString(), /netboot-root: \d+\/\d+ files/)
})

test('tarball entries outside the root are refused', async (t) => {
  const tarball = join(dir, 'evil.tar')
  const tarStream = await import('tar-stream')
  const {pipeline} = await import('node:stream/promises')
  const {createWriteStream} = await import('node:fs')
  const pack = tarStream.pack()
  pack.entry({name: '../escape', type: 'file'}, 'x')
  pack.finalize()
  await pipeline(pack, createWriteStream(tarball))
  const err = await t.throwsAsync(buildImage(ctx, {source: tarball, out: join(dir, 'evil.qcow2')}))
  t.is(err?.message, `tarball ${tarball}: entry "../escape" points outside the root`)
  t.false(existsSync(join(dir, '..', 'escape')))
  t.false(existsSync(join(dir, 'evil.qcow2')))
})

test('an existing qcow2 is checked and published, or refused with the reason', async (t) => {
  const good = join(dir, 'given.qcow2')
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', good, '16M'])
  const r = await buildImage(ctx, {source: good, out: join(dir, 'published.qcow2')})
  t.is(r.source, 'qcow2')
  t.is(r.compression, 'zstd')
  t.deepEqual(readFileSync(r.path), readFileSync(good))

  const backed = join(dir, 'backed.qcow2')
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'given.qcow2', '-F', 'qcow2', backed], {cwd: dir})
  const err = await t.throwsAsync(buildImage(ctx, {source: backed, out: join(dir, 'nope.qcow2')}), {instanceOf: Qcow2RefusedError})
  t.is((err as Qcow2RefusedError).reason, 'backing files are not supported (backing file "given.qcow2")')
  t.false(existsSync(join(dir, 'nope.qcow2')))
})

test('a missing or unknown source is a usage error', async (t) => {
  const missing = await t.throwsAsync(classifySource(join(dir, 'missing')))
  t.is((missing as {exit?: number}).exit, 2)
  const other = join(dir, 'notes.txt')
  writeFileSync(other, 'text')
  const unknown = await t.throwsAsync(classifySource(other))
  t.regex(unknown?.message ?? '', /is not a qcow2 image and not a tarball/)
})
