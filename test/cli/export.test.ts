/** `setokim export synth` through the CLI entry: writes a verified set; bad options exit 2. */
import t from 'tap';
import { join } from 'node:path';
import { main } from '../../src/cli/main.js';
import { ModelSet } from '../../src/engine/modelset.js';

/** Runs the CLI with stdout/stderr captured. */
async function cli(args: string[]): Promise<{ status: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const w1 = process.stdout.write;
  const w2 = process.stderr.write;
  process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
  try {
    const status = await main(args);
    return { status, out: out.join(''), err: err.join('') };
  } finally {
    process.stdout.write = w1;
    process.stderr.write = w2;
  }
}

t.test('export synth writes a complete model set that verifies', async (t) => {
  const dir = join(t.testdir(), 'set');
  const r = await cli(['export', 'synth', '--config', 'tiny', '--seed', '5', '--out', dir, '--no-progress']);
  t.equal(r.status, 0, r.err);
  t.match(r.out, /setokim-tiny-seed5: 7 stages, [\d.]+ M parameters/);
  const set = await ModelSet.open(dir);
  t.equal(set.id, 'setokim-tiny-seed5');
  t.ok(set.has('mask_decoder'));
});

t.test('bad options are refused with BAD_ARGUMENT (exit 2)', async (t) => {
  const r = await cli(['export', 'synth', '--config', 'huge', '--seed', '-1', '--out', t.testdir()]);
  t.equal(r.status, 2);
  t.match(r.err, /BAD_ARGUMENT.*--config.*--seed/);
  const missing = await cli(['export', 'synth', '--config', 'tiny']);
  t.equal(missing.status, 2);
  t.match(missing.err, /--seed: required; --out: required/);
});
