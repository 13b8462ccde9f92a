// The benchmark's images, all of one tree: the ext4 file system that `netboot image` makes
// (buildImage, raw), converted by qemu-img into each qcow2 layout under test, so every image
// holds the same bytes; plus a squashfs-zstd of the tree for the size comparison only.
import {execa} from 'execa'
import {stat} from 'node:fs/promises'
import {join} from 'node:path'
import {buildImage} from '../cli/src/lib/image.js'
import {quietContext} from '../cli/src/lib/log.js'

export interface ImageVariant {
  /** Name used in the guest, the results and the chart. */
  name: string
  format: 'raw' | 'qcow2'
  /** qemu-img -o options (qcow2 only). */
  options?: string[]
  compressed?: boolean
  description: string
}

/** The images the guest reads, baseline first. */
export const VARIANTS: ImageVariant[] = [
  {name: 'raw', format: 'raw', description: 'raw ext4 image, raw loop format (baseline)'},
  {name: 'qcow2-64k', format: 'qcow2', options: ['cluster_size=65536'], description: 'qcow2, 64 KiB clusters, uncompressed'},
  {name: 'qcow2-2m', format: 'qcow2', options: ['cluster_size=2097152'], description: 'qcow2, 2 MiB clusters, uncompressed'},
  {name: 'qcow2-deflate', format: 'qcow2', options: ['cluster_size=65536', 'compression_type=zlib'], compressed: true, description: 'qcow2, 64 KiB clusters, deflate'},
  {name: 'qcow2-zstd', format: 'qcow2', options: ['cluster_size=65536', 'compression_type=zstd'], compressed: true, description: 'qcow2, 64 KiB clusters, zstd'},
  {name: 'qcow2-zstd-32k', format: 'qcow2', options: ['cluster_size=32768', 'compression_type=zstd'], compressed: true, description: 'qcow2, 32 KiB clusters, zstd'},
  {name: 'qcow2-zstd-16k', format: 'qcow2', options: ['cluster_size=16384', 'compression_type=zstd'], compressed: true, description: 'qcow2, 16 KiB clusters, zstd'},
  {name: 'qcow2-extl2', format: 'qcow2', options: ['cluster_size=131072', 'extended_l2=on'], description: 'qcow2, 128 KiB clusters with extended L2 (4 KiB subclusters)'},
]

export interface BuiltImage extends ImageVariant {
  file: string
  bytes: number
}

export interface ImageSet {
  images: BuiltImage[]
  virtualBytes: number
  squashfsZstdBytes?: number
}

/** Builds every variant of `tree` into `dir`. */
export async function buildImages(tree: string, dir: string, sizeMiB: number): Promise<ImageSet> {
  const raw = join(dir, 'raw.img')
  const built = await buildImage(quietContext(), {source: tree, out: raw, format: 'raw', sizeMiB, sourceDateEpoch: 0})
  const images: BuiltImage[] = []
  for (const v of VARIANTS) {
    let file = raw
    if (v.format === 'qcow2') {
      file = join(dir, `${v.name}.qcow2`)
      const args = ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', ['compat=1.1', ...(v.options ?? [])].join(',')]
      if (v.compressed) args.push('-c')
      await execa('qemu-img', [...args, raw, file])
    }
    images.push({...v, file, bytes: (await stat(file)).size})
  }
  let squashfsZstdBytes: number | undefined
  try {
    const sq = join(dir, 'tree.squashfs')
    await execa('mksquashfs', [tree, sq, '-comp', 'zstd', '-noappend', '-quiet', '-all-root', '-mkfs-time', '0', '-all-time', '0'])
    squashfsZstdBytes = (await stat(sq)).size
  } catch (error) {
    // only a size in the report: say it is missing rather than fail the run
    console.error(`bench: no squashfs size (apt-get install squashfs-tools): ${(error as Error).message.split('\n')[0]}`)
  }
  return {images, virtualBytes: built.virtualSize, squashfsZstdBytes}
}
