import {Command, Errors, Flags, Interfaces} from '@oclif/core'

import {NetbootError} from './lib/errors.js'

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
  }

  /** Human output: a line on stdout, suppressed with --json. */
  protected say(message = ''): void {
    if (!this.jsonEnabled()) this.log(message)
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    if (err instanceof NetbootError) {
      if (this.jsonEnabled()) {
        process.exitCode = err.exit
        this.logJson({error: err.toJSON()})
        return
      }
      process.stderr.write(`netboot: ${err.message}\n`)
      for (const s of err.suggestions) process.stderr.write(`  hint: ${s}\n`)
      // ExitError is not printed again by oclif's handler; it only sets the exit code.
      throw new Errors.ExitError(err.exit)
    }
    return super.catch(err)
  }
}
