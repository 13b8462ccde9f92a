// The main job end to end: `netboot build` on defaults lays out a PXE tree, `netboot boot
// --check` PXE-boots it in QEMU (iPXE from the NIC ROM, TFTP from user networking, HTTP from
// the host loopback as 10.0.2.2), and the guest comes up on a writable overlay whose lower
// layer is the downloaded image attached through the qcow2 loop format. Then the same with a
// deflate-compressed and an uncompressed image (same kernel and initramfs, from the cache).
import test from 'ava'
import {execa} from 'execa'
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import Boot from '../cli/src/commands/boot.js'
import Build, {type BuildCommandResult} from '../cli/src/commands/build.js'
import {sha256File} from '../cli/src/lib/image.js'
import type {Manifest} from '../cli/src/lib/pxe.js'
import {checkQcow2File} from '../cli/src/lib/qcow2-header.js'
import {formatPhases, type BootResult} from '../cli/src/lib/qemu.js'
import {buildTree, keepConsole, kernelFlags, runCommand, withKeptConsole} from './lib/build.js'
import {assertDemoRoot, demoRootMarkers, withVm} from './lib/vm.js'
import {KERNELS, testedKernels} from './matrix.js'

const work = await mkdtemp(join(tmpdir(), 'netboot-e2e-'))
test.after.always(() => rm(work, {recursive: true, force: true}))

/** Every file `netboot build` must lay out, relative to the output directory. */
const TREE_FILES = [
  'tftp/boot.ipxe',
  'http/vmlinuz',
  'http/initramfs.img',
  'http/root.qcow2',
  'http/manifest.json',
  'pxe/dnsmasq.conf',
  'pxe/dnsmasq-proxy.conf',
  'pxe/nginx.conf',
]

async function manifestOf(out: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(out, 'http', 'manifest.json'), 'utf8')) as Manifest
}

/** Data extents of a qcow2 image and how many of them are compressed (qemu-img map gives no host offset for those). */
async function extents(image: string): Promise<{data: number; compressed: number}> {
  const {stdout} = await execa('qemu-img', ['map', '--output=json', image])
  const map = JSON.parse(stdout) as Array<{data: boolean; offset?: number}>
  const data = map.filter((e) => e.data)
  return {data: data.length, compressed: data.filter((e) => e.offset === undefined).length}
}

test.serial('netboot build on defaults, then netboot boot --check PXE-boots it to the demo root', async (t) => {
  const out = join(work, 'default')
  const build = await runCommand<BuildCommandResult>(Build, ['--out', out, '--json', ...kernelFlags()])
  t.is(build.exit, 0, build.stderr)
  const r = build.result
  t.deepEqual(JSON.parse(build.stdout).artifacts, JSON.parse(JSON.stringify(r.artifacts)), '--json prints the result')
  t.deepEqual(r.stages.map((s) => s.name), ['kernel', 'loopfmt', 'initramfs', 'image', 'pxe'])
  t.true(existsSync(join(out, 'netboot.log')))
  for (const file of TREE_FILES) {
    const a = r.artifacts[file]
    t.truthy(a, `artifact ${file} in the result`)
    t.is(a?.path, join(out, file))
    t.is(a?.sha256, await sha256File(join(out, file)), `${file} sha256`)
  }
  const manifest = await manifestOf(out)
  for (const [name, entry] of Object.entries(manifest.files)) t.is(entry.sha256, r.artifacts[`http/${name}`]?.sha256, `manifest entry ${name}`)
  t.is((await checkQcow2File(join(out, 'http', 'root.qcow2'))).compressionType, 'zstd', 'default image compression is zstd')
  t.true((await extents(join(out, 'http', 'root.qcow2'))).compressed > 0, 'the image has compressed clusters')
  t.true((await readFile(join(out, 'tftp', 'boot.ipxe'), 'utf8')).includes('kernel ${netboot-base}/vmlinuz '))

  const boot = await runCommand<BootResult>(Boot, ['--check', '--json', '--out', out, '--timeout', '240'])
  const kept = await keepConsole('netboot-e2e-default', {file: boot.result?.consoleLog ?? join(out, 'boot-console.log')})
  t.is(boot.exit, 0, `${boot.result?.failure ?? boot.stderr}\nconsole: ${kept}`)
  t.true(boot.result.ok)
  t.log(`default (zstd) PXE boot, ${(boot.result.wallMs / 1000).toFixed(1)} s wall:\n${formatPhases(boot.result.phases)}`)
  for (const p of boot.result.phases) t.not(p.atMs, undefined, `phase "${p.name}" seen`)
  assertDemoRoot(t, await readFile(boot.result.consoleLog, 'utf8'), manifest)
})

for (const compression of ['deflate', 'none'] as const) {
  test.serial(`PXE boot of ${compression === 'none' ? 'an uncompressed' : 'a deflate-compressed'} qcow2 image reaches the demo root`, async (t) => {
    const out = join(work, compression)
    const r = await buildTree(out, {compression})
    const image = r.artifacts['http/root.qcow2']!.path
    const header = await checkQcow2File(image)
    const ext = await extents(image)
    if (compression === 'deflate') {
      t.is(header.compressionType, 'deflate')
      t.true(ext.compressed > 0, 'deflate-compressed clusters')
    } else {
      t.is(ext.compressed, 0, 'no compressed clusters')
    }
    const manifest = await manifestOf(out)

    let consoleText = ''
    try {
      await withVm({tree: out}, async (vm) => {
        try {
          const matches = await vm.expect(demoRootMarkers())
          t.is(matches.find((m) => m.text.startsWith('NETBOOT-DATA'))?.text, 'NETBOOT-DATA-OK')
          t.log(`${compression} PXE boot:\n${formatPhases(vm.phases())}`)
          // The guest's own requests: the whole image in one 200 response.
          const get = vm.server.requests.find((q) => q.path === '/root.qcow2' && q.method === 'GET')
          t.is(get?.status, 200)
          t.is(get?.bytes, manifest.files['root.qcow2']!.size)
        } finally {
          consoleText = vm.console
        }
      })
    } finally {
      await keepConsole(`netboot-e2e-${compression}`, {text: consoleText})
    }
    assertDemoRoot(t, consoleText, manifest)
  })
}

// The other kernels of the boot matrix: `netboot build --kernel <version>` end to end (its own
// kernel build, cached), PXE-booted to the demo root. The kernel under test above is the first.
const primary = process.env.NETBOOT_TEST_KERNEL ?? KERNELS[0]
for (const version of process.env.NETBOOT_TEST_KERNEL_DIR ? [] : testedKernels().filter((v) => v !== primary)) {
  test.serial(`linux-${version}: netboot build --kernel ${version} PXE-boots to the demo root`, async (t) => {
    const out = join(work, `linux-${version}`)
    const build = await runCommand<BuildCommandResult>(Build, ['--out', out, '--json', '--kernel', version])
    t.is(build.exit, 0, build.stderr)
    const manifest = await manifestOf(out)
    t.true(manifest.kernel.release?.startsWith(version), `kernel release ${manifest.kernel.release}`)
    let consoleText = ''
    await withKeptConsole(`netboot-e2e-linux-${version}`, {tree: out}, async (vm) => {
      await vm.expect(demoRootMarkers())
      consoleText = vm.console
    })
    assertDemoRoot(t, consoleText, manifest)
  })
}
