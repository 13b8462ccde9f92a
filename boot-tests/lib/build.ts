// Builds PXE trees for the boot tests through the CLI's own pipeline (cli/src/lib/pipeline.ts),
// and runs netboot commands in-process. The kernel comes from NETBOOT_TEST_KERNEL_DIR when set
// (a prebuilt bzImage + include/), else from the pipeline's kernel stage, which reuses the
// cached build testKernel() and the other boot tests use.
import {copyFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {RunLog} from '../../cli/src/lib/log.js'
import {runPipeline, type PipelineOptions, type PipelineResult} from '../../cli/src/lib/pipeline.js'
import {testLogDir} from './kernel.js'
import {withVm, type BootedVm, type VmConfig} from './vm.js'

/** `netboot build` flags for the kernel under test: NETBOOT_TEST_KERNEL_DIR (prebuilt) or NETBOOT_TEST_KERNEL (version). */
export function kernelFlags(): string[] {
  const dir = process.env.NETBOOT_TEST_KERNEL_DIR
  if (dir) return ['--kernel-dir', dir]
  return process.env.NETBOOT_TEST_KERNEL ? ['--kernel', process.env.NETBOOT_TEST_KERNEL] : []
}

/** Runs the pipeline into `outDir` (its log in <outDir>/netboot.log) with the demo root by default. */
export async function buildTree(outDir: string, options: Partial<PipelineOptions> = {}): Promise<PipelineResult> {
  return runPipeline(
    {log: RunLog.inOutput(outDir), verbose: false},
    {
      outDir,
      kernel: process.env.NETBOOT_TEST_KERNEL ?? '6.1',
      kernelDir: process.env.NETBOOT_TEST_KERNEL_DIR,
      imageSource: 'demo',
      compression: 'zstd',
      ...options,
    },
  )
}

export {runCommand, type CommandRun} from '../../cli/test/helpers/run-command.js'

/** Keeps a console log under testLogDir() as <name>.console.log; returns its path. */
export async function keepConsole(name: string, from: {text?: string; file?: string}): Promise<string> {
  const to = join(await testLogDir(), `${name}.console.log`)
  if (from.file) await copyFile(from.file, to)
  else await writeFile(to, from.text ?? '')
  return to
}

/** withVm(), keeping the guest's console under testLogDir() as `<name>.console.log` however it ends. */
export async function withKeptConsole(name: string, cfg: VmConfig, fn: (vm: BootedVm) => Promise<void>): Promise<void> {
  let text = ''
  try {
    await withVm(cfg, async (vm) => {
      try {
        await fn(vm)
      } finally {
        text = vm.console
      }
    })
  } finally {
    await keepConsole(name, {text})
  }
}
