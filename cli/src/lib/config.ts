import {existsSync, readFileSync} from 'node:fs'
import {dirname, isAbsolute, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {usageError} from './errors.js'

/**
 * netboot.config.json: every key is optional; flags override the file, the file overrides the
 * defaults below. The schema is data (SCHEMA) so that validation, the README table and the
 * "did you mean" hint all come from one place.
 */
export interface NetbootConfig {
  /** Where artifacts, the PXE tree and netboot.log go. */
  output: string
  /** Cache directory; empty means $NETBOOT_CACHE or ~/.cache/netboot. */
  cacheDir: string
  kernel: {
    /** "6.1", "6.12" (Debian's linux-source packages), a .tar.xz/.tar.gz source tarball, or a kernel tree. */
    version: string
    /** Patch series directory (series file, *.patch, config fragment); empty = patches/linux-<major.minor>. */
    series: string
    /** Parallel make jobs; 0 = number of CPUs. */
    jobs: number
  }
  image: {
    /** "demo" (the built-in demo root), a directory, or a .tar/.tar.gz root file system. */
    source: string
    /** Size of the ext4 file system inside the image, MiB; 0 = content + 30 %. */
    sizeMiB: number
    /** qcow2 cluster compression of the root image ("deflate" is another name for zlib). */
    compression: 'none' | 'deflate' | 'zlib' | 'zstd'
    format: 'qcow2' | 'raw'
  }
  boot: {
    /** Guest memory for `netboot boot`, MiB. */
    memoryMiB: number
    /** Seconds to wait for the root's marker line. */
    timeoutSec: number
    /** Extra kernel command-line parameters appended to the generated ones. */
    cmdline: string
    onfail: 'shell' | 'reboot' | 'poweroff'
  }
  serve: {
    host: string
    /** 0 = pick a free port. */
    port: number
  }
}

type Leaf =
  | {type: 'string'; help: string}
  | {type: 'integer'; min: number; max: number; help: string}
  | {type: 'enum'; values: readonly string[]; help: string}
  | {type: 'path'; help: string}

type Schema = {[key: string]: Leaf | Schema}

/** Paths ("path" leaves) are resolved against the directory of the config file. */
export const SCHEMA: Schema = {
  output: {type: 'path', help: 'output directory (PXE tree, artifacts, netboot.log)'},
  cacheDir: {type: 'path', help: 'cache directory; default $NETBOOT_CACHE or ~/.cache/netboot'},
  kernel: {
    version: {type: 'string', help: '"6.1", "6.12", a .tar.xz/.tar.gz kernel tarball, or a kernel source directory'},
    series: {type: 'path', help: 'patch series directory; default patches/linux-<version>'},
    jobs: {type: 'integer', min: 0, max: 1024, help: 'make -j value; 0 = number of CPUs'},
  },
  image: {
    source: {type: 'string', help: '"demo", a root directory, or a .tar/.tar.gz root file system'},
    sizeMiB: {type: 'integer', min: 0, max: 1024 * 1024, help: 'ext4 size in MiB; 0 = content + 30 %'},
    compression: {type: 'enum', values: ['none', 'deflate', 'zlib', 'zstd'], help: 'qcow2 cluster compression'},
    format: {type: 'enum', values: ['qcow2', 'raw'], help: 'root image format'},
  },
  boot: {
    memoryMiB: {type: 'integer', min: 64, max: 65_536, help: 'guest memory in MiB'},
    timeoutSec: {type: 'integer', min: 1, max: 86_400, help: 'seconds to wait for the root to come up'},
    cmdline: {type: 'string', help: 'extra kernel command-line parameters'},
    onfail: {type: 'enum', values: ['shell', 'reboot', 'poweroff'], help: 'what /init does after a failure'},
  },
  serve: {
    host: {type: 'string', help: 'address the HTTP server listens on'},
    port: {type: 'integer', min: 0, max: 65_535, help: 'HTTP port; 0 = any free port'},
  },
}

/** The repository / package root (holds patches/, initramfs/), wherever netboot is run from. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')

export const CONFIG_FILE_NAME = 'netboot.config.json'

export function defaultConfig(cwd = process.cwd()): NetbootConfig {
  return {
    output: resolve(cwd, 'out'),
    cacheDir: '',
    kernel: {version: '6.1', series: '', jobs: 0},
    image: {source: 'demo', sizeMiB: 0, compression: 'none', format: 'qcow2'},
    boot: {memoryMiB: 512, timeoutSec: 300, cmdline: '', onfail: 'shell'},
    serve: {host: '127.0.0.1', port: 0},
  }
}

function isLeaf(node: Leaf | Schema): node is Leaf {
  return typeof (node as Leaf).type === 'string' && typeof (node as Leaf).help === 'string'
}

/** Every dotted key of the schema with its leaf, in declaration order. */
export function schemaKeys(schema: Schema = SCHEMA, prefix = ''): Array<[string, Leaf]> {
  const out: Array<[string, Leaf]> = []
  for (const [name, node] of Object.entries(schema)) {
    const key = prefix + name
    if (isLeaf(node)) out.push([key, node])
    else out.push(...schemaKeys(node, key + '.'))
  }
  return out
}

/**
 * Edit distance counting a swap of two neighbouring letters as one edit (optimal string
 * alignment), so the commonest typo, "verison", is one edit from "version".
 */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({length: a.length + 1}, (_, i) => Array.from({length: b.length + 1}, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

function closest(key: string, candidates: string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Infinity
  for (const c of candidates) {
    const d = editDistance(key.toLowerCase(), c.toLowerCase())
    if (d < bestDistance) {
      best = c
      bestDistance = d
    }
  }
  // Only suggest when the typo is small relative to the key, else the hint is noise.
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined
}

function describe(value: unknown): string {
  return JSON.stringify(value) ?? String(value)
}

function badKey(key: string, problem: string): never {
  throw usageError(`config key "${key}" ${problem}`, [`see "Configuration" in README.md`])
}

function validateLeaf(key: string, leaf: Leaf, value: unknown, baseDir: string): unknown {
  switch (leaf.type) {
    case 'string':
      if (typeof value !== 'string') badKey(key, `must be a string, got ${describe(value)}`)
      return value
    case 'path':
      if (typeof value !== 'string' || value === '') badKey(key, `must be a non-empty path string, got ${describe(value)}`)
      return isAbsolute(value) ? value : resolve(baseDir, value)
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) badKey(key, `must be an integer, got ${describe(value)}`)
      if (value < leaf.min || value > leaf.max) badKey(key, `must be between ${leaf.min} and ${leaf.max}, got ${value}`)
      return value
    case 'enum':
      if (typeof value !== 'string' || !leaf.values.includes(value))
        badKey(key, `must be one of ${leaf.values.map((v) => `"${v}"`).join(', ')}, got ${describe(value)}`)
      return value
  }
}

/**
 * Validates parsed JSON against SCHEMA and merges it over `base`. Throws a usage error
 * (exit 2) whose one-line message names the first bad key.
 */
export function validateConfig(raw: unknown, baseDir: string, base: NetbootConfig = defaultConfig()): NetbootConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw usageError(`config must be a JSON object, got ${Array.isArray(raw) ? 'an array' : describe(raw)}`)
  const merged = structuredClone(base) as unknown as Record<string, unknown>
  const allKeys = schemaKeys().map(([k]) => k)

  const walk = (obj: Record<string, unknown>, schema: Schema, target: Record<string, unknown>, prefix: string): void => {
    for (const [name, value] of Object.entries(obj)) {
      const key = prefix + name
      const node = schema[name]
      if (node === undefined) {
        const candidates = allKeys.filter((k) => k.startsWith(prefix) || prefix === '')
        const hint = closest(key, candidates.length > 0 ? candidates : allKeys)
        badKey(key, hint ? `is unknown (did you mean "${hint}"?)` : 'is unknown')
      }
      if (isLeaf(node)) {
        target[name] = validateLeaf(key, node, value, baseDir)
      } else {
        if (typeof value !== 'object' || value === null || Array.isArray(value))
          badKey(key, `must be an object, got ${describe(value)}`)
        walk(value as Record<string, unknown>, node, target[name] as Record<string, unknown>, key + '.')
      }
    }
  }
  walk(raw as Record<string, unknown>, SCHEMA, merged, '')
  return merged as unknown as NetbootConfig
}

export interface LoadedConfig {
  config: NetbootConfig
  /** The file it came from, undefined when only defaults apply. */
  file?: string
}

/**
 * Loads `explicitPath` (must exist) or ./netboot.config.json (optional) and validates it.
 */
export function loadConfig(explicitPath?: string, cwd = process.cwd()): LoadedConfig {
  const file = explicitPath ? resolve(cwd, explicitPath) : resolve(cwd, CONFIG_FILE_NAME)
  if (!existsSync(file)) {
    if (explicitPath) throw usageError(`config file ${file} does not exist`)
    return {config: defaultConfig(cwd)}
  }
  let raw: unknown
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw usageError(`config file ${file} is not valid JSON: ${(err as Error).message}`)
  }
  return {config: validateConfig(raw, dirname(file), defaultConfig(cwd)), file}
}

/** Kernel sources Debian ships as linux-source-<v> packages, by the short name used on the CLI. */
export const DEBIAN_KERNELS: Record<string, string> = {
  '6.1': '/usr/src/linux-source-6.1.tar.xz',
  '6.12': '/usr/src/linux-source-6.12.tar.xz',
}

/** Default series directory for a kernel version such as "6.1". */
export function defaultSeriesDir(version: string): string {
  return resolve(PACKAGE_ROOT, 'patches', `linux-${version}`)
}
