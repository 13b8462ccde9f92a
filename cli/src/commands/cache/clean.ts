import {Flags} from '@oclif/core'

import {BaseCommand} from '../../base.js'
import {cacheRoot, cleanCache, formatBytes, parseDuration, type CacheListing} from '../../lib/cache.js'

export interface CacheCleanResult {
  root: string
  freedBytes: number
  removed: CacheListing[]
}

export default class CacheClean extends BaseCommand<typeof CacheClean> {
  static override summary = 'Remove cache entries.'
  static override description = `Without flags, removes only leftovers of interrupted runs. --older-than removes entries not used for
that long (7d, 12h, 30m, 2w); --all empties the cache (the next build extracts and compiles from scratch).`

  static override examples = ['<%= config.bin %> cache clean', '<%= config.bin %> cache clean --older-than 14d', '<%= config.bin %> cache clean --all']

  static override flags = {
    all: Flags.boolean({summary: 'Remove every entry, ccache included.', exclusive: ['older-than']}),
    'older-than': Flags.string({summary: 'Remove entries last used longer ago than this (e.g. 7d, 12h).'}),
  }

  public async run(): Promise<CacheCleanResult> {
    const olderThanMs = this.flags['older-than'] === undefined ? undefined : parseDuration(this.flags['older-than'])
    const removed = await cleanCache({all: this.flags.all, olderThanMs})
    const freedBytes = removed.reduce((n, e) => n + e.bytes, 0)
    for (const e of removed) this.say(`removed ${e.kind}/${e.key}${e.incomplete ? ' (incomplete)' : ''} ${formatBytes(e.bytes)}`)
    this.say(`freed ${formatBytes(freedBytes)} in ${cacheRoot()}`)
    return {root: cacheRoot(), freedBytes, removed}
  }
}
