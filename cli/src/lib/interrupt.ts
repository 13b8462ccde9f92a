/**
 * Ctrl-C (SIGINT) or SIGTERM in the middle of a long step must not leave a half-written artifact
 * behind: a step registers the temporary paths it is writing, and on the signal they are removed
 * before the process exits with 128 + the signal number, as a shell reports it. Node's default
 * (exit at once) would skip every `finally` that cleans up.
 *
 * The handlers are installed only while something is registered, so a command that waits for
 * signals itself (`netboot serve`, `netboot boot`) is not affected when it has nothing pending.
 */
import {rmSync} from 'node:fs'

const pending = new Set<string>()
const SIGNALS: Array<[NodeJS.Signals, number]> = [
  ['SIGINT', 130],
  ['SIGTERM', 143],
]
const handlers = new Map<NodeJS.Signals, () => void>()

function onSignal(signal: NodeJS.Signals, code: number): void {
  const removed: string[] = []
  for (const path of pending) {
    try {
      rmSync(path, {recursive: true, force: true})
      removed.push(path)
    } catch {
      // Exiting anyway; what could not be removed is named below as not removed.
    }
  }
  const left = [...pending].filter((p) => !removed.includes(p))
  process.stderr.write(
    `netboot: interrupted (${signal})${removed.length > 0 ? `; removed the partial ${removed.join(', ')}` : ''}` +
      `${left.length > 0 ? `; could not remove ${left.join(', ')}` : ''}\n`,
  )
  process.exit(code)
}

/**
 * Removes `path` (file or directory) if the process is interrupted before the returned function
 * is called. Call it once the path is renamed into place or cleaned up normally.
 */
export function removeOnInterrupt(path: string): () => void {
  pending.add(path)
  if (handlers.size === 0) {
    for (const [signal, code] of SIGNALS) {
      const handler = () => onSignal(signal, code)
      handlers.set(signal, handler)
      process.on(signal, handler)
    }
  }
  return () => {
    pending.delete(path)
    if (pending.size === 0) {
      for (const [signal, handler] of handlers) process.off(signal, handler)
      handlers.clear()
    }
  }
}
