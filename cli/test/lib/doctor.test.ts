import test from 'ava'
import {readFileSync} from 'node:fs'

import {elfIsStatic, findOnPath, missingPackages, parseDpkgVersions, parseVersion, requireTools, TOOLS, type ToolStatus} from '../../src/lib/doctor.js'
import {NetbootError} from '../../src/lib/errors.js'

// Banners as the Debian 12 tools print them.
const banners: Array<[string, string, string]> = [
  ['qemu-system-x86_64', 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard', '7.2.22'],
  ['qemu-img', 'qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)', '7.2.22'],
  ['gcc', 'gcc (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.', '12.2.0'],
  ['make', 'GNU Make 4.3\nBuilt for x86_64-pc-linux-gnu', '4.3'],
  ['bison', 'bison (GNU Bison) 3.8.2\nWritten by Robert Corbett and Richard Stallman.', '3.8.2'],
  ['bc', 'bc 1.07.1\nCopyright 1991-1994, 1997, 1998, 2000, 2004, 2006, 2008, 2012-2017 Free Software Foundation, Inc.', '1.07.1'],
  ['ccache', 'ccache version 4.7.5\nFeatures: file-storage http-storage', '4.7.5'],
  ['mkfs.ext4', 'mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0', '1.47.0'],
  ['zstd', '*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***', '1.5.4'],
  ['busybox', 'BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.', '1.35.0'],
  ['git', 'git version 2.39.5', '2.39.5'],
  ['dnsmasq', 'Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley', '2.90'],
  ['xz', 'xz (XZ Utils) 5.4.1\nliblzma 5.4.1', '5.4.1'],
  ['rsync', 'rsync  version 3.2.7  protocol version 31\nCopyright (C) 1996-2022 by Andrew Tridgell', '3.2.7'],
]

for (const [tool, banner, version] of banners) {
  test(`parseVersion reads ${tool}'s banner`, (t) => {
    t.is(parseVersion(tool, banner), version)
  })
}

test('parseVersion falls back to the first dotted number, and gives up on none', (t) => {
  t.is(parseVersion('something', 'tool release 3.14.159 built today'), '3.14.159')
  t.is(parseVersion('something', 'no version here'), undefined)
})

test('parseDpkgVersions strips the architecture qualifier', (t) => {
  const map = parseDpkgVersions('libc6-dev:amd64 2.36-9+deb12u14\nlinux-source-6.1 6.1.192-2\n\n')
  t.is(map.get('libc6-dev'), '2.36-9+deb12u14')
  t.is(map.get('linux-source-6.1'), '6.1.192-2')
})

function elf64(phTypes: number[]): Buffer {
  const buf = Buffer.alloc(64 + phTypes.length * 56)
  buf.writeUInt32BE(0x7f454c46, 0)
  buf[4] = 2 // ELFCLASS64
  buf[5] = 1 // little endian
  buf.writeBigUInt64LE(64n, 32) // e_phoff
  buf.writeUInt16LE(56, 54) // e_phentsize
  buf.writeUInt16LE(phTypes.length, 56) // e_phnum
  phTypes.forEach((type, i) => buf.writeUInt32LE(type, 64 + i * 56))
  return buf
}

test('elfIsStatic: PT_INTERP means dynamic', (t) => {
  t.true(elfIsStatic(elf64([1, 1, 4])))
  t.false(elfIsStatic(elf64([6, 3, 1])))
  t.throws(() => elfIsStatic(Buffer.from('#!/bin/sh\necho hi\n'.padEnd(80))), {message: 'not an ELF file'})
})

test('elfIsStatic on real binaries: node is dynamic', (t) => {
  t.false(elfIsStatic(readFileSync(process.execPath).subarray(0, 4096)))
})

test('findOnPath finds sh and not a made-up tool', (t) => {
  t.truthy(findOnPath('sh'))
  t.is(findOnPath('netboot-no-such-tool-xyz'), undefined)
})

test('missingPackages deduplicates and honours optional', (t) => {
  const s = (name: string, pkg: string, required: boolean, found: boolean): ToolStatus => ({name, pkg, required, found, purpose: ''})
  const statuses = [s('qemu-img', 'qemu-utils', true, false), s('qemu-io', 'qemu-utils', true, false), s('dnsmasq', 'dnsmasq-base', false, false), s('gcc', 'gcc', true, true)]
  t.deepEqual(missingPackages(statuses, false), ['qemu-utils'])
  t.deepEqual(missingPackages(statuses, true), ['qemu-utils', 'dnsmasq-base'])
})

test('every tool names a Debian package and a purpose', (t) => {
  for (const tool of TOOLS) {
    t.regex(tool.pkg, /^[a-z0-9][a-z0-9.+-]+$/, tool.name)
    t.true(tool.purpose.length > 3, tool.name)
  }
})

test('requireTools rejects unknown names loudly (a typo in a command is a bug)', async (t) => {
  await t.throwsAsync(requireTools(['no-such-tool']), {message: /unknown tool "no-such-tool"/})
  const err = await requireTools(['git']).then(() => undefined, (e: unknown) => e)
  t.true(err === undefined || err instanceof NetbootError)
})
