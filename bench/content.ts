// The benchmark's root tree: four equal parts of the kinds of data a root file system holds,
// each compressing differently: generated text (compresses well), ELF binaries and libraries
// from this machine (compress moderately), zero-filled files (compress to nothing; qcow2 can
// store them as zero clusters) and pseudo-random data (does not compress). Text and random
// data come from fixed seeds; the binaries are the first files, in name order, of fixed host
// directories, so the tree is the same on machines with the same Debian packages (its digest
// is in the results to check that).
import {createCipheriv, createHash} from 'node:crypto'
import {readdir, readFile, stat, mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {prng as rng} from '../cli/test/helpers/prng.js'

const MiB = 1024 * 1024

export interface TreeInfo {
  dir: string
  bytes: number
  files: number
  /** sha256 over the sorted (path, sha256 of content) list. */
  digest: string
  parts: Record<'text' | 'binaries' | 'zeros' | 'random', number>
}

/** Deterministic pseudo-random bytes: AES-128-CTR of zeros under a key made from `seed`. */
function randomBytes(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest()
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32))
  return cipher.update(Buffer.alloc(length))
}


const WORDS = (
  'the of and to in is that for it as with was on be by this are from at or an not have which ' +
  'kernel device block driver cluster image table offset read write cache request queue buffer ' +
  'network boot client server root file system mount overlay memory page size error return value ' +
  'config option module init script service daemon log message user group permission path link ' +
  'socket address packet interface route timeout retry checksum manifest download verify attach'
).split(' ')

/** Log-like and prose-like text: a skewed word distribution, numbers, punctuation, short lines. */
function textFile(random: () => number, bytes: number): Buffer {
  const parts: string[] = []
  let size = 0
  let line = 0
  while (size < bytes) {
    const words: string[] = []
    const n = 4 + Math.floor(random() * 12)
    for (let i = 0; i < n; i++) {
      // squaring the uniform variate favours the first words, as natural text favours a few
      const w = WORDS[Math.floor(random() * random() * WORDS.length)]
      words.push(random() < 0.08 ? `${w}=${Math.floor(random() * 100000)}` : w)
    }
    const l = `${String(line++).padStart(6, '0')} ${words.join(' ')}${random() < 0.3 ? '.' : ''}\n`
    parts.push(l)
    size += l.length
  }
  return Buffer.from(parts.join('')).subarray(0, bytes)
}

/** File sizes from 4 KiB to 1 MiB, log-uniform, as in a root file system. */
function fileSizes(random: () => number, total: number): number[] {
  const sizes: number[] = []
  let left = total
  while (left > 0) {
    const s = Math.min(left, Math.round(4096 * Math.pow(256, random())))
    sizes.push(s)
    left -= s
  }
  return sizes
}

const BINARY_DIRS = ['/usr/bin', '/usr/lib/x86_64-linux-gnu', '/usr/libexec', '/usr/lib/gcc/x86_64-linux-gnu']

async function* hostBinaries(): AsyncGenerator<{path: string; data: Buffer}> {
  for (const dir of BINARY_DIRS) {
    let names: string[]
    try {
      names = (await readdir(dir)).sort()
    } catch {
      continue
    }
    for (const name of names) {
      const path = join(dir, name)
      const st = await stat(path).catch(() => undefined)
      if (!st?.isFile() || st.size < 4096) continue
      const data = await readFile(path)
      if (data.subarray(0, 4).toString('latin1') === '\x7fELF') yield {path, data}
    }
  }
}

/** Writes the tree of about `bytes` bytes (four equal parts) into `dir`. */
export async function makeTree(dir: string, bytes: number): Promise<TreeInfo> {
  const part = Math.floor(bytes / 4 / 4096) * 4096
  const listing: Array<[string, string]> = []
  const put = async (rel: string, data: Buffer) => {
    await mkdir(join(dir, rel, '..'), {recursive: true})
    await writeFile(join(dir, rel), data)
    listing.push([rel, createHash('sha256').update(data).digest('hex')])
  }
  const parts = {text: 0, binaries: 0, zeros: 0, random: 0}

  const textRandom = rng(1)
  for (const [i, s] of fileSizes(textRandom, part).entries()) {
    await put(`usr/share/doc/text-${String(i).padStart(4, '0')}.txt`, textFile(textRandom, s))
    parts.text += s
  }

  for await (const b of hostBinaries()) {
    if (parts.binaries >= part) break
    const data = b.data.subarray(0, part - parts.binaries)
    await put(`usr/lib/bench${b.path}`, data)
    parts.binaries += data.length
  }
  if (parts.binaries < part) throw new Error(`only ${parts.binaries} bytes of ELF files under ${BINARY_DIRS.join(', ')}`)

  const zeroRandom = rng(2)
  for (const [i, s] of fileSizes(zeroRandom, part).entries()) {
    await put(`var/lib/zeros/z-${String(i).padStart(4, '0')}.bin`, Buffer.alloc(s))
    parts.zeros += s
  }

  const randRandom = rng(3)
  for (const [i, s] of fileSizes(randRandom, part).entries()) {
    await put(`var/lib/random/r-${String(i).padStart(4, '0')}.bin`, randomBytes(`bench-random-${i}`, s))
    parts.random += s
  }

  listing.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  const digest = createHash('sha256').update(listing.map(([p, h]) => `${h}  ${p}\n`).join('')).digest('hex')
  return {dir, bytes: parts.text + parts.binaries + parts.zeros + parts.random, files: listing.length, digest, parts}
}

export {MiB}
