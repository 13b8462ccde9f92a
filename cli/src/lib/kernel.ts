import {spawn} from 'node:child_process'
import {createReadStream, existsSync, readFileSync, realpathSync, statSync} from 'node:fs'
import {copyFile, link, mkdir, readdir, readFile, rm, symlink, utimes, writeFile} from 'node:fs/promises'
import {cpus} from 'node:os'
import {basename, dirname, isAbsolute, join, normalize, relative, resolve, sep} from 'node:path'
import {Transform, type Readable} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {createGunzip} from 'node:zlib'
import tar from 'tar-stream'

import {atomicDir, atomicWrite, cacheKey, cacheRoot, entryPath, readEntry, sha256, touchEntry, withLock, type EntryInfo} from './cache.js'
import {DEBIAN_KERNELS, defaultSeriesDir} from './config.js'
import {requireTools} from './doctor.js'
import {NetbootError, usageError} from './errors.js'
import {run} from './exec.js'
import type {RunContext} from './log.js'

/**
 * The kernel side of the pipeline:
 *   prepare  tarball/dir -> $NETBOOT_CACHE/src/<key>/linux, a git tree with the pristine source
 *            committed and tagged `netboot-base`
 *   patch    apply patches/linux-<ver>/series on top with git am (all or nothing)
 *   build    tinyconfig + fragment -> check -> bzImage + uAPI headers in $NETBOOT_CACHE/kernel/<key>
 *   export   the commits on top of netboot-base back into the series directory
 * Builds run out of tree (O=$NETBOOT_CACHE/src/<key>/build) so the git tree only ever holds source.
 */

export const BASE_TAG = 'netboot-base'
const GIT_IDENTITY = ['-c', 'user.name=netboot', '-c', 'user.email=netboot@localhost']
const ARCH = 'x86_64'

// ---------------------------------------------------------------------------------------------
// Source selection

export interface KernelSource {
  kind: 'tarball' | 'dir'
  /** Absolute (real) path of the tarball or tree. */
  path: string
  /** What identifies the content: tarballs by path+size+mtime, directories by real path. */
  identity: {kind: 'tarball'; path: string; size: number; mtimeMs: number} | {kind: 'dir'; path: string}
  key: string
}

const TARBALL_RE = /\.(tar\.xz|txz|tar\.gz|tgz|tar)$/

/** Resolves --kernel: "6.1"/"6.12" (Debian's linux-source packages), a tarball, or a tree. */
export function resolveKernelSource(spec: string, cwd = process.cwd()): KernelSource {
  let path: string
  if (DEBIAN_KERNELS[spec]) {
    path = DEBIAN_KERNELS[spec]
    if (!existsSync(path)) {
      throw new NetbootError(`kernel ${spec} needs ${path}, which is missing (Debian package linux-source-${spec})`, {
        suggestions: [`apt-get install linux-source-${spec}`, 'or run `netboot doctor --install`'],
      })
    }
  } else if (/^\d+\.\d+$/.test(spec)) {
    throw usageError(`kernel "${spec}" is not known: use ${Object.keys(DEBIAN_KERNELS).join(' or ')}, a .tar.xz/.tar.gz tarball, or a kernel source directory`)
  } else {
    path = resolve(cwd, spec)
    if (!existsSync(path)) throw usageError(`kernel source ${path} does not exist`)
  }
  const real = realpathSync(path)
  const st = statSync(real)
  if (st.isDirectory()) {
    const identity = {kind: 'dir' as const, path: real}
    return {kind: 'dir', path: real, identity, key: cacheKey(identity)}
  }
  if (!TARBALL_RE.test(real)) throw usageError(`kernel source ${real} is neither a directory nor a .tar.xz/.tar.gz/.tar tarball`)
  const identity = {kind: 'tarball' as const, path: real, size: st.size, mtimeMs: Math.trunc(st.mtimeMs)}
  return {kind: 'tarball', path: real, identity, key: cacheKey(identity)}
}

export interface KernelVersion {
  /** "6.1": selects the series directory patches/linux-6.1. */
  series: string
  /** "6.1.192" */
  full: string
}

/** Reads VERSION/PATCHLEVEL/SUBLEVEL from a tree's top Makefile; throws if it is no kernel tree. */
export function kernelVersion(tree: string): KernelVersion {
  const makefile = join(tree, 'Makefile')
  const notKernel = (why: string) =>
    usageError(`${tree} is not a Linux kernel source tree (${why})`, ['pass --kernel 6.1, a linux-*.tar.xz tarball, or the top directory of a kernel tree'])
  if (!existsSync(makefile)) throw notKernel('no Makefile')
  if (!existsSync(join(tree, 'Kconfig'))) throw notKernel('no Kconfig')
  const text = readFileSync(makefile, 'utf8').slice(0, 4096)
  const field = (name: string) => new RegExp(`^${name}\\s*=\\s*(\\d+)\\s*$`, 'm').exec(text)?.[1]
  const [v, p, s] = [field('VERSION'), field('PATCHLEVEL'), field('SUBLEVEL')]
  if (v === undefined || p === undefined) throw notKernel('its Makefile has no "VERSION =" / "PATCHLEVEL =" lines')
  return {series: `${v}.${p}`, full: `${v}.${p}.${s ?? 0}`}
}

// ---------------------------------------------------------------------------------------------
// prepare

export interface PreparedTree {
  source: KernelSource
  /** Where the git tree is (for a directory source: the directory itself). */
  tree: string
  /** Out-of-tree build directory (O=). */
  buildDir: string
  version: KernelVersion
  /** True when an existing prepared tree was used as is. */
  reused: boolean
}

/** $NETBOOT_CACHE/src/<key>: holds linux/ (the tree or a symlink to it) and build/. */
export function srcEntryPath(source: KernelSource): string {
  return entryPath('src', source.key)
}

async function git(ctx: RunContext, tree: string, args: string[], options: {allowFailure?: boolean; input?: string} = {}) {
  return run(ctx, 'git', [...GIT_IDENTITY, '-c', 'core.autocrlf=false', '-c', 'gc.auto=0', ...args], {cwd: tree, ...options})
}

/** Counts bytes flowing through, for extraction progress. */
function byteCounter(onBytes: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes(chunk.length)
      cb(null, chunk)
    },
  })
}

/** Joins a tar member name below `root` after dropping its top directory; undefined for the top itself. */
function memberPath(root: string, name: string): string | undefined {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.length <= 1) return undefined
  const rel = normalize(parts.slice(1).join('/'))
  if (isAbsolute(rel) || rel === '..' || rel.startsWith('..' + sep)) throw new NetbootError(`tarball member "${name}" points outside the tree; refusing to extract`)
  return join(root, rel)
}

/**
 * Extracts a kernel tarball into `dest` (created), dropping the top directory
 * (linux-source-6.1/...). xz is not in node's zlib, so .tar.xz goes through `xz -dc`.
 */
export async function extractTarball(ctx: RunContext, tarball: string, dest: string): Promise<{files: number}> {
  const total = statSync(tarball).size
  let read = 0
  let lastPct = -1
  const counter = byteCounter((n) => {
    read += n
    const pct = Math.floor((read / total) * 100)
    if (pct !== lastPct) {
      lastPct = pct
      ctx.progress?.(`${pct}% of ${(total / 2 ** 20).toFixed(0)} MiB`)
    }
  })
  const input = createReadStream(tarball).pipe(counter)
  let decompressed: Readable
  let waitDecompressor: Promise<void> = Promise.resolve()
  if (/\.(tar\.xz|txz)$/.test(tarball)) {
    const xz = spawn('xz', ['-dc'], {stdio: ['pipe', 'pipe', 'pipe']})
    let stderr = ''
    xz.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    input.pipe(xz.stdin)
    // A truncated input makes xz exit 1 after the extractor already consumed what it got.
    xz.stdin.on('error', () => undefined)
    waitDecompressor = new Promise((resolvePromise, reject) => {
      xz.on('error', (err) => reject(new NetbootError(`cannot run xz: ${err.message}`, {suggestions: ['apt-get install xz-utils']})))
      xz.on('close', (code) => (code === 0 ? resolvePromise() : reject(new NetbootError(`xz exited with ${code}: ${stderr.trim()}`))))
    })
    decompressed = xz.stdout
  } else if (/\.(tar\.gz|tgz)$/.test(tarball)) {
    decompressed = input.pipe(createGunzip())
  } else {
    decompressed = input
  }

  await mkdir(dest, {recursive: true})
  const extract = tar.extract()
  const feed = pipeline(decompressed, extract)
  let files = 0
  const dirMtimes: Array<[string, Date]> = []
  const hardlinks: Array<[string, string]> = []
  const consume = (async () => {
    for await (const entry of extract) {
      const {header} = entry
      const target = memberPath(dest, header.name)
      if (target === undefined) {
        entry.resume()
        continue
      }
      switch (header.type) {
        case 'directory':
          await mkdir(target, {recursive: true})
          if (header.mtime) dirMtimes.push([target, header.mtime])
          entry.resume()
          break
        case 'file':
        case 'contiguous-file':
        case undefined:
        case null: {
          const chunks: Buffer[] = []
          for await (const chunk of entry) chunks.push(chunk as Buffer)
          await mkdir(dirname(target), {recursive: true})
          await writeFile(target, Buffer.concat(chunks), {mode: (header.mode ?? 0o644) & 0o7777})
          // make decides what to rebuild from mtimes; keep the tarball's.
          if (header.mtime) await utimes(target, header.mtime, header.mtime)
          files++
          break
        }
        case 'symlink':
          await mkdir(dirname(target), {recursive: true})
          await symlink(header.linkname ?? '', target)
          entry.resume()
          break
        case 'link': {
          const from = memberPath(dest, header.linkname ?? '')
          if (from) hardlinks.push([from, target])
          entry.resume()
          break
        }
        default:
          // Device nodes and fifos have no place in a source tree.
          entry.resume()
      }
    }
  })()
  // All three must settle before we decide: a truncated .xz fails in xz, in the tar parser and
  // in the consumer at once, and xz's message is the one that explains it.
  const outcomes = await Promise.allSettled([waitDecompressor, feed, consume])
  const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
  if (failure) {
    const reason = failure.reason instanceof NetbootError ? failure.reason.message : `${(failure.reason as Error).message ?? String(failure.reason)}`
    throw new NetbootError(`cannot extract ${tarball}: ${reason}`, {suggestions: ['the file may be truncated or corrupt; reinstall it or pass another --kernel']})
  }
  for (const [from, to] of hardlinks) {
    await mkdir(dirname(to), {recursive: true})
    await link(from, to)
  }
  // Directory mtimes last: creating entries inside a directory bumps its mtime.
  for (const [dir, mtime] of dirMtimes.reverse()) await utimes(dir, mtime, mtime)
  if (files === 0) throw new NetbootError(`${tarball} contains no files`)
  return {files}
}

/**
 * Debian's linux-source tarball ships a top-level .gitignore ending in "/*" and "!/debian/"
 * (with a comment block above): it ignores the whole tree outside debian/. Returns the file
 * without that block, or undefined when there is nothing to change.
 */
export function stripDebianIgnoreAll(gitignore: string): string | undefined {
  const lines = gitignore.split('\n')
  const star = lines.findIndex((l, i) => l.trim() === '/*' && lines[i + 1]?.trim() === '!/debian/')
  if (star === -1) return undefined
  let start = star
  while (start > 0 && lines[start - 1].startsWith('#')) start--
  lines.splice(start, star + 2 - start)
  while (lines.length > 1 && lines.at(-1) === '' && lines.at(-2) === '') lines.pop()
  return lines.join('\n')
}

async function isGitRepo(dir: string): Promise<boolean> {
  return existsSync(join(dir, '.git'))
}

async function hasTag(ctx: RunContext, tree: string, tag: string): Promise<boolean> {
  const r = await git(ctx, tree, ['rev-parse', '-q', '--verify', `refs/tags/${tag}`], {allowFailure: true})
  return r.exitCode === 0
}

/** git init + one commit of the pristine tree, tagged netboot-base. */
async function makeBaseline(ctx: RunContext, tree: string, label: string): Promise<void> {
  const ignoreFile = join(tree, '.gitignore')
  if (existsSync(ignoreFile)) {
    const fixed = stripDebianIgnoreAll(await readFile(ignoreFile, 'utf8'))
    if (fixed !== undefined) await writeFile(ignoreFile, fixed)
  }
  if (!(await isGitRepo(tree))) await git(ctx, tree, ['init', '-q', '-b', 'netboot'])
  ctx.progress?.('git add (a kernel tree has ~80k files)')
  // -f: the tarball holds files its own .gitignore matches (.clang-format, .kunitconfig...)
  // that upstream tracks; the baseline must hold every file of the pristine tree.
  await git(ctx, tree, ['add', '-A', '-f', '.'])
  ctx.progress?.('git commit')
  await git(ctx, tree, ['commit', '-q', '--no-verify', '-m', `netboot: pristine ${label}`])
  await git(ctx, tree, ['tag', BASE_TAG])
}

/**
 * Makes the chosen source ready for patching. A tarball is extracted once per identity into
 * $NETBOOT_CACHE/src/<key>/linux (atomically: a killed extraction leaves only a temporary
 * directory). A directory is used in place (linked from the cache); if it has no netboot-base
 * tag yet, its current state becomes the baseline.
 */
export async function prepareKernel(ctx: RunContext, spec: string): Promise<PreparedTree> {
  const source = resolveKernelSource(spec)
  await requireTools(source.kind === 'tarball' && /xz$/.test(source.path) ? ['git', 'xz'] : ['git'])
  const entry = srcEntryPath(source)
  const linkOrTree = join(entry, 'linux')
  const tree = source.kind === 'dir' ? source.path : linkOrTree
  if (source.kind === 'dir') kernelVersion(tree)

  if (existsSync(linkOrTree) && (await hasTag(ctx, tree, BASE_TAG))) {
    await touchEntry(entry)
    return {source, tree, buildDir: join(entry, 'build'), version: kernelVersion(tree), reused: true}
  }

  if (source.kind === 'dir') {
    if (await isGitRepo(tree)) {
      const dirty = (await git(ctx, tree, ['status', '--porcelain'])).stdout.trim()
      if (dirty !== '') throw new NetbootError(`${tree} has uncommitted changes; commit or stash them so netboot can tag a clean baseline`)
      await git(ctx, tree, ['tag', BASE_TAG])
    } else {
      await makeBaseline(ctx, tree, basename(tree))
    }
    await rm(entry, {recursive: true, force: true})
    await atomicDir(entry, async (tmp) => void (await symlink(tree, join(tmp, 'linux'))), {kind: 'src', key: source.key, manifest: source.identity})
  } else {
    await atomicDir(
      entry,
      async (tmp) => {
        const dest = join(tmp, 'linux')
        ctx.log.write(`extracting ${source.path} into ${dest}`)
        const {files} = await extractTarball(ctx, source.path, dest)
        ctx.log.write(`extracted ${files} files`)
        kernelVersion(dest)
        await makeBaseline(ctx, dest, basename(source.path))
      },
      {kind: 'src', key: source.key, manifest: source.identity},
    )
  }
  return {source, tree, buildDir: join(entry, 'build'), version: kernelVersion(tree), reused: false}
}

// ---------------------------------------------------------------------------------------------
// series

export interface SeriesPatch {
  name: string
  path: string
  subject: string
  sha256: string
}

export interface Series {
  dir: string
  patches: SeriesPatch[]
  /** The config fragment (<dir>/config), if present. */
  fragment?: string
}

/** The Subject: of a git format-patch mail, without "[PATCH n/m]", unfolded. */
export function patchSubject(text: string): string | undefined {
  const head = text.split(/\n\n/, 1)[0]
  const m = /^Subject:[ \t]*(.*(?:\n[ \t]+.*)*)/m.exec(head)
  if (!m) return undefined
  return m[1].replace(/\n[ \t]+/g, ' ').replace(/^\[[^\]]*PATCH[^\]]*\]\s*/i, '').trim()
}

/** Parses a quilt-style series file: one patch per line, '#' comments, optional trailing options ignored. */
export function parseSeriesFile(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter((l) => l !== '')
    .map((l) => l.split(/\s+/)[0])
}

export function seriesDirFor(version: KernelVersion | string, override?: string): string {
  return override ? resolve(override) : defaultSeriesDir(typeof version === 'string' ? version : version.series)
}

export function readSeries(dir: string, version: string): Series {
  const seriesFile = join(dir, 'series')
  if (!existsSync(seriesFile)) {
    throw new NetbootError(`no series for kernel ${version}: ${seriesFile} does not exist`, {
      exit: 2,
      suggestions: ['netboot never builds an unpatched kernel; pass --series <dir> or add the series file'],
    })
  }
  const names = parseSeriesFile(readFileSync(seriesFile, 'utf8'))
  if (names.length === 0) throw new NetbootError(`series ${seriesFile} lists no patches`, {exit: 2})
  const patches = names.map((name) => {
    const path = join(dir, name)
    if (!existsSync(path)) throw new NetbootError(`series ${seriesFile} lists ${name}, which does not exist`, {exit: 2})
    const text = readFileSync(path, 'utf8')
    const subject = patchSubject(text)
    if (subject === undefined) throw new NetbootError(`${path} is not a git format-patch mail (no Subject: line)`, {exit: 2})
    return {name, path, subject, sha256: sha256(text)}
  })
  const fragment = join(dir, 'config')
  return {dir, patches, fragment: existsSync(fragment) ? fragment : undefined}
}

/** Stable patch ids (content of the diff, independent of line numbers and whitespace), one per patch. */
async function patchIds(ctx: RunContext, tree: string, mbox: string): Promise<string[]> {
  if (mbox.trim() === '') return []
  const r = await git(ctx, tree, ['patch-id', '--stable'], {input: mbox})
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split(' ')[0])
}

async function appliedPatchIds(ctx: RunContext, tree: string): Promise<string[]> {
  const mbox = (await git(ctx, tree, ['format-patch', '--stdout', '--no-signature', `${BASE_TAG}..HEAD`])).stdout
  return patchIds(ctx, tree, mbox)
}

export type PatchOutcome = 'applied' | 'already-applied'

export interface PatchResult {
  tree: string
  series: string
  outcome: PatchOutcome
  /** Patches applied by this run. */
  applied: string[]
  /** Set when local commits that are not the series were moved aside to apply it. */
  backupTag?: string
}

/** Pulls "file:line" and git's reason out of `git apply --check` output. */
export function describeApplyFailure(output: string): string {
  const failed = /error: patch failed: (\S+):(\d+)/.exec(output)
  const reason = /error: (\S+): (patch does not apply|already exists in working directory|does not exist in index|No such file or directory)/.exec(output)
  if (failed) return `hunk at ${failed[1]}:${failed[2]} does not apply`
  if (reason) return `${reason[1]}: ${reason[2]}`
  const firstError = output.split('\n').find((l) => l.startsWith('error:') || l.startsWith('fatal:'))
  return firstError?.replace(/^(error|fatal):\s*/, '') ?? output.trim().split('\n')[0] ?? 'unknown git error'
}

/**
 * Brings the tree to netboot-base + the series, all or nothing:
 * - already there: nothing to do;
 * - the commits on top are a prefix of the series: applies the rest;
 * - otherwise (the series changed, or local commits): tags the current HEAD netboot-backup-<time>
 *   so nothing is lost, resets to netboot-base and applies the whole series.
 * Uncommitted changes are never touched: that is an error. A patch that does not apply leaves
 * the tree exactly as it was before this call.
 */
export async function applySeries(ctx: RunContext, tree: string, series: Series): Promise<PatchResult> {
  await requireTools(['git'])
  const result = (outcome: PatchOutcome, applied: string[], backupTag?: string): PatchResult => ({tree, series: series.dir, outcome, applied, backupTag})
  if (!(await hasTag(ctx, tree, BASE_TAG))) throw new NetbootError(`${tree} has no ${BASE_TAG} tag`, {suggestions: ['run `netboot kernel prepare` first']})
  if (existsSync(join(tree, '.git', 'rebase-apply'))) {
    throw new NetbootError(`a git am is in progress in ${tree}`, {suggestions: [`cd ${tree} && git am --abort`]})
  }
  const dirty = (await git(ctx, tree, ['status', '--porcelain', '--untracked-files=no'])).stdout.trim()
  if (dirty !== '') {
    throw new NetbootError(`the kernel tree ${tree} has uncommitted changes:\n${dirty}`, {
      suggestions: ['commit them and run `netboot kernel export` to update the series, or discard them with `git checkout -- .`'],
    })
  }

  const wanted: string[] = []
  for (const p of series.patches) {
    const ids = await patchIds(ctx, tree, await readFile(p.path, 'utf8'))
    if (ids.length !== 1) throw new NetbootError(`${p.path} must hold exactly one patch with a diff (found ${ids.length})`, {exit: 2})
    wanted.push(ids[0])
  }
  const have = await appliedPatchIds(ctx, tree)
  if (have.length === wanted.length && have.every((id, i) => id === wanted[i])) return result('already-applied', [])

  const start = (await git(ctx, tree, ['rev-parse', 'HEAD'])).stdout.trim()
  let backupTag: string | undefined
  let todo = series.patches
  const isPrefix = have.length < wanted.length && have.every((id, i) => id === wanted[i])
  if (isPrefix) {
    todo = series.patches.slice(have.length)
  } else {
    backupTag = `netboot-backup-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}`
    await git(ctx, tree, ['tag', '-f', backupTag, 'HEAD'])
    ctx.log.write(`tree differs from the series: HEAD saved as tag ${backupTag}, resetting to ${BASE_TAG}`)
    await git(ctx, tree, ['reset', '-q', '--hard', BASE_TAG])
  }

  const applied: string[] = []
  for (const p of todo) {
    ctx.progress?.(`${p.name} (${applied.length + 1}/${todo.length})`)
    const check = await git(ctx, tree, ['apply', '--check', p.path], {allowFailure: true})
    let failure = check.exitCode === 0 ? undefined : describeApplyFailure(check.all)
    if (failure === undefined) {
      const am = await git(ctx, tree, ['am', '-q', '--keep-cr', '--committer-date-is-author-date', p.path], {allowFailure: true})
      if (am.exitCode !== 0) failure = describeApplyFailure(am.all)
    }
    if (failure !== undefined) {
      if (existsSync(join(tree, '.git', 'rebase-apply'))) await git(ctx, tree, ['am', '--abort'], {allowFailure: true})
      await git(ctx, tree, ['reset', '-q', '--hard', start])
      // HEAD is back where it was, so the backup would only be clutter.
      if (backupTag) await git(ctx, tree, ['tag', '-d', backupTag], {allowFailure: true})
      throw new NetbootError(`patch ${p.name} does not apply to ${tree}: ${failure}`, {
        suggestions: [`the tree was left as it was (HEAD ${start.slice(0, 12)})`, `details in ${ctx.log.path}`],
      })
    }
    applied.push(p.name)
  }
  return result('applied', applied, backupTag)
}

// ---------------------------------------------------------------------------------------------
// export

export interface ExportResult {
  series: string
  patches: string[]
  removed: string[]
}

/** Writes `git format-patch netboot-base..HEAD` into the series directory and rewrites its series file. */
export async function exportSeries(ctx: RunContext, tree: string, seriesDir: string): Promise<ExportResult> {
  await requireTools(['git'])
  if (!(await hasTag(ctx, tree, BASE_TAG))) throw new NetbootError(`${tree} has no ${BASE_TAG} tag`, {suggestions: ['run `netboot kernel prepare` first']})
  const dirty = (await git(ctx, tree, ['status', '--porcelain', '--untracked-files=no'])).stdout.trim()
  if (dirty !== '') {
    throw new NetbootError(`the kernel tree ${tree} has uncommitted changes; commit them first (git commit -a, or git commit --fixup and git rebase -i --autosquash ${BASE_TAG})`)
  }
  const count = Number((await git(ctx, tree, ['rev-list', '--count', `${BASE_TAG}..HEAD`])).stdout.trim())
  if (count === 0) throw new NetbootError(`no commits on top of ${BASE_TAG} in ${tree}: nothing to export`)

  const staging = join(dirname(tree), `export.tmp-${process.pid}`)
  await rm(staging, {recursive: true, force: true})
  try {
    // --zero-commit, --no-signature and a fixed --abbrev keep re-exports of the same commits
    // byte-identical, whatever git version or repository size.
    await git(ctx, tree, ['format-patch', '-q', '--zero-commit', '--no-signature', '--abbrev=12', '-o', staging, `${BASE_TAG}..HEAD`])
    const names = (await readdir(staging)).filter((n) => n.endsWith('.patch')).sort()
    await mkdir(seriesDir, {recursive: true})
    const old = existsSync(join(seriesDir, 'series')) ? parseSeriesFile(readFileSync(join(seriesDir, 'series'), 'utf8')) : []
    const oldPatchFiles = (await readdir(seriesDir)).filter((n) => n.endsWith('.patch'))
    const removed = [...new Set([...old, ...oldPatchFiles])].filter((n) => !names.includes(n))
    for (const n of names) await atomicWrite(join(seriesDir, n), await readFile(join(staging, n)))
    for (const n of removed) await rm(join(seriesDir, n), {force: true})
    await atomicWrite(join(seriesDir, 'series'), names.join('\n') + '\n')
    return {series: seriesDir, patches: names, removed}
  } finally {
    await rm(staging, {recursive: true, force: true})
  }
}

// ---------------------------------------------------------------------------------------------
// build

export interface FragmentOption {
  name: string
  /** "y", "m", "n" or a literal value (string values keep their quotes). */
  value: string
}

/** Reads a config fragment: CONFIG_X=value lines and "# CONFIG_X is not set". */
export function parseConfigFragment(text: string): FragmentOption[] {
  // a later assignment of the same option wins, as in merge_config.sh (config.<variant> after config)
  const out = new Map<string, FragmentOption>()
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    const unset = /^# (CONFIG_\w+) is not set$/.exec(line)
    if (unset) {
      out.delete(unset[1])
      out.set(unset[1], {name: unset[1], value: 'n'})
      continue
    }
    if (line === '' || line.startsWith('#')) continue
    const m = /^(CONFIG_\w+)=(.*)$/.exec(line)
    if (!m) throw new NetbootError(`config fragment line "${line}" is not CONFIG_NAME=value`, {exit: 2})
    out.delete(m[1])
    out.set(m[1], {name: m[1], value: m[2]})
  }
  return [...out.values()]
}

export interface OptionMismatch extends FragmentOption {
  /** What .config has: a value, or "n" when not set. */
  actual: string
}

/**
 * Compares the fragment with the final .config. Kconfig silently drops options whose
 * dependencies are off, so every wanted option is checked; "y" also accepts nothing else,
 * "m" accepts "y" (built in is stronger than wanted), "n" must be unset.
 */
export function checkConfig(fragment: FragmentOption[], dotConfig: string): OptionMismatch[] {
  const actual = new Map<string, string>()
  for (const line of dotConfig.split('\n')) {
    const m = /^(CONFIG_\w+)=(.*)$/.exec(line)
    if (m) actual.set(m[1], m[2])
  }
  const bad: OptionMismatch[] = []
  for (const opt of fragment) {
    const got = actual.get(opt.name) ?? 'n'
    const ok = opt.value === 'm' ? got === 'm' || got === 'y' : got === opt.value
    if (!ok) bad.push({...opt, actual: got})
  }
  return bad
}

export interface KernelBuildOptions {
  /** --kernel value (6.1, 6.12, tarball, dir). */
  kernel: string
  /** Series directory; default patches/linux-<major.minor>. */
  series?: string
  /** make -j; 0 or undefined = number of CPUs. */
  jobs?: number
  /** Stop after the configuration check (no compile, nothing cached). */
  configOnly?: boolean
  /**
   * A second fragment of the series merged over the first: `config.<variant>` (e.g. "debug":
   * KUnit, KASAN, lockdep). Built in a build directory of its own.
   */
  variant?: string
}

export interface KernelBuildResult {
  key: string
  /** Cache entry holding bzImage, config, include/ (absent with configOnly). */
  dir?: string
  bzImage?: string
  config: string
  headers?: string
  /** INSTALL_MOD_PATH of `make modules_install` (lib/modules/<release>/), when the config has =m options. */
  modules?: string
  reused: boolean
  /** Why an existing build was not reused (or why it was). */
  reason: string
  version: string
  patches: string[]
}

function describeDifference(old: Record<string, unknown>, now: Record<string, unknown>): string {
  const reasons: string[] = []
  const oldPatches = new Map(((old.patches as Array<{name: string; sha256: string}>) ?? []).map((p) => [p.name, p.sha256]))
  const newPatches = new Map(((now.patches as Array<{name: string; sha256: string}>) ?? []).map((p) => [p.name, p.sha256]))
  for (const [name, hash] of newPatches) {
    if (!oldPatches.has(name)) reasons.push(`patch ${name} is new`)
    else if (oldPatches.get(name) !== hash) reasons.push(`patch ${name} changed`)
  }
  for (const name of oldPatches.keys()) if (!newPatches.has(name)) reasons.push(`patch ${name} was removed`)
  for (const key of Object.keys(now)) {
    if (key !== 'patches' && JSON.stringify(old[key]) !== JSON.stringify(now[key])) reasons.push(`${key} changed`)
  }
  return reasons.length > 0 ? reasons.join(', ') : 'inputs changed'
}

/** Why the cache has no build for `manifest`: compares with the newest build of the same source. */
async function whyNotReused(manifest: Record<string, unknown>): Promise<string> {
  const kernelDir = join(cacheRoot(), 'kernel')
  if (!existsSync(kernelDir)) return 'no kernel built yet in this cache'
  let newest: {entry: EntryInfo; time: number} | undefined
  for (const name of await readdir(kernelDir)) {
    const entry = await readEntry(join(kernelDir, name))
    const m = entry?.manifest as Record<string, unknown> | undefined
    if (!entry || !m || JSON.stringify(m.source) !== JSON.stringify(manifest.source)) continue
    const time = Date.parse(entry.createdAt)
    if (!newest || time > newest.time) newest = {entry, time}
  }
  if (!newest) return 'no earlier build of this kernel source'
  return `${describeDifference(newest.entry.manifest as Record<string, unknown>, manifest)} since the build of ${newest.entry.createdAt}`
}

const OBJECT_LINE = /^\s+(CC|AS|LD|AR|HOSTCC|HOSTLD|OBJCOPY)\s/
/** Objects a tiny x86_64 config plus the fragment compiles, when no earlier build says better. */
const DEFAULT_OBJECT_ESTIMATE = 1800

/** "6.1" from --kernel when its name says so: Debian's short names, linux-6.1.x / linux-source-6.1 tarballs. */
export function versionFromName(spec: string, source: KernelSource): string | undefined {
  if (DEBIAN_KERNELS[spec]) return spec
  if (source.kind === 'dir') return kernelVersion(source.path).series
  return /^linux(?:-source)?-(\d+\.\d+)(?:[.-]|$)/.exec(basename(source.path))?.[1]
}

/** The kernel version recorded in a .config header ("# Linux/x86 6.1.192 Kernel Configuration"). */
export function configVersion(dotConfig: string): string | undefined {
  return /^# Linux\/\S+ (\S+) Kernel Configuration$/m.exec(dotConfig)?.[1]
}

async function compilerVersion(ctx: RunContext): Promise<string> {
  return (await run(ctx, 'gcc', ['--version'])).stdout.split('\n')[0] ?? 'unknown'
}

export interface KernelBuildKey {
  key: string
  /** What the key hashes: source identity, patches, fragment, compiler, build options. */
  manifest: Record<string, unknown>
  seriesVersion: string
  series: Series
  fragmentPaths: string[]
  fragment: FragmentOption[]
}

/**
 * The cache key of a kernel build, without building: what `netboot kernel key` prints for CI
 * caches to key on, and what buildKernel looks up.
 */
export async function kernelBuildKey(ctx: RunContext, options: Pick<KernelBuildOptions, 'kernel' | 'series' | 'variant'>): Promise<KernelBuildKey> {
  const source = resolveKernelSource(options.kernel)
  // The series (and so the cache key) follows from the version; a cache hit must not need the
  // 1.5 GB tree, so extract only when the name does not tell the version.
  const seriesVersion = versionFromName(options.kernel, source) ?? (await prepareKernel(ctx, options.kernel)).version.series
  const series = readSeries(seriesDirFor(seriesVersion, options.series), seriesVersion)
  if (!series.fragment) throw new NetbootError(`series ${series.dir} has no config fragment (${join(series.dir, 'config')})`, {exit: 2})
  const fragmentPaths = [series.fragment]
  if (options.variant) {
    const variantPath = join(series.dir, `config.${options.variant}`)
    if (!existsSync(variantPath)) throw new NetbootError(`series ${series.dir} has no config variant "${options.variant}" (${variantPath})`, {exit: 2})
    fragmentPaths.push(variantPath)
  }
  const fragmentText = fragmentPaths.map((p) => readFileSync(p, 'utf8')).join('\n')
  const fragment = parseConfigFragment(fragmentText)
  const manifest = {
    source: source.identity,
    patches: series.patches.map((p) => ({name: p.name, sha256: p.sha256})),
    fragment: sha256(fragmentText),
    compiler: await compilerVersion(ctx),
    options: {arch: ARCH, base: 'tinyconfig', target: 'bzImage', ...(options.variant ? {variant: options.variant} : {})},
  }
  return {key: cacheKey(manifest), manifest, seriesVersion, series, fragmentPaths, fragment}
}

/**
 * Builds (or finds in the cache) the patched kernel. The cache key covers the source identity,
 * every patch's content, the fragment, the compiler and the build options; the series is
 * applied first so the tree always matches the key.
 */
export async function buildKernel(ctx: RunContext, options: KernelBuildOptions): Promise<KernelBuildResult> {
  await requireTools(['make', 'gcc', 'flex', 'bison', 'bc', 'libelf-dev', 'libssl-dev', 'ccache', 'rsync', 'git'])
  const {key, manifest, seriesVersion, series, fragmentPaths, fragment} = await kernelBuildKey(ctx, options)
  const fragmentPath = fragmentPaths.join(' + ')
  const finalDir = entryPath('kernel', key)
  const patches = series.patches.map((p) => p.name)
  const cached = async (): Promise<KernelBuildResult | undefined> => {
    if (options.configOnly || !existsSync(join(finalDir, 'bzImage'))) return undefined
    await touchEntry(finalDir)
    return {
      key,
      dir: finalDir,
      bzImage: join(finalDir, 'bzImage'),
      config: join(finalDir, 'config'),
      headers: join(finalDir, 'include'),
      modules: existsSync(join(finalDir, 'modules')) ? join(finalDir, 'modules') : undefined,
      reused: true,
      reason: 'same source, patches, config fragment and compiler as a cached build',
      version: configVersion(readFileSync(join(finalDir, 'config'), 'utf8')) ?? seriesVersion,
      patches,
    }
  }
  const hit = await cached()
  if (hit) return hit

  const prepared = await prepareKernel(ctx, options.kernel)
  if (prepared.version.series !== seriesVersion) {
    throw new NetbootError(`${options.kernel} looks like Linux ${seriesVersion} by its name but its Makefile says ${prepared.version.full}`, {exit: 2})
  }
  // Variants keep build directories of their own, so switching between them rebuilds nothing.
  const buildDir = options.variant ? `${prepared.buildDir}-${options.variant}` : prepared.buildDir
  // One build at a time per tree: patching and make share the tree and the build directory.
  const lock = join(srcEntryPath(prepared.source), 'build.lock')
  return withLock(lock, async () => {
    // Whoever held the lock may just have built this very kernel.
    const builtMeanwhile = await cached()
    if (builtMeanwhile) return builtMeanwhile
    await applySeries(ctx, prepared.tree, series)

    const reason = options.configOnly ? 'configuration check only' : await whyNotReused(manifest)
    ctx.log.write(`kernel ${key.slice(0, 16)} not in the cache: ${reason}`)

    const ccacheDir = join(cacheRoot(), 'ccache')
    await mkdir(ccacheDir, {recursive: true})
    await mkdir(buildDir, {recursive: true})
    const env = {
      ...process.env,
      CCACHE_DIR: ccacheDir,
      // Reproducible banner: the build user/host/time would otherwise differ on every machine.
      KBUILD_BUILD_USER: 'netboot',
      KBUILD_BUILD_HOST: 'netboot',
    }
    const jobs = options.jobs && options.jobs > 0 ? options.jobs : cpus().length
    const make = (args: string[], extra: {onLine?: (l: string) => void} = {}) =>
      run(ctx, 'make', ['-C', prepared.tree, `O=${buildDir}`, `ARCH=${ARCH}`, 'CC=ccache gcc', 'HOSTCC=gcc', ...args], {env, tailLines: 30, ...extra})

    ctx.progress?.('make tinyconfig')
    await make(['tinyconfig'])
    ctx.progress?.(`merging ${fragmentPaths.map((p) => relative(process.cwd(), p) || p).join(' + ')}`)
    await run(ctx, join(prepared.tree, 'scripts/kconfig/merge_config.sh'), ['-m', '-O', buildDir, join(buildDir, '.config'), ...fragmentPaths], {
      cwd: prepared.tree,
      env,
    })
    ctx.progress?.('make olddefconfig')
    await make(['olddefconfig'])
    const dotConfigPath = join(buildDir, '.config')
    const mismatches = checkConfig(fragment, readFileSync(dotConfigPath, 'utf8'))
    if (mismatches.length > 0) {
      const list = mismatches.map((m) => `${m.name}=${m.value} (got ${m.actual === 'n' ? 'not set' : m.actual})`).join(', ')
      throw new NetbootError(`${mismatches.length} option(s) of ${fragmentPath} did not survive olddefconfig: ${list}`, {
        suggestions: ['Kconfig drops options whose dependencies are off: add the missing dependencies to the fragment', `inspect with: make -C ${prepared.tree} O=${buildDir} ARCH=${ARCH} menuconfig`],
      })
    }
    if (options.configOnly) {
      return {key, config: dotConfigPath, reused: false, reason, version: prepared.version.full, patches}
    }

    const estimateFile = join(buildDir, '.netboot-objects')
    const estimate = existsSync(estimateFile) ? Number(readFileSync(estimateFile, 'utf8')) || DEFAULT_OBJECT_ESTIMATE : DEFAULT_OBJECT_ESTIMATE
    let objects = 0
    let lastReport = 0
    const onLine = (line: string) => {
      if (!OBJECT_LINE.test(line)) return
      objects++
      const now = Date.now()
      if (now - lastReport > 500) {
        lastReport = now
        const pct = Math.min(99, Math.floor((objects / estimate) * 100))
        ctx.progress?.(`make bzImage: ${objects} objects, ~${pct}% (-j${jobs})`)
      }
    }
    await make([`-j${jobs}`, 'bzImage'], {onLine})
    // An incremental build compiles little; only a full build is a good estimate for the next one.
    if (objects > estimate / 2) await writeFile(estimateFile, String(objects))
    const modular = /^CONFIG_\w+=m$/m.test(readFileSync(dotConfigPath, 'utf8'))
    if (modular) {
      await requireTools(['depmod'])
      ctx.progress?.('make modules')
      await make([`-j${jobs}`, 'modules'])
    }

    const dir = await atomicDir(
      finalDir,
      async (tmp) => {
        ctx.progress?.('make headers_install')
        await make(['headers_install', `INSTALL_HDR_PATH=${tmp}`])
        await copyFile(join(buildDir, 'arch/x86/boot/bzImage'), join(tmp, 'bzImage'))
        await copyFile(dotConfigPath, join(tmp, 'config'))
        if (modular) {
          ctx.progress?.('make modules_install')
          await make(['modules_install', `INSTALL_MOD_PATH=${join(tmp, 'modules')}`, 'INSTALL_MOD_STRIP=1'])
        }
      },
      {kind: 'kernel', key, manifest},
    )
    return {
      key,
      dir,
      bzImage: join(dir, 'bzImage'),
      config: join(dir, 'config'),
      headers: join(dir, 'include'),
      modules: modular ? join(dir, 'modules') : undefined,
      reused: false,
      reason,
      version: prepared.version.full,
      patches,
    }
  }, (holder) => ctx.progress?.(`waiting for ${holder}, which is building this kernel`))
}

/** Locates the prepared tree for --kernel without creating it (for export). */
export function preparedTreeFor(spec: string): {tree: string; version: KernelVersion} {
  const source = resolveKernelSource(spec)
  const tree = source.kind === 'dir' ? source.path : join(srcEntryPath(source), 'linux')
  if (!existsSync(tree) || !existsSync(join(tree, '.git'))) {
    throw new NetbootError(`kernel ${spec} is not prepared (${tree} does not exist)`, {suggestions: [`run \`netboot kernel prepare --kernel ${spec}\``]})
  }
  return {tree, version: kernelVersion(tree)}
}
