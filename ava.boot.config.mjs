// Boot tests (root + QEMU, minutes per file): run one file at a time so at most one QEMU and one
// kernel build run at once on a 2-core machine; generous timeout for TCG boots and a cold kernel build.
export default {
  extensions: {ts: 'module'},
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  files: ['boot-tests/**/*.test.ts'],
  concurrency: 1,
  serial: true,
  timeout: '40m',
}
