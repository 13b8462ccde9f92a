// The boot matrix for GitHub Actions: `name=<JSON>` lines for $GITHUB_OUTPUT, read back with
// fromJSON() by .github/workflows/boot-matrix.yml, so the workflow's jobs come from matrix.ts.
import {FIRMWARES, KERNELS, NICS, ROOTS} from './matrix.js'

export function githubOutputs(): string[] {
  return [
    `kernels=${JSON.stringify(KERNELS)}`,
    `roots=${JSON.stringify(ROOTS.map((r) => r.name))}`,
    `nics=${JSON.stringify(NICS)}`,
    `firmwares=${JSON.stringify(FIRMWARES)}`,
  ]
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(githubOutputs().join('\n'))
