/**
 * The reference model sets the benchmarks run on, synthesised (seed 1) into the temp dir when the
 * cached copy is missing or was made from another version of the config.
 */
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { CONFIGS } from '../tools/export/configs.js';
import { synthesize } from '../tools/export/synth.js';

export async function benchSet(config: 'tiny' | 'small'): Promise<string> {
  const dir = path.join(tmpdir(), 'setokim-bench', `${config}-seed1`);
  const manifest = path.join(dir, 'manifest.json');
  const current = existsSync(manifest) && isDeepStrictEqual(JSON.parse(readFileSync(manifest, 'utf8')).architecture, CONFIGS[config]);
  if (!current) {
    process.stdout.write(`synthesising the ${config} set into ${dir} ...\n`);
    await synthesize({ config, seed: 1, out: dir });
  }
  return dir;
}
