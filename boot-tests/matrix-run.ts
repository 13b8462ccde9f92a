// `npm run test:matrix`: every cell of the boot matrix (kernels x root variants x NICs and
// firmware (BIOS; UEFI with virtio), plus the
// failure cases per kernel), each a real PXE boot in QEMU, then a table of cells with
// pass/fail/time. Writes the table as JSON next to the boot logs; exits 1 when a cell fails.
// `npm test` runs a representative subset of the same cells (netboot-e2e, netboot-failures).
import {execa} from 'execa'
import {existsSync} from 'node:fs'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {buildTree} from './lib/build.js'
import {testLogDir} from './lib/kernel.js'
import {demoRootMarkers, withVm} from './lib/vm.js'
import {FAILURE_FILES, FIRMWARES, NICS, ROOTS, testedKernels, type RootVariant} from './matrix.js'

interface Cell {
  kernel: string
  cell: string
  ok: boolean
  seconds: number
  detail?: string
}

const cells: Cell[] = []
/** NETBOOT_MATRIX_ONLY=<regex>: only root variants (and no failure files) whose name matches. */
const only = process.env.NETBOOT_MATRIX_ONLY ? new RegExp(process.env.NETBOOT_MATRIX_ONLY) : undefined
const work = await mkdtemp(join(tmpdir(), 'netboot-matrix-'))

async function timed(kernel: string, cell: string, fn: () => Promise<void>): Promise<void> {
  const started = Date.now()
  try {
    await fn()
    cells.push({kernel, cell, ok: true, seconds: (Date.now() - started) / 1000})
  } catch (error) {
    cells.push({kernel, cell, ok: false, seconds: (Date.now() - started) / 1000, detail: (error as Error).message.split('\n')[0]})
  }
  const c = cells.at(-1)!
  console.log(`${c.ok ? 'pass' : 'FAIL'}  linux-${kernel}  ${cell}  ${c.seconds.toFixed(1)} s${c.detail ? `  ${c.detail}` : ''}`)
}

async function treeFor(kernel: string, root: RootVariant): Promise<string> {
  const out = join(work, `${kernel}-${root.name}`)
  await buildTree(out, {kernel, imageFormat: root.format, compression: root.compression, clusterSize: root.clusterSize})
  if (root.extendedL2) {
    // the image builder makes standard L2 tables; qemu-img rewrites the same image with extended ones
    const converted = join(work, `${kernel}-${root.name}-extl2.qcow2`)
    await execa('qemu-img', ['convert', '-O', 'qcow2', '-o', `extended_l2=on,cluster_size=${root.clusterSize ?? 65536}`, join(out, 'http', 'root.qcow2'), converted])
    await buildTree(out, {kernel, imageSource: converted, compression: 'none'})
  }
  return out
}

try {
  for (const kernel of testedKernels()) {
    for (const root of ROOTS.filter((r) => !only || only.test(r.name))) {
      let tree: string | undefined
      await timed(kernel, `build ${root.name}`, async () => {
        tree = await treeFor(kernel, root)
      })
      type Client = {firmware: (typeof FIRMWARES)[number]; nic: (typeof NICS)[number]}
      const clients: Client[] = []
      for (const firmware of FIRMWARES) {
        for (const nic of firmware === 'bios' ? NICS : (['virtio'] as const)) clients.push({firmware, nic})
      }
      for (const {firmware, nic} of clients) {
        await timed(kernel, `${root.name} ${nic} ${firmware}`, async () => {
          if (!tree) throw new Error('no tree (build failed)')
          await withVm({tree, nic, firmware}, async (vm) => {
            await vm.expect(demoRootMarkers({format: root.format}))
          })
        })
      }
    }
    for (const file of only ? [] : FAILURE_FILES.filter((f) => existsSync(f))) {
      const r = await execa('npx', ['ava', '--tap', '--config', 'ava.boot.config.mjs', file], {env: {...process.env, NETBOOT_TEST_KERNEL: kernel}, reject: false, all: true})
      for (const m of (r.all ?? '').matchAll(/^(ok|not ok) \d+ - (.+?)(?: # .*)?$/gm)) {
        cells.push({kernel, cell: m[2]!, ok: m[1] === 'ok', seconds: NaN})
        console.log(`${m[1] === 'ok' ? 'pass' : 'FAIL'}  linux-${kernel}  ${m[2]}`)
      }
    }
  }
} finally {
  await rm(work, {recursive: true, force: true})
}

const width = Math.max(...cells.map((c) => c.cell.length), 10)
console.log(`\n${'kernel'.padEnd(12)} ${'cell'.padEnd(width)}  result  time`)
for (const c of cells) console.log(`${`linux-${c.kernel}`.padEnd(12)} ${c.cell.padEnd(width)}  ${c.ok ? 'pass  ' : 'FAIL  '}  ${Number.isNaN(c.seconds) ? '' : `${c.seconds.toFixed(1)} s`}`)
const failed = cells.filter((c) => !c.ok).length
console.log(`${cells.length - failed} passed, ${failed} failed`)
const file = join(await testLogDir(), `matrix-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
await writeFile(file, JSON.stringify(cells, null, 2))
console.log(`table: ${file}`)
process.exitCode = failed ? 1 : 0
