// The boot matrix, one definition: the boot tests and `npm run test:matrix` read it, and
// .github/workflows/boot-matrix.yml gets its jobs from it (boot-tests/matrix-json.ts), one per
// kernel of KERNELS with NETBOOT_TEST_KERNEL set. The series test fails when a patches/linux-*
// series is missing from KERNELS.
export const KERNELS = ['6.1', '6.12'] as const
export type KernelVersion = (typeof KERNELS)[number]

/** The kernels this run tests: all, or the one NETBOOT_TEST_KERNEL names. */
export function testedKernels(env: NodeJS.ProcessEnv = process.env): string[] {
  const only = env.NETBOOT_TEST_KERNEL
  if (!only) return [...KERNELS]
  if (!(KERNELS as readonly string[]).includes(only)) throw new Error(`NETBOOT_TEST_KERNEL=${only} is not one of ${KERNELS.join(', ')}`)
  return [only]
}

/** Root image variants: how the image of a cell is made (netboot build options). */
export interface RootVariant {
  name: string
  format: 'qcow2' | 'raw'
  compression: 'none' | 'deflate' | 'zstd'
  clusterSize?: number
  /** Converted with qemu-img to extended L2 entries after the build. */
  extendedL2?: boolean
}

export const ROOTS: RootVariant[] = [
  {name: 'raw', format: 'raw', compression: 'none'},
  {name: 'qcow2-64k', format: 'qcow2', compression: 'none', clusterSize: 65536},
  {name: 'qcow2-2m', format: 'qcow2', compression: 'none', clusterSize: 2097152},
  {name: 'qcow2-deflate', format: 'qcow2', compression: 'deflate'},
  {name: 'qcow2-zstd', format: 'qcow2', compression: 'zstd'},
  {name: 'qcow2-extl2', format: 'qcow2', compression: 'none', clusterSize: 65536, extendedL2: true},
]

export const NICS = ['virtio', 'e1000'] as const

/** Firmware of the client: BIOS with every NIC, UEFI (OVMF + iPXE EFI) with virtio. */
export const FIRMWARES = ['bios', 'uefi'] as const

/** Failure cases: the tests of these files, run per kernel. */
export const FAILURE_FILES = ['boot-tests/netboot-failures.test.ts', 'boot-tests/netboot-network.test.ts']
