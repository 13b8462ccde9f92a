/**
 * The one error class of netboot. Library code throws it with a message that quotes the bad
 * value and, where there is one, the command that fixes the problem; the command layer
 * (BaseCommand) turns it into a one-line message and the documented exit code.
 *
 * Exit codes: 0 ok, 1 failure (a tool, the network, the kernel build failed), 2 usage or bad
 * input (unknown flag, bad config key, a path that does not exist).
 */
import {statSync} from 'node:fs'
import {dirname, sep} from 'node:path'

export type ExitCode = 1 | 2

export interface NetbootErrorOptions {
  exit?: ExitCode
  suggestions?: string[]
  cause?: unknown
}

export class NetbootError extends Error {
  readonly exit: ExitCode
  readonly suggestions: string[]

  constructor(message: string, options: NetbootErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : {cause: options.cause})
    this.name = 'NetbootError'
    this.exit = options.exit ?? 1
    this.suggestions = options.suggestions ?? []
  }

  toJSON(): {message: string; exit: ExitCode; suggestions: string[]} {
    return {message: this.message, exit: this.exit, suggestions: this.suggestions}
  }
}

/** Bad input from the user: exit code 2. */
export function usageError(message: string, suggestions: string[] = []): NetbootError {
  return new NetbootError(message, {exit: 2, suggestions})
}

export function isNetbootError(err: unknown): err is NetbootError {
  return err instanceof NetbootError
}

/** The message of anything thrown, for wrapping foreign errors. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** `path` itself when it is a directory (an output directory), else the directory holding it. */
function directoryOf(path: string): string {
  try {
    if (statSync(path).isDirectory()) return path
  } catch {
    // Not there (yet): the file that was being written.
  }
  return dirname(path)
}

const WRITE_ERRORS: Record<string, string> = {
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTDIR: 'a parent is not a directory',
}

/**
 * A file-system error from Node (EROFS, EACCES, ENOSPC...) as a one-line NetbootError saying
 * what to do; undefined for anything else. `output` names where the command was writing, for
 * errors that carry no path (a write(2) that hits a full disk).
 */
export function fileSystemError(err: unknown, output?: string): NetbootError | undefined {
  const e = err as NodeJS.ErrnoException & {dest?: string}
  if (!(err instanceof Error) || typeof e.code !== 'string') return undefined
  // The output names the artifact better than a temporary sibling of it ("x.tmp-123") does.
  const raw = e.dest ?? e.path
  const path = output !== undefined && (raw === undefined || raw.startsWith(dirname(output) + sep)) ? output : raw
  const where = path === undefined ? '' : ` ${path}`
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
    return new NetbootError(`no space left on device writing${where || ' the output'} (${e.code})`, {
      cause: err,
      suggestions: [`free some space${path === undefined ? '' : ` in ${directoryOf(path)}`}, or write elsewhere with --out (or "output" in netboot.config.json)`],
    })
  }
  const reason = WRITE_ERRORS[e.code]
  if (reason === undefined) return undefined
  return new NetbootError(`cannot write${where}: ${reason} (${e.code})`, {
    cause: err,
    suggestions: ['choose a writable location with --out (or "output" in netboot.config.json)'],
  })
}
