import test from 'ava'
import {createHash} from 'node:crypto'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {q, Sandbox} from './shell.js'

const box = new Sandbox()
test.after.always(() => box.cleanup())

test('cmdline_get: last occurrence wins, default when absent, bare word is empty', async (t) => {
  const cmdline = 'console=ttyS0 netboot.retries=3 quiet netboot.url=http://10.0.2.2:8080/root.qcow2 netboot.retries=7 netboot.x'
  const r = await box.run(
    `CMDLINE=${q(cmdline)}
    echo "[$(cmdline_get netboot.retries 5)]"
    echo "[$(cmdline_get netboot.format qcow2)]"
    echo "[$(cmdline_get netboot.url)]"
    echo "[$(cmdline_get netboot.x dflt)]"
    echo "[$(cmdline_get netboot 1)]"`,
  )
  t.is(r.stdout, '[7]\n[qcow2]\n[http://10.0.2.2:8080/root.qcow2]\n[]\n[1]\n')
})

test('cmdline_get does not glob', async (t) => {
  writeFileSync(join(box.dir, 'glob-me'), '')
  const r = await box.run(`CMDLINE='a=* b=glob*'; cmdline_get a; cmdline_get b`)
  t.is(r.stdout, '*\nglob*\n')
})

test('mask_to_prefix: dotted masks, prefix lengths, and refusals', async (t) => {
  const cases: Array<[string, string]> = [
    ['255.255.255.0', '24'], ['255.255.0.0', '16'], ['255.255.255.252', '30'], ['0.0.0.0', '0'],
    ['255.255.255.255', '32'], ['8', '8'], ['255.0.255.0', 'bad'], ['255.255.255', 'bad'], ['33', 'bad'], ['256.0.0.0', 'bad'],
  ]
  const r = await box.run(cases.map(([m]) => `mask_to_prefix ${q(m)} || echo bad`).join('\n'))
  t.deepEqual(r.stdout.trim().split('\n'), cases.map(([, want]) => want))
})

test('parse_ip_param: dhcp, static form, and clear errors', async (t) => {
  const r = await box.run(`
    parse_ip_param dhcp && echo "$IP_MODE"
    parse_ip_param '' && echo "$IP_MODE"
    parse_ip_param 10.0.2.15::10.0.2.2:255.255.255.0::eth0 && echo "$IP_MODE $IP_ADDR $IP_GW $IP_PREFIX $IP_IFACE"
    parse_ip_param 192.168.1.9:::16:: && echo "$IP_MODE $IP_ADDR [$IP_GW] $IP_PREFIX [$IP_IFACE]"
    parse_ip_param 10.0.2.300::10.0.2.2:255.255.255.0::eth0 || echo "E1 $REASON"
    parse_ip_param 10.0.2.15::gw:255.255.255.0::eth0 || echo "E2 $REASON"
    parse_ip_param 10.0.2.15::10.0.2.2:255.0.255.0::eth0 || echo "E3 $REASON"`)
  t.is(
    r.stdout,
    [
      'dhcp',
      'dhcp',
      'static 10.0.2.15 10.0.2.2 24 eth0',
      'static 192.168.1.9 [] 16 []',
      "E1 ip=10.0.2.300::10.0.2.2:255.255.255.0::eth0: '10.0.2.300' is not an IPv4 address (use ip=dhcp or ip=<ip>::<gw>:<mask>::<iface>)",
      "E2 ip=10.0.2.15::gw:255.255.255.0::eth0: gateway 'gw' is not an IPv4 address",
      "E3 ip=10.0.2.15::10.0.2.2:255.0.255.0::eth0: netmask '255.0.255.0' is not a netmask",
      '',
    ].join('\n'),
  )
})

// Tests in a file run concurrently: every input file gets its own name.
let serial = 0
function input(content: string): string {
  const name = `input-${++serial}`
  writeFileSync(join(box.dir, name), content)
  return name
}

async function flatten(json: string) {
  return box.run(`json_flatten < ${input(json)}`)
}

test('json_flatten: paths, types, escapes', async (t) => {
  const r = await flatten('{"image": "root.qcow2", "files": {"root.qcow2": {"sha256": "ab", "size": 123}},\n "l": [1, -2.5e3, true, false, null, "a\\"b\\\\c\\/d\\n", {}, []]}')
  t.is(r.code, 0, r.stderr)
  t.is(
    r.stdout,
    [
      '/image\ts\troot.qcow2',
      '/files/root.qcow2/sha256\ts\tab',
      '/files/root.qcow2/size\tn\t123',
      '/l/0\tn\t1',
      '/l/1\tn\t-2.5e3',
      '/l/2\tb\ttrue',
      '/l/3\tb\tfalse',
      '/l/4\tz\tnull',
      '/l/5\ts\ta"b\\c/d\\n',
      '',
    ].join('\n'),
  )
})

test('json_flatten refuses what is not JSON, saying where', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['', /byte 1: unexpected end of input|byte 2: unexpected end of input/],
    ['{"a":1,}', /byte 8: expected a string key/],
    ['{"a" 1}', /expected : after key "a"/],
    ['{"a":1} x', /trailing data/],
    ['{"a":"x', /unterminated string/],
    ['[1 2]', /expected , or \] in array/],
    ['{"a":01}', /expected , or \} in object/],
    ['{"a":tru}', /unexpected "t"/],
    ['{"a":"\\q"}', /bad escape/],
    ["{'a':1}", /expected a string key/],
  ]
  for (const [input, message] of bad) {
    const r = await flatten(input)
    t.not(r.code, 0, `accepted ${JSON.stringify(input)}`)
    t.regex(r.stderr, /^invalid JSON at byte \d+: /, input)
    t.regex(r.stderr, message, input)
  }
})

const SHA = createHash('sha256').update('image').digest('hex')

async function manifest(json: string, base = 'http://10.0.2.2:8080/boot') {
  return box.run(`if parse_manifest ${input(json)} ${q(base)}; then echo "OK $MANIFEST_IMAGE $MANIFEST_URL $MANIFEST_SHA256 $MANIFEST_SIZE"; else echo "FAIL $REASON"; fi`)
}

test('parse_manifest: the image entry, its URL next to the manifest, sha256 lower-cased', async (t) => {
  const json = JSON.stringify({
    files: {'vmlinuz': {sha256: '0'.repeat(64), size: 1}, 'root.qcow2': {sha256: SHA.toUpperCase(), size: 4_294_967_296}},
    image: 'root.qcow2',
  }, null, 2)
  const r = await manifest(json)
  t.is(r.stdout, `OK root.qcow2 http://10.0.2.2:8080/boot/root.qcow2 ${SHA} 4294967296\n`)
})

test('parse_manifest refuses missing and malformed fields', async (t) => {
  const cases: Array<[unknown, string]> = [
    [{files: {}}, 'no "image" string in the manifest'],
    [{image: 5, files: {}}, 'no "image" string in the manifest'],
    [{image: 'root.qcow2', files: {}}, 'no "files"."root.qcow2"."sha256" string in the manifest'],
    [{image: 'root.qcow2', files: {'root.qcow2': {sha256: 'abc', size: 1}}}, "sha256 of root.qcow2 is not 64 hex digits: 'abc'"],
    [{image: 'root.qcow2', files: {'root.qcow2': {sha256: SHA}}}, 'no "files"."root.qcow2"."size" byte count in the manifest'],
    [{image: 'root.qcow2', files: {'root.qcow2': {sha256: SHA, size: '12'}}}, 'no "files"."root.qcow2"."size" byte count in the manifest'],
    [{image: 'root.qcow2', files: {'root.qcow2': {sha256: SHA, size: -1}}}, 'no "files"."root.qcow2"."size" byte count in the manifest'],
    [{image: 'root.qcow2', files: {'root.qcow2': {sha256: SHA, size: 1.5}}}, 'no "files"."root.qcow2"."size" byte count in the manifest'],
    [{image: '../etc/passwd', files: {}}, '"image": "../etc/passwd" is not a relative file name'],
    [{image: '/root.qcow2', files: {}}, '"image": "/root.qcow2" is not a relative file name'],
  ]
  for (const [json, reason] of cases) {
    const r = await manifest(JSON.stringify(json))
    t.is(r.stdout, `FAIL ${reason}\n`, JSON.stringify(json))
  }
  const broken = await manifest('{"image": "root.qcow2",')
  t.regex(broken.stdout, /^FAIL invalid JSON at byte \d+: /)
})

test('memory: MemAvailable against image size plus margin, exact message', async (t) => {
  writeFileSync(join(box.dir, 'meminfo'), 'MemTotal:  500000 kB\nMemFree:   100000 kB\nMemAvailable:   200000 kB\n')
  writeFileSync(join(box.dir, 'meminfo-old'), 'MemTotal:  500000 kB\nMemFree:   100000 kB\n')
  const r = await box.run(`
    mem_available_kib meminfo
    mem_available_kib meminfo-old
    mem_check 1024 200000 && echo fits
    mem_check $((300 * 1048576)) 200000 || echo "$REASON"
    NETBOOT_MEM_MARGIN_KIB=0 mem_check 1025 2 && echo exact
    NETBOOT_MEM_MARGIN_KIB=0 mem_check 2049 2 || echo "$REASON"`)
  t.is(r.stdout, ['200000', '100000', 'fits', `image needs ${300 * 1024 + 32_768} KiB but only 200000 KiB free`, 'exact', 'image needs 3 KiB but only 2 KiB free', ''].join('\n'))
})

test('verify_sha256 reports both sums', async (t) => {
  writeFileSync(join(box.dir, 'img'), 'image')
  const r = await box.run(`verify_sha256 img ${SHA} && echo good; verify_sha256 img ${'0'.repeat(64)} || echo "$REASON"`)
  t.is(r.stdout, `good\nsha256 mismatch: expected ${'0'.repeat(64)} got ${SHA}\n`)
})

test('is_mounted reads the mount table', async (t) => {
  writeFileSync(join(box.dir, 'mounts'), 'rootfs / rootfs rw 0 0\n/dev/loop0 /newroot/lower ext4 ro 0 0\n')
  const r = await box.run('is_mounted /newroot/lower mounts && echo yes; is_mounted /newroot mounts || echo no')
  t.is(r.stdout, 'yes\nno\n')
})

test('mib_per_s and progress_line', async (t) => {
  const r = await box.run('mib_per_s 10485760 100; mib_per_s 1048576 300; mib_per_s 5 0; progress_line 50 200 1048576 50')
  t.is(r.stdout, '10.0\n0.3\n0.0\nnetboot: download 25% 2.0 MiB/s\n')
})
