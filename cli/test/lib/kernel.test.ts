import test from 'ava'
import {execFileSync} from 'node:child_process'
import {chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, truncateSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {NetbootError} from '../../src/lib/errors.js'
import {
  applySeries,
  BASE_TAG,
  checkConfig,
  configVersion,
  describeApplyFailure,
  exportSeries,
  kernelVersion,
  parseConfigFragment,
  parseSeriesFile,
  patchSubject,
  prepareKernel,
  readSeries,
  resolveKernelSource,
  stripDebianIgnoreAll,
  versionFromName,
} from '../../src/lib/kernel.js'
import {quietContext} from '../../src/lib/log.js'

const ctx = quietContext()

// --- pure helpers --------------------------------------------------------------------------

const DEBIAN_GITIGNORE = `.*
*.o

# Rust analyzer configuration
/rust-project.json

#
# Debian packaging: ignore everything at the top level, since it isn't
# included in our repository
#
/*
!/debian/
`

test("stripDebianIgnoreAll removes Debian's ignore-everything block and its comment", (t) => {
  t.is(stripDebianIgnoreAll(DEBIAN_GITIGNORE), '.*\n*.o\n\n# Rust analyzer configuration\n/rust-project.json\n')
  t.is(stripDebianIgnoreAll('*.o\n/*.tmp\n'), undefined, 'an upstream .gitignore is left alone')
})

test('patchSubject unfolds and drops the [PATCH n/m] prefix', (t) => {
  const mail = 'From 0000 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: [PATCH 2/4] loop: let user space choose\n the backing file format\n\nbody\nSubject: not this\n'
  t.is(patchSubject(mail), 'loop: let user space choose the backing file format')
  t.is(patchSubject('Subject: loop: plain\n\n'), 'loop: plain')
  t.is(patchSubject('diff --git a/x b/x\n'), undefined)
})

test('parseSeriesFile skips comments, blanks and quilt options', (t) => {
  t.deepEqual(parseSeriesFile('# the series\n0001-a.patch\n\n0002-b.patch -p1 # trailing\n  \n'), ['0001-a.patch', '0002-b.patch'])
})

test('parseConfigFragment reads =y/=m/values and "is not set"; rejects junk', (t) => {
  t.deepEqual(parseConfigFragment('CONFIG_A=y\n# comment\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D="str"\nCONFIG_E=16\n'), [
    {name: 'CONFIG_A', value: 'y'},
    {name: 'CONFIG_B', value: 'm'},
    {name: 'CONFIG_C', value: 'n'},
    {name: 'CONFIG_D', value: '"str"'},
    {name: 'CONFIG_E', value: '16'},
  ])
  t.deepEqual(parseConfigFragment('CONFIG_A=y\nCONFIG_B=y\n# variant\nCONFIG_A=m\n'), [
    {name: 'CONFIG_B', value: 'y'},
    {name: 'CONFIG_A', value: 'm'},
  ], 'a later assignment wins, as merge_config.sh merges a variant over the base fragment')
  t.throws(() => parseConfigFragment('CONFIG_A=y\nSQUASHFS=y\n'), {message: 'config fragment line "SQUASHFS=y" is not CONFIG_NAME=value'})
})

test('checkConfig lists options Kconfig dropped or changed', (t) => {
  const fragment = parseConfigFragment('CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=m\n# CONFIG_D is not set\nCONFIG_E="x"\nCONFIG_SQUASHFS=y\n')
  const dotConfig = 'CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=m\n# CONFIG_D is not set\nCONFIG_E="y"\n# CONFIG_SQUASHFS is not set\n'
  t.deepEqual(checkConfig(fragment, dotConfig), [
    {name: 'CONFIG_E', value: '"x"', actual: '"y"'},
    {name: 'CONFIG_SQUASHFS', value: 'y', actual: 'n'},
  ])
})

test("describeApplyFailure quotes git's file and line", (t) => {
  t.is(describeApplyFailure('error: patch failed: drivers/block/loop.c:1042\nerror: drivers/block/loop.c: patch does not apply\n'), 'hunk at drivers/block/loop.c:1042 does not apply')
  t.is(describeApplyFailure('error: drivers/block/loop_qcow2.c: already exists in working directory\n'), 'drivers/block/loop_qcow2.c: already exists in working directory')
  t.is(describeApplyFailure('fatal: corrupt patch at line 12\n'), 'corrupt patch at line 12')
})

test('resolveKernelSource rejects unknown versions, missing paths and non-tarballs with exit 2', (t) => {
  const err1 = t.throws(() => resolveKernelSource('5.4'), {instanceOf: NetbootError})
  t.is(err1?.exit, 2)
  t.regex(err1?.message ?? '', /kernel "5.4" is not known/)
  t.throws(() => resolveKernelSource('/no/such/linux.tar.xz'), {message: 'kernel source /no/such/linux.tar.xz does not exist'})
  const dir = mkdtempSync(join(tmpdir(), 'netboot-src-'))
  writeFileSync(join(dir, 'linux.zip'), 'x')
  t.throws(() => resolveKernelSource(join(dir, 'linux.zip')), {message: /is neither a directory nor a .tar.xz/})
})

// --- a miniature kernel tree: same shape, a handful of files, real git and xz -------------

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], {cwd, encoding: 'utf8'})
}

function fakeKernel(root: string): string {
  const tree = join(root, 'linux-source-6.1')
  mkdirSync(join(tree, 'drivers/block'), {recursive: true})
  mkdirSync(join(tree, 'scripts'), {recursive: true})
  writeFileSync(join(tree, 'Makefile'), '# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = Curry Ramen\n')
  writeFileSync(join(tree, 'Kconfig'), 'mainmenu "Linux"\n')
  writeFileSync(join(tree, '.gitignore'), DEBIAN_GITIGNORE)
  writeFileSync(join(tree, '.clang-format'), 'BasedOnStyle: LLVM\n')
  writeFileSync(join(tree, 'drivers/block/loop.c'), Array.from({length: 40}, (_, i) => `int line${i};`).join('\n') + '\n')
  writeFileSync(join(tree, 'scripts/setlocalversion'), '#!/bin/sh\necho\n')
  chmodSync(join(tree, 'scripts/setlocalversion'), 0o755)
  symlinkSync('../drivers/block/loop.c', join(tree, 'scripts/loop-link.c'))
  return tree
}

function makeTarball(kind: 'xz' | 'gz'): {tarball: string; root: string} {
  const root = mkdtempSync(join(tmpdir(), 'netboot-kernel-'))
  fakeKernel(root)
  const tarball = join(root, `linux-source-6.1.tar.${kind}`)
  execFileSync('tar', [kind === 'xz' ? '-cJf' : '-czf', tarball, '-C', root, 'linux-source-6.1'])
  return {tarball, root}
}

function useCache(): string {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-kcache-'))
  process.env.NETBOOT_CACHE = dir
  return dir
}

/** Writes commits on top of netboot-base in a scratch clone and format-patches them into a series. */
function makeSeries(tree: string, edits: Array<{subject: string; file: string; from: string; to: string}>, fragment = 'CONFIG_BLK_DEV_LOOP=y\n'): string {
  const scratch = mkdtempSync(join(tmpdir(), 'netboot-scratch-'))
  execFileSync('git', ['clone', '-q', tree, scratch])
  git(scratch, 'checkout', '-q', BASE_TAG)
  for (const e of edits) {
    const path = join(scratch, e.file)
    const text = existsSync(path) ? readFileSync(path, 'utf8') : ''
    writeFileSync(path, e.from === '' ? e.to : text.replace(e.from, e.to))
    git(scratch, 'add', '-A')
    git(scratch, 'commit', '-q', '-m', e.subject)
  }
  const series = mkdtempSync(join(tmpdir(), 'netboot-series-'))
  git(scratch, 'format-patch', '-q', '-o', series, `${BASE_TAG}..HEAD`)
  writeFileSync(join(series, 'series'), readdirSync(series).filter((n) => n.endsWith('.patch')).sort().join('\n') + '\n')
  writeFileSync(join(series, 'config'), fragment)
  return series
}

const EDITS = [
  {subject: 'loop: first change', file: 'drivers/block/loop.c', from: 'int line3;', to: 'int line3_changed;'},
  {subject: 'loop: add a format driver', file: 'drivers/block/loop_qcow2.c', from: '', to: 'int qcow2;\n'},
]

test.serial('prepare extracts a .tar.xz into the cache, commits every file and tags netboot-base; again is a no-op', async (t) => {
  const cache = useCache()
  const {tarball} = makeTarball('xz')
  const prepared = await prepareKernel(ctx, tarball)
  t.false(prepared.reused)
  t.is(prepared.version.full, '6.1.192')
  t.true(prepared.tree.startsWith(join(cache, 'src')))
  const tree = prepared.tree
  t.is(readFileSync(join(tree, 'drivers/block/loop.c'), 'utf8').split('\n')[3], 'int line3;')
  t.true((statSync(join(tree, 'scripts/setlocalversion')).mode & 0o111) !== 0, 'executable bit kept')
  t.true(lstatSync(join(tree, 'scripts/loop-link.c')).isSymbolicLink())
  t.is(readlinkSync(join(tree, 'scripts/loop-link.c')), '../drivers/block/loop.c')
  t.false(readFileSync(join(tree, '.gitignore'), 'utf8').includes('/*'), "Debian's ignore-all block removed")
  const tracked = git(tree, 'ls-files').trim().split('\n').sort()
  t.deepEqual(tracked, ['.clang-format', '.gitignore', 'Kconfig', 'Makefile', 'drivers/block/loop.c', 'scripts/loop-link.c', 'scripts/setlocalversion'])
  t.is(git(tree, 'status', '--porcelain'), '')
  t.is(git(tree, 'rev-parse', 'HEAD').trim(), git(tree, 'rev-parse', `${BASE_TAG}^{commit}`).trim())
  // A new file in the tree shows up (it would not under Debian's ignore-all rule).
  writeFileSync(join(tree, 'drivers/block/new.c'), 'x')
  t.is(git(tree, 'status', '--porcelain').trim(), '?? drivers/block/new.c')

  const again = await prepareKernel(ctx, tarball)
  t.true(again.reused)
  t.is(again.tree, tree)
})

test.serial('prepare handles .tar.gz too', async (t) => {
  useCache()
  const {tarball} = makeTarball('gz')
  const prepared = await prepareKernel(ctx, tarball)
  t.is(prepared.version.series, '6.1')
  t.true(existsSync(join(prepared.tree, 'Kconfig')))
})

test.serial('a truncated tarball fails and leaves no prepared tree behind', async (t) => {
  const cache = useCache()
  const {tarball} = makeTarball('xz')
  truncateSync(tarball, Math.floor(statSync(tarball).size / 2))
  await t.throwsAsync(prepareKernel(ctx, tarball), {instanceOf: NetbootError})
  const srcDir = join(cache, 'src')
  t.deepEqual(existsSync(srcDir) ? readdirSync(srcDir) : [], [])
})

test.serial('a directory that is not a kernel tree is refused clearly', async (t) => {
  useCache()
  const dir = mkdtempSync(join(tmpdir(), 'netboot-notkernel-'))
  writeFileSync(join(dir, 'Makefile'), 'all:\n\techo hi\n')
  const err = await t.throwsAsync(prepareKernel(ctx, dir), {instanceOf: NetbootError})
  t.is(err?.message, `${dir} is not a Linux kernel source tree (no Kconfig)`)
  writeFileSync(join(dir, 'Kconfig'), '')
  t.regex((await t.throwsAsync(prepareKernel(ctx, dir)))?.message ?? '', /has no "VERSION =" \/ "PATCHLEVEL =" lines/)
})

test.serial('a kernel directory is prepared in place', async (t) => {
  useCache()
  const root = mkdtempSync(join(tmpdir(), 'netboot-dir-'))
  const tree = fakeKernel(root)
  const prepared = await prepareKernel(ctx, tree)
  t.is(prepared.tree, tree)
  t.is(git(tree, 'tag').trim(), BASE_TAG)
  t.deepEqual(kernelVersion(tree), {series: '6.1', full: '6.1.192'})
})

test.serial('patch applies the series, recognises it as applied, and completes a partial application', async (t) => {
  useCache()
  const {tarball} = makeTarball('xz')
  const {tree} = await prepareKernel(ctx, tarball)
  const seriesDir = makeSeries(tree, EDITS)
  const series = readSeries(seriesDir, '6.1')
  t.deepEqual(series.patches.map((p) => p.subject), ['loop: first change', 'loop: add a format driver'])

  const first = await applySeries(ctx, tree, series)
  t.is(first.outcome, 'applied')
  t.deepEqual(first.applied, ['0001-loop-first-change.patch', '0002-loop-add-a-format-driver.patch'])
  t.is(readFileSync(join(tree, 'drivers/block/loop_qcow2.c'), 'utf8'), 'int qcow2;\n')
  t.is(git(tree, 'log', '--format=%s', `${BASE_TAG}..HEAD`).trim(), 'loop: add a format driver\nloop: first change')

  t.is((await applySeries(ctx, tree, series)).outcome, 'already-applied')

  git(tree, 'reset', '-q', '--hard', 'HEAD~1')
  const rest = await applySeries(ctx, tree, series)
  t.deepEqual(rest.applied, ['0002-loop-add-a-format-driver.patch'])
  t.is(rest.backupTag, undefined)
})

test.serial('a changed series replaces the old one and keeps the old commits at a backup tag', async (t) => {
  useCache()
  const {tarball} = makeTarball('xz')
  const {tree} = await prepareKernel(ctx, tarball)
  await applySeries(ctx, tree, readSeries(makeSeries(tree, EDITS), '6.1'))
  const oldHead = git(tree, 'rev-parse', 'HEAD').trim()
  const v2 = readSeries(makeSeries(tree, [EDITS[0], {...EDITS[1], to: 'int qcow2_v2;\n'}]), '6.1')
  const r = await applySeries(ctx, tree, v2)
  t.is(r.outcome, 'applied')
  t.truthy(r.backupTag)
  t.is(git(tree, 'rev-parse', `${r.backupTag}^{commit}`).trim(), oldHead)
  t.is(readFileSync(join(tree, 'drivers/block/loop_qcow2.c'), 'utf8'), 'int qcow2_v2;\n')
})

test.serial('a patch that does not apply names patch, file and line, and leaves the tree as it was', async (t) => {
  useCache()
  const {tarball} = makeTarball('xz')
  const {tree} = await prepareKernel(ctx, tarball)
  const seriesDir = makeSeries(tree, [EDITS[0], {subject: 'loop: touch line 20', file: 'drivers/block/loop.c', from: 'int line20;', to: 'int line20_x;'}])
  // Make the second patch's context disagree with the tree.
  const second = join(seriesDir, '0002-loop-touch-line-20.patch')
  writeFileSync(second, readFileSync(second, 'utf8').replace(' int line19;', ' int line19_not_there;'))
  const before = git(tree, 'rev-parse', 'HEAD').trim()
  const err = await t.throwsAsync(applySeries(ctx, tree, readSeries(seriesDir, '6.1')), {instanceOf: NetbootError})
  t.regex(err?.message ?? '', /^patch 0002-loop-touch-line-20\.patch does not apply to .*: hunk at drivers\/block\/loop\.c:\d+ does not apply$/)
  t.is(git(tree, 'rev-parse', 'HEAD').trim(), before, 'patch 0001 was rolled back too')
  t.is(git(tree, 'status', '--porcelain'), '')
  t.false(existsSync(join(tree, '.git', 'rebase-apply')))
})

test.serial('uncommitted changes are never discarded', async (t) => {
  useCache()
  const {tarball} = makeTarball('xz')
  const {tree} = await prepareKernel(ctx, tarball)
  writeFileSync(join(tree, 'drivers/block/loop.c'), 'work in progress\n')
  const err = await t.throwsAsync(applySeries(ctx, tree, readSeries(makeSeries(tree, EDITS), '6.1')))
  t.regex(err?.message ?? '', /has uncommitted changes/)
  t.is(readFileSync(join(tree, 'drivers/block/loop.c'), 'utf8'), 'work in progress\n')
})

test('a missing series is an error, never an unpatched build', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-noseries-'))
  const err = t.throws(() => readSeries(join(dir, 'linux-6.1'), '6.1'), {instanceOf: NetbootError})
  t.is(err?.message, `no series for kernel 6.1: ${join(dir, 'linux-6.1', 'series')} does not exist`)
  writeFileSync(join(dir, 'series'), '0001-missing.patch\n')
  t.throws(() => readSeries(dir, '6.1'), {message: /lists 0001-missing\.patch, which does not exist/})
})

test.serial('export writes the commits as a series that re-applies, byte-identical on re-export', async (t) => {
  useCache()
  const {tarball} = makeTarball('xz')
  const {tree} = await prepareKernel(ctx, tarball)
  await applySeries(ctx, tree, readSeries(makeSeries(tree, EDITS), '6.1'))
  // The developer workflow: edit in the prepared tree, commit, export.
  writeFileSync(join(tree, 'drivers/block/loop_qcow2.c'), 'int qcow2;\nint more;\n')
  git(tree, 'commit', '-q', '-am', 'loop: qcow2: more')
  const out = mkdtempSync(join(tmpdir(), 'netboot-export-'))
  writeFileSync(join(out, 'config'), 'CONFIG_X=y\n')
  writeFileSync(join(out, '0009-stale.patch'), 'old')
  const r = await exportSeries(ctx, tree, out)
  t.deepEqual(r.patches, ['0001-loop-first-change.patch', '0002-loop-add-a-format-driver.patch', '0003-loop-qcow2-more.patch'])
  t.deepEqual(r.removed, ['0009-stale.patch'])
  t.is(readFileSync(join(out, 'series'), 'utf8'), r.patches.join('\n') + '\n')
  t.is(readFileSync(join(out, 'config'), 'utf8'), 'CONFIG_X=y\n', 'fragment untouched')
  const first = r.patches.map((n) => readFileSync(join(out, n), 'utf8'))
  await exportSeries(ctx, tree, out)
  t.deepEqual(r.patches.map((n) => readFileSync(join(out, n), 'utf8')), first)
  t.is((await applySeries(ctx, tree, readSeries(out, '6.1'))).outcome, 'already-applied')
})

test('the series version comes from the name when it can (no extraction for a cache hit)', (t) => {
  const {tarball, root} = makeTarball('gz')
  t.is(versionFromName(tarball, resolveKernelSource(tarball)), '6.1')
  const other = join(root, 'linux-6.12.117.tar.gz')
  writeFileSync(other, readFileSync(tarball))
  t.is(versionFromName(other, resolveKernelSource(other)), '6.12')
  const anonymous = join(root, 'kernel.tar.gz')
  writeFileSync(anonymous, readFileSync(tarball))
  t.is(versionFromName(anonymous, resolveKernelSource(anonymous)), undefined)
  t.is(configVersion('#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.192 Kernel Configuration\n#\n'), '6.1.192')
})
