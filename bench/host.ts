// The setup network-boot users run without the kernel driver: qemu-nbd on the server, the
// kernel's NBD client in the guest. Here the server is the bench host, reached through QEMU's
// user networking (guest 10.0.2.2 is the host's loopback).
import {spawn} from 'node:child_process'
import {open} from 'node:fs/promises'
import {connect} from 'node:net'

export interface HostNbd {
  port: number
  stop(): Promise<void>
}

async function accepting(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), res(true)))
    s.once('error', () => res(false))
  })
}

/** qemu-nbd serving `image` read-only on 127.0.0.1:`port` until stop(). */
export async function hostSide(image: string, port: number, logFile: string): Promise<HostNbd> {
  // --persistent: the readiness probe below is a connection of its own (qemu-nbd logs it as a
  // failed negotiation, hence the log file rather than the terminal)
  const log = await open(logFile, 'w')
  const child = spawn('qemu-nbd', ['--read-only', '--format=qcow2', '--persistent', '--shared=4', '--bind=127.0.0.1', `--port=${port}`, image], {
    stdio: ['ignore', log.fd, log.fd],
  })
  await log.close()
  const exited = new Promise<void>((res) => child.once('exit', () => res()))
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`qemu-nbd exited with ${child.exitCode} before serving ${image} (see ${logFile})`)
    if (await accepting(port)) {
      return {
        port,
        async stop() {
          if (child.exitCode === null) child.kill('SIGTERM')
          await exited
        },
      }
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  child.kill('SIGKILL')
  throw new Error(`qemu-nbd did not listen on 127.0.0.1:${port} within 10 s`)
}
