import test from 'ava'
import {mkdtempSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {defaultConfig, editDistance, loadConfig, schemaKeys, validateConfig} from '../../src/lib/config.js'
import {NetbootError} from '../../src/lib/errors.js'

const base = defaultConfig('/work')

function failure(raw: unknown): NetbootError {
  const err = (() => {
    try {
      validateConfig(raw, '/cfg', base)
    } catch (e) {
      return e
    }
    return undefined
  })()
  if (!(err instanceof NetbootError)) throw new Error(`expected a NetbootError, got ${String(err)}`)
  return err
}

test('defaults apply when the file sets nothing', (t) => {
  const c = validateConfig({}, '/cfg', base)
  t.deepEqual(c, base)
  t.is(c.kernel.version, '6.1')
  t.is(c.image.source, 'demo')
  t.is(c.output, '/work/out')
})

test('values override defaults and relative paths resolve against the config file directory', (t) => {
  const c = validateConfig({output: 'build/out', kernel: {version: '6.12', jobs: 2}, boot: {memoryMiB: 1024}}, '/cfg', base)
  t.is(c.output, '/cfg/build/out')
  t.is(c.kernel.version, '6.12')
  t.is(c.kernel.jobs, 2)
  t.is(c.boot.memoryMiB, 1024)
  t.is(c.boot.timeoutSec, base.boot.timeoutSec, 'untouched sibling keeps its default')
})

test('an unknown key is named with a did-you-mean hint, on one line, exit code 2', (t) => {
  const err = failure({kernel: {verison: '6.1'}})
  t.is(err.message, 'config key "kernel.verison" is unknown (did you mean "kernel.version"?)')
  t.is(err.exit, 2)
  t.false(err.message.includes('\n'))
})

test('an unknown top-level key far from any real key gets no hint', (t) => {
  t.is(failure({zzzzzzzzzz: 1}).message, 'config key "zzzzzzzzzz" is unknown')
})

test('type, range and enum errors name the key and quote the value', (t) => {
  t.is(failure({boot: {memoryMiB: 'lots'}}).message, 'config key "boot.memoryMiB" must be an integer, got "lots"')
  t.is(failure({boot: {memoryMiB: 1.5}}).message, 'config key "boot.memoryMiB" must be an integer, got 1.5')
  t.is(failure({serve: {port: 70_000}}).message, 'config key "serve.port" must be between 0 and 65535, got 70000')
  t.is(failure({image: {compression: 'lzma'}}).message, 'config key "image.compression" must be one of "none", "deflate", "zlib", "zstd", got "lzma"')
  t.is(failure({kernel: '6.1'}).message, 'config key "kernel" must be an object, got "6.1"')
  t.is(failure({output: ''}).message, 'config key "output" must be a non-empty path string, got ""')
  t.regex(failure([1]).message, /must be a JSON object, got an array/)
})

test('edit distance counts a transposition as one edit', (t) => {
  t.is(editDistance('verison', 'version'), 1)
  t.is(editDistance('kitten', 'sitting'), 3)
  t.is(editDistance('', 'abc'), 3)
})

test('every schema key has help text (the README table is generated from it)', (t) => {
  const keys = schemaKeys()
  t.true(keys.length >= 10)
  for (const [key, leaf] of keys) t.true(leaf.help.length > 5, key)
})

test('loadConfig: missing default file means defaults, missing explicit file is an error, bad JSON names the file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netboot-config-'))
  t.is(loadConfig(undefined, dir).file, undefined)
  t.throws(() => loadConfig('nope.json', dir), {message: /config file .*nope\.json does not exist/})
  writeFileSync(join(dir, 'netboot.config.json'), '{"output": "o",}')
  t.throws(() => loadConfig(undefined, dir), {message: /netboot\.config\.json is not valid JSON/})
  writeFileSync(join(dir, 'netboot.config.json'), '{"output": "o"}')
  const loaded = loadConfig(undefined, dir)
  t.is(loaded.config.output, join(dir, 'o'))
  t.is(loaded.file, join(dir, 'netboot.config.json'))
})
