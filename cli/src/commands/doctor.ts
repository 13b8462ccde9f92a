import {Flags} from '@oclif/core'

import {BaseCommand} from '../base.js'
import {checkTools, missingPackages, type ToolStatus} from '../lib/doctor.js'
import {NetbootError} from '../lib/errors.js'
import {run} from '../lib/exec.js'

export interface DoctorResult {
  ok: boolean
  tools: ToolStatus[]
  installed: string[]
}

export default class Doctor extends BaseCommand<typeof Doctor> {
  static override summary = 'Check the host tools netboot needs (and install the missing ones).'
  static override description = `Prints every tool the pipeline uses with found/missing, version and the Debian package that provides it.
Exits 1 when a required tool is missing. With --install, runs apt-get update and installs the missing packages (as root).`

  static override examples = ['<%= config.bin %> doctor', '<%= config.bin %> doctor --json', 'sudo <%= config.bin %> doctor --install']

  static override flags = {
    install: Flags.boolean({summary: 'Install missing packages (required and optional) with apt-get.'}),
  }

  public async run(): Promise<DoctorResult> {
    let tools = await checkTools()
    const installed: string[] = []
    if (this.flags.install) {
      const pkgs = missingPackages(tools, true)
      if (pkgs.length > 0) {
        if (process.getuid?.() !== 0) {
          throw new NetbootError(`installing ${pkgs.join(' ')} needs root`, {suggestions: [`sudo apt-get install ${pkgs.join(' ')}`]})
        }
        const ctx = this.context()
        await this.steps(
          [
            {title: 'apt-get update', task: async () => void (await run(ctx, 'apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update']))},
            {
              title: `apt-get install ${pkgs.join(' ')}`,
              task: async () =>
                void (await run(ctx, 'apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'install', '-y', '--no-install-recommends', ...pkgs], {
                  env: {...process.env, DEBIAN_FRONTEND: 'noninteractive'},
                })),
            },
          ],
          {},
        )
        installed.push(...pkgs)
        tools = await checkTools()
      }
    }

    const ok = tools.every((t) => t.found || !t.required)
    if (!this.jsonEnabled()) this.printTable(tools)
    if (!ok) {
      const pkgs = missingPackages(tools, false)
      const err = new NetbootError(`missing required tools: ${tools.filter((t) => t.required && !t.found).map((t) => t.name).join(', ')}`, {
        suggestions: [`apt-get install ${pkgs.join(' ')}`, 'or run `netboot doctor --install`'],
      })
      if (this.jsonEnabled()) {
        // The table is the useful part of the answer even on failure.
        process.exitCode = 1
        return {ok, tools, installed}
      }
      throw err
    }
    this.say(installed.length > 0 ? `installed: ${installed.join(' ')}` : 'all required tools found')
    return {ok, tools, installed}
  }

  private printTable(tools: ToolStatus[]): void {
    const rows = tools.map((t) => [
      t.found ? 'ok' : t.required ? 'MISSING' : 'missing',
      t.name,
      t.version ?? (t.found ? '' : '-'),
      t.pkg,
      t.required ? 'required' : 'optional',
      t.problem ?? t.purpose,
    ])
    const header = ['status', 'tool', 'version', 'package', '', 'used for']
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
    const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()
    this.log(line(header))
    for (const r of rows) this.log(line(r))
  }
}
