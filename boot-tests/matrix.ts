// The boot matrix, one definition for the boot tests; .github/workflows/boot-matrix.yml runs
// one job per kernel of KERNELS with NETBOOT_TEST_KERNEL set (keep the two lists equal: the
// series test fails when a patches/linux-* series is missing from KERNELS).
export const KERNELS = ['6.1', '6.12'] as const
export type KernelVersion = (typeof KERNELS)[number]

/** The kernels this run tests: all, or the one NETBOOT_TEST_KERNEL names. */
export function testedKernels(env: NodeJS.ProcessEnv = process.env): string[] {
  const only = env.NETBOOT_TEST_KERNEL
  if (!only) return [...KERNELS]
  if (!(KERNELS as readonly string[]).includes(only)) throw new Error(`NETBOOT_TEST_KERNEL=${only} is not one of ${KERNELS.join(', ')}`)
  return [only]
}
