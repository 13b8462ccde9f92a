import test from 'ava'
import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {
  buildKernelCmdline,
  dnsmasqConfig,
  ipxeScript,
  labNetwork,
  layoutPxeTree,
  networkFromHttpBase,
  nginxConfig,
  rewriteBootScript,
  splitExtraCmdline,
  type Manifest,
} from '../../src/lib/pxe.js'

const dir = mkdtempSync(join(tmpdir(), 'netboot-pxe-'))
test.after.always(() => rmSync(dir, {recursive: true, force: true}))
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const HEX = 'ab'.repeat(32)

test('command line: contract parameters in a fixed order', (t) => {
  t.is(
    buildKernelCmdline({url: 'http://10.0.2.2:8080/root.qcow2', manifest: 'http://10.0.2.2:8080/manifest.json', onfail: 'poweroff', demo: 'poweroff', retries: 3}),
    'console=ttyS0 panic=-1 netboot.url=http://10.0.2.2:8080/root.qcow2 netboot.manifest=http://10.0.2.2:8080/manifest.json netboot.retries=3 netboot.onfail=poweroff netboot.demo=poweroff',
  )
  t.is(
    buildKernelCmdline({url: 'http://h/r.img', sha256: HEX.toUpperCase(), format: 'raw', overlay: 'none', ip: '10.0.2.15::10.0.2.2:255.255.255.0::eth0', extra: ['quiet', 'loglevel=3']}),
    `console=ttyS0 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0 netboot.url=http://h/r.img netboot.sha256=${HEX} netboot.format=raw netboot.overlay=none quiet loglevel=3`,
  )
})

test('command line: required parameters', (t) => {
  t.regex(t.throws(() => buildKernelCmdline({sha256: HEX}))?.message ?? '', /netboot.url or netboot.manifest is required/)
  t.regex(t.throws(() => buildKernelCmdline({url: 'http://h/r.qcow2'}))?.message ?? '', /never mounts an unverified image/)
  t.notThrows(() => buildKernelCmdline({manifest: 'http://h/manifest.json'}))
})

test('command line: no spaces, quotes or iPXE expansions in values', (t) => {
  for (const bad of [
    {url: 'http://h/a b.qcow2', sha256: HEX},
    {url: 'http://h/"x"', sha256: HEX},
    {url: 'ftp://h/x', sha256: HEX},
    {url: 'http://h/x', sha256: 'abc'},
    {url: 'http://h/x', sha256: HEX, init: 'sbin/init'},
    {url: 'http://h/x', sha256: HEX, retries: -1},
    {url: 'http://h/x', sha256: HEX, extra: ['a=b c']},
    {url: 'http://h/x', sha256: HEX, extra: ["x='1'"]},
    {url: 'http://h/x', sha256: HEX, extra: ['x=${ip}']},
  ]) {
    const err = t.throws(() => buildKernelCmdline(bad), undefined, JSON.stringify(bad))
    t.is((err as {exit?: number}).exit, 2)
  }
  t.deepEqual(splitExtraCmdline('  quiet   loglevel=7 '), ['quiet', 'loglevel=7'])
  t.throws(() => splitExtraCmdline('a="b c"'))
})

test('iPXE script: fetches over HTTP with retries and markers', (t) => {
  const s = ipxeScript({httpBase: 'http://10.0.2.2:1234/', cmdline: 'console=ttyS0 netboot.url=http://10.0.2.2:1234/root.qcow2'})
  t.true(s.startsWith('#!ipxe\n'))
  t.true(s.includes('set netboot-base http://10.0.2.2:1234\n'))
  t.true(s.includes('isset ${ip} || dhcp || goto retry\n'))
  t.true(s.includes('kernel ${netboot-base}/vmlinuz initrd=initramfs.img console=ttyS0 netboot.url=http://10.0.2.2:1234/root.qcow2 || goto retry\n'))
  t.true(s.includes('initrd ${netboot-base}/initramfs.img || goto retry\n'))
  t.true(s.includes('iseq ${netboot-try} 5 && goto failed ||\n'))
  t.true(s.includes('echo netboot: iPXE failed:'))
})

test('layout: tree, manifest with sha256 and sizes, configs; boot script rewrite', async (t) => {
  const src = join(dir, 'src')
  execFileSync('mkdir', ['-p', src])
  writeFileSync(join(src, 'bzImage'), Buffer.alloc(1000, 1))
  writeFileSync(join(src, 'initramfs.cpio.gz'), Buffer.alloc(500, 2))
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(src, 'root.qcow2'), '8M'])
  const out = join(dir, 'out')
  const tree = await layoutPxeTree({
    outDir: out,
    kernel: join(src, 'bzImage'),
    initramfs: join(src, 'initramfs.cpio.gz'),
    image: join(src, 'root.qcow2'),
    params: {onfail: 'poweroff'},
    kernelRelease: '6.1.0-netboot',
    sourceDateEpoch: 1_700_000_000,
  })
  for (const f of ['tftp/boot.ipxe', 'http/vmlinuz', 'http/initramfs.img', 'http/root.qcow2', 'http/manifest.json', 'pxe/dnsmasq.conf', 'pxe/dnsmasq-proxy.conf', 'pxe/nginx.conf']) {
    t.true(existsSync(join(out, f)), f)
    t.true(tree.files.includes(f), f)
  }
  const manifest = JSON.parse(readFileSync(join(out, 'http/manifest.json'), 'utf8')) as Manifest
  t.is(manifest.version, 1)
  t.is(manifest.image, 'root.qcow2')
  t.is(manifest.format, 'qcow2')
  t.is(manifest.created, '2023-11-14T22:13:20.000Z')
  t.is(manifest.kernel.release, '6.1.0-netboot')
  t.deepEqual(Object.keys(manifest.files).sort(), ['initramfs.img', 'root.qcow2', 'vmlinuz'])
  for (const [name, entry] of Object.entries(manifest.files)) {
    const bytes = readFileSync(join(out, 'http', name))
    t.is(entry.sha256, sha(bytes), name)
    t.is(entry.size, bytes.length, name)
  }
  t.is(tree.cmdline, 'console=ttyS0 panic=-1 netboot.url=http://10.0.2.2:8080/root.qcow2 netboot.manifest=http://10.0.2.2:8080/manifest.json netboot.format=qcow2 netboot.onfail=poweroff')
  t.true(readFileSync(tree.bootScript, 'utf8').includes(`kernel \${netboot-base}/vmlinuz initrd=initramfs.img ${tree.cmdline} || goto retry`))

  const cmdline = await rewriteBootScript(tree, 'http://10.0.2.2:40123', {onfail: 'poweroff', demo: 'poweroff'})
  t.true(cmdline.includes('netboot.manifest=http://10.0.2.2:40123/manifest.json'))
  const script = readFileSync(tree.bootScript, 'utf8')
  t.true(script.includes('set netboot-base http://10.0.2.2:40123\n'))
  t.true(script.includes('netboot.demo=poweroff'))

  // A raw image is published as root.img and the stale qcow2 goes away.
  const raw = join(src, 'root.ext4')
  writeFileSync(raw, Buffer.alloc(4096))
  const rawTree = await layoutPxeTree({outDir: out, kernel: join(src, 'bzImage'), initramfs: join(src, 'initramfs.cpio.gz'), image: raw})
  t.is(rawTree.imageName, 'root.img')
  t.is(rawTree.manifest.format, 'raw')
  t.false(existsSync(join(out, 'http/root.qcow2')))
  t.regex(rawTree.cmdline, /netboot.format=raw/)
})

test('lab network from --http-url: server address, DHCP pool of its /24 (without the server), proxy subnet, port', (t) => {
  t.deepEqual(networkFromHttpBase('http://10.77.0.1:8080'), {
    serverAddress: '10.77.0.1',
    dhcpRange: '10.77.0.50,10.77.0.150,255.255.255.0,1h',
    proxySubnet: '10.77.0.0',
    httpPort: 8080,
  })
  t.is(networkFromHttpBase('http://192.168.1.100/netboot').dhcpRange, '192.168.1.160,192.168.1.250,255.255.255.0,1h')
  t.is(networkFromHttpBase('http://192.168.1.100/netboot').httpPort, 80)
  t.deepEqual(networkFromHttpBase('http://boot.lab.example:8000/'), {httpPort: 8000})
  t.deepEqual(networkFromHttpBase('http://10.1.2.300/'), {}, 'not an address, not a host name')
})

test('dnsmasq configs: chainload, fast-DHCP options, and dnsmasq accepts them', (t) => {
  const net = labNetwork({}, '/srv/netboot/tftp', '/srv/netboot/http')
  const full = dnsmasqConfig({...net, mode: 'full'})
  for (const line of [
    'dhcp-match=set:ipxe,175',
    'dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe',
    'dhcp-boot=tag:ipxe,boot.ipxe',
    'no-ping',
    'dhcp-option=tag:ipxe,encap:175,176,1b',
    'enable-ra',
    'dhcp-range=::,constructor:br0,ra-only',
    'tftp-root=/srv/netboot/tftp',
  ]) {
    t.true(full.split('\n').includes(line), line)
  }
  const proxy = dnsmasqConfig({...net, mode: 'proxy'})
  t.true(proxy.split('\n').includes('dhcp-range=192.168.100.0,proxy'))
  t.true(proxy.split('\n').includes('pxe-service=tag:!ipxe,x86PC,"netboot (BIOS)",undionly.kpxe'))
  t.false(proxy.includes('no-ping'))

  let dnsmasq: string | undefined
  for (const p of ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq']) if (existsSync(p)) dnsmasq = p
  if (!dnsmasq) {
    t.log('dnsmasq not installed: syntax check skipped')
    return
  }
  for (const [name, text] of [['full.conf', full], ['proxy.conf', proxy]]) {
    const file = join(dir, name)
    writeFileSync(file, text)
    t.regex(execFileSync(dnsmasq, ['--test', `--conf-file=${file}`], {stdio: ['ignore', 'pipe', 'pipe']}).toString() + 'ok', /ok/)
  }
})

test('nginx config serves the http root', (t) => {
  const conf = nginxConfig({root: '/srv/netboot/http', listen: 8080, serverName: 'boot.lab'})
  t.true(conf.includes('listen 8080;'))
  t.true(conf.includes('root /srv/netboot/http;'))
  t.true(conf.includes('max_ranges 1;'))
  t.true(conf.includes('application/octet-stream qcow2 img;'))
})
