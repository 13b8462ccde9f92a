import {Flags} from '@oclif/core'

import {BaseCommand} from '../../base.js'
import {kernelBuildKey} from '../../lib/kernel.js'

export default class KernelKey extends BaseCommand<typeof KernelKey> {
  static override summary = 'Print the cache key of a kernel build without building it.'
  static override description = `The key \`netboot kernel build\` files its result under: a hash of the kernel source's identity, every
patch's content, the config fragment (and variant), the compiler version and the build options. CI caches
(.github/workflows) key on it, so a restored cache holds exactly the build netboot would reuse.`

  static override examples = [
    '<%= config.bin %> kernel key --kernel 6.12',
    '<%= config.bin %> kernel key --kernel 6.1 --variant debug --json',
  ]

  static override flags = {
    kernel: Flags.string({char: 'k', summary: 'Kernel: 6.1, 6.12, a tarball or a source directory (default from config: 6.1).'}),
    series: Flags.string({char: 's', summary: 'Series directory (default: patches/linux-<version>).'}),
    variant: Flags.string({summary: 'Config variant (e.g. debug), as for kernel build.'}),
  }

  public async run(): Promise<{key: string; version: string; manifest: Record<string, unknown>}> {
    const r = await kernelBuildKey(this.context(), {
      kernel: this.flags.kernel ?? this.settings.kernel.version,
      series: this.flags.series ?? (this.settings.kernel.series || undefined),
      variant: this.flags.variant,
    })
    this.say(r.key)
    return {key: r.key, version: r.seriesVersion, manifest: r.manifest}
  }
}
