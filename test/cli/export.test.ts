/** `setokim export synth` through the CLI entry: writes a verified set; bad options exit 2. */
import t from 'tap';
import { runCli } from '../helpers/cli.js';
import { join } from 'node:path';
import { ModelSet } from '../../src/engine/modelset.js';

const cli = runCli;

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
