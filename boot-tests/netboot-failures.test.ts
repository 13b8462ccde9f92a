// How the netboot initramfs fails: each case breaks one thing (the image is missing, its bytes
// differ from the manifest, the server is down at first, the download is cut, the image does
// not fit in RAM), then checks the exact console line "netboot: <step> failed: <reason>", that
// nothing was attached or mounted, and that /init followed netboot.onfail=poweroff (QEMU exits
// by itself). The server-comes-up-late case must instead retry and reach the root.
import test, {type ExecutionContext} from 'ava'
import {createWriteStream} from 'node:fs'
import {mkdir, mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {pipeline} from 'node:stream/promises'

import {demoPattern, sha256File} from '../cli/src/lib/image.js'
import type {PipelineResult} from '../cli/src/lib/pipeline.js'
import {cleanConsole, parseRootMarker} from '../cli/src/lib/qemu.js'
import {buildTree, withKeptConsole} from './lib/build.js'
import {copyHttpDir, demoRootMarkers, failureMarker, type BootedVm, type VmConfig} from './lib/vm.js'

const work = await mkdtemp(join(tmpdir(), 'netboot-failures-'))
test.after.always(() => rm(work, {recursive: true, force: true}))

const MiB = 1024 * 1024
/** The RAM /init keeps free besides the image (NETBOOT_MEM_MARGIN_KIB in initramfs/lib.sh). */
const MEM_MARGIN_KIB = 32768

let treePromise: Promise<PipelineResult> | undefined
/** The default tree (demo root, zstd), built once for every case. */
function defaultTree(): Promise<PipelineResult> {
  treePromise ??= buildTree(join(work, 'tree'))
  return treePromise
}

function consoleLines(vm: BootedVm): string[] {
  return cleanConsole(vm.console)
    .split('\n')
    .map((l) => l.trimEnd())
}

/**
 * After a failure: exactly one failure line (the expected one), no image attached, mounted or
 * switched to, no root marker, and QEMU powered off by /init's onfail=poweroff.
 */
async function assertFailedCleanly(t: ExecutionContext, vm: BootedVm, expectedLine: string): Promise<string[]> {
  t.true(await vm.vm.waitForExit(30_000), 'QEMU powers off after the failure (netboot.onfail=poweroff)')
  const lines = consoleLines(vm)
  t.deepEqual(
    lines.filter((l) => /^netboot: [a-z_]+ failed: /.test(l)),
    [expectedLine],
    'exactly one failure line, the expected one',
  )
  t.deepEqual(
    lines.filter((l) => /^netboot: (attached|mounted|overlay on|switching root)/.test(l) || /NETBOOT-(ROOT|DATA)-/.test(l)),
    [],
    'nothing attached, mounted or switched to',
  )
  return lines
}

/** Boots, runs `fn`, keeps the console under testLogDir() whatever happens. */
function boot(name: string, cfg: VmConfig, fn: (vm: BootedVm) => Promise<void>): Promise<void> {
  return withKeptConsole(`netboot-failures-${name}`, cfg, fn)
}

test.serial('image 404: "download failed: HTTP 404 for <url>", nothing attached', async (t) => {
  const tree = await defaultTree()
  const httpDir = await copyHttpDir(tree.outDir, {remove: ['root.qcow2']})
  try {
    await boot('404', {tree: tree.outDir, httpDir}, async (vm) => {
      const line = `netboot: download failed: HTTP 404 for http://10.0.2.2:${vm.server.port}/root.qcow2`
      await vm.expect([failureMarker('download', `HTTP 404 for http://10.0.2.2:${vm.server.port}/root.qcow2`, 120)])
      const lines = await assertFailedCleanly(t, vm, line)
      t.false(lines.some((l) => l.startsWith('netboot: attempt ')), 'a 404 is final, not retried')
      t.deepEqual(
        vm.server.requests.filter((r) => r.path === '/root.qcow2').map((r) => r.status),
        [404],
      )
    })
  } finally {
    await rm(httpDir, {recursive: true, force: true})
  }
})

test.serial('checksum mismatch: "verify failed: sha256 mismatch: expected <a> got <b>", nothing attached', async (t) => {
  const tree = await defaultTree()
  const expected = tree.artifacts['http/root.qcow2']!.sha256
  // Same size, 16 bytes changed inside the image: only the checksum can tell.
  const httpDir = await copyHttpDir(tree.outDir, {corrupt: [{file: 'root.qcow2', offset: 3 * 65536 + 100, bytes: Buffer.alloc(16, 0xa5)}]})
  try {
    const got = await sha256File(join(httpDir, 'root.qcow2'))
    t.not(got, expected)
    await boot('sha256', {tree: tree.outDir, httpDir}, async (vm) => {
      const reason = `sha256 mismatch: expected ${expected} got ${got}`
      await vm.expect([failureMarker('verify', reason, 120)])
      const lines = await assertFailedCleanly(t, vm, `netboot: verify failed: ${reason}`)
      t.true(lines.some((l) => /^netboot: download 100% /.test(l)), 'the whole image was downloaded')
      t.false(lines.some((l) => l.startsWith('netboot: verified ')))
    })
  } finally {
    await rm(httpDir, {recursive: true, force: true})
  }
})

test.serial('server refuses connections at first, then comes up: /init retries and reaches the root', async (t) => {
  const tree = await defaultTree()
  // Direct kernel boot: with PXE, iPXE would be the one meeting the closed port. /init asks
  // ~3 s after QEMU starts and retries after 1, 2, 4, 8 s: the 4th or 5th attempt gets through.
  const refuseForMs = 12_000
  await boot('refused', {tree: tree.outDir, mode: 'direct', faults: {refuseForMs}}, async (vm) => {
    const manifestUrl = `http://10.0.2.2:${vm.server.port}/manifest.json`
    await vm.expect([
      {name: 'first attempt refused', match: `netboot: attempt 1 of 5: connection refused; retrying ${manifestUrl} in 1s`, timeoutSec: 60},
    ])
    const matches = await vm.expect(demoRootMarkers({pxe: false}).filter((m) => m.name !== 'kernel start' && m.name !== 'network up'))
    t.is(matches.find((m) => m.text.startsWith('NETBOOT-DATA'))?.text, 'NETBOOT-DATA-OK')
    const facts = parseRootMarker(matches.at(-1)!.line)
    t.like(facts, {format: 'qcow2', overlay: 'yes', write: 'ok'})
    const lines = consoleLines(vm)
    t.deepEqual(lines.filter((l) => / failed: /.test(l)), [], 'no failure line')
    const refused = lines.filter((l) => /^netboot: attempt \d+ of 5: connection refused; /.test(l))
    t.true(refused.length >= 1 && refused.length < 5, `retried ${refused.length} time(s), then got through`)
    t.is(vm.server.requests[0]?.path, '/manifest.json')
    t.true(vm.server.requests[0]!.time.getTime() - vm.vm.startedAt >= refuseForMs - 1000, 'first request served only once the server was up')
  })
})

test.serial('download cut short: "download failed: short download: got <n> of <m> bytes", nothing attached', async (t) => {
  const tree = await defaultTree()
  const size = tree.artifacts['http/root.qcow2']!.size
  // Every response for the image stops after `cut` bytes; the one retry (netboot.retries=1)
  // resumes with a Range request and is cut again, so /init ends up with 2 * cut bytes.
  const cut = 512 * 1024
  t.true(size > 2 * cut)
  await boot('short', {tree: tree.outDir, params: {retries: 1}, faults: {truncateAfterBytes: cut, paths: ['/root.qcow2']}}, async (vm) => {
    const url = `http://10.0.2.2:${vm.server.port}/root.qcow2`
    const reason = `short download: got ${2 * cut} of ${size} bytes`
    await vm.expect([
      {name: 'retry after the cut', match: `netboot: attempt 1 of 1: short download: got ${cut} of ${size} bytes; retrying ${url} in 1s`, timeoutSec: 120},
      {name: 'resume', match: `netboot: resuming ${url} at byte ${cut}`, timeoutSec: 30},
      failureMarker('download', reason, 60),
    ])
    const lines = await assertFailedCleanly(t, vm, `netboot: download failed: ${reason}`)
    t.false(lines.some((l) => l.startsWith('netboot: verified ')))
    t.deepEqual(
      vm.server.requests.filter((r) => r.path === '/root.qcow2').map((r) => ({status: r.status, range: r.range, bytes: r.bytes})),
      [
        {status: 200, range: undefined, bytes: cut},
        {status: 206, range: `bytes=${cut}-`, bytes: cut},
      ],
      'the whole image, then the rest from where the first attempt stopped; both cut',
    )
  })
})

test.serial('not enough RAM: "memory failed: image needs <N> KiB but only <M> KiB free", checked before downloading', async (t) => {
  // A root as big as the guest's RAM: incompressible data, stored uncompressed.
  const rootDir = join(work, 'big-root')
  await mkdir(join(rootDir, 'data'), {recursive: true})
  const chunk = demoPattern(4 * MiB)
  await pipeline(
    (function* () {
      for (let i = 0; i < 24; i++) yield chunk
    })(),
    createWriteStream(join(rootDir, 'data', 'big.bin')),
  )
  const memoryMiB = 96
  const tree = await buildTree(join(work, 'big-tree'), {imageSource: rootDir, compression: 'none'})
  const size = tree.artifacts['http/root.qcow2']!.size
  t.true(size >= memoryMiB * MiB, `image of ${size} bytes`)
  const needKiB = Math.ceil(size / 1024) + MEM_MARGIN_KIB

  await boot('memory', {tree: tree.outDir, memoryMiB}, async (vm) => {
    const [m] = await vm.expect([failureMarker('memory', new RegExp(`image needs ${needKiB} KiB but only (\\d+) KiB free`), 120)])
    const freeKiB = Number(/only (\d+) KiB free/.exec(m!.line)?.[1])
    t.true(freeKiB > 0 && freeKiB < needKiB && freeKiB < memoryMiB * 1024, `${freeKiB} KiB free`)
    const lines = await assertFailedCleanly(t, vm, `netboot: memory failed: image needs ${needKiB} KiB but only ${freeKiB} KiB free`)
    t.false(lines.some((l) => l.startsWith('netboot: downloading ')), 'nothing downloaded')
    t.deepEqual(vm.server.requests.filter((r) => r.path === '/root.qcow2'), [], 'the image was never requested')
  })
})
