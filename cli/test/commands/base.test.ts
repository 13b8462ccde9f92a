import test from 'ava'
import {mkdtempSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import CacheLs from '../../src/commands/cache/ls.js'
import Doctor from '../../src/commands/doctor.js'
import {runCommand} from '../helpers/run-command.js'


function badConfig(): string {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-cmd-'))
  const file = join(dir, 'netboot.config.json')
  writeFileSync(file, JSON.stringify({kernel: {verison: '6.1'}}))
  return file
}

test.serial('a bad config key: one line on stderr naming the key, exit 2', async (t) => {
  const r = await runCommand(CacheLs, ['--config', badConfig()])
  t.is(r.exit, 2)
  const lines = r.stderr.trimEnd().split('\n')
  t.is(lines[0], 'netboot: config key "kernel.verison" is unknown (did you mean "kernel.version"?)')
  t.true(lines.slice(1).every((l) => l.startsWith('  hint: ')))
  t.is(r.stdout, '')
})

test.serial('with --json the same error is a JSON object on stdout, exit 2', async (t) => {
  const r = await runCommand(CacheLs, ['--json', '--config', badConfig()])
  t.is(r.exit, 2)
  const parsed = JSON.parse(r.stdout) as {error: {message: string; exit: number}}
  t.is(parsed.error.message, 'config key "kernel.verison" is unknown (did you mean "kernel.version"?)')
  t.is(parsed.error.exit, 2)
})

test.serial('cache ls --json on an empty cache', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-cmd-cache-'))
  const r = await runCommand(CacheLs, ['--json', '--cache-dir', dir])
  t.is(r.exit, 0)
  t.deepEqual(JSON.parse(r.stdout), {root: dir, totalBytes: 0, entries: []})
})

test.serial('doctor --json lists every tool with its package and the overall verdict', async (t) => {
  const r = await runCommand(Doctor, ['--json'])
  const parsed = JSON.parse(r.stdout) as {ok: boolean; tools: Array<{name: string; pkg: string; found: boolean; required: boolean}>}
  t.true(parsed.tools.some((x) => x.name === 'qemu-system-x86_64' && x.pkg === 'qemu-system-x86'))
  t.true(parsed.tools.some((x) => x.name === 'linux-source-6.1'))
  t.is(parsed.ok, parsed.tools.every((x) => x.found || !x.required))
  t.is(r.exit, parsed.ok ? 0 : 1)
})
