/**
 * The one error class of netboot. Library code throws it with a message that quotes the bad
 * value and, where there is one, the command that fixes the problem; the command layer
 * (BaseCommand) turns it into a one-line message and the documented exit code.
 *
 * Exit codes: 0 ok, 1 failure (a tool, the network, the kernel build failed), 2 usage or bad
 * input (unknown flag, bad config key, a path that does not exist).
 */
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
