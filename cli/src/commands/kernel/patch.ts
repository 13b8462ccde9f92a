import {Flags} from '@oclif/core'

import {BaseCommand} from '../../base.js'
import {applySeries, prepareKernel, readSeries, seriesDirFor, type PatchResult} from '../../lib/kernel.js'

export default class KernelPatch extends BaseCommand<typeof KernelPatch> {
  static override summary = 'Apply the patch series to the prepared kernel tree (all or nothing).'
  static override description = `Applies every patch listed in <series>/series with git am on top of netboot-base (preparing the kernel first if
needed). An already-applied series is detected by patch content (git patch-id) and left alone. When the tree holds other
commits (an older series, local work), HEAD is saved as tag netboot-backup-<time> before the tree is reset and the series
applied. A patch that does not apply is named with the failing file and line, and the tree is left as it was.
Uncommitted changes in the tree are an error, never discarded.`

  static override examples = ['<%= config.bin %> kernel patch', '<%= config.bin %> kernel patch --series ./my-series --kernel 6.1']

  static override flags = {
    kernel: Flags.string({char: 'k', summary: 'Kernel: 6.1, 6.12, a tarball or a source directory (default from config: 6.1).'}),
    series: Flags.string({char: 's', summary: 'Series directory (default: patches/linux-<version>).'}),
  }

  public async run(): Promise<PatchResult> {
    const spec = this.flags.kernel ?? this.settings.kernel.version
    const ctx = this.context()
    const {result} = await this.steps<{result?: PatchResult}>(
      [
        {
          title: `Preparing kernel ${spec}`,
          task: async (c, task) => {
            const prepared = await prepareKernel({...ctx, progress: this.progressOf(task)}, spec)
            const series = readSeries(seriesDirFor(prepared.version, this.flags.series ?? (this.settings.kernel.series || undefined)), prepared.version.series)
            task.title = `Applying ${series.patches.length} patches from ${series.dir}`
            c.result = await applySeries({...ctx, progress: this.progressOf(task)}, prepared.tree, series)
            task.title =
              c.result.outcome === 'already-applied' ? `Series ${series.dir} already applied` : `Applied ${c.result.applied.length} patches from ${series.dir}`
          },
        },
      ],
      {},
    )
    const r = result!
    if (r.backupTag) this.say(`the tree held commits not in the series; they are kept at tag ${r.backupTag}`)
    for (const name of r.applied) this.say(`applied ${name}`)
    this.say(r.tree)
    return r
  }
}
