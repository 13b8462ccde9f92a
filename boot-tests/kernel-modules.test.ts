// The qcow2 format as a loadable module (the series' config.modular): attaching a qcow2 image
// loads it through request_module("loop-fmt-qcow2"), a loop device using it pins it, detaching
// releases it, and without a module loader the attach fails with EPROTONOSUPPORT. The raw
// format never needs it. One VM boot; the images are checked against qemu-img's bytes.
import test from 'ava'
import {execa} from 'execa'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {QemuVm} from '../cli/src/lib/qemu.js'
import {busyboxInitramfs, ext4Disk, GUEST_DIR, loopfmtBinary} from './lib/guest.js'
import {testKernel, testLogDir} from './lib/kernel.js'
import {sha256File} from './lib/qcow2-variants.js'
import {testedKernels} from './matrix.js'

interface Run {
  lines: Map<string, Record<string, string>>
  console: string
  rawSha: string
  commandLine: string
}

async function runModules(version: string): Promise<Run> {
  const kernel = await testKernel(version, 'modular')
  if (!kernel.modules) throw new Error('the modular kernel build installed no modules')
  const work = await mkdtemp(join(tmpdir(), 'netboot-modules-'))
  const disk = join(work, 'disk')
  await mkdir(disk)
  // 8 MiB of varied bytes: a qcow2 of it (zstd-compressed clusters and plain ones) and the raw file
  const raw = join(disk, 'raw.img')
  await execa('sh', ['-c', `{ seq 1 400000; head -c 3000000 /dev/urandom; } | head -c 8388608 > ${raw}; truncate -s 8M ${raw}`])
  await execa('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, join(disk, 'image.qcow2')])
  const rawSha = await sha256File(raw)
  const diskImage = join(work, 'disk.ext4')
  await ext4Disk(disk, diskImage)

  const initrd = join(work, 'initrd.gz')
  await writeFile(initrd, await busyboxInitramfs(join(GUEST_DIR, 'modules.sh'), {loopfmt: await loopfmtBinary(kernel.headers)}, {
    'lib/modules': join(kernel.modules, 'lib', 'modules'),
  }))
  const vm = await QemuVm.start({
    kernel: kernel.bzImage,
    initrd,
    memoryMiB: 256,
    append: 'console=ttyS0 panic=-1 loglevel=4',
    extraArgs: ['-drive', `file=${diskImage},format=raw,if=virtio,readonly=on`],
    consoleLog: join(await testLogDir(), `kernel-modules-${version}.console.log`),
  })
  try {
    await vm.waitFor('MOD-DONE', {timeoutMs: 180_000, failOn: [/Kernel panic/, /MOD-FATAL.*/]})
    const lines = new Map<string, Record<string, string>>()
    for (const l of vm.console.split('\n').map((x) => x.trim())) {
      // the first line shares the console line with the firmware's last output
      const m = /(?:^|[^\w-])MOD (\S+) (.*)$/.exec(l)
      if (!m) continue
      const fields: Record<string, string> = {}
      // err= takes the rest of the line (the loopfmt message has spaces)
      const [head, err] = m[2].split(/ err=/)
      for (const f of head.matchAll(/(\w[\w-]*)=(\S*)/g)) fields[f[1]] = f[2]
      if (err !== undefined) fields.err = err
      lines.set(m[1], fields)
    }
    await rm(work, {recursive: true, force: true})
    return {lines, console: vm.console, rawSha, commandLine: vm.commandLine}
  } catch (error) {
    throw new Error(`${(error as Error).message}\nwork directory kept: ${work}`)
  } finally {
    await vm.kill()
  }
}

for (const version of testedKernels()) {
  let run: Promise<Run> | undefined
  const getRun = () => (run ??= runModules(version))

  test(`linux-${version}: attaching a qcow2 image loads the format module; the raw format does not need it`, async (t) => {
    const r = await getRun()
    const step = (name: string) => r.lines.get(name) ?? {}
    t.is(step('start').loaded, '0', 'the module is not loaded before the first attach')
    t.deepEqual(step('raw'), {rc: '0', fmt: 'raw', loaded: '0', sha: r.rawSha})
    t.deepEqual(step('qcow2'), {rc: '0', fmt: 'qcow2', loaded: '1', users: '1', sha: r.rawSha}, `reproduce with: ${r.commandLine}`)
  })

  test(`linux-${version}: a loop device pins the format module until it is detached`, async (t) => {
    const r = await getRun()
    const step = (name: string) => r.lines.get(name) ?? {}
    t.not(step('rmmod-in-use').rc, '0', 'rmmod must fail while a loop device uses the module')
    t.is(step('rmmod-in-use').loaded, '1')
    t.is(step('detached').users, '0')
    t.deepEqual(step('rmmod'), {rc: '0', loaded: '0'})
    t.deepEqual(step('reattach'), {rc: '0', loaded: '1', sha: r.rawSha}, 'loaded again on the next attach')
  })

  test(`linux-${version}: without a module loader the attach fails with EPROTONOSUPPORT and a message`, async (t) => {
    const r = await getRun()
    const s = r.lines.get('no-modprobe') ?? {}
    t.is(s.rc, '10', 'loopfmt exit code 10: no driver for the format (EPROTONOSUPPORT)')
    t.is(s.loaded, '0')
    t.regex(s.err ?? '', /^loopfmt: .*qcow2/)
    t.true(r.console.includes('MOD-DMESG-CLEAN'), 'kernel log has a warning or oops')
  })
}
