import {execa} from 'execa'

import {NetbootError} from './errors.js'
import type {RunContext} from './log.js'

export interface RunOptions {
  cwd?: string
  env?: Record<string, string | undefined>
  /** Called with every output line (stdout and stderr), e.g. to count compiled objects. */
  onLine?: (line: string) => void
  /** Data written to the child's stdin. */
  input?: string
  /** Do not throw on a non-zero exit; the caller inspects `exitCode`. */
  allowFailure?: boolean
  /** How many trailing output lines a failure message quotes. */
  tailLines?: number
}

export interface RunResult {
  exitCode: number
  stdout: string
  stderr: string
  /** stdout and stderr interleaved as they arrived. */
  all: string
}

/** Shell-like rendering of a command line for logs and error messages. */
export function formatCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(' ')
}

/**
 * Runs a tool: its output goes to the run log, to stderr when verbose (stdout stays clean for
 * --json), and line by line to onLine. A non-zero exit becomes a NetbootError quoting the
 * command and the tail of its output, pointing at the log for the rest.
 */
export async function run(ctx: RunContext, cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const shown = formatCommand(cmd, args)
  ctx.log.write(`$ ${shown}${options.cwd ? `   (in ${options.cwd})` : ''}`)
  const child = execa(cmd, args, {
    cwd: options.cwd,
    env: options.env,
    input: options.input,
    all: true,
    reject: false,
    stripFinalNewline: true,
  })
  const tail: string[] = []
  const tailLines = options.tailLines ?? 15
  for await (const line of child.iterable({from: 'all'})) {
    ctx.log.write(`  ${line}`)
    if (ctx.verbose) process.stderr.write(line + '\n')
    options.onLine?.(line)
    tail.push(line)
    if (tail.length > tailLines) tail.shift()
  }
  const result = await child
  const exitCode = result.exitCode ?? (result.signal ? 128 : 1)
  if (result.failed && result.exitCode === undefined) {
    // Not started at all (ENOENT) or killed by a signal.
    const code = (result.cause as NodeJS.ErrnoException | undefined)?.code
    if (code === 'ENOENT') {
      throw new NetbootError(`${cmd} is not installed (needed for: ${shown})`, {suggestions: ['run `netboot doctor --install`']})
    }
    if (!options.allowFailure) throw new NetbootError(`\`${shown}\` failed: ${result.shortMessage}`)
  }
  ctx.log.write(`  (exit ${exitCode})`)
  if (exitCode !== 0 && !options.allowFailure) {
    const quoted = tail.length > 0 ? `:\n${tail.map((l) => `    ${l}`).join('\n')}` : ''
    throw new NetbootError(`\`${shown}\` failed with exit code ${exitCode}${quoted}`, {
      suggestions: ctx.log.path === '/dev/null' ? [] : [`full output in ${ctx.log.path}`],
    })
  }
  return {
    exitCode,
    stdout: String(result.stdout ?? ''),
    stderr: String(result.stderr ?? ''),
    all: String(result.all ?? ''),
  }
}
