import test from 'ava'
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {elfIsStatic} from '../../src/lib/doctor.js'
import {NetbootError} from '../../src/lib/errors.js'
import {quietContext} from '../../src/lib/log.js'
import {buildLoopfmt, LOOPFMT_SOURCE, readLoopHeader} from '../../src/lib/loopfmt.js'
import {seriesIncludeDir, stockIncludeDir} from './uapi-fixture.js'

const work = mkdtempSync(join(tmpdir(), 'loopfmt-test-'))
process.env.NETBOOT_CACHE = join(work, 'cache')
const include = seriesIncludeDir(work)
test.after.always(() => rmSync(work, {recursive: true, force: true}))

// Built once; the tests below share the binary.
const built = buildLoopfmt(quietContext(), {includeDir: include, outDir: join(work, 'out')})
const loopfmt = (...args: string[]) => spawnSync(join(work, 'out/loopfmt'), args, {encoding: 'utf8'})

test.serial('builds a static binary against the series header, then reuses the cache', async (t) => {
  const first = await built
  t.false(first.cached)
  t.is(first.path, join(work, 'out/loopfmt'))
  t.true(elfIsStatic(readFileSync(first.path)))
  const again = await buildLoopfmt(quietContext(), {includeDir: include})
  t.true(again.cached)
  t.is(again.key, first.key)
  t.is(again.sha256, first.sha256)
  t.is(again.path, first.cachePath)
})

test.serial('a changed source is a new cache key', async (t) => {
  const first = await built
  const source = join(work, 'loopfmt.c')
  writeFileSync(source, readFileSync(LOOPFMT_SOURCE, 'utf8') + '\n/* changed */\n')
  const other = await buildLoopfmt(quietContext(), {includeDir: include, source})
  t.not(other.key, first.key)
  t.false(other.cached)
})

test('headers without the series are refused before compiling, with the reason', async (t) => {
  const err = await t.throwsAsync(readLoopHeader(stockIncludeDir(work)), {instanceOf: NetbootError})
  t.regex(err!.message, /has no LO_FILE_FMT_QCOW2 \/ loop_config.file_fmt: these headers come from a kernel without the loop file-format series/)
  const missing = await t.throwsAsync(readLoopHeader(join(work, 'nowhere')), {instanceOf: NetbootError})
  t.regex(missing!.message, /no linux\/loop.h under .*nowhere/)
})

test('compiling by hand against an unpatched header fails with a message that says why', (t) => {
  const r = spawnSync('gcc', ['-static', '-O2', '-Wall', '-Wextra', `-I${stockIncludeDir(work)}`, '-o', join(work, 'bad'), LOOPFMT_SOURCE], {encoding: 'utf8'})
  t.not(r.status, 0)
  t.regex(r.stderr, /LO_FILE_FMT_QCOW2.*undeclared/)
  t.regex(r.stderr, /needs linux\/loop.h of the netboot kernel series \(-I<kernel cache>\/include\)/)
})

test('compiles without warnings', (t) => {
  const r = spawnSync('gcc', ['-static', '-O2', '-Wall', '-Wextra', `-I${include}`, '-o', join(work, 'warn'), LOOPFMT_SOURCE], {encoding: 'utf8'})
  t.is(r.status, 0)
  t.is(r.stderr, '')
})

test('usage: --help, unknown commands and options, missing arguments', async (t) => {
  await built
  const help = loopfmt('--help')
  t.is(help.status, 0)
  t.regex(help.stdout, /^Usage: loopfmt attach \[--format raw\|qcow2\] \[--read-only\] FILE$/m)
  t.regex(help.stdout, /Exit codes: 0 ok/)
  const cases: Array<[string[], number, RegExp]> = [
    [[], 2, /Usage:/],
    [['frobnicate'], 2, /loopfmt: usage: unknown command 'frobnicate'/],
    [['attach'], 2, /loopfmt: attach: missing FILE/],
    [['attach', '--format'], 2, /--format needs a value/],
    [['attach', '--format', 'vmdk', 'x'], 2, /unknown format 'vmdk' \(known: raw, qcow2\)/],
    [['attach', '--bogus', 'x'], 2, /unknown option '--bogus'/],
    [['attach', 'a', 'b'], 2, /more than one FILE/],
    [['detach'], 2, /expected exactly one device/],
    [['show', 'a', 'b'], 2, /expected exactly one device/],
    [['attach', '--format=qcow2', join(work, 'no-such-image')], 3, /no-such-image: no such file$/m],
    [['show', '/dev/null'], 4, /\/dev\/null: not a loop device/],
    [['detach', join(work, 'no-such-dev')], 4, /no-such-dev: no loop device/],
  ]
  for (const [args, status, message] of cases) {
    const r = loopfmt(...args)
    t.is(r.status, status, args.join(' '))
    t.regex(r.stderr, message, args.join(' '))
  }
})

// Needs root and loop devices; on a kernel without the series it shows the safety check.
const canLoop = process.getuid?.() === 0 && existsSync('/dev/loop-control')
const hostHasFormats = existsSync('/sys/module/loop') && spawnSync('sh', ['-c', 'ls /sys/block/loop*/loop/file_fmt']).status === 0
;(canLoop && !hostHasFormats ? test.serial : test.skip)('on a kernel without the series a qcow2 attach is refused and undone; raw works', async (t) => {
  await built
  const image = join(work, 'disk.img')
  execFileSync('truncate', ['-s', '1M', image])
  const q = loopfmt('attach', '--format', 'qcow2', image)
  t.is(q.status, 10)
  t.regex(q.stderr, /kernel attached the image as raw, not qcow2 \(no loop file-format support\?\); detached it/)
  t.notRegex(execFileSync('losetup', ['-a'], {encoding: 'utf8'}), new RegExp(image))
  const raw = loopfmt('attach', '--read-only', image)
  t.is(raw.status, 0, raw.stderr)
  const dev = raw.stdout.trim()
  try {
    t.regex(dev, /^\/dev\/loop\d+$/)
    const show = loopfmt('show', dev)
    t.is(show.stdout, `device=${dev}\nfile=${image}\nformat=raw\nsize=1048576\nread_only=yes\n`)
  } finally {
    t.is(loopfmt('detach', dev).status, 0)
  }
  const again = loopfmt('detach', dev)
  t.is(again.status, 13)
  t.regex(again.stderr, /not attached/)
})
