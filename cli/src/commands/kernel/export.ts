import {Flags} from '@oclif/core'

import {BaseCommand} from '../../base.js'
import {exportSeries, preparedTreeFor, seriesDirFor, type ExportResult} from '../../lib/kernel.js'

export default class KernelExport extends BaseCommand<typeof KernelExport> {
  static override summary = 'Write the commits of the prepared tree back into the patch series.'
  static override description = `Runs git format-patch netboot-base..HEAD in the prepared tree and replaces <series>/*.patch and
<series>/series with the result (the config fragment is kept). Commit your edits in the tree first. The output is
stable: exporting the same commits twice gives identical files.`

  static override examples = ['<%= config.bin %> kernel export', '<%= config.bin %> kernel export --series /tmp/review']

  static override flags = {
    kernel: Flags.string({char: 'k', summary: 'Kernel: 6.1, 6.12, a tarball or a source directory (default from config: 6.1).'}),
    series: Flags.string({char: 's', summary: 'Series directory to write (default: patches/linux-<version>).'}),
  }

  public async run(): Promise<ExportResult> {
    const spec = this.flags.kernel ?? this.settings.kernel.version
    const {tree, version} = preparedTreeFor(spec)
    const result = await exportSeries(this.context(), tree, seriesDirFor(version, this.flags.series ?? (this.settings.kernel.series || undefined)))
    for (const name of result.patches) this.say(`wrote ${name}`)
    for (const name of result.removed) this.say(`removed ${name}`)
    this.say(`${result.series}/series: ${result.patches.length} patches`)
    return result
  }
}
