// The kernel series, proven against qemu-img in one VM boot: every qcow2 variant of the
// matrix reads back bit for bit what `qemu-img convert -O raw` produces; refused images get
// their errno and kernel message; raw loop devices behave as before; nothing writes to a
// qcow2 image; the kernel log stays clean.
import test from 'ava'
import {execa} from 'execa'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {QemuVm} from '../cli/src/lib/qemu.js'
import {busyboxInitramfs, ext4Disk, GUEST_DIR, loopfmtBinary} from './lib/guest.js'
import {testKernel, testLogDir} from './lib/kernel.js'
import {testedKernels} from './matrix.js'
import {buildImages, sha256File, VIRTUAL_SIZE, type BuiltImages} from './lib/qcow2-variants.js'


interface Run {
  console: string
  images: BuiltImages
  rawFileSha: string
  commandLine: string
}

async function runMatrix(KERNEL_VERSION: string): Promise<Run> {
  const work = await mkdtemp(join(tmpdir(), 'netboot-qcow2-matrix-'))
  const kernel = await testKernel(KERNEL_VERSION)
  const imagesDir = join(work, 'disk')
  const images = await buildImages(imagesDir)

  // the raw-format checks: a small ext4 image with a known file
  const rawTree = join(work, 'raw-tree')
  await mkdir(rawTree)
  await writeFile(join(rawTree, 'hello.txt'), 'raw loop devices still work\n'.repeat(1000))
  const rawFileSha = await sha256File(join(rawTree, 'hello.txt'))
  await execa('mkfs.ext4', ['-q', '-F', '-d', rawTree, join(imagesDir, 'raw.ext4'), '8M'])

  await writeFile(join(imagesDir, 'good.list'), images.good.map((g) => g.file.split('/').pop()!.replace(/\.qcow2$/, '')).join('\n') + '\n')
  await writeFile(join(imagesDir, 'refused.list'), images.refused.map((r) => r.name).join('\n') + '\n')
  await writeFile(join(imagesDir, 'corrupt.list'), images.corrupt.map((c) => c.name).join('\n') + '\n')
  const disk = join(work, 'disk.ext4')
  await ext4Disk(imagesDir, disk)

  const edge = join(work, 'loop-edge')
  await execa('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-Werror', '-I', kernel.headers, '-o', edge, join(GUEST_DIR, 'loop-edge.c')])
  const initrd = join(work, 'initrd.gz')
  await writeFile(initrd, await busyboxInitramfs(join(GUEST_DIR, 'qcow2-matrix.sh'), {
    loopfmt: await loopfmtBinary(kernel.headers),
    'loop-edge': await readFile(edge),
  }))

  const vm = await QemuVm.start({
    kernel: kernel.bzImage,
    initrd,
    memoryMiB: 512,
    append: 'console=ttyS0 panic=-1 loglevel=4',
    extraArgs: ['-drive', `file=${disk},format=raw,if=virtio,readonly=on`],
    consoleLog: join(await testLogDir(), `kernel-qcow2-${KERNEL_VERSION}.console.log`),
  })
  try {
    const failOn = [/Kernel panic/, /MATRIX-FATAL/]
    await vm.waitFor('MATRIX-START', {timeoutMs: 120_000, failOn})
    await vm.waitFor('MATRIX-DONE', {timeoutMs: 20 * 60_000, failOn})
    const run = {console: vm.console, images, rawFileSha, commandLine: vm.commandLine}
    await rm(work, {recursive: true, force: true})
    return run
  } catch (error) {
    throw new Error(`${(error as Error).message}\nwork directory kept: ${work}`)
  } finally {
    await vm.kill()
  }
}


const line = (console: string, prefix: string): string | undefined =>
  console.split('\n').map((l) => l.trim()).find((l) => l.startsWith(prefix))

for (const version of testedKernels()) {
  let matrix: Promise<Run> | undefined
  const getRun = () => (matrix ??= runMatrix(version))

  test(`linux-${version}: every qcow2 variant reads back exactly what qemu-img reads`, async (t) => {
    const run = await getRun()
    t.true(run.images.good.length >= 40, `only ${run.images.good.length} variants`)
    const wrong: string[] = []
    for (const g of run.images.good) {
      const name = g.file.split('/').pop()!.replace(/\.qcow2$/, '')
      const got = line(run.console, `GOOD ${name} `)
      const want = `GOOD ${name} fmt=qcow2 size=${VIRTUAL_SIZE} sha256=${g.sha256}`
      if (got !== want) wrong.push(`${name}: expected "${want}", got "${got ?? '(no line)'}"`)
    }
    t.deepEqual(wrong, [], `reproduce with: ${run.commandLine}`)
  })

  test(`linux-${version}: a read that meets a broken table fails with EIO and a corruption report, never returns data`, async (t) => {
    const run = await getRun()
    t.is(run.images.corrupt.length, 3)
    const wrong: string[] = []
    for (const c of run.images.corrupt) {
      const got = line(run.console, `CORRUPT ${c.name} `)
      const ok = got?.startsWith(`CORRUPT ${c.name} attach=0 read=1 direct-rc=1 err=Input/output_error kmsg=`) &&
        got.includes(`${c.name}.qcow2: image is corrupt: `) && got.includes(c.message)
      if (!ok) wrong.push(`${c.name}: expected attach=0 read=1 direct-rc=1 EIO and "${c.message}", got "${got ?? '(no line)'}"`)
    }
    t.deepEqual(wrong, [], `reproduce with: ${run.commandLine}`)
  })

  test(`linux-${version}: refused images get their errno and a kernel message naming the image`, async (t) => {
    const run = await getRun()
    const wrong: string[] = []
    for (const r of run.images.refused) {
      const got = line(run.console, `REFUSED ${r.name} `)
      const ok = got?.startsWith(`REFUSED ${r.name} rc=${r.exitCode} kmsg=`) && got.includes(`${r.name}.qcow2: `) && got.includes(r.message)
      if (!ok) wrong.push(`${r.name}: expected rc=${r.exitCode} (${r.errno}) and "${r.message}", got "${got ?? '(no line)'}"`)
    }
    t.deepEqual(wrong, [])
  })

  test(`linux-${version}: raw loop devices behave as before, through LOOP_CONFIGURE and LOOP_SET_FD`, async (t) => {
    const run = await getRun()
    t.is(line(run.console, 'RAW-FMT'), 'RAW-FMT raw')
    t.is(line(run.console, 'RAW-FILE'), `RAW-FILE ${run.rawFileSha}`)
    t.is(line(run.console, 'SETFD-FILE'), `SETFD-FILE ${run.rawFileSha} fmt=raw`)
    t.is(line(run.console, 'SETFD-WRITE'), 'SETFD-WRITE ok')
    t.is(line(run.console, 'EDGE raw-via-configure'), 'EDGE raw-via-configure errno=0')
  })

  test(`linux-${version}: the uAPI keeps struct loop_config's size and checks the format`, async (t) => {
    const run = await getRun()
    t.is(line(run.console, 'EDGE sizeof-loop_config'), 'EDGE sizeof-loop_config=304')
    t.is(line(run.console, 'EDGE unknown-format'), 'EDGE unknown-format errno=EINVAL')
  })

  test(`linux-${version}: a qcow2 image is never written: read-write attach gets EROFS, writes and discards fail`, async (t) => {
    const run = await getRun()
    t.is(line(run.console, 'EDGE qcow2-read-write'), 'EDGE qcow2-read-write errno=EROFS')
    t.is(line(run.console, 'EDGE qcow2-rw-fd-read-only-flag'), 'EDGE qcow2-rw-fd-read-only-flag errno=0')
    t.is(line(run.console, 'RO-FLAG'), 'RO-FLAG 1')
    t.regex(line(run.console, 'WRITE ') ?? '', /^WRITE rc=[1-9]/)
    t.regex(line(run.console, 'DISCARD') ?? '', /^DISCARD rc=[1-9]/)
    t.is(line(run.console, 'IMAGE-UNCHANGED'), 'IMAGE-UNCHANGED yes')
  })

  test(`linux-${version}: the kernel log has no BUG, Oops, WARNING or KASAN report`, async (t) => {
    const run = await getRun()
    t.is(line(run.console, 'DMESG-'), 'DMESG-CLEAN')
    t.notRegex(run.console, /\bBUG:|Oops|WARNING:|KASAN|Call Trace/)
  })
}
