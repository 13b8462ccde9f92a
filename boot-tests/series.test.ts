// Every series applies to its kernel's pristine baseline, patch by patch, and passes
// checkpatch --strict. Uses the tree that `netboot kernel prepare` extracts (cached).
import test from 'ava'
import {execa} from 'execa'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {BASE_TAG, prepareKernel, readSeries, type Series} from '../cli/src/lib/kernel.js'
import {quietContext} from '../cli/src/lib/log.js'
import {parse} from 'yaml'
import {KERNELS} from './matrix.js'

const PATCHES = join(import.meta.dirname, '..', 'patches')
const versions = readdirSync(PATCHES)
  .filter((d) => d.startsWith('linux-') && existsSync(join(PATCHES, d, 'series')))
  .map((d) => d.slice('linux-'.length))
  .filter((v) => !process.env.NETBOOT_TEST_KERNEL || v === process.env.NETBOOT_TEST_KERNEL)

test('every kernel series is in the boot matrix', (t) => {
  const all = readdirSync(PATCHES).filter((d) => d.startsWith('linux-') && existsSync(join(PATCHES, d, 'series')))
  t.deepEqual(all.map((d) => d.slice('linux-'.length)).sort(), [...KERNELS].sort())
})

test('the boot-matrix workflow takes its kernels from matrix.ts and caches under netboot kernel key', async (t) => {
  const root = join(import.meta.dirname, '..')
  const wf = parse(readFileSync(join(root, '.github/workflows/boot-matrix.yml'), 'utf8'))
  const matrixStep = wf.jobs.matrix.steps.find((s: {id?: string}) => s.id === 'matrix')
  const script = /npx tsx (\S+)/.exec(matrixStep.run)?.[1] ?? 'no tsx script in the matrix step'
  const out = await execa('npx', ['tsx', script], {cwd: root})
  const kernels = /^kernels=(.*)$/m.exec(out.stdout)?.[1]
  t.deepEqual(JSON.parse(kernels ?? 'null'), [...KERNELS], 'the matrix job prints the kernels of matrix.ts')
  t.is(wf.jobs.matrix.outputs.kernels, '${{ steps.matrix.outputs.kernels }}')
  t.is(wf.jobs.boot.needs, 'matrix')
  t.is(wf.jobs.boot.strategy.matrix.kernel, '${{ fromJSON(needs.matrix.outputs.kernels) }}')

  const steps = wf.jobs.boot.steps as Array<{id?: string; run?: string; uses?: string; with?: Record<string, string>}>
  const keys = steps.find((s) => s.id === 'keys')!
  t.regex(keys.run!, /kernel key --kernel '\$\{\{ matrix\.kernel \}\}'\)/)
  const cache = steps.find((s) => s.uses?.startsWith('actions/cache') && s.with?.path.includes('/kernel/'))!
  // every variant the boot tests build (testKernel(version, variant) calls) is cached
  const variants = new Set<string>()
  for (const f of readdirSync(join(root, 'boot-tests')).filter((f) => f.endsWith('.test.ts'))) {
    for (const m of readFileSync(join(root, 'boot-tests', f), 'utf8').matchAll(/testKernel\([^,)]+, '(\w+)'\)/g)) variants.add(m[1])
  }
  t.true(variants.has('debug') && variants.has('modular'), [...variants].join(' '))
  for (const v of variants) {
    t.regex(keys.run!, new RegExp(`--variant ${v}\\b`), `no cache key for the ${v} kernel`)
    t.true(cache.with!.key.includes(`\${{ steps.keys.outputs.${v} }}`) && cache.with!.path.includes(`\${{ steps.keys.outputs.${v} }}`), v)
  }
  t.true(cache.with!.key.includes('${{ steps.keys.outputs.kernel }}'))
  // the jobs run the commands `npm test` and `npm run test:matrix` run
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  for (const script of ['test:boot', 'test:matrix']) {
    t.true(steps.some((s) => s.run?.startsWith(`npm run ${script}`)), script)
    t.truthy(pkg.scripts[script])
  }
})

for (const version of versions) {
  const series = (): Series => readSeries(join(PATCHES, `linux-${version}`), version)

  test(`linux-${version}: the series applies to the pristine tree patch by patch`, async (t) => {
    const {tree} = await prepareKernel(quietContext(), version)
    // apply to a scratch index of the baseline: no checkout, the prepared tree is untouched
    const scratch = await mkdtemp(join(tmpdir(), 'netboot-series-'))
    const env = {...process.env, GIT_INDEX_FILE: join(scratch, 'index')}
    try {
      await execa('git', ['-C', tree, 'read-tree', BASE_TAG], {env})
      for (const patch of series().patches) {
        const r = await execa('git', ['-C', tree, 'apply', '--cached', patch.path], {env, reject: false})
        t.is(r.exitCode, 0, `${patch.name}: ${r.stderr}`)
      }
    } finally {
      await rm(scratch, {recursive: true, force: true})
    }
  })

  test(`linux-${version}: every patch passes checkpatch --strict`, async (t) => {
    const {tree} = await prepareKernel(quietContext(), version)
    // Debian's python3 has the modules checkpatch's SPDX check imports
    const env = {...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`}
    for (const patch of series().patches) {
      const r = await execa('perl', [join(tree, 'scripts/checkpatch.pl'), '--strict', '--no-summary', '--terse', '--show-types', patch.path], {cwd: tree, env, reject: false})
      const findings = r.stdout.split('\n').filter((l) => /: (ERROR|WARNING|CHECK):/.test(l))
      // the only finding allowed is the MAINTAINERS question for a file an existing pattern
      // covers, and the commit message must say so
      const unexplained = findings.filter((l) => !(l.includes('FILE_PATH_CHANGES') && /MAINTAINERS/.test(readFileSync(patch.path, 'utf8').split('\n---\n')[0] ?? '')))
      t.deepEqual(unexplained, [], `${patch.name}\n${r.stdout}\n${r.stderr}`)
      t.notRegex(r.stderr, /Traceback/, `${patch.name}: checkpatch's helper scripts failed:\n${r.stderr}`)
    }
  })
}
