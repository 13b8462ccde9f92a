import {Flags} from '@oclif/core'
import {join, resolve} from 'node:path'

import {BaseCommand} from '../base.js'
import {formatBytes} from '../lib/cache.js'
import {NetbootError} from '../lib/errors.js'
import {buildInitramfs, type Compression, DEFAULT_BUSYBOX, SIZE_TARGET_BYTES} from '../lib/initramfs/index.js'
import {buildLoopfmt, findKernelHeaders} from '../lib/loopfmt.js'

export interface InitramfsCommandResult {
  path: string
  compression: Compression
  bytes: number
  cpioBytes: number
  sha256: string
  entries: number
  loopfmt: {path: string; cached: boolean}
}

export default class Initramfs extends BaseCommand<typeof Initramfs> {
  static override summary = 'Build the netboot initramfs: busybox, the loopfmt attach tool and the /init that fetches the root image.'
  static override description = `The archive is written by netboot's own newc cpio writer: sorted entries, uid/gid 0, mtimes from
SOURCE_DATE_EPOCH (else 0), so the same inputs give the same bytes. loopfmt is compiled (and cached) against the uAPI
headers of the patched kernel: by default those of the most recent kernel built with \`netboot kernel build\`.

/init reads netboot.url, netboot.sha256 or netboot.manifest, netboot.format, netboot.fstype, netboot.overlay,
netboot.retries, netboot.onfail, netboot.init and ip= from the kernel command line (see initramfs/init).`

  static override examples = [
    '<%= config.bin %> initramfs',
    '<%= config.bin %> initramfs --compression zstd --out out/http/initramfs.img',
    '<%= config.bin %> initramfs --kernel-headers ~/.cache/netboot/kernel/<key>/include',
    '<%= config.bin %> initramfs --loopfmt ./loopfmt',
  ]

  static override flags = {
    'kernel-headers': Flags.string({
      summary: 'uAPI include directory of the patched kernel to build loopfmt against (default: the latest built kernel in the cache).',
      exclusive: ['loopfmt'],
    }),
    loopfmt: Flags.string({summary: 'Use this static loopfmt binary instead of building one.', exclusive: ['kernel-headers']}),
    busybox: Flags.string({summary: `Static busybox binary (default ${DEFAULT_BUSYBOX}).`}),
    compression: Flags.string({summary: 'Compression of the archive.', options: ['gzip', 'zstd'], default: 'gzip'}),
    out: Flags.string({char: 'o', summary: 'Output file (default: <output>/initramfs.img).'}),
  }

  public async run(): Promise<InitramfsCommandResult> {
    const ctx = this.context()
    const out = resolve(this.flags.out ?? join(this.settings.output, 'initramfs.img'))
    let loopfmt: {path: string; cached: boolean}
    if (this.flags.loopfmt) {
      loopfmt = {path: resolve(this.flags.loopfmt), cached: false}
    } else {
      const includeDir = this.flags['kernel-headers'] ?? (await findKernelHeaders())
      if (!includeDir) {
        throw new NetbootError('no patched kernel headers to build loopfmt against', {
          exit: 2,
          suggestions: ['run `netboot kernel build` first', 'or pass --kernel-headers DIR or --loopfmt PATH'],
        })
      }
      const built = await buildLoopfmt(ctx, {includeDir})
      loopfmt = {path: built.path, cached: built.cached}
    }
    const r = await buildInitramfs(ctx, {
      loopfmt: loopfmt.path,
      busybox: this.flags.busybox,
      compression: this.flags.compression as Compression,
      out,
    })
    this.say(`${r.path}: ${r.entries} entries, ${formatBytes(r.bytes)} ${r.compression} (${formatBytes(r.cpioBytes)} uncompressed)`)
    this.say(`  sha256 ${r.sha256}`)
    if (r.overTarget) this.say(`  note: larger than the ${formatBytes(SIZE_TARGET_BYTES)} target`)
    const {overTarget: _over, ...result} = r
    return {...result, loopfmt}
  }
}
