import {Flags} from '@oclif/core'
import {readFileSync} from 'node:fs'
import {resolve} from 'node:path'

import {BaseCommand} from '../base.js'
import {NetbootError} from '../lib/errors.js'
import {checkClusterSize, DEFAULT_CLUSTER_SIZE, DEFAULT_COMPRESSED_CLUSTER_SIZE, parseCompression, parseSize} from '../lib/image.js'
import type {Compression as InitramfsCompression} from '../lib/initramfs/index.js'
import {describeBuild, newPipelineState, pipelineResult, pipelineTasks, type PipelineResult} from '../lib/pipeline.js'
import {splitExtraCmdline} from '../lib/pxe.js'
import {bootTree, formatPhases, type BootResult} from '../lib/qemu.js'

export interface BuildCommandResult extends PipelineResult {
  /** With --boot: the PXE boot of the new tree. */
  boot?: BootResult
}

export default class Build extends BaseCommand<typeof Build> {
  static override summary = 'Build everything: kernel, attach tool, initramfs, root image and the PXE tree.'
  static override description = `Runs the pipeline as named stages over one output directory:
  kernel     build the patched kernel (or reuse the cached build; the output says why or why not)
  loopfmt    compile the attach tool against the kernel's uAPI headers (cached)
  initramfs  busybox + loopfmt + /init -> <out>/http/initramfs.img
  image      demo root, a directory, a tarball or a qcow2 image -> <out>/http/root.qcow2
  pxe        <out>/tftp/boot.ipxe, <out>/http/{vmlinuz,manifest.json}, <out>/pxe/{dnsmasq,dnsmasq-proxy,nginx}.conf
Everything the tools print goes to <out>/netboot.log. --json prints every artifact with its path, sha256 and size.
With --boot, the new tree is PXE-booted in QEMU like \`netboot boot --check\` and the command exits 0 only when the
guest reaches its root.`

  static override examples = [
    '<%= config.bin %> build',
    '<%= config.bin %> build --boot',
    '<%= config.bin %> build --compression deflate --cluster-size 128k --out out-deflate',
    '<%= config.bin %> build --image-source rootfs.tar.gz --http-url http://192.168.100.1',
    '<%= config.bin %> build --json',
  ]

  static override flags = {
    kernel: Flags.string({char: 'k', summary: 'Kernel: 6.1, 6.12, a tarball or a source directory (default: kernel.version, 6.1).'}),
    out: Flags.string({char: 'o', summary: 'Output directory (default: output from the config, ./out).'}),
    compression: Flags.string({
      summary: 'qcow2 cluster compression of the root image (default zstd, or image.compression from the config file).',
      options: ['none', 'deflate', 'zlib', 'zstd'],
    }),
    'cluster-size': Flags.string({summary: `qcow2 cluster size, a power of two from 512 to 2M (default ${DEFAULT_CLUSTER_SIZE / 1024}k, compressed ${DEFAULT_COMPRESSED_CLUSTER_SIZE / 1024}k).`}),
    'image-source': Flags.string({summary: '"demo", a root directory, a root tarball or an existing .qcow2 image (default: image.source, demo).'}),
    'initramfs-compression': Flags.string({summary: 'Initramfs compression (default: zstd when the kernel can unpack it, else gzip).', options: ['gzip', 'zstd']}),
    'http-url': Flags.string({summary: 'Base URL clients fetch <out>/http from, written into boot.ipxe (default http://10.0.2.2:8080, QEMU).'}),
    boot: Flags.boolean({summary: 'Afterwards PXE-boot the tree in QEMU and wait for the root (like `netboot boot --check`).'}),
    'kernel-dir': Flags.string({
      summary: 'Use a prebuilt kernel directory (bzImage, include/, .config) instead of building one.',
      hidden: true,
    }),
  }

  public async run(): Promise<BuildCommandResult> {
    const f = this.flags
    const outDir = resolve(f.out ?? this.settings.output)
    // The image is zstd-compressed unless the flag or the config file says otherwise: the smallest
    // download, and the kernel driver reads it (the config's own default, none, suits `netboot image`).
    const configured = this.configSetsCompression() ? this.settings.image.compression : 'zstd'
    const options = {
      outDir,
      kernel: f.kernel ?? this.settings.kernel.version,
      series: this.settings.kernel.series || undefined,
      jobs: this.settings.kernel.jobs,
      kernelDir: f['kernel-dir'],
      initramfsCompression: f['initramfs-compression'] as InitramfsCompression | undefined,
      imageSource: f['image-source'] ?? this.settings.image.source,
      imageFormat: this.settings.image.format,
      compression: parseCompression(f.compression ?? configured),
      clusterSize: f['cluster-size'] ? checkClusterSize(parseSize(f['cluster-size'])) : undefined,
      sizeMiB: this.settings.image.sizeMiB || undefined,
      httpBase: f['http-url'],
    }
    const ctx = this.context(outDir)
    const t0 = Date.now()
    const state = await this.steps(pipelineTasks(ctx, (task) => this.progressOf(task)), await newPipelineState(options))
    const result: BuildCommandResult = await pipelineResult(state, ctx, Date.now() - t0)
    this.say(describeBuild(result))
    if (!f.boot) return result

    this.say('')
    this.say('PXE-booting the tree in QEMU (netboot boot --check):')
    const json = this.jsonEnabled()
    result.boot = await bootTree({
      outDir,
      check: true,
      timeoutSec: this.settings.boot.timeoutSec,
      memoryMiB: this.settings.boot.memoryMiB,
      cmdlineExtra: splitExtraCmdline(this.settings.boot.cmdline),
      onConsole: json ? undefined : (chunk) => process.stdout.write(chunk),
    })
    const boot = result.boot
    ctx.log.write(`boot check: ${boot.ok ? `ok: ${boot.marker}` : `failed: ${boot.failure}`}`)
    this.say('')
    this.say(`console log: ${boot.consoleLog}`)
    this.say('boot phases (from QEMU start):')
    this.say(formatPhases(boot.phases))
    if (boot.ok) {
      this.say(`root is up: ${boot.marker}`)
      return result
    }
    if (json) {
      process.exitCode = 1
      return result
    }
    throw new NetbootError(`boot check failed: ${boot.failure}`, {
      suggestions: [`console: ${boot.consoleLog}`, `reproduce QEMU: ${boot.command}`],
    })
  }

  /** Whether netboot.config.json names image.compression (loadConfig already validated it). */
  private configSetsCompression(): boolean {
    if (!this.configFile) return false
    const raw = JSON.parse(readFileSync(this.configFile, 'utf8')) as {image?: {compression?: unknown}}
    return raw.image?.compression !== undefined
  }
}
