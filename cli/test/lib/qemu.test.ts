import test from 'ava'
import {chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {buildKernelCmdline} from '../../src/lib/pxe.js'
import {
  cleanConsole,
  ConsoleTimeoutError,
  FATAL_LINES,
  OVMF,
  formatPhases,
  parseKernelCmdline,
  parseRootMarker,
  phaseTimings,
  QemuVm,
  qemuArgs,
} from '../../src/lib/qemu.js'

const dir = mkdtempSync(join(tmpdir(), 'netboot-qemu-'))
test.after.always(() => rmSync(dir, {recursive: true, force: true}))

/** A stand-in for qemu-system-x86_64: prints a scripted console (no VM needed for these tests). */
function fakeQemu(name: string, body: string): string {
  const path = join(dir, name)
  writeFileSync(path, `#!/bin/sh\necho "$@" > "$0.args"\n${body}\n`)
  chmodSync(path, 0o755)
  return path
}

const BOOT = fakeQemu(
  'boot.sh',
  String.raw`printf '\033[0;1miPXE initialising devices...ok\r\n'
sleep 0.2
printf 'Linux version 6.1.0-netboot (gcc) #1\r\n'
printf 'netboot: network up: eth0 10.0.2.15\r\n'
sleep 0.3
printf 'netboot: downloading http://10.0.2.2:1/root.qcow2 (100 bytes)\r\nnetboot: download 100%% 1.0 MiB/s\r\n'
printf 'netboot: verified sha256 %s\r\n' $(printf 'a%.0s' $(seq 64))
printf 'netboot: attached root.qcow2 as /dev/loop0 format=qcow2\r\nnetboot: mounted /dev/loop0 on /newroot/lower type ext4\r\n'
printf 'netboot: switching root\r\nNETBOOT-DATA-OK\r\n'
printf 'NETBOOT-ROOT-OK root=/dev/loop0 format=qcow2 overlay=yes write=ok kernel=6.1.0-netboot\r\n'
exec sleep 30`,
)

const opts = (qemu: string) => ({qemu, kernel: '/k', initrd: '/i', append: 'console=ttyS0', consoleLog: join(dir, `${qemu.split('/').pop()}.log`)})

test('QEMU command lines: PXE and direct boot, NIC choice', (t) => {
  t.deepEqual(qemuArgs({pxe: {tftpDir: '/o/tftp'}}), [
    '-accel', 'tcg', '-m', '512', '-nographic', '-no-reboot',
    '-netdev', 'user,id=n0,tftp=/o/tftp,bootfile=boot.ipxe', '-device', 'virtio-net-pci,netdev=n0', '-boot', 'n',
  ])
  t.deepEqual(qemuArgs({kernel: '/k', initrd: '/i', append: 'a=b c', nic: 'e1000', memoryMiB: 128, accel: 'kvm'}), [
    '-accel', 'kvm', '-m', '128', '-nographic', '-no-reboot',
    '-netdev', 'user,id=n0', '-device', 'e1000,netdev=n0', '-kernel', '/k', '-initrd', '/i', '-append', 'a=b c',
  ])
  if (existsSync(OVMF)) t.deepEqual(qemuArgs({pxe: {tftpDir: '/t'}, firmware: 'uefi'}).slice(6, 8), ['-bios', OVMF])
  else t.throws(() => qemuArgs({pxe: {tftpDir: '/t'}, firmware: 'uefi'}), {message: /apt-get install ovmf|UEFI boot needs/})
  t.throws(() => qemuArgs({}), {message: /needs either a kernel/})
  t.throws(() => qemuArgs({pxe: {tftpDir: '/a,b'}}), {message: /comma or space/})
})

test('QEMU command lines: a tap NIC on a real network, its MAC, no option ROM (firmware PXE)', (t) => {
  t.deepEqual(qemuArgs({tap: 'tap1', mac: '52:54:00:77:00:11', nicRom: false}).slice(6), [
    '-netdev', 'tap,id=n0,ifname=tap1,script=no,downscript=no', '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:77:00:11,romfile=', '-boot', 'n',
  ])
  t.deepEqual(qemuArgs({tap: 'tap0', nic: 'e1000', nicRom: '/r/pxe.rom'}).slice(8, 10), ['-device', 'e1000,netdev=n0,romfile=/r/pxe.rom'])
  t.throws(() => qemuArgs({tap: 'tap0', pxe: {tftpDir: '/t'}}), {message: /not from pxe.tftpDir/})
  t.throws(() => qemuArgs({tap: 'tap0,script=/x'}), {message: /bad tap device name/})
  t.throws(() => qemuArgs({tap: 'tap0', mac: '52:54:00:77:00'}), {message: /bad MAC address/})
})

test('QEMU in a network namespace runs as `ip netns exec <ns> setpriv --pdeathsig KILL -- qemu ...`', async (t) => {
  const vm = await QemuVm.start({qemu: '/usr/bin/qemu-x', netns: 'lab0', tap: 'tap0'})
  t.deepEqual(vm.argv.slice(0, 9), ['ip', 'netns', 'exec', 'lab0', 'setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/qemu-x'])
  t.regex(vm.commandLine, /^ip netns exec lab0 setpriv --pdeathsig KILL -- \/usr\/bin\/qemu-x /)
  await vm.kill()
})

test('ordered markers, each timed; the console is cleaned and logged raw', async (t) => {
  const vm = await QemuVm.start(opts(BOOT))
  t.teardown(() => vm.kill())
  const ipxe = await vm.waitFor(/iPXE initialising devices/, {timeoutMs: 5000})
  const linux = await vm.waitFor('Linux version', {timeoutMs: 5000})
  const marker = await vm.waitFor(/NETBOOT-ROOT-OK .*/, {timeoutMs: 5000, failOn: FATAL_LINES})
  t.true(ipxe.atMs <= linux.atMs && linux.atMs <= marker.atMs)
  t.true(marker.atMs - ipxe.atMs >= 400, `${marker.atMs - ipxe.atMs} ms`)
  t.deepEqual(parseRootMarker(marker.line), {root: '/dev/loop0', format: 'qcow2', overlay: 'yes', write: 'ok', kernel: '6.1.0-netboot'})
  t.false(vm.console.includes('\r'))
  t.false(vm.console.includes('\x1b'))
  // Markers are consumed in order: "Linux version" does not come again after the root marker.
  const again = await t.throwsAsync(vm.waitFor('Linux version', {timeoutMs: 300, name: 'kernel start'}), {instanceOf: ConsoleTimeoutError})
  t.regex(again!.message, /^timed out after 0 s waiting for marker "kernel start"\nreproduce with:\n {2}\S+boot\.sh -accel tcg -m 512 .* -append console=ttyS0\nconsole tail:\n/)
  t.regex(again!.message, /\| NETBOOT-ROOT-OK root=\/dev\/loop0/)
  t.is((again as ConsoleTimeoutError).marker, 'kernel start')
  await vm.kill()
  t.false(vm.running)
  t.true(readFileSync(opts(BOOT).consoleLog).includes(Buffer.from('\x1b[0;1miPXE')))
  t.is(readFileSync(`${BOOT}.args`, 'utf8').trim(), '-accel tcg -m 512 -nographic -no-reboot -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -kernel /k -initrd /i -append console=ttyS0')
})

test('phase timings from the console', async (t) => {
  const vm = await QemuVm.start(opts(BOOT))
  t.teardown(() => vm.kill())
  await vm.waitFor('NETBOOT-ROOT-OK', {timeoutMs: 5000})
  const phases = phaseTimings(vm.console, (o) => vm.timeAt(o))
  t.deepEqual(phases.map((p) => p.name), ['iPXE start', 'kernel start', 'network up', 'download start', 'download done', 'verified', 'attached', 'mounted', 'switching root', 'root init'])
  t.true(phases.every((p) => p.atMs !== undefined), formatPhases(phases))
  for (let i = 1; i < phases.length; i++) t.true(phases[i].atMs! >= phases[i - 1].atMs!)
  t.true(phases[3].atMs! - phases[2].atMs! >= 250)
  t.is(phases[6].line, 'netboot: attached root.qcow2 as /dev/loop0 format=qcow2')
  t.regex(formatPhases(phases), /root init\s+\d+\.\d\d s {2}\(\+\d+\.\d\d s\)/)
})

test('a failure line ends the wait at once, naming what was awaited', async (t) => {
  const qemu = fakeQemu('fail.sh', String.raw`printf 'netboot: download failed: HTTP 404 for http://10.0.2.2:1/root.qcow2\r\n'; exec sleep 30`)
  const vm = await QemuVm.start(opts(qemu))
  t.teardown(() => vm.kill())
  const t0 = Date.now()
  const err = await t.throwsAsync(vm.waitFor('NETBOOT-ROOT-OK', {timeoutMs: 20_000, failOn: FATAL_LINES}))
  t.true(Date.now() - t0 < 5000)
  t.true(err!.message.startsWith('saw "netboot: download failed: HTTP 404 for http://10.0.2.2:1/root.qcow2" while waiting for marker "NETBOOT-ROOT-OK"'))
})

test('QEMU exiting before the marker is reported as such', async (t) => {
  const qemu = fakeQemu('exit.sh', String.raw`printf 'Kernel started\n'; exit 0`)
  const vm = await QemuVm.start(opts(qemu))
  const err = await t.throwsAsync(vm.waitFor('NETBOOT-ROOT-OK', {timeoutMs: 10_000}))
  t.regex(err!.message, /^QEMU exited \(code 0\) while waiting for marker "NETBOOT-ROOT-OK"/)
  t.regex(err!.message, /\| Kernel started/)
  t.true(await vm.waitForExit(1000))
})

test('a QEMU that cannot start is reported, not hung on', async (t) => {
  const vm = await QemuVm.start({...opts(join(dir, 'no-such-qemu')), consoleLog: undefined})
  const err = await t.throwsAsync(vm.waitFor('NETBOOT-ROOT-OK', {timeoutMs: 5000}))
  t.regex(err!.message, /QEMU exited \(code 127\)/)
  t.regex(vm.console, /cannot start .*no-such-qemu/)
})

test('kill() ends a running QEMU', async (t) => {
  const qemu = fakeQemu('hang.sh', 'exec sleep 600')
  const vm = await QemuVm.start(opts(qemu))
  t.true(vm.running)
  await vm.kill()
  t.false(vm.running)
  await vm.kill() // twice is fine
})

test('kernel command line parses back into parameters', (t) => {
  const line = buildKernelCmdline({url: 'http://h:1/root.qcow2', manifest: 'http://h:1/manifest.json', format: 'qcow2', retries: 2, onfail: 'poweroff', extra: ['quiet']})
  const {params, extra} = parseKernelCmdline(line)
  t.deepEqual(params, {console: 'ttyS0', url: 'http://h:1/root.qcow2', manifest: 'http://h:1/manifest.json', format: 'qcow2', retries: 2, onfail: 'poweroff'})
  t.deepEqual(extra, ['quiet'])
  t.is(buildKernelCmdline({...params, extra}), line)
})

test('console cleaning keeps text, drops escapes', (t) => {
  t.is(cleanConsole('\x1b[0;1miPXE\x1b[0m\r\nok\x08\n'), 'iPXE\nok\n')
  // What the kernel sends when it takes over the console from iPXE.
  t.is(cleanConsole('kernel\n\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux'), 'kernel\n[    0.000000] Linux')
})

test('a marker matches whole lines, not the first piece of a line', async (t) => {
  const qemu = fakeQemu('pieces.sh', String.raw`printf 'NETBOOT-ROOT-OK kernel=6.1'; sleep 0.5; printf '.192+ done\n'; printf 'login: '; exec sleep 30`)
  const vm = await QemuVm.start(opts(qemu))
  t.teardown(() => vm.kill())
  const m = await vm.waitFor(/kernel=\S+/, {timeoutMs: 5000})
  t.is(m.text, 'kernel=6.1.192+')
  // A prompt never ends its line: partialLine finds it.
  const prompt = await vm.waitFor('login: ', {timeoutMs: 5000, partialLine: true})
  t.is(prompt.line, 'login: ')
})
