/**
 * A uAPI include directory with the series' linux/loop.h, for building loopfmt without a built
 * kernel: the host's linux/loop.h (Debian's linux-libc-dev, from 6.1) with the loop.h hunks of
 * patches/linux-6.1 applied. So the tests follow the real series, not a copy of it.
 */
import {execFileSync} from 'node:child_process'
import {copyFileSync, mkdirSync, readdirSync} from 'node:fs'
import {join, resolve} from 'node:path'

export const SERIES_DIR = resolve('patches/linux-6.1')
export const HOST_LOOP_H = '/usr/include/linux/loop.h'

export function seriesIncludeDir(root: string): string {
  const tree = join(root, 'tree')
  mkdirSync(join(tree, 'include/uapi/linux'), {recursive: true})
  copyFileSync(HOST_LOOP_H, join(tree, 'include/uapi/linux/loop.h'))
  const patches = readdirSync(SERIES_DIR).filter((f) => f.endsWith('.patch')).sort()
  for (const p of patches) {
    execFileSync('git', ['apply', '--include=include/uapi/linux/loop.h', join(SERIES_DIR, p)], {cwd: tree})
  }
  return join(tree, 'include/uapi')
}

/** An include directory with the unpatched header. */
export function stockIncludeDir(root: string): string {
  mkdirSync(join(root, 'stock/linux'), {recursive: true})
  copyFileSync(HOST_LOOP_H, join(root, 'stock/linux/loop.h'))
  return join(root, 'stock')
}
