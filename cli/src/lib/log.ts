import {appendFileSync, mkdirSync} from 'node:fs'
import {dirname, join} from 'node:path'

/**
 * The per-run log file, next to the output: <output>/netboot.log. Every command appends a
 * header line, the commands it runs and their full output, so a failure seen in the terminal as
 * one line can be read in full afterwards. The file is created on the first write, so commands
 * that do nothing worth logging leave no file behind.
 */
export class RunLog {
  readonly path: string
  private opened = false

  constructor(path: string) {
    this.path = path
  }

  static inOutput(outputDir: string): RunLog {
    return new RunLog(join(outputDir, 'netboot.log'))
  }

  /** Appends lines, each prefixed with an ISO timestamp. Logging never fails the run. */
  write(text: string): void {
    try {
      if (!this.opened) {
        mkdirSync(dirname(this.path), {recursive: true})
        this.opened = true
      }
      const stamp = new Date().toISOString()
      const lines = text.replace(/\n$/, '').split('\n')
      appendFileSync(this.path, lines.map((l) => `${stamp} ${l}\n`).join(''))
    } catch {
      // A read-only or full disk must not turn a good build into a failure; the terminal still has it.
    }
  }
}

/** A log that writes nowhere: for library calls from tests. */
export class NullLog extends RunLog {
  constructor() {
    super('/dev/null')
  }

  override write(): void {}
}

/**
 * What library functions get from the command layer: where to log, whether to stream tool
 * output, and a way to report progress of the current step (listr2 task output, or nothing).
 */
export interface RunContext {
  log: RunLog
  verbose: boolean
  /** Short status for the current step ("1234/2000 objects"), shown under the progress line. */
  progress?: (text: string) => void
}

export function quietContext(): RunContext {
  return {log: new NullLog(), verbose: false}
}
