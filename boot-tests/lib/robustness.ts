// One boot of the debug kernel (KUnit, KASAN, lockdep): KUnit runs during boot, then /init
// attaches and reads every hostile image. Shared by the CI smoke test and `npm run fuzz`.
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {QemuVm} from '../../cli/src/lib/qemu.js'
import {busyboxInitramfs, ext4Disk, GUEST_DIR, loopfmtBinary} from './guest.js'
import {hostileImages} from './hostile.js'
import type {TestKernel} from './kernel.js'

export interface ImageOutcome {
  name: string
  what: string
  /** loopfmt's exit code: 0 attached, otherwise the refusal's class. */
  attach: number
  /** dd's exit code reading the device whole, or undefined when not attached. */
  read?: number
}

export interface KunitSummary {
  pass: number
  fail: number
  skip: number
  suiteOk: boolean
}

export interface RobustnessRun {
  kunit?: KunitSummary
  outcomes: ImageOutcome[]
  /** Lines that show a kernel fault (panic, BUG, KASAN, WARNING, hung task, soft lockup). */
  faults: string[]
  dmesgClean: boolean
  console: string
  commandLine: string
  seconds: number
}

const FAULT = /Kernel panic|BUG:|KASAN|WARNING:|hung task|soft lockup|Oops|general protection|HOSTILE-DMESG-BAD|HOSTILE-FATAL/

/**
 * The KTAP summary of `suite`: its pass/fail counts include every parameter of parameterised
 * cases (the "# Totals" line, as only this suite is built), and its "ok N suite" result line.
 * Console lines carry printk timestamps.
 */
export function parseKunit(console: string, suite = 'loop_qcow2'): KunitSummary | undefined {
  const totals = /# Totals: pass:(\d+) fail:(\d+) skip:(\d+)/.exec(console)
  if (!totals || !new RegExp(`# ${suite}: pass:`).test(console)) return undefined
  return {
    pass: Number(totals[1]),
    fail: Number(totals[2]),
    skip: Number(totals[3]),
    suiteOk: new RegExp(`^(\\[[ 0-9.]+\\] )?ok \\d+ ${suite}$`, 'm').test(console),
  }
}

export async function runRobustness(opts: {kernel: TestKernel; count: number; seed?: number; systematic?: boolean; logName: string; timeoutMs?: number}): Promise<RobustnessRun> {
  const started = Date.now()
  const work = await mkdtemp(join(tmpdir(), 'netboot-hostile-'))
  try {
    const images = await hostileImages(work, opts.count, opts.seed, opts.systematic ?? true)
    const disk = join(work, 'disk')
    await mkdir(disk)
    for (const img of images) await writeFile(join(disk, `${img.name}.qcow2`), img.data)
    await writeFile(join(disk, 'list'), images.map((i) => i.name).join('\n') + '\n')
    await rm(join(work, 'bases'), {recursive: true, force: true})
    await ext4Disk(disk, join(work, 'disk.ext4'))
    await rm(disk, {recursive: true, force: true})
    const initrd = join(work, 'initrd.gz')
    await writeFile(initrd, await busyboxInitramfs(join(GUEST_DIR, 'hostile.sh'), {loopfmt: await loopfmtBinary(opts.kernel.headers)}))

    const vm = await QemuVm.start({
      kernel: opts.kernel.bzImage,
      initrd,
      memoryMiB: 1024,
      // KUnit reports at info level; /init turns the console down before the images
      append: 'console=ttyS0 panic=-1 loglevel=7 panic_on_warn=1 kasan.fault=panic hung_task_panic=1 hung_task_timeout_secs=30 softlockup_panic=1',
      extraArgs: ['-drive', `file=${join(work, 'disk.ext4')},format=raw,if=virtio,readonly=on`],
      consoleLog: join(process.env.NETBOOT_TEST_LOGS ?? join(tmpdir(), 'netboot-test-logs'), `${opts.logName}.console.log`),
    })
    try {
      await vm.waitFor('HOSTILE-START', {timeoutMs: 300_000, failOn: [/Kernel panic/]})
      await vm.waitFor('HOSTILE-DONE', {timeoutMs: opts.timeoutMs ?? 60 * 60_000, failOn: [/Kernel panic/]})
    } catch (error) {
      // a fault ends the boot early: report it with the image that caused it
      const last = vm.console.split('\n').filter((l) => l.startsWith('H ')).pop()
      throw new Error(`${(error as Error).message}\nlast image finished: ${last ?? '(none)'}\n${vm.tail(60)}`)
    } finally {
      await vm.kill()
    }
    const console = vm.console
    const byName = new Map(images.map((i) => [i.name, i.what]))
    const outcomes: ImageOutcome[] = []
    for (const m of console.matchAll(/^H (\S+) a=(\d+) r=(\S+)$/gm)) {
      outcomes.push({name: m[1]!, what: byName.get(m[1]!) ?? '?', attach: Number(m[2]), read: m[3] === '-' ? undefined : Number(m[3])})
    }
    return {
      kunit: parseKunit(console),
      outcomes,
      faults: console.split('\n').filter((l) => FAULT.test(l)),
      dmesgClean: /^HOSTILE-DMESG-CLEAN$/m.test(console),
      console,
      commandLine: vm.commandLine,
      seconds: (Date.now() - started) / 1000,
    }
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

/** Counts for the results JSON. */
export function summarize(run: RobustnessRun) {
  const attached = run.outcomes.filter((o) => o.attach === 0)
  const refusedBy: Record<string, number> = {}
  for (const o of run.outcomes) if (o.attach !== 0) refusedBy[String(o.attach)] = (refusedBy[String(o.attach)] ?? 0) + 1
  return {
    images: run.outcomes.length,
    refused: run.outcomes.length - attached.length,
    refusedByLoopfmtExit: refusedBy,
    attachedReadOk: attached.filter((o) => o.read === 0).length,
    attachedReadError: attached.filter((o) => o.read !== 0).length,
    faults: run.faults.length,
    dmesgClean: run.dmesgClean,
    kunit: run.kunit,
    seconds: run.seconds,
  }
}
