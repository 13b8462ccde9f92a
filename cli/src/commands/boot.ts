import {Flags} from '@oclif/core'
import {resolve} from 'node:path'

import {BaseCommand} from '../base.js'
import {NetbootError} from '../lib/errors.js'
import {splitExtraCmdline} from '../lib/pxe.js'
import {bootTree, formatPhases, type Accel, type BootResult, type Firmware, type Nic} from '../lib/qemu.js'

export default class Boot extends BaseCommand<typeof Boot> {
  static override summary = 'PXE-boot the PXE tree in QEMU (user networking + the netboot HTTP server).'
  static override description = `Serves <out>/http on a free port of 127.0.0.1 (the guest reaches it as 10.0.2.2), writes an iPXE script for that
port, and starts qemu-system-x86_64 with -accel tcg (KVM is opt-in: --accel kvm) booting from the NIC's iPXE ROM with
QEMU's TFTP serving the script. The serial console streams to the terminal and to <out>/boot-console.log.

Without --check the console is interactive (Ctrl-A X quits QEMU). With --check the demo root powers off after its
marker line; the command exits 0 when "NETBOOT-ROOT-OK" appears and 1 on a failure line, a timeout, or QEMU exiting
early, and prints how long each boot phase took.`

  static override examples = [
    '<%= config.bin %> boot',
    '<%= config.bin %> boot --check',
    '<%= config.bin %> boot --check --nic e1000 --memory 256 --timeout 600',
    '<%= config.bin %> boot --cmdline-extra "netboot.retries=1 loglevel=7"',
  ]

  static override flags = {
    out: Flags.string({summary: 'Output directory holding tftp/ and http/ (default: the configured output, ./out).'}),
    check: Flags.boolean({summary: 'Non-interactive: wait for the demo root marker, power off, exit 0/1 with phase timings.'}),
    timeout: Flags.integer({summary: 'Seconds to wait for the marker with --check (default: boot.timeoutSec, 300).', min: 1}),
    memory: Flags.integer({summary: 'Guest memory in MiB (default: boot.memoryMiB, 512).', min: 32}),
    nic: Flags.string({summary: 'Guest NIC model.', options: ['virtio', 'e1000'], default: 'virtio'}),
    firmware: Flags.string({summary: 'Guest firmware: bios (SeaBIOS) or uefi (OVMF; the kernel needs CONFIG_EFI_STUB).', options: ['bios', 'uefi'], default: 'bios'}),
    accel: Flags.string({summary: 'QEMU accelerator; KVM only works with hardware virtualisation.', options: ['tcg', 'kvm'], default: 'tcg'}),
    'cmdline-extra': Flags.string({summary: 'Extra kernel parameters, space separated (added to boot.cmdline from the config).'}),
  }

  public async run(): Promise<BootResult> {
    const outDir = resolve(this.flags.out ?? this.settings.output)
    const check = this.flags.check
    const json = this.jsonEnabled()
    const extra = [...splitExtraCmdline(this.settings.boot.cmdline), ...splitExtraCmdline(this.flags['cmdline-extra'])]
    const echo = !json
    const result = await bootTree({
      outDir,
      check,
      timeoutSec: this.flags.timeout ?? this.settings.boot.timeoutSec,
      memoryMiB: this.flags.memory ?? this.settings.boot.memoryMiB,
      nic: this.flags.nic as Nic,
      accel: this.flags.accel as Accel,
      firmware: this.flags.firmware as Firmware,
      params: check ? undefined : {onfail: this.settings.boot.onfail},
      cmdlineExtra: extra,
      interactive: !check && !json,
      onConsole: echo ? (chunk) => process.stdout.write(chunk) : undefined,
    })
    if (echo) {
      this.log('')
      this.log(`console log: ${result.consoleLog}`)
      this.log('boot phases (from QEMU start):')
      this.log(formatPhases(result.phases))
      if (result.ok && result.marker) this.log(`root is up: ${result.marker}`)
    }
    if (check && !result.ok) {
      const err = new NetbootError(`boot check failed: ${result.failure}`, {
        suggestions: [`console: ${result.consoleLog}`, `reproduce QEMU: ${result.command}`],
      })
      if (json) {
        process.exitCode = 1
        return result
      }
      throw err
    }
    return result
  }
}
