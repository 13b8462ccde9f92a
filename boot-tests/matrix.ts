// The boot matrix, one definition for `npm test`, `npm run test:matrix` and the GitHub
// workflow (which reads it through `node boot-tests/matrix-cli.ts kernels`).
export const KERNELS = ['6.1', '6.12'] as const
export type KernelVersion = (typeof KERNELS)[number]

/** The kernels this run tests: all, or the one NETBOOT_TEST_KERNEL names. */
export function testedKernels(env: NodeJS.ProcessEnv = process.env): string[] {
  const only = env.NETBOOT_TEST_KERNEL
  if (!only) return [...KERNELS]
  if (!(KERNELS as readonly string[]).includes(only)) throw new Error(`NETBOOT_TEST_KERNEL=${only} is not one of ${KERNELS.join(', ')}`)
  return [only]
}
