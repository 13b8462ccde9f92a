import {Flags} from '@oclif/core'
import {join, resolve} from 'node:path'

import {BaseCommand} from '../base.js'
import {startServer} from '../lib/serve.js'

export interface ServeResult {
  url: string
  dir: string
  requests: number
}

export default class Serve extends BaseCommand<typeof Serve> {
  static override summary = 'Serve the PXE tree\'s out/http over HTTP (GET, HEAD, Range) until interrupted.'
  static override description = `Serves the kernel, initramfs, root image and manifest that iPXE and the netboot initramfs fetch.
Binds 127.0.0.1 by default: QEMU's user networking reaches it as 10.0.2.2. Use --bind 0.0.0.0 (or an address) to serve
real PXE clients. Every request is logged to stdout and to <dir>/../serve.log. Stop it with Ctrl-C.`

  static override examples = [
    '<%= config.bin %> serve',
    '<%= config.bin %> serve --dir out/http --port 8080',
    '<%= config.bin %> serve --bind 0.0.0.0 --port 80',
  ]

  static override flags = {
    dir: Flags.string({summary: 'Directory to serve (default: <output>/http).'}),
    bind: Flags.string({summary: 'Address to listen on (default: serve.host from the config, 127.0.0.1).'}),
    port: Flags.integer({summary: 'TCP port; 0 picks a free one (default: serve.port from the config).', min: 0, max: 65_535}),
  }

  public async run(): Promise<ServeResult> {
    const dir = resolve(this.flags.dir ?? join(this.settings.output, 'http'))
    const logFile = join(dir, '..', 'serve.log')
    const server = await startServer({
      dir,
      bind: this.flags.bind ?? this.settings.serve.host,
      port: this.flags.port ?? this.settings.serve.port,
      logFile,
      onLog: (line) => this.say(line),
    })
    this.say(`serving ${dir} at ${server.url}/ (access log ${logFile}); Ctrl-C to stop`)
    await new Promise<void>((done) => {
      const stop = () => {
        process.off('SIGINT', stop)
        process.off('SIGTERM', stop)
        done()
      }
      process.on('SIGINT', stop)
      process.on('SIGTERM', stop)
    })
    await server.close()
    return {url: server.url, dir, requests: server.requests.length}
  }
}
