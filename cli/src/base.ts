import {Command, Errors, Flags, Interfaces} from '@oclif/core'
import {Listr, ListrLogger, type ListrTask} from 'listr2'
import {resolve} from 'node:path'

import {cacheRoot} from './lib/cache.js'
import {loadConfig, type NetbootConfig} from './lib/config.js'
import {fileSystemError, NetbootError} from './lib/errors.js'
import {RunLog, type RunContext} from './lib/log.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>
export type BaseArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>

/**
 * Every netboot command extends this: it adds --json (enableJsonFlag), --verbose, --config and
 * --cache-dir, parses flags once in init(), and turns a NetbootError into a one-line message on
 * stderr (or an {"error": ...} object with --json) plus the error's exit code.
 * Subclasses print human output only when !this.jsonEnabled() and return a typed result.
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true

  static override baseFlags = {
    verbose: Flags.boolean({
      char: 'v',
      summary: 'Stream the output of the underlying tools (make, git, qemu...) to the terminal.',
      helpGroup: 'GLOBAL',
    }),
    config: Flags.string({
      summary: 'Path to netboot.config.json (default: ./netboot.config.json when it exists).',
      helpGroup: 'GLOBAL',
    }),
    'cache-dir': Flags.string({
      summary: 'Cache directory (default: $NETBOOT_CACHE or ~/.cache/netboot).',
      helpGroup: 'GLOBAL',
    }),
  }

  protected flags!: BaseFlags<T>
  protected args!: BaseArgs<T>
  /** netboot.config.json merged over the defaults (flags are applied by each command). */
  protected settings!: NetbootConfig
  protected configFile?: string
  private runLog?: RunLog

  public override async init(): Promise<void> {
    await super.init()
    const {args, flags} = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (this.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    })
    this.flags = flags as BaseFlags<T>
    this.args = args as BaseArgs<T>
    const loaded = loadConfig(this.flags.config)
    this.settings = loaded.config
    this.configFile = loaded.file
    // One place decides the cache root; libraries and child processes read NETBOOT_CACHE.
    const cacheDir = this.flags['cache-dir'] ?? (this.settings.cacheDir || undefined)
    if (cacheDir) process.env.NETBOOT_CACHE = resolve(cacheDir)
    process.env.NETBOOT_CACHE = cacheRoot()
  }

  /**
   * The context handed to library calls: the run log in `outputDir` (default: the configured
   * output) and --verbose. The log gets a header naming the command line on first use.
   */
  protected context(outputDir: string = this.settings.output): RunContext {
    if (!this.runLog || this.runLog.path !== RunLog.inOutput(outputDir).path) {
      this.runLog = RunLog.inOutput(outputDir)
      this.runLog.write(`=== netboot ${(this.id ?? '').replaceAll(':', ' ')} ${this.argv.join(' ')}`)
    }
    return {log: this.runLog, verbose: this.flags.verbose}
  }

  /**
   * A progress callback for a listr2 task: on a terminal it replaces the line under the task;
   * in plain output (CI logs) it prints at most one line every 10 s so logs stay readable.
   */
  protected progressOf(task: {output: string | undefined}): (text: string) => void {
    const plain = this.jsonEnabled() || this.flags.verbose || !process.stdout.isTTY
    let last = 0
    return (text: string) => {
      const now = Date.now()
      if (plain && now - last < 10_000) return
      last = now
      task.output = text
    }
  }

  /**
   * Runs long steps with listr2 progress: an animated list on a terminal, plain lines when
   * output is not a terminal or --verbose streams tool output, nothing with --json.
   */
  protected async steps<C extends object>(tasks: ListrTask<C>[], ctx: C): Promise<C> {
    const json = this.jsonEnabled()
    const plain = this.flags.verbose || !process.stdout.isTTY
    const listr = new Listr<C, 'default', 'simple'>(tasks, {
      ctx,
      renderer: 'default',
      fallbackRenderer: 'simple',
      fallbackRendererCondition: () => plain,
      silentRendererCondition: () => json,
      exitOnError: true,
      collectErrors: false,
      // listr2's own Ctrl-C handler exits at once with 127 ("command not found"), before the
      // interrupted step can remove what it was writing (lib/interrupt.ts) and exit with 130.
      registerSignalListeners: false,
      // BaseCommand.catch prints the error once; the task line only marks which step failed.
      rendererOptions: {collapseErrors: false, showErrorMessage: false},
      // The plain renderer writes a failed step ("✖ <title> [FAILED: <message>]") to stderr, which
      // would say the error twice there: keep its lines on stdout with the rest of the progress.
      fallbackRendererOptions: {logger: new ListrLogger({useIcons: true, toStderr: []})},
    })
    return listr.run()
  }

  /** Human output: a line on stdout, suppressed with --json. */
  protected say(message = ''): void {
    if (!this.jsonEnabled()) this.log(message)
  }

  protected override async catch(thrown: Error & {exitCode?: number}): Promise<unknown> {
    // A full disk or a read-only output directory is the user's to fix, not a crash: one line.
    const out = (this.flags as {out?: string} | undefined)?.out ?? this.settings?.output
    const err = fileSystemError(thrown, out === undefined ? undefined : resolve(out)) ?? thrown
    if (err instanceof NetbootError) {
      if (this.jsonEnabled()) {
        process.exitCode = err.exit
        this.logJson({error: err.toJSON()})
        return
      }
      this.runLog?.write(`error: ${err.message}`)
      process.stderr.write(`netboot: ${err.message}\n`)
      for (const s of err.suggestions) process.stderr.write(`  hint: ${s}\n`)
      // ExitError is not printed again by oclif's handler; it only sets the exit code.
      throw new Errors.ExitError(err.exit)
    }
    return super.catch(err)
  }
}
