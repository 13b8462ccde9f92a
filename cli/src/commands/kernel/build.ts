import {Flags} from '@oclif/core'

import {BaseCommand} from '../../base.js'
import {buildKernel, type KernelBuildResult} from '../../lib/kernel.js'

export default class KernelBuild extends BaseCommand<typeof KernelBuild> {
  static override summary = 'Build the patched kernel (bzImage + uAPI headers) into the cache.'
  static override description = `Prepares and patches the kernel as needed, then: make tinyconfig (x86_64), merge <series>/config with
merge_config.sh, make olddefconfig, check that every option of the fragment ended up as wanted (names the ones Kconfig
dropped), make bzImage with ccache, make headers_install. The result lands in $NETBOOT_CACHE/kernel/<key>/{bzImage,config,include/},
keyed by the source, every patch's content, the fragment, the compiler and the build options; a cached build is reused,
and when it is not, the output says why. There is no way to build without a series.`

  static override examples = [
    '<%= config.bin %> kernel build',
    '<%= config.bin %> kernel build --config-only',
    '<%= config.bin %> kernel build --variant debug',
    '<%= config.bin %> kernel build --kernel 6.1 --series patches/linux-6.1 --jobs 2 --json',
  ]

  static override flags = {
    kernel: Flags.string({char: 'k', summary: 'Kernel: 6.1, 6.12, a tarball or a source directory (default from config: 6.1).'}),
    series: Flags.string({char: 's', summary: 'Series directory (default: patches/linux-<version>).'}),
    jobs: Flags.integer({char: 'j', min: 0, summary: 'Parallel make jobs (default: number of CPUs).'}),
    'config-only': Flags.boolean({summary: 'Stop after olddefconfig and the option check; compile nothing.'}),
    variant: Flags.string({summary: 'Also merge <series>/config.<variant> (e.g. debug: KUnit, KASAN); own build directory and cache key.'}),
  }

  public async run(): Promise<KernelBuildResult> {
    const spec = this.flags.kernel ?? this.settings.kernel.version
    const ctx = this.context()
    const {result} = await this.steps<{result?: KernelBuildResult}>(
      [
        {
          title: `Building kernel ${spec}${this.flags['config-only'] ? ' (configuration only)' : ''}`,
          task: async (c, task) => {
            c.result = await buildKernel(
              {...ctx, progress: this.progressOf(task)},
              {
                kernel: spec,
                series: this.flags.series ?? (this.settings.kernel.series || undefined),
                jobs: this.flags.jobs ?? this.settings.kernel.jobs,
                configOnly: this.flags['config-only'],
                variant: this.flags.variant,
              },
            )
            task.title = c.result.reused
              ? `Kernel ${c.result.version} found in the cache`
              : this.flags['config-only']
                ? `Kernel ${c.result.version} configuration checked`
                : `Built kernel ${c.result.version}`
          },
        },
      ],
      {},
    )
    const r = result!
    if (r.reused) this.say(`reused: ${r.reason}`)
    else if (!this.flags['config-only']) this.say(`built because: ${r.reason}`)
    this.say(r.bzImage ?? `configuration ok: ${r.config}`)
    return r
  }
}
