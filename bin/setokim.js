#!/usr/bin/env node
// Entry point of the `setokim` command: runs the compiled CLI (dist/, built by `npm ci`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('setokim: the TypeScript sources are not compiled yet. Run `npm run build` (or `npm ci`).\n');
  process.exit(3);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
