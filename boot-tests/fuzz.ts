// The hostile-image campaign (`npm run fuzz -- [--count N] [--batch N] [--seed N]`): batches
// of malformed qcow2 images, one debug-kernel boot (KASAN, lockdep) per batch. The first
// batch holds every systematic mutation; later ones random flips with their own seeds.
// Writes boot-tests/results/fuzz-<date>.json and exits 1 on any kernel fault.
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {parseArgs} from 'node:util'
import {testKernel} from './lib/kernel.js'
import {runRobustness, summarize} from './lib/robustness.js'

const {values} = parseArgs({
  options: {
    count: {type: 'string', default: '10000'},
    batch: {type: 'string', default: '1000'},
    seed: {type: 'string', default: '1000'},
    kernel: {type: 'string', default: process.env.NETBOOT_TEST_KERNEL ?? '6.1'},
  },
})
const count = Number(values.count)
const batch = Number(values.batch)
const seed = Number(values.seed)

const kernel = await testKernel(values.kernel, 'debug')
const batches = []
let faults = 0
for (let done = 0, i = 0; done < count; i++) {
  const n = Math.min(batch, count - done)
  const run = await runRobustness({kernel, count: n, seed: seed + i, systematic: i === 0, logName: `fuzz-${values.kernel}-batch${i}`})
  const summary = {batch: i, seed: seed + i, ...summarize(run), faultLines: run.faults.slice(0, 20)}
  batches.push(summary)
  faults += run.faults.length
  done += n
  console.log(`batch ${i}: ${JSON.stringify(summary)}`)
}
const totals = {
  kernel: values.kernel,
  images: batches.reduce((a, b) => a + b.images, 0),
  refused: batches.reduce((a, b) => a + b.refused, 0),
  attachedReadOk: batches.reduce((a, b) => a + b.attachedReadOk, 0),
  attachedReadError: batches.reduce((a, b) => a + b.attachedReadError, 0),
  faults,
  seconds: batches.reduce((a, b) => a + b.seconds, 0),
}
const dir = join(import.meta.dirname, 'results')
await mkdir(dir, {recursive: true})
const file = join(dir, `fuzz-${new Date().toISOString().slice(0, 10)}.json`)
await writeFile(file, JSON.stringify({totals, batches}, null, 2) + '\n')
console.log(`${totals.images} images, ${totals.faults} faults, ${Math.round(totals.seconds)} s -> ${file}`)
process.exitCode = faults > 0 ? 1 : 0
