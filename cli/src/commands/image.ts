import {Flags} from '@oclif/core'
import {join, resolve} from 'node:path'

import {BaseCommand} from '../base.js'
import {
  buildImage,
  checkClusterSize,
  DEFAULT_CLUSTER_SIZE,
  DEFAULT_COMPRESSED_CLUSTER_SIZE,
  defaultClusterSize,
  parseCompression,
  parseSize,
  shortPath,
  type ImageFormat,
  type ImageResult,
} from '../lib/image.js'

/** What --json prints: the image without its parsed header. */
export type ImageCommandResult = Omit<ImageResult, 'header'>

export default class Image extends BaseCommand<typeof Image> {
  static override summary = 'Build the root image: demo root, a directory or a tarball -> ext4 -> qcow2 (or check an existing qcow2).'
  static override description = `The root file system is made with mkfs.ext4 -d (no loop mount, no root needed), sized to the content plus 30 %
(at least 8 MiB), then converted with qemu-img to qcow2 with the chosen cluster size and compression. The result is
reproducible: the same input and SOURCE_DATE_EPOCH give the same bytes.

--source demo (the default) is a busybox-static root whose /sbin/init prints the NETBOOT-ROOT-OK marker line.
--source X.qcow2 checks an existing image's header the way the kernel's qcow2 loop driver does and refuses (exit 1,
with the reason) an image the kernel would refuse: encrypted, backing file, external data file, corrupt bit, unknown
incompatible features, malformed header.`

  static override examples = [
    '<%= config.bin %> image',
    '<%= config.bin %> image --compression zstd --cluster-size 128k',
    '<%= config.bin %> image --source ./rootfs --out out/http/root.qcow2',
    '<%= config.bin %> image --source rootfs.tar.gz --format raw --out root.img',
    '<%= config.bin %> image --source existing.qcow2',
  ]

  static override flags = {
    source: Flags.string({summary: '"demo", a root directory, a root tarball (.tar[.gz|.xz|.zst]) or a qcow2 image (default: image.source from the config).'}),
    compression: Flags.string({summary: 'qcow2 cluster compression (default: image.compression from the config).', options: ['none', 'deflate', 'zlib', 'zstd']}),
    'cluster-size': Flags.string({summary: `qcow2 cluster size, a power of two from 512 to 2M (default ${DEFAULT_CLUSTER_SIZE / 1024}k, compressed ${DEFAULT_COMPRESSED_CLUSTER_SIZE / 1024}k).`}),
    format: Flags.string({summary: 'Output format: qcow2, or raw (the bare ext4 image).', options: ['qcow2', 'raw']}),
    size: Flags.integer({summary: 'ext4 size in MiB (default: content + 30 %, at least 8).', min: 8}),
    out: Flags.string({char: 'o', summary: 'Output file (default: <output>/root.qcow2, or root.img with --format raw).'}),
  }

  public async run(): Promise<ImageCommandResult> {
    const format = (this.flags.format ?? this.settings.image.format) as ImageFormat
    const compression = parseCompression(this.flags.compression ?? this.settings.image.compression)
    const clusterSize = checkClusterSize(this.flags['cluster-size'] ? parseSize(this.flags['cluster-size']) : defaultClusterSize(compression))
    const out = resolve(this.flags.out ?? join(this.settings.output, format === 'raw' ? 'root.img' : 'root.qcow2'))
    const source = this.flags.source ?? this.settings.image.source
    const ctx = this.context()
    const r = await buildImage(ctx, {source, out, format, compression, clusterSize, sizeMiB: this.flags.size})
    this.say(`${shortPath(r.path)}: ${r.description}`)
    this.say(`  ${r.size} bytes, sha256 ${r.sha256}`)
    const {header: _header, ...result} = r
    return result
  }
}
