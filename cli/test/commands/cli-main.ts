// Runs one netboot command from the TypeScript sources as its own process, the way
// cli/bin/run.js runs the compiled ones: `node --import tsx cli-main.ts <topic:command> [args]`.
// The subprocess tests use it to see real exit codes, stderr and signals.
import {handle} from '@oclif/core'

import {PACKAGE_ROOT} from '../../src/lib/config.js'

const [id, ...argv] = process.argv.slice(2)
if (!id) throw new Error('usage: cli-main.ts <command id> [args...]')
const mod = (await import(`../../src/commands/${id.replaceAll(':', '/')}.js`)) as {
  default: {run(argv: string[], root: string): Promise<unknown>}
}
await mod.default.run(argv, PACKAGE_ROOT).catch(handle)
