import test from 'ava'
import {cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gunzipSync} from 'node:zlib'

import Build, {type BuildCommandResult} from '../../src/commands/build.js'
import {runCommand} from '../helpers/run-command.js'
import {sha256File} from '../../src/lib/image.js'
import {RunLog} from '../../src/lib/log.js'
import {bzImageRelease, configSupportsZstdInitrd, runPipeline, type PipelineOptions} from '../../src/lib/pipeline.js'
import type {Manifest} from '../../src/lib/pxe.js'
import {checkQcow2File} from '../../src/lib/qcow2-header.js'
import {seriesIncludeDir} from '../initramfs/uapi-fixture.js'

// The pipeline runs mkfs, qemu-img, zstd -19 and gcc: seconds on a quiet machine, more next to a kernel build.
const work = mkdtempSync(join(tmpdir(), 'netboot-pipeline-'))
process.env.NETBOOT_CACHE = join(work, 'cache')
test.after.always(() => rmSync(work, {recursive: true, force: true}))

/** The parts of a bzImage header bzImageRelease reads: "HdrS" and the kernel_version pointer. */
function fakeBzImage(release: string): Buffer {
  const buf = Buffer.alloc(0x800)
  buf.write('HdrS', 0x202, 'latin1')
  buf.writeUInt16LE(0x300 - 0x200, 0x20e)
  buf.write(`${release} (netboot@test) #1 SMP`, 0x300, 'latin1')
  return buf
}

const seriesInclude = seriesIncludeDir(join(work, 'uapi'))

/** A prebuilt kernel directory as --kernel-dir takes it: bzImage, include/ with the series' loop.h, a .config. */
function kernelDir(name: string, config: string): string {
  const dir = join(work, name)
  mkdirSync(dir, {recursive: true})
  writeFileSync(join(dir, 'bzImage'), fakeBzImage('6.1.999-test'))
  cpSync(seriesInclude, join(dir, 'include'), {recursive: true})
  writeFileSync(join(dir, '.config'), config)
  return dir
}

const zstdKernel = kernelDir('kernel-zstd', 'CONFIG_64BIT=y\nCONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n')
const gzipKernel = kernelDir('kernel-gzip', 'CONFIG_64BIT=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n')

function options(outDir: string, extra: Partial<PipelineOptions> = {}): PipelineOptions {
  return {outDir, kernel: '6.1', kernelDir: zstdKernel, imageSource: 'demo', compression: 'zstd', ...extra}
}


test('bzImageRelease reads the release the boot header points at', (t) => {
  t.is(bzImageRelease(fakeBzImage('6.1.192+')), '6.1.192+')
  t.is(bzImageRelease(Buffer.alloc(0x800)), undefined, 'no HdrS signature')
  t.is(bzImageRelease(Buffer.from('short')), undefined)
})

test('configSupportsZstdInitrd: only CONFIG_RD_ZSTD=y counts; no config is unknown', (t) => {
  t.true(configSupportsZstdInitrd('CONFIG_A=y\nCONFIG_RD_ZSTD=y\n'))
  t.false(configSupportsZstdInitrd('# CONFIG_RD_ZSTD is not set\n'))
  t.false(configSupportsZstdInitrd('CONFIG_RD_ZSTD_X=y\n'))
  t.is(configSupportsZstdInitrd(undefined), undefined)
})

test.serial('the pipeline lays out the whole tree; artifacts, manifest and log agree; a rebuild reports reuse', async (t) => {
  t.timeout(120_000)
  const out = join(work, 'tree')
  const ctx = {log: RunLog.inOutput(out), verbose: false}
  const first = await runPipeline(ctx, options(out))
  t.deepEqual(first.stages.map((s) => s.name), ['kernel', 'loopfmt', 'initramfs', 'image', 'pxe'])
  t.is(first.kernelRelease, '6.1.999-test')
  const byName = Object.fromEntries(first.stages.map((s) => [s.name, s]))
  t.true(byName.kernel!.reused)
  t.regex(byName.kernel!.reason, /--kernel-dir/)
  t.false(byName.loopfmt!.reused, 'loopfmt compiled into an empty cache')
  t.regex(byName.initramfs!.reason, /no earlier build/)

  for (const f of ['tftp/boot.ipxe', 'http/vmlinuz', 'http/initramfs.img', 'http/root.qcow2', 'http/manifest.json', 'pxe/dnsmasq.conf', 'pxe/dnsmasq-proxy.conf', 'pxe/nginx.conf']) {
    t.true(existsSync(join(out, f)), f)
    t.is(first.artifacts[f]?.sha256, await sha256File(join(out, f)), `${f} sha256 in the result`)
    t.is(first.artifacts[f]?.size, readFileSync(join(out, f)).length, `${f} size in the result`)
  }
  t.truthy(first.artifacts.loopfmt)
  t.is(first.artifacts.bzImage?.sha256, await sha256File(join(zstdKernel, 'bzImage')))
  t.true(readFileSync(join(out, 'http', 'vmlinuz')).equals(readFileSync(join(zstdKernel, 'bzImage'))))
  // The kernel can unpack zstd (its .config says so): the initramfs uses it.
  t.is(readFileSync(join(out, 'http', 'initramfs.img')).readUInt32LE(0), 0xfd2fb528)
  const manifest = JSON.parse(readFileSync(join(out, 'http', 'manifest.json'), 'utf8')) as Manifest
  t.is(manifest.kernel.release, '6.1.999-test')
  for (const [name, entry] of Object.entries(manifest.files)) t.is(entry.sha256, first.artifacts[`http/${name}`]?.sha256)
  t.is((await checkQcow2File(join(out, 'http', 'root.qcow2'))).compressionType, 'zstd')
  t.regex(readFileSync(join(out, 'tftp', 'boot.ipxe'), 'utf8'), /netboot\.manifest=http:\/\/10\.0\.2\.2:8080\/manifest\.json/)
  const log = readFileSync(join(out, 'netboot.log'), 'utf8')
  for (const s of ['kernel', 'loopfmt', 'initramfs', 'image', 'pxe']) t.regex(log, new RegExp(`stage ${s}: `))

  const second = await runPipeline(ctx, options(out))
  const again = Object.fromEntries(second.stages.map((s) => [s.name, s]))
  t.true(again.loopfmt!.reused, 'loopfmt from the cache')
  t.true(again.initramfs!.reused, again.initramfs!.reason)
  t.true(again.image!.reused, again.image!.reason)
  t.regex(again.image!.reason, /same bytes as the previous build/)
  t.deepEqual(second.artifacts, first.artifacts, 'reproducible: the same bytes everywhere')

  const third = await runPipeline(ctx, options(out, {compression: 'deflate'}))
  const image = third.stages.find((s) => s.name === 'image')!
  t.false(image.reused)
  t.regex(image.reason, /differs from the previous build/)
})

test.serial('initramfs compression follows the kernel: gzip without CONFIG_RD_ZSTD, zstd refused there', async (t) => {
  t.timeout(60_000)
  const out = join(work, 'gzip-tree')
  const ctx = {log: RunLog.inOutput(out), verbose: false}
  await runPipeline(ctx, options(out, {kernelDir: gzipKernel}))
  const initrd = readFileSync(join(out, 'http', 'initramfs.img'))
  t.is(initrd.subarray(0, 2).toString('hex'), '1f8b')
  t.true(gunzipSync(initrd).subarray(0, 6).equals(Buffer.from('070701')))
  await t.throwsAsync(runPipeline(ctx, options(out, {kernelDir: gzipKernel, initramfsCompression: 'zstd'})), {
    message: /lacks CONFIG_RD_ZSTD=y/,
  })
})

test.serial('image sources: an existing qcow2 is published as it is; a directory becomes the root', async (t) => {
  t.timeout(60_000)
  const first = join(work, 'src-demo')
  const ctx = (out: string) => ({log: RunLog.inOutput(out), verbose: false})
  const demo = await runPipeline(ctx(first), options(first))
  const fromQcow2 = join(work, 'src-qcow2')
  const q = await runPipeline(ctx(fromQcow2), options(fromQcow2, {imageSource: demo.artifacts['http/root.qcow2']!.path, compression: 'none'}))
  t.is(q.artifacts['http/root.qcow2']?.sha256, demo.artifacts['http/root.qcow2']?.sha256, 'the same bytes, not re-encoded')
  t.regex(q.stages.find((s) => s.name === 'image')!.summary, /checked/)

  const rootDir = join(work, 'rootdir')
  mkdirSync(join(rootDir, 'sbin'), {recursive: true})
  writeFileSync(join(rootDir, 'sbin', 'init'), '#!/bin/sh\necho hello\n', {mode: 0o755})
  const fromDir = join(work, 'src-dir')
  const d = await runPipeline(ctx(fromDir), options(fromDir, {imageSource: rootDir}))
  t.not(d.artifacts['http/root.qcow2']?.sha256, demo.artifacts['http/root.qcow2']?.sha256)
  const manifest = JSON.parse(readFileSync(join(fromDir, 'http', 'manifest.json'), 'utf8')) as Manifest
  t.is(manifest.files['root.qcow2']?.sha256, d.artifacts['http/root.qcow2']?.sha256)
})

test.serial('a kernel directory without bzImage or headers is a usage error naming it', async (t) => {
  const empty = join(work, 'no-kernel')
  mkdirSync(empty, {recursive: true})
  const ctx = {log: RunLog.inOutput(join(work, 'x')), verbose: false}
  const err = await t.throwsAsync(runPipeline(ctx, options(join(work, 'x'), {kernelDir: empty})), {message: /no-kernel has no bzImage/})
  t.is((err as {exit?: number}).exit, 2)
  writeFileSync(join(empty, 'bzImage'), fakeBzImage('6.1.1'))
  await t.throwsAsync(runPipeline(ctx, options(join(work, 'x'), {kernelDir: empty})), {message: /no uAPI headers/})
})

test.serial('netboot build --json: flags reach the stages; the JSON on stdout is the result', async (t) => {
  t.timeout(60_000)
  const out = join(work, 'cmd')
  const r = await runCommand<BuildCommandResult>(Build, [
    '--out', out, '--json', '--kernel-dir', zstdKernel,
    '--compression', 'deflate', '--cluster-size', '128k', '--initramfs-compression', 'gzip', '--http-url', 'http://192.168.100.1/netboot',
  ])
  t.is(r.exit, 0, r.stderr)
  const printed = JSON.parse(r.stdout) as BuildCommandResult
  t.deepEqual(printed.artifacts, JSON.parse(JSON.stringify(r.result!.artifacts)))
  t.is(printed.httpBase, 'http://192.168.100.1/netboot')
  const header = await checkQcow2File(join(out, 'http', 'root.qcow2'))
  t.is(header.compressionType, 'deflate')
  t.is(header.clusterSize, 128 * 1024)
  t.is(readFileSync(join(out, 'http', 'initramfs.img')).subarray(0, 2).toString('hex'), '1f8b')
  t.true(readFileSync(join(out, 'tftp', 'boot.ipxe'), 'utf8').includes('set netboot-base http://192.168.100.1/netboot'))
  t.true(existsSync(join(out, 'netboot.log')))
})

test.serial('netboot build: bad flag values exit 2 before building anything', async (t) => {
  const out = join(work, 'bad')
  const cluster = await runCommand<BuildCommandResult>(Build, ['--out', out, '--kernel-dir', zstdKernel, '--cluster-size', '3k'])
  t.is(cluster.exit, 2)
  t.regex(cluster.stderr, /bad cluster size 3072/)
  const source = await runCommand<BuildCommandResult>(Build, ['--out', out, '--kernel-dir', zstdKernel, '--image-source', join(work, 'nope')])
  t.is(source.exit, 2)
  t.regex(source.stderr, /image source ".*nope" does not exist/)
  const url = await runCommand<BuildCommandResult>(Build, ['--out', out, '--kernel-dir', zstdKernel, '--http-url', 'tftp://x'])
  t.is(url.exit, 2)
  t.regex(url.stderr, /--http-url "tftp:\/\/x" is not an http:\/\/ URL/)
  t.false(existsSync(join(out, 'http')), 'nothing was built')
})
