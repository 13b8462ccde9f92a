// The patched kernel the boot tests run: built once per cache key through the CLI's own
// pipeline (so the tests exercise it), or taken from NETBOOT_TEST_KERNEL_DIR while developing
// the series (a directory with bzImage and include/ from `make headers_install`).
import {existsSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {buildKernel} from '../../cli/src/lib/kernel.js'
import {quietContext} from '../../cli/src/lib/log.js'

export interface TestKernel {
  bzImage: string
  /** uAPI include directory (holds linux/loop.h with the series' additions). */
  headers: string
  /** INSTALL_MOD_PATH of the build (lib/modules/<release>/) when its config has modules. */
  modules?: string
}

const built = new Map<string, Promise<TestKernel>>()

/**
 * The kernel of `version`; `variant` merges the series' config.<variant>: "debug" (KUnit,
 * KASAN, lockdep), "modular" (the qcow2 format as a module). NETBOOT_TEST_KERNEL_DIR (or
 * NETBOOT_TEST_DEBUG_KERNEL_DIR) points at a prebuilt kernel or debug kernel.
 */
export function testKernel(version = '6.1', variant?: string): Promise<TestKernel> {
  const dir = variant === 'debug' ? process.env.NETBOOT_TEST_DEBUG_KERNEL_DIR : variant ? undefined : process.env.NETBOOT_TEST_KERNEL_DIR
  if (dir) {
    const k = {bzImage: join(dir, 'bzImage'), headers: join(dir, 'include')}
    if (!existsSync(k.bzImage) || !existsSync(join(k.headers, 'linux', 'loop.h'))) {
      throw new Error(`${dir} lacks bzImage or include/linux/loop.h`)
    }
    return Promise.resolve(k)
  }
  const id = `${version}/${variant ?? ''}`
  let k = built.get(id)
  if (!k) {
    k = buildKernel(quietContext(), {kernel: version, variant}).then((r) => {
      if (!r.bzImage || !r.headers) throw new Error(`kernel ${id}: the build left no bzImage or headers`)
      return {bzImage: r.bzImage, headers: r.headers, modules: r.modules}
    })
    built.set(id, k)
  }
  return k
}

/** Where boot tests leave their serial console logs (uploaded by CI when a boot fails). */
export async function testLogDir(): Promise<string> {
  const dir = process.env.NETBOOT_TEST_LOGS ?? join(tmpdir(), 'netboot-test-logs')
  await mkdir(dir, {recursive: true})
  return dir
}
