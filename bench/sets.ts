/**
 * The reference model sets the benchmarks run on, synthesised (seed 1) into the temp dir when the
 * cached copy is missing, was made from another version of the config, or does not open under
 * this checkout's stage contract. The cache is per checkout: several worktrees of the project on
 * one machine (each maybe with another export) do not share or overwrite each other's sets.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { openModelSet } from '../src/engine/modelset.js';
import { CONFIGS } from '../tools/export/configs.js';
import { synthesize } from '../tools/export/synth.js';

const checkout = createHash('sha256')
  .update(path.resolve(import.meta.dirname, '..'))
  .digest('hex')
  .slice(0, 8);

export async function benchSet(config: 'tiny' | 'small'): Promise<string> {
  const dir = path.join(tmpdir(), 'setokim-bench', `${config}-seed1-${checkout}`);
  const manifest = path.join(dir, 'manifest.json');
  let current =
    existsSync(manifest) && isDeepStrictEqual(JSON.parse(readFileSync(manifest, 'utf8')).architecture, CONFIGS[config]);
  if (current)
    current = await openModelSet(dir, { verify: false }).then(
      () => true,
      () => false,
    );
  if (!current) {
    process.stdout.write(`synthesising the ${config} set into ${dir} ...\n`);
    await synthesize({ config, seed: 1, out: dir });
  }
  return dir;
}
