// The netboot initramfs on a bad network (beyond netboot-failures.test.ts): a very slow server,
// a connection reset mid-download, no DHCP answer, a lying Content-Length, a redirect loop, and
// a manifest that is not JSON or lacks the image's checksum. Each case asserts its exact console
// lines, and that no image was attached or mounted before (or without) a verified sha256.
// Direct kernel boots (no iPXE) with netboot.retries=1 and onfail=poweroff keep each one short.
import test, {type ExecutionContext} from 'ava'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import type {PipelineResult} from '../cli/src/lib/pipeline.js'
import {MANIFEST_FILE} from '../cli/src/lib/pxe.js'
import {cleanConsole, parseRootMarker} from '../cli/src/lib/qemu.js'
import {buildTree, withKeptConsole} from './lib/build.js'
import {copyHttpDir, demoRootMarkers, failureMarker, type BootedVm, type Marker, type VmConfig} from './lib/vm.js'

const work = await mkdtemp(join(tmpdir(), 'netboot-network-'))
test.after.always(() => rm(work, {recursive: true, force: true}))

const MiB = 1024 * 1024
const IMAGE = '/root.qcow2'

let treePromise: Promise<PipelineResult> | undefined
/** The default tree (demo root, zstd), built once for every case. */
function tree(): Promise<PipelineResult> {
  treePromise ??= buildTree(join(work, 'tree'))
  return treePromise
}

function consoleLines(vm: BootedVm): string[] {
  return cleanConsole(vm.console)
    .split('\n')
    .map((l) => l.trimEnd())
}

const imageUrl = (vm: BootedVm) => `http://10.0.2.2:${vm.server.port}${IMAGE}`

/** The markers of a successful boot after the network is up (direct boot: no iPXE). */
const toRoot = (): Marker[] => demoRootMarkers({pxe: false}).filter((m) => m.name !== 'kernel start' && m.name !== 'network up')

/** The rule that must never break: "attached"/"mounted" only after one "verified" line. */
function assertVerifiedFirst(t: ExecutionContext, lines: string[]): void {
  const verified = lines.findIndex((l) => /^netboot: verified sha256 [0-9a-f]{64}$/.test(l))
  const used = lines.findIndex((l) => /^netboot: (attached|mounted) /.test(l))
  t.true(verified >= 0, 'the image was verified')
  t.true(used > verified, 'attached only after it was verified')
}

/** A clean failure: exactly the expected failure line, nothing attached or mounted, QEMU off. */
async function assertFailed(t: ExecutionContext, vm: BootedVm, expected: string): Promise<string[]> {
  t.true(await vm.vm.waitForExit(30_000), 'QEMU powers off after the failure (netboot.onfail=poweroff)')
  const lines = consoleLines(vm)
  t.deepEqual(
    lines.filter((l) => /^netboot: [a-z_]+ failed: /.test(l)),
    [expected],
  )
  t.deepEqual(
    lines.filter((l) => /^netboot: (verified|attached|mounted|overlay on|switching root)/.test(l) || /NETBOOT-(ROOT|DATA)-/.test(l)),
    [],
    'nothing verified, attached, mounted or switched to',
  )
  return lines
}

/** A direct boot with netboot.retries=1; keeps the console under testLogDir() whatever happens. */
async function boot(name: string, cfg: VmConfig, fn: (vm: BootedVm) => Promise<void>): Promise<void> {
  const {outDir} = await tree()
  await withKeptConsole(`netboot-network-${name}`, {tree: outDir, mode: 'direct', ...cfg, params: {retries: 1, ...cfg.params}}, fn)
}

test.serial('a server throttled to 300 KiB/s: progress lines as it arrives, then verified and booted', async (t) => {
  const size = (await tree()).artifacts['http/root.qcow2']!.size
  const rate = 300 * 1024
  await boot('throttled', {faults: {throttleBytesPerSec: rate, paths: [IMAGE]}}, async (vm) => {
    const matches = await vm.expect(toRoot())
    t.like(parseRootMarker(matches.at(-1)!.line), {format: 'qcow2', overlay: 'yes', write: 'ok'})
    const lines = consoleLines(vm)
    t.true(lines.includes(`netboot: downloading ${imageUrl(vm)} (${size} bytes)`))
    const progress = lines.filter((l) => l.startsWith('netboot: download ') && !l.startsWith('netboot: download failed'))
    for (const l of progress) t.regex(l, /^netboot: download \d{1,3}% \d+\.\d MiB\/s$/)
    const pcts = progress.map((l) => Number(/ (\d+)%/.exec(l)![1]))
    // ~9 s of transfer: a line a second, rising, ending at 100%.
    t.true(pcts.filter((p) => p < 100).length >= 4, `progress lines: ${progress.join(' | ')}`)
    t.deepEqual(pcts, [...pcts].sort((a, b) => a - b))
    t.is(pcts.at(-1), 100)
    const speeds = progress.slice(0, -1).map((l) => Number(/ ([\d.]+) MiB\/s$/.exec(l)![1]))
    t.true(speeds.every((s) => s < 1), `the speed shown follows the throttle: ${speeds.join(', ')}`)
    t.false(lines.some((l) => l.startsWith('netboot: attempt ')), 'slow is not failed: no retry')
    assertVerifiedFirst(t, lines)
  })
})

test.serial('a connection reset mid-download: resumed with a Range request, verified and booted', async (t) => {
  const size = (await tree()).artifacts['http/root.qcow2']!.size
  const cut = MiB
  await boot('reset', {faults: {truncateAfterBytes: cut, truncateCount: 1, truncateMode: 'reset', paths: [IMAGE]}}, async (vm) => {
    const url = imageUrl(vm)
    const [, resumed] = await vm.expect([
      {name: 'retry after the reset', match: `netboot: attempt 1 of 1: read error: Connection reset by peer; retrying ${url} in 1s`, timeoutSec: 120},
      {name: 'resumed', match: new RegExp(`netboot: resuming ${url.replace(/[.]/g, '\\.')} at byte (\\d+)`), timeoutSec: 30},
    ])
    const from = Number(/at byte (\d+)/.exec(resumed!.line)![1])
    t.true(from > 0 && from <= cut, `resumed at byte ${from}`)
    const matches = await vm.expect(toRoot().filter((m) => m.name !== 'download start'))
    t.like(parseRootMarker(matches.at(-1)!.line), {format: 'qcow2', write: 'ok'})
    const lines = consoleLines(vm)
    t.deepEqual(lines.filter((l) => / failed: /.test(l)), [], 'no failure line')
    assertVerifiedFirst(t, lines)
    t.deepEqual(
      vm.server.requests.filter((r) => r.path === IMAGE).map((r) => [r.status, r.range ?? '']),
      [
        [200, ''],
        [206, `bytes=${from}-`],
      ],
      'one cut request, then only the rest with Range',
    )
    t.is(vm.server.requests.filter((r) => r.path === IMAGE).at(-1)!.bytes, size - from)
  })
})

test.serial('no DHCP answer: retried, then "network failed: no DHCP lease on eth0 after 2 attempts"', async (t) => {
  // QEMU's user networking always answers DHCP, so its netdev is turned into a port of an
  // otherwise empty hub: the NIC is up, its DHCP requests go nowhere, like a cable to a switch
  // without a DHCP server.
  const qemuArgs = ['-set', 'netdev.n0.type=hubport', '-set', 'netdev.n0.hubid=0']
  await boot('no-dhcp', {qemuArgs}, async (vm) => {
    const [started, failed] = await vm.expect([
      {name: 'init started', match: /netboot: init started on \S+/, timeoutSec: 60},
      failureMarker('network', 'no DHCP lease on eth0 after 2 attempts', 120),
    ])
    // udhcpc -t 2 -T 3: two discovers 3 s apart, then it gives up; not at once.
    const waitedMs = failed!.atMs - started!.atMs
    t.true(waitedMs >= 5000, `gave up after ${waitedMs} ms of asking`)
    const lines = await assertFailed(t, vm, 'netboot: network failed: no DHCP lease on eth0 after 2 attempts')
    t.false(lines.some((l) => l.startsWith('netboot: network up')))
    t.deepEqual(vm.server.requests, [], 'nothing was requested')
  })
})

test.serial('Content-Length 4 KiB short of the image: "download failed: server announced ...", not retried', async (t) => {
  const size = (await tree()).artifacts['http/root.qcow2']!.size
  await boot('content-length', {faults: {contentLengthDelta: -4096, paths: [IMAGE]}}, async (vm) => {
    const reason = `server announced ${size - 4096} bytes for ${imageUrl(vm)}, expected ${size}`
    await vm.expect([failureMarker('download', reason, 120)])
    const lines = await assertFailed(t, vm, `netboot: download failed: ${reason}`)
    t.false(lines.some((l) => l.startsWith('netboot: attempt ')), 'final: a retry would get the same answer')
    t.is(vm.server.requests.filter((r) => r.path === IMAGE).length, 1)
  })
})

test.serial('a redirect loop on the image: "download failed: too many redirects from <url>", not retried', async (t) => {
  await boot('redirect-loop', {faults: {redirects: {[IMAGE]: IMAGE}}}, async (vm) => {
    const reason = `too many redirects from ${imageUrl(vm)}`
    await vm.expect([failureMarker('download', reason, 120)])
    const lines = await assertFailed(t, vm, `netboot: download failed: ${reason}`)
    t.false(lines.some((l) => l.startsWith('netboot: attempt ')))
    const hits = vm.server.requests.filter((r) => r.path === IMAGE)
    t.true(hits.length > 1 && hits.every((r) => r.status === 302), `${hits.length} redirects`)
  })
})

test.serial('a manifest that is not JSON (a proxy error page): "manifest failed: invalid JSON at byte 1: ..."', async (t) => {
  const {outDir} = await tree()
  const httpDir = await copyHttpDir(outDir)
  try {
    await writeFile(join(httpDir, MANIFEST_FILE), '<html><body>502 Bad Gateway</body></html>\n')
    await boot('manifest-html', {httpDir}, async (vm) => {
      const reason = 'invalid JSON at byte 1: unexpected "<"'
      await vm.expect([failureMarker('manifest', reason, 120)])
      const lines = await assertFailed(t, vm, `netboot: manifest failed: ${reason}`)
      t.false(lines.some((l) => l.startsWith('netboot: downloading ')), 'the image was not fetched')
      t.deepEqual(vm.server.requests.filter((r) => r.path === IMAGE), [])
    })
  } finally {
    await rm(httpDir, {recursive: true, force: true})
  }
})

test.serial('a manifest without the image\'s sha256: "manifest failed: no ..."sha256" string in the manifest"', async (t) => {
  const {outDir} = await tree()
  const httpDir = await copyHttpDir(outDir, {
    manifest: (m) => {
      const files = {...m.files}
      const {size} = files['root.qcow2']!
      files['root.qcow2'] = {size} as (typeof files)[string]
      return {...m, files}
    },
  })
  try {
    await boot('manifest-fields', {httpDir}, async (vm) => {
      const reason = 'no "files"."root.qcow2"."sha256" string in the manifest'
      await vm.expect([failureMarker('manifest', reason, 120)])
      await assertFailed(t, vm, `netboot: manifest failed: ${reason}`)
      t.deepEqual(vm.server.requests.filter((r) => r.path === IMAGE), [], 'an image without a checksum is never fetched')
    })
  } finally {
    await rm(httpDir, {recursive: true, force: true})
  }
})
