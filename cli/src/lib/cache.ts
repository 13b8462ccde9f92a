import {createHash, randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import {lstat, mkdir, open, readdir, readFile, rename, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {homedir} from 'node:os'
import {basename, dirname, join, resolve} from 'node:path'

import {NetbootError} from './errors.js'

/**
 * The build cache: $NETBOOT_CACHE (default ~/.cache/netboot)/<kind>/<key>/...
 * A key is the sha256 of the sorted JSON of everything that affects the artifact (its manifest).
 * Entries are built under a temporary sibling name and renamed into place, so a crash or Ctrl-C
 * never leaves a directory under the final name: if <kind>/<key>/ exists, it is complete.
 */

/** Marker written into every entry: what it was built from, for `netboot cache ls` and "why not reused". */
export const ENTRY_FILE = '.netboot-entry.json'
const TMP_INFIX = '.tmp-'

export function cacheRoot(): string {
  const fromEnv = process.env.NETBOOT_CACHE
  return resolve(fromEnv && fromEnv !== '' ? fromEnv : join(homedir(), '.cache', 'netboot'))
}

/** JSON with object keys sorted at every level, so equal manifests hash equally. */
export function stableStringify(value: unknown): string {
  if (value === undefined) return 'null'
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map((v) => stableStringify(v)).join(',')}]`
  const obj = value as Record<string, unknown>
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort()
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableStringify(obj[k])}`).join(',')}}`
}

export function cacheKey(manifest: unknown): string {
  return createHash('sha256').update(stableStringify(manifest)).digest('hex')
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

export function entryPath(kind: string, key: string): string {
  return join(cacheRoot(), kind, key)
}

export function isTemporaryName(name: string): boolean {
  return name.includes(TMP_INFIX)
}

function temporarySibling(finalPath: string): string {
  return join(dirname(finalPath), `${basename(finalPath)}${TMP_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`)
}

/**
 * Writes a file atomically: data goes to a temporary sibling, is fsynced, then renamed over
 * `path`. Readers see the old file or the whole new one, never a prefix.
 */
export async function atomicWrite(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), {recursive: true})
  const tmp = temporarySibling(path)
  try {
    const fh = await open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, {force: true})
    throw err
  }
}

export interface EntryInfo {
  kind: string
  key: string
  createdAt: string
  manifest: unknown
}

/**
 * Builds a directory atomically: `fill(tmpDir)` populates a temporary sibling of `finalPath`,
 * which then gets the entry marker and is renamed into place. If `fill` throws, the temporary
 * directory is removed and the error propagates. If another run finished the same entry first,
 * that one is kept (same key = same content).
 */
export async function atomicDir(
  finalPath: string,
  fill: (tmpDir: string) => Promise<void>,
  entry?: Omit<EntryInfo, 'createdAt'>,
): Promise<string> {
  await mkdir(dirname(finalPath), {recursive: true})
  const tmp = temporarySibling(finalPath)
  await mkdir(tmp)
  const removeTmp = () => rm(tmp, {recursive: true, force: true})
  // Ctrl-C during a long fill (extracting, building) must not leave a half-written tree behind.
  const onSignal = () => {
    void removeTmp().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  try {
    await fill(tmp)
    if (entry) await writeFile(join(tmp, ENTRY_FILE), JSON.stringify({...entry, createdAt: new Date().toISOString()}, null, 2) + '\n')
    try {
      await rename(tmp, finalPath)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if ((code === 'ENOTEMPTY' || code === 'EEXIST') && existsSync(finalPath)) {
        await removeTmp()
        return finalPath
      }
      throw err
    }
    return finalPath
  } catch (err) {
    await removeTmp()
    throw err
  } finally {
    process.removeListener('SIGINT', onSignal)
  }
}

export async function readEntry(path: string): Promise<EntryInfo | undefined> {
  try {
    return JSON.parse(await readFile(join(path, ENTRY_FILE), 'utf8')) as EntryInfo
  } catch {
    return undefined
  }
}

/** Marks an entry as used now, so `cache clean --older-than` keeps what is in use. */
export async function touchEntry(path: string): Promise<void> {
  const now = new Date()
  await utimes(join(path, ENTRY_FILE), now, now).catch(() => utimes(path, now, now).catch(() => undefined))
}

/** Total size in bytes of a file or directory tree (apparent size, symlinks not followed). */
export async function diskUsage(path: string): Promise<number> {
  const st = await lstat(path)
  if (!st.isDirectory()) return st.size
  let total = st.size
  const names = await readdir(path)
  // Sequential on purpose: a kernel tree has ~80k files and parallel lstat only thrashes.
  for (const name of names) total += await diskUsage(join(path, name))
  return total
}

export interface CacheListing {
  kind: string
  key: string
  path: string
  bytes: number
  /** Last use (entry marker mtime), ISO time. */
  lastUsed: string
  /** Leftover of an interrupted run: never used, removed by `netboot cache clean`. */
  incomplete: boolean
  manifest?: unknown
}

export async function listCache(options: {sizes?: boolean} = {}): Promise<CacheListing[]> {
  const root = cacheRoot()
  if (!existsSync(root)) return []
  const out: CacheListing[] = []
  for (const kind of (await readdir(root)).sort()) {
    const kindDir = join(root, kind)
    if (!(await stat(kindDir)).isDirectory()) continue
    // ccache manages its own directory; it is one entry, not a set of keys.
    const names = kind === 'ccache' ? [''] : (await readdir(kindDir)).sort()
    for (const name of names) {
      const path = name === '' ? kindDir : join(kindDir, name)
      const st = await stat(path).catch(() => undefined)
      if (!st?.isDirectory() && name !== '' && !isTemporaryName(name)) continue
      if (!st) continue
      const entry = name === '' ? undefined : await readEntry(path)
      const marker = await stat(join(path, ENTRY_FILE)).catch(() => undefined)
      out.push({
        kind,
        key: name === '' ? '-' : name,
        path,
        bytes: options.sizes === false ? 0 : await diskUsage(path),
        lastUsed: (marker ?? st).mtime.toISOString(),
        incomplete: isTemporaryName(name),
        manifest: entry?.manifest,
      })
    }
  }
  return out
}

export interface CleanOptions {
  all?: boolean
  /** Remove entries not used for this many milliseconds. */
  olderThanMs?: number
  now?: number
}

/**
 * Removes cache entries: always the leftovers of interrupted runs; with `all` everything; with
 * `olderThanMs` the entries last used before now - olderThanMs. Returns what was removed.
 */
export async function cleanCache(options: CleanOptions): Promise<CacheListing[]> {
  const now = options.now ?? Date.now()
  const removed: CacheListing[] = []
  for (const e of await listCache()) {
    const old = options.olderThanMs !== undefined && now - Date.parse(e.lastUsed) > options.olderThanMs
    if (e.incomplete || options.all || old) {
      await rm(e.path, {recursive: true, force: true})
      removed.push(e)
    }
  }
  return removed
}

/** Parses "30m", "12h", "7d", "2w" into milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)\s*([smhdw])$/.exec(text.trim())
  if (!m) throw new NetbootError(`duration "${text}" is not valid: use a number and one of s, m, h, d, w (e.g. 7d)`, {exit: 2})
  const unit = {s: 1, m: 60, h: 3600, d: 86_400, w: 604_800}[m[2] as 's' | 'm' | 'h' | 'd' | 'w']
  return Number(m[1]) * unit * 1000
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = bytes
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Runs `fn` holding an exclusive lock (a directory created with mkdir, which is atomic) so two
 * netboot processes never run make in the same build directory. A lock whose owner died is
 * taken over. `onWait` is told once who holds it.
 */
export async function withLock<T>(lockDir: string, fn: () => Promise<T>, onWait?: (holder: string) => void, pollMs = 1000): Promise<T> {
  await mkdir(dirname(lockDir), {recursive: true})
  let told = false
  for (;;) {
    try {
      await mkdir(lockDir)
      await writeFile(join(lockDir, 'pid'), String(process.pid))
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = Number(await readFile(join(lockDir, 'pid'), 'utf8').catch(() => ''))
      // No pid file yet: the owner is between mkdir and writeFile; give it a moment.
      if (pid > 0 && !pidAlive(pid)) {
        await rm(lockDir, {recursive: true, force: true})
        continue
      }
      if (!told && pid > 0) {
        told = true
        onWait?.(`process ${pid}`)
      }
      await new Promise((r) => setTimeout(r, pollMs))
    }
  }
  try {
    return await fn()
  } finally {
    await rm(lockDir, {recursive: true, force: true})
  }
}
