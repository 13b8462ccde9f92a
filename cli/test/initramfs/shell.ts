/**
 * Runs initramfs/lib.sh functions on the host the way /init runs them: busybox sh with a PATH
 * holding only busybox applets (so wget, timeout, awk... are busybox's, as in the initramfs).
 */
import {execFile} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync, symlinkSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import {APPLETS} from '../../src/lib/initramfs/index.js'

export const LIB_SH = resolve('initramfs/lib.sh')
export const BUSYBOX = '/bin/busybox'

export interface ShellResult {
  code: number
  stdout: string
  stderr: string
}

export class Sandbox {
  readonly dir = mkdtempSync(join(tmpdir(), 'netboot-sh-'))
  readonly bin = join(this.dir, 'bin')

  constructor() {
    mkdirSync(this.bin)
    for (const applet of APPLETS) symlinkSync(BUSYBOX, join(this.bin, applet))
  }

  /** Runs `script` after sourcing lib.sh, in the sandbox directory. Never rejects. */
  run(script: string, env: Record<string, string> = {}): Promise<ShellResult> {
    return new Promise((done) => {
      execFile(
        BUSYBOX,
        ['sh', '-c', `. ${LIB_SH}\n${script}`],
        {cwd: this.dir, env: {PATH: this.bin, HOME: this.dir, ...env}, timeout: 60_000},
        (err, stdout, stderr) => {
          const code = err ? ((err as {code?: unknown}).code as number | undefined) ?? 1 : 0
          done({code: typeof code === 'number' ? code : 1, stdout, stderr})
        },
      )
    })
  }

  cleanup(): void {
    rmSync(this.dir, {recursive: true, force: true})
  }
}

/** Quotes a value for the shell. */
export const q = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`
