import {BaseCommand} from '../../base.js'
import {cacheRoot, formatBytes, listCache, type CacheListing} from '../../lib/cache.js'

export interface CacheLsResult {
  root: string
  totalBytes: number
  entries: CacheListing[]
}

export default class CacheLs extends BaseCommand<typeof CacheLs> {
  static override summary = 'List cache entries with their size, key and last use.'
  static override description = `Entries live in <cache>/<kind>/<key>; the key is the sha256 of everything the artifact was built from
(shown with --json as "manifest"). Entries marked "incomplete" are leftovers of interrupted runs; \`netboot cache clean\` removes them.`

  static override examples = ['<%= config.bin %> cache ls', '<%= config.bin %> cache ls --json']

  public async run(): Promise<CacheLsResult> {
    const entries = await listCache()
    const totalBytes = entries.reduce((n, e) => n + e.bytes, 0)
    const root = cacheRoot()
    if (entries.length === 0) {
      this.say(`cache ${root} is empty`)
    } else {
      const rows = entries.map((e) => [e.kind, e.key === '-' ? '-' : e.key.slice(0, 16), formatBytes(e.bytes), e.lastUsed.slice(0, 16).replace('T', ' '), e.incomplete ? 'incomplete' : ''])
      const header = ['kind', 'key', 'size', 'last used', '']
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
      const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()
      this.say(line(header))
      for (const r of rows) this.say(line(r))
      this.say(`${entries.length} entries, ${formatBytes(totalBytes)} in ${root}`)
    }
    return {root, totalBytes, entries}
  }
}
