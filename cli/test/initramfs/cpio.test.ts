import test from 'ava'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, readlinkSync, lstatSync, rmSync, readdirSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {
  ARCHIVE_BLOCK,
  CpioArchive,
  type CpioRecord,
  encodeNewc,
  headerLength,
  planEntries,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFREG,
  sourceDateEpoch,
} from '../../src/lib/initramfs/cpio.js'
import {NetbootError} from '../../src/lib/errors.js'
import {extractWithCpioStream, parseNewcStrict, prng} from './helpers.js'

function sample(): CpioArchive {
  return new CpioArchive()
    .file('/init', '#!/bin/sh\necho hi\n', 0o755)
    .file('etc/odd-length', 'abcde')
    .file('empty', '')
    .dir('proc', 0o555)
    .dir('/tmp/', 0o1777)
    .symlink('bin/sh', 'busybox')
    .file('bin/busybox', Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2]), 0o755)
    .charDev('dev/console', 5, 1, 0o600)
    .charDev('dev/null', 1, 3, 0o666)
    .blockDev('dev/loop0', 7, 0, 0o660)
}

const typeBits = (mode: number): number => mode & 0o170000

test('identical inputs give identical bytes, whatever the insertion order', (t) => {
  const a = sample().encode({mtime: 0})
  const b = sample().encode({mtime: 0})
  t.true(a.equals(b))

  const records = sample().entries()
  const shuffled = [...records].reverse()
  t.true(encodeNewc(shuffled, {mtime: 0}).equals(a))
})

test('entries are sorted with every directory before its children, missing parents created 0755', (t) => {
  const names = sample().entries().map((e) => e.path)
  t.deepEqual(names, ['bin', 'bin/busybox', 'bin/sh', 'dev', 'dev/console', 'dev/loop0', 'dev/null', 'empty', 'etc', 'etc/odd-length', 'init', 'proc', 'tmp'])
  const etc = sample().entries().find((e) => e.path === 'etc')
  t.deepEqual(etc, {kind: 'dir', path: 'etc', mode: 0o755})
  // Component-wise order: "a/b" (child of "a") comes right after "a", before "a-b".
  const order = planEntries([
    {kind: 'file', path: 'a-b', mode: 0o644, data: new Uint8Array()},
    {kind: 'file', path: 'a/b', mode: 0o644, data: new Uint8Array()},
  ]).map((e) => e.path)
  t.deepEqual(order, ['a', 'a/b', 'a-b'])
})

test('layout: aligned headers, zero padding, trailer last, 512-byte total, nothing but zeros after', (t) => {
  const buf = sample().encode({mtime: 1234})
  t.is(buf.length % ARCHIVE_BLOCK, 0)
  const {entries, trailerEnd} = parseNewcStrict(buf)
  t.true(buf.subarray(trailerEnd).every((b) => b === 0))
  t.true(buf.length - trailerEnd < ARCHIVE_BLOCK)
  t.is(entries.length, 13)
  // Inodes unique and in archive order; owner root, one mtime everywhere.
  t.deepEqual(entries.map((e) => e.ino), entries.map((_, i) => i + 1))
  for (const e of entries) {
    t.is(e.uid, 0)
    t.is(e.gid, 0)
    t.is(e.mtime, 1234)
  }
  // Each header+name block really is padded to 4.
  for (const e of entries) t.is(headerLength(e.name) % 4, 0)
})

test('modes, types, link counts, device numbers and data survive (strict reader)', (t) => {
  const {entries} = parseNewcStrict(sample().encode({mtime: 0}))
  const by = new Map(entries.map((e) => [e.name, e]))
  t.is(by.get('init')!.mode, S_IFREG | 0o755)
  t.is(by.get('init')!.data.toString(), '#!/bin/sh\necho hi\n')
  t.is(by.get('etc/odd-length')!.data.toString(), 'abcde')
  t.is(by.get('empty')!.data.length, 0)
  t.is(by.get('tmp')!.mode, S_IFDIR | 0o1777)
  t.is(by.get('proc')!.mode, S_IFDIR | 0o555)
  t.is(by.get('bin/sh')!.mode, S_IFLNK | 0o777)
  t.is(by.get('bin/sh')!.data.toString(), 'busybox')
  t.is(by.get('dev/console')!.mode, S_IFCHR | 0o600)
  t.deepEqual([by.get('dev/console')!.rdevMajor, by.get('dev/console')!.rdevMinor], [5, 1])
  t.deepEqual([by.get('dev/null')!.rdevMajor, by.get('dev/null')!.rdevMinor], [1, 3])
  t.is(by.get('dev/loop0')!.mode, S_IFBLK | 0o660)
  t.is(by.get('bin/busybox')!.nlink, 1)
  t.is(by.get('dev')!.nlink, 2)
  const nested = parseNewcStrict(new CpioArchive().dir('a').dir('a/b').dir('a/c').dir('a/c/d').encode({mtime: 0})).entries
  t.deepEqual(nested.map((e) => [e.name, e.nlink]), [['a', 4], ['a/b', 2], ['a/c', 3], ['a/c/d', 2]])
})

test('cpio-stream reads back names, types, modes, symlink targets, devices and data', async (t) => {
  const entries = await extractWithCpioStream(sample().encode({mtime: 86_400}))
  const by = new Map(entries.map((e) => [e.header.name, e]))
  t.deepEqual([...by.keys()], sample().entries().map((e) => e.path))
  t.is(by.get('init')!.header.type, 'file')
  t.is(by.get('init')!.header.mode & 0o7777, 0o755)
  t.is(by.get('init')!.data.toString(), '#!/bin/sh\necho hi\n')
  t.deepEqual([...by.get('bin/busybox')!.data], [0x7f, 0x45, 0x4c, 0x46, 0, 1, 2])
  t.is(by.get('bin/sh')!.header.type, 'symlink')
  t.is(by.get('bin/sh')!.header.linkname, 'busybox')
  t.is(by.get('dev/console')!.header.type, 'character-device')
  t.deepEqual([by.get('dev/console')!.header.rdevmajor, by.get('dev/console')!.header.rdevminor], [5, 1])
  t.is(by.get('dev/loop0')!.header.type, 'block-device')
  t.is(by.get('tmp')!.header.type, 'directory')
  t.is(by.get('etc')!.header.mtime.getTime(), 86_400_000)
})

test('GNU cpio lists it (with devices and link targets) and extracts it', (t) => {
  const buf = sample().encode({mtime: 0})
  const list = execFileSync('cpio', ['-t', '--quiet'], {input: buf}).toString().trim().split('\n')
  t.deepEqual(list, sample().entries().map((e) => e.path))
  const verbose = execFileSync('cpio', ['-tv', '--quiet', '--numeric-uid-gid'], {input: buf}).toString()
  t.regex(verbose, /^crw------- +1 0 +0 +5, +1 .* dev\/console$/m)
  t.regex(verbose, /^brw-rw---- +1 0 +0 +7, +0 .* dev\/loop0$/m)
  t.regex(verbose, /^lrwxrwxrwx .* bin\/sh -> busybox$/m)

  // Extraction without device nodes so the test needs no root.
  const tree = new CpioArchive()
    .file('init', '#!/bin/sh\n', 0o755)
    .file('etc/udhcpc/default.script', 'x'.repeat(1001), 0o700)
    .symlink('bin/sh', 'busybox')
    .file('bin/busybox', 'BB')
    .encode({mtime: 0})
  const dir = mkdtempSync(join(tmpdir(), 'cpio-test-'))
  try {
    execFileSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames', '-D', dir], {input: tree})
    t.deepEqual(readdirSync(dir).sort(), ['bin', 'etc', 'init'])
    t.is(readFileSync(join(dir, 'init'), 'utf8'), '#!/bin/sh\n')
    t.is(lstatSync(join(dir, 'init')).mode & 0o777, 0o755)
    t.is(readFileSync(join(dir, 'etc/udhcpc/default.script'), 'utf8'), 'x'.repeat(1001))
    t.is(lstatSync(join(dir, 'etc/udhcpc/default.script')).mode & 0o777, 0o700)
    t.is(readlinkSync(join(dir, 'bin/sh')), 'busybox')
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})

test('bad records are refused with a message naming the path', (t) => {
  const err = (f: () => unknown) => t.throws(f, {instanceOf: NetbootError})
  t.regex(err(() => new CpioArchive().file('a', 'x').file('/a', 'y').encode())!.message, /'a' is added twice/)
  t.regex(err(() => new CpioArchive().file('a/../b', 'x').encode())!.message, /contains '\.\.'/)
  t.regex(err(() => new CpioArchive().file('x', '1').file('x/y', '2').encode())!.message, /needs 'x' to be a directory/)
  t.regex(err(() => new CpioArchive().file('/', '1').encode())!.message, /archive root/)
  t.regex(err(() => new CpioArchive().file('f', '1', 0o100644).encode())!.message, /not a permission mask/)
  t.regex(err(() => new CpioArchive().symlink('l', '').encode())!.message, /empty target/)
  t.regex(err(() => new CpioArchive().charDev('c', -1, 0).encode())!.message, /major -1/)
  t.regex(err(() => new CpioArchive().file('TRAILER!!!', '').encode())!.message, /end-of-archive/)
  // The same directory twice is harmless.
  t.notThrows(() => new CpioArchive().dir('d').dir('d/').encode())
})

test('mtime comes from SOURCE_DATE_EPOCH, else 0', (t) => {
  t.is(sourceDateEpoch({}), 0)
  t.is(sourceDateEpoch({SOURCE_DATE_EPOCH: '1700000000'}), 1_700_000_000)
  t.throws(() => sourceDateEpoch({SOURCE_DATE_EPOCH: 'yesterday'}), {message: /SOURCE_DATE_EPOCH='yesterday'/})
  const {entries} = parseNewcStrict(encodeNewc([{kind: 'dir', path: 'x', mode: 0o755}], {mtime: sourceDateEpoch({SOURCE_DATE_EPOCH: '42'})}))
  t.is(entries[0]!.mtime, 42)
})

/** A random tree: names with odd lengths (all paddings), nested dirs, all record kinds. */
function randomTree(seed: number): CpioRecord[] {
  const rnd = prng(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789._-'
  const name = () => Array.from({length: 1 + Math.floor(rnd() * 12)}, () => pick([...alphabet])).join('').replace(/^\.+/, 'n')
  const dirs = ['']
  const used = new Set<string>()
  const out: CpioRecord[] = []
  for (let i = 0; i < 40; i++) {
    const parent = pick(dirs)
    const path = parent ? `${parent}/${name()}` : name()
    if (used.has(path) || [...used].some((u) => path.startsWith(u + '/') && !dirs.includes(u))) continue
    used.add(path)
    const kind = pick(['file', 'file', 'dir', 'symlink', 'chardev', 'blockdev'] as const)
    const mode = Math.floor(rnd() * 0o10000)
    if (kind === 'file') {
      const data = Buffer.alloc(Math.floor(rnd() * 300))
      for (let j = 0; j < data.length; j++) data[j] = Math.floor(rnd() * 256)
      out.push({kind, path, mode, data})
    } else if (kind === 'dir') {
      dirs.push(path)
      out.push({kind, path, mode})
    } else if (kind === 'symlink') {
      out.push({kind, path, target: name() + '/' + name()})
    } else {
      out.push({kind, path, mode, major: Math.floor(rnd() * 4096), minor: Math.floor(rnd() * 1_048_576)})
    }
  }
  return out
}

test('round trip of 200 random trees through both readers', async (t) => {
  for (let seed = 1; seed <= 200; seed++) {
    const records = randomTree(seed)
    const buf = encodeNewc(records, {mtime: seed})
    t.true(encodeNewc([...records].reverse(), {mtime: seed}).equals(buf), `seed ${seed}: order-dependent output`)
    t.is(buf.length % ARCHIVE_BLOCK, 0)
    const planned = planEntries(records)
    const {entries} = parseNewcStrict(buf)
    t.is(entries.length, planned.length, `seed ${seed}`)
    const seen = new Set<string>()
    const extracted = await extractWithCpioStream(buf)
    t.is(extracted.length, planned.length, `seed ${seed}: cpio-stream count`)
    planned.forEach((want, i) => {
      const got = entries[i]!
      const other = extracted[i]!
      t.is(got.name, want.path)
      t.is(other.header.name, want.path)
      const slash = want.path.lastIndexOf('/')
      if (slash > 0) t.true(seen.has(want.path.slice(0, slash)), `seed ${seed}: '${want.path}' before its parent`)
      seen.add(want.path)
      switch (want.kind) {
        case 'file':
          t.is(got.mode, S_IFREG | want.mode)
          t.true(got.data.equals(Buffer.from(want.data)) && other.data.equals(Buffer.from(want.data)), `seed ${seed}: data of ${want.path}`)
          break
        case 'dir':
          t.is(got.mode, S_IFDIR | want.mode)
          break
        case 'symlink':
          t.is(typeBits(got.mode), S_IFLNK)
          t.is(other.header.linkname, want.target)
          break
        default:
          t.is(got.mode, (want.kind === 'chardev' ? S_IFCHR : S_IFBLK) | want.mode)
          t.deepEqual([got.rdevMajor, got.rdevMinor, other.header.rdevmajor, other.header.rdevminor], [want.major, want.minor, want.major, want.minor])
      }
    })
  }
})
