import test from 'ava'
import {existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync, mkdirSync, utimesSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {atomicDir, atomicWrite, cacheKey, cacheRoot, cleanCache, ENTRY_FILE, entryPath, listCache, parseDuration, readEntry, stableStringify, withLock} from '../../src/lib/cache.js'

// Each test gets its own cache root; tests in one file run in one process, so run serially.
function freshCache(): string {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-cache-'))
  process.env.NETBOOT_CACHE = dir
  return dir
}

test('cache keys ignore key order and undefined fields, and change with any value', (t) => {
  const a = cacheKey({kernel: '6.1', patches: ['a', 'b'], opts: {x: 1, y: 2}})
  t.is(a, cacheKey({opts: {y: 2, x: 1}, patches: ['a', 'b'], kernel: '6.1', dropped: undefined}))
  t.not(a, cacheKey({kernel: '6.1', patches: ['b', 'a'], opts: {x: 1, y: 2}}), 'array order matters')
  t.not(a, cacheKey({kernel: '6.12', patches: ['a', 'b'], opts: {x: 1, y: 2}}))
  t.regex(a, /^[0-9a-f]{64}$/)
  t.is(stableStringify({b: [1, {d: 1, c: null}], a: 'x'}), '{"a":"x","b":[1,{"c":null,"d":1}]}')
})

test.serial('cacheRoot follows NETBOOT_CACHE', (t) => {
  const dir = freshCache()
  t.is(cacheRoot(), dir)
  t.is(entryPath('kernel', 'abc'), join(dir, 'kernel', 'abc'))
})

test.serial('atomicWrite replaces the file whole and leaves no temporary file', async (t) => {
  const dir = freshCache()
  const file = join(dir, 'sub', 'a.txt')
  await atomicWrite(file, 'one')
  await atomicWrite(file, 'two')
  t.is(readFileSync(file, 'utf8'), 'two')
  t.deepEqual(readdirSync(join(dir, 'sub')), ['a.txt'])
})

test.serial('atomicDir publishes the entry with its marker only after fill completes', async (t) => {
  freshCache()
  const final = entryPath('kernel', cacheKey({n: 1}))
  await atomicDir(
    final,
    async (tmp) => {
      t.false(existsSync(final), 'final name must not exist while filling')
      writeFileSync(join(tmp, 'bzImage'), 'kernel')
    },
    {kind: 'kernel', key: cacheKey({n: 1}), manifest: {n: 1}},
  )
  t.is(readFileSync(join(final, 'bzImage'), 'utf8'), 'kernel')
  t.deepEqual((await readEntry(final))?.manifest, {n: 1})
})

test.serial('an interrupted fill leaves nothing that looks like a valid entry', async (t) => {
  const root = freshCache()
  const final = entryPath('kernel', 'deadbeef')
  await t.throwsAsync(
    atomicDir(final, async (tmp) => {
      writeFileSync(join(tmp, 'bzImage'), 'half')
      throw new Error('make was killed')
    }),
    {message: 'make was killed'},
  )
  t.false(existsSync(final))
  t.deepEqual(readdirSync(join(root, 'kernel')), [], 'temporary directory removed too')
})

test.serial('leftovers of a killed process are listed as incomplete and removed by a plain clean', async (t) => {
  const root = freshCache()
  // What a SIGKILLed run leaves behind: a temporary sibling without a marker.
  mkdirSync(join(root, 'kernel', 'cafe.tmp-123-abcd'), {recursive: true})
  writeFileSync(join(root, 'kernel', 'cafe.tmp-123-abcd', 'bzImage'), 'x'.repeat(100))
  await atomicDir(entryPath('kernel', 'good'), async (tmp) => writeFileSync(join(tmp, 'bzImage'), 'y'), {kind: 'kernel', key: 'good', manifest: {}})
  const listed = await listCache()
  t.deepEqual(
    listed.map((e) => [e.key, e.incomplete]),
    [
      ['cafe.tmp-123-abcd', true],
      ['good', false],
    ],
  )
  t.true(listed[0].bytes >= 100)
  const removed = await cleanCache({})
  t.deepEqual(removed.map((e) => e.key), ['cafe.tmp-123-abcd'])
  t.deepEqual(readdirSync(join(root, 'kernel')), ['good'])
})

test.serial('clean --older-than removes only entries unused for that long; --all removes everything', async (t) => {
  const root = freshCache()
  for (const key of ['old', 'new']) {
    await atomicDir(entryPath('src', key), async (tmp) => writeFileSync(join(tmp, 'f'), key), {kind: 'src', key, manifest: {}})
  }
  const tenDaysAgo = new Date(Date.now() - 10 * 86_400_000)
  utimesSync(join(root, 'src', 'old', ENTRY_FILE), tenDaysAgo, tenDaysAgo)
  const removed = await cleanCache({olderThanMs: parseDuration('7d')})
  t.deepEqual(removed.map((e) => e.key), ['old'])
  mkdirSync(join(root, 'ccache', 'a'), {recursive: true})
  const all = await cleanCache({all: true})
  t.deepEqual(all.map((e) => `${e.kind}/${e.key}`).sort(), ['ccache/-', 'src/new'])
})

test('parseDuration', (t) => {
  t.is(parseDuration('30m'), 30 * 60_000)
  t.is(parseDuration('7d'), 7 * 86_400_000)
  t.is(parseDuration('2w'), 14 * 86_400_000)
  t.throws(() => parseDuration('7 days'), {message: /duration "7 days" is not valid/})
})

test('withLock serialises holders and takes over a lock whose owner died', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-lock-'))
  const lock = join(dir, 'build.lock')
  const events: string[] = []
  let waitedFor = ''
  let aInside: () => void = () => {}
  let bWaits: () => void = () => {}
  const aIn = new Promise<void>((r) => (aInside = r))
  const bWaiting = new Promise<void>((r) => (bWaits = r))
  // a takes the lock first and holds it until b says it waits (bounded, so a bug fails
  // instead of hanging): fixed delays race with the polling on a busy machine.
  const a = withLock(lock, async () => {
    events.push('a in')
    aInside()
    await Promise.race([bWaiting, new Promise((r) => setTimeout(r, 10_000))])
    events.push('a out')
  }, undefined, 10)
  await aIn
  const b = withLock(lock, async () => {
    events.push('b in')
    events.push('b out')
  }, (h) => ((waitedFor = h), bWaits()), 10)
  await Promise.all([a, b])
  t.deepEqual(events, ['a in', 'a out', 'b in', 'b out'])
  t.is(waitedFor, `process ${process.pid}`)
  t.false(existsSync(lock), 'released')

  // A lock left by a process that no longer exists (pid far above pid_max).
  mkdirSync(lock)
  writeFileSync(join(lock, 'pid'), '99999999')
  t.is(await withLock(lock, async () => 'ran', undefined, 10), 'ran')
})
