// Runs an oclif command class in this process and captures what a user would see: stdout,
// stderr and the exit code. Shared by the unit tests and the boot tests.
import {Errors} from '@oclif/core'

import {PACKAGE_ROOT} from '../../src/lib/config.js'

export interface CommandRun<T> {
  result: T
  stdout: string
  stderr: string
  exit: number
}

/**
 * Runs an oclif command class in this process (the code under test, not a stale cli/dist),
 * capturing what it writes and the exit code it sets or throws.
 */
export async function runCommand<T>(cmd: {run(argv: string[], root: string): Promise<unknown>}, argv: string[]): Promise<CommandRun<T>> {
  const out: string[] = []
  const err: string[] = []
  const origOut = process.stdout.write.bind(process.stdout)
  const origErr = process.stderr.write.bind(process.stderr)
  process.stdout.write = ((chunk: string | Uint8Array) => (out.push(String(chunk)), true)) as typeof process.stdout.write
  process.stderr.write = ((chunk: string | Uint8Array) => (err.push(String(chunk)), true)) as typeof process.stderr.write
  const savedExit = process.exitCode
  process.exitCode = undefined
  let exit = 0
  let result: unknown
  try {
    result = await cmd.run(argv, PACKAGE_ROOT)
    exit = Number(process.exitCode ?? 0)
  } catch (e) {
    if (e instanceof Errors.ExitError) exit = e.oclif.exit ?? 1
    else throw e
  } finally {
    process.stdout.write = origOut
    process.stderr.write = origErr
    process.exitCode = savedExit
  }
  return {result: result as T, stdout: out.join(''), stderr: err.join(''), exit}
}
