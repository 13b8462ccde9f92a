import test from 'ava'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execFileSync} from 'node:child_process'

import {NetbootError} from '../../src/lib/errors.js'
import {BASE_TAG, buildKernel, kernelBuildKey, prepareKernel} from '../../src/lib/kernel.js'
import {quietContext} from '../../src/lib/log.js'

// buildKernel's orchestration (cache key, reuse and why not, option check, layout of the result)
// against a miniature tree and a stand-in `make` that behaves like Kbuild for the targets netboot
// uses: no compiler time spent, every decision of the real flow exercised.

const FAKE_MAKE = `#!/bin/bash
set -e
tree= out= hdr= target=
for a in "$@"; do
  case "$a" in
    -C) next=tree ;;
    O=*) out=\${a#O=} ;;
    INSTALL_HDR_PATH=*) hdr=\${a#INSTALL_HDR_PATH=} ;;
    tinyconfig|olddefconfig|bzImage|headers_install) target=$a ;;
    *) if [ "$next" = tree ]; then tree=$a; next=; fi ;;
  esac
done
case "$target" in
  tinyconfig) printf '#\\n# Linux/x86 6.1.192 Kernel Configuration\\n#\\nCONFIG_64BIT=y\\n' > "$out/.config" ;;
  olddefconfig)
    # Kconfig keeps only the options the tree declares (everything else is silently dropped).
    { head -4 "$out/.config"; grep '^CONFIG_' "$out/.config" | while IFS== read -r name value; do
        grep -q "^config \${name#CONFIG_}\$" "$tree/Kconfig" && echo "$name=$value"; done; } | sort -u > "$out/.config.new"
    mv "$out/.config.new" "$out/.config" ;;
  bzImage)
    for f in init/main kernel/fork drivers/block/loop; do echo "  CC      $f.o"; done
    mkdir -p "$out/arch/x86/boot"; echo "bzImage of $(git -C "$tree" rev-parse HEAD)" > "$out/arch/x86/boot/bzImage" ;;
  headers_install) mkdir -p "$hdr/include/linux"; cp "$tree/include/uapi/linux/loop.h" "$hdr/include/linux/loop.h" ;;
  *) echo "fake make: unexpected target in: $*" >&2; exit 2 ;;
esac
`

const MERGE_CONFIG = `#!/bin/sh
# merge_config.sh -m -O <dir> <base> <fragment>: later assignments win, like the real one.
out=$3; base=$4; frag=$5
cat "$base" "$frag" > "$out/.config.merged"; mv "$out/.config.merged" "$out/.config"
`

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], {cwd, encoding: 'utf8'})
}

function setup() {
  const root = mkdtempSync(join(tmpdir(), 'netboot-kbuild-'))
  process.env.NETBOOT_CACHE = join(root, 'cache')
  const bin = join(root, 'bin')
  mkdirSync(bin)
  writeFileSync(join(bin, 'make'), FAKE_MAKE)
  chmodSync(join(bin, 'make'), 0o755)
  if (!process.env.PATH?.startsWith(bin)) process.env.PATH = `${bin}:${process.env.PATH}`

  const tree = join(root, 'linux-6.1')
  mkdirSync(join(tree, 'scripts/kconfig'), {recursive: true})
  mkdirSync(join(tree, 'include/uapi/linux'), {recursive: true})
  writeFileSync(join(tree, 'Makefile'), 'VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\n')
  writeFileSync(join(tree, 'Kconfig'), 'config 64BIT\nconfig BLK_DEV_LOOP\n')
  writeFileSync(join(tree, 'include/uapi/linux/loop.h'), '/* loop */\n')
  writeFileSync(join(tree, 'scripts/kconfig/merge_config.sh'), MERGE_CONFIG)
  chmodSync(join(tree, 'scripts/kconfig/merge_config.sh'), 0o755)

  const series = join(root, 'series')
  mkdirSync(series)
  writeFileSync(join(series, 'config'), 'CONFIG_BLK_DEV_LOOP=y\nCONFIG_BLK_DEV_LOOP_FILE_FMT_QCOW2=y\n')
  return {root, tree, series}
}

async function writeSeries(tree: string, series: string, kconfigLine: string) {
  // The series adds the qcow2 option to Kconfig (as the real one does) in one patch.
  const scratch = mkdtempSync(join(tmpdir(), 'netboot-kbuild-scratch-'))
  execFileSync('git', ['clone', '-q', tree, scratch])
  git(scratch, 'checkout', '-q', BASE_TAG)
  writeFileSync(join(scratch, 'Kconfig'), readFileSync(join(scratch, 'Kconfig'), 'utf8') + kconfigLine)
  git(scratch, 'commit', '-q', '-am', 'loop: add the qcow2 file format')
  execFileSync('git', ['format-patch', '-q', '-o', series, `${BASE_TAG}..HEAD`], {cwd: scratch})
  writeFileSync(join(series, 'series'), '0001-loop-add-the-qcow2-file-format.patch\n')
}

test.serial('build, reuse, and rebuild with the reason when a patch changes', async (t) => {
  const {tree, series} = setup()
  const ctx = quietContext()
  await prepareKernel(ctx, tree)
  await writeSeries(tree, series, 'config BLK_DEV_LOOP_FILE_FMT_QCOW2\n')

  const first = await buildKernel(ctx, {kernel: tree, series})
  t.false(first.reused)
  t.is(first.reason, 'no kernel built yet in this cache')
  t.is(first.version, '6.1.192')
  t.regex(readFileSync(first.bzImage!, 'utf8'), /^bzImage of [0-9a-f]{40}/)
  t.true(existsSync(join(first.headers!, 'linux', 'loop.h')))
  t.regex(readFileSync(first.config, 'utf8'), /^CONFIG_BLK_DEV_LOOP_FILE_FMT_QCOW2=y$/m)
  t.deepEqual(first.patches, ['0001-loop-add-the-qcow2-file-format.patch'])

  t.is((await kernelBuildKey(ctx, {kernel: tree, series})).key, first.key, 'kernel key names the build it would reuse')

  const second = await buildKernel(ctx, {kernel: tree, series})
  t.true(second.reused)
  t.is(second.key, first.key)
  t.is(second.version, '6.1.192', 'read back from the cached config')

  // Same subject, different content: a new key, and the reason names the patch.
  git(tree, 'reset', '-q', '--hard', BASE_TAG)
  await writeSeries(tree, series, 'config BLK_DEV_LOOP_FILE_FMT_QCOW2\n# v2\n')
  const third = await buildKernel(ctx, {kernel: tree, series})
  t.false(third.reused)
  t.not(third.key, first.key)
  t.regex(third.reason, /^patch 0001-loop-add-the-qcow2-file-format\.patch changed since the build of /)
})

test.serial('options Kconfig dropped are named and nothing is cached', async (t) => {
  const {tree, series} = setup()
  const ctx = quietContext()
  await prepareKernel(ctx, tree)
  // This series forgets to declare the option the fragment wants.
  await writeSeries(tree, series, 'config SOMETHING_ELSE\n')
  const err = await t.throwsAsync(buildKernel(ctx, {kernel: tree, series}), {instanceOf: NetbootError})
  t.regex(err?.message ?? '', /1 option\(s\) of .*config did not survive olddefconfig: CONFIG_BLK_DEV_LOOP_FILE_FMT_QCOW2=y \(got not set\)$/)
  t.false(existsSync(join(process.env.NETBOOT_CACHE!, 'kernel')))
})

test.serial('--config-only stops after the check', async (t) => {
  const {tree, series} = setup()
  const ctx = quietContext()
  await prepareKernel(ctx, tree)
  await writeSeries(tree, series, 'config BLK_DEV_LOOP_FILE_FMT_QCOW2\n')
  const r = await buildKernel(ctx, {kernel: tree, series, configOnly: true})
  t.is(r.bzImage, undefined)
  t.regex(readFileSync(r.config, 'utf8'), /CONFIG_BLK_DEV_LOOP_FILE_FMT_QCOW2=y/)
  t.false(existsSync(join(process.env.NETBOOT_CACHE!, 'kernel')))
})

test.serial('no series: a clear error, no unpatched build', async (t) => {
  const {root, tree} = setup()
  const err = await t.throwsAsync(buildKernel(quietContext(), {kernel: tree, series: join(root, 'nope')}), {instanceOf: NetbootError})
  t.is(err?.message, `no series for kernel 6.1: ${join(root, 'nope', 'series')} does not exist`)
})
