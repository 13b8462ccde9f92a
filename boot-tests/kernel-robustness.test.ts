// The debug kernel (KASAN, lockdep, hung-task and soft-lockup detectors) runs the qcow2 KUnit
// suite during boot, then attaches and reads a fixed smoke set of hostile images. Pass: KUnit
// all green; every image refused or read (I/O errors allowed); no fault in the kernel log.
import test from 'ava'
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {testKernel, testLogDir} from './lib/kernel.js'
import {runRobustness, summarize, type RobustnessRun} from './lib/robustness.js'
import {testedKernels} from './matrix.js'

const SMOKE_COUNT = Number(process.env.NETBOOT_HOSTILE_COUNT ?? 400)

for (const version of testedKernels()) {
  let run: Promise<RobustnessRun> | undefined
  const getRun = () =>
    (run ??= (async () => {
      const r = await runRobustness({kernel: await testKernel(version, 'debug'), count: SMOKE_COUNT, seed: 1, logName: `kernel-robustness-${version}`})
      await writeFile(join(await testLogDir(), `kernel-robustness-${version}.json`), JSON.stringify(summarize(r), null, 2))
      return r
    })())

  test(`linux-${version}: the qcow2 KUnit suite passes under KASAN and lockdep`, async (t) => {
    const r = await getRun()
    t.truthy(r.kunit, 'no KUnit summary for loop_qcow2 on the console')
    t.is(r.kunit?.fail, 0)
    t.true((r.kunit?.pass ?? 0) >= 50, `only ${r.kunit?.pass} KUnit cases passed`)
    t.true(r.kunit?.suiteOk)
  })

  test(`linux-${version}: hostile images are refused or read with I/O errors, never a kernel fault`, async (t) => {
    const r = await getRun()
    t.is(r.outcomes.length, SMOKE_COUNT, 'an image has no result line')
    t.deepEqual(r.faults, [], `reproduce with: ${r.commandLine}`)
    t.true(r.dmesgClean)
    const s = summarize(r)
    // the set must exercise both sides: refusals at attach and reads through corrupt tables
    t.true(s.refused > 50, JSON.stringify(s))
    t.true(s.attachedReadError > 5, JSON.stringify(s))
    t.log(JSON.stringify(s))
  })
}
