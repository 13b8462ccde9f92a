#!/usr/bin/env node
// Runs the compiled commands in cli/dist (build them with `npm run build`).
import {execute} from '@oclif/core'

await execute({dir: import.meta.url})
