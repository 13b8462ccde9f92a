import test from 'ava'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'

import {PACKAGE_ROOT, schemaKeys} from '../src/lib/config.js'

const readme = readFileSync(join(PACKAGE_ROOT, 'README.md'), 'utf8')

test('README documents every config key', (t) => {
  for (const [key] of schemaKeys()) t.true(readme.includes(`| \`${key}\` |`), `README lacks a row for config key ${key}`)
})

test('README quick start has exactly two commands', (t) => {
  const quick = /## Quick start\n[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)
  t.truthy(quick)
  const commands = quick![1].split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#'))
  t.deepEqual(commands.map((c) => c.split('#')[0].trim()), ['./run demo', './run test'])
})
