/** `setokim export engine` through the CLI entry. */
import t from 'tap';
import { runCli } from '../helpers/cli.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readEngineManifest } from '../../src/engine/engine-manifest.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';

const cli = runCli;

const reason = tensorrtUnavailableReason();

t.test('export engine is registered under export and says what it does', async (t) => {
  const help = await cli(['export', 'engine', '--help']);
  t.equal(help.status, 0, 'help returns instead of exiting the process');
  t.match(help.out, /build TensorRT engines for a model set on this device/);
  t.match(help.out, /--workspace-mb/);
});

t.test('bad options are BAD_ARGUMENT', async (t) => {
  const r = await cli(['export', 'engine', '--model', '/nowhere', '--stages', 'encoder,vision', '--no-progress']);
  t.equal(r.status, 2);
  t.match(r.err, /\[BAD_ARGUMENT\]: export engine: --stages: Invalid option: expected one of "encoder"/);
  const w = await cli(['export', 'engine', '--model', '/nowhere', '--workspace-mb', '0']);
  t.match(w.err, /--workspace-mb: /);
});

t.test(
  'without TensorRT: one clear BACKEND_UNAVAILABLE line, exit 3, no stack trace',
  { skip: !reason && 'TensorRT is available here' },
  async (t) => {
    const set = join(t.testdir(), 'set');
    t.equal(
      (await cli(['export', 'synth', '--config', 'tiny', '--seed', '1', '--out', set, '--no-progress'])).status,
      0,
    );
    const r = await cli(['export', 'engine', '--model', set, '--no-progress']);
    t.equal(r.status, 3);
    t.match(r.err, /^setokim: error \[BACKEND_UNAVAILABLE\]: export engine needs TensorRT and a GPU: /);
    t.match(r.err, reason!.slice(0, 40));
    t.notMatch(r.err, /\n\s+at /, 'no stack trace');
    t.notOk(existsSync(join(set, 'engines')), 'nothing written');
  },
);

t.test(
  'with TensorRT: builds the embed stage with a manifest',
  { skip: !!reason && `TensorRT is not available here: ${reason}` },
  async (t) => {
    const set = join(t.testdir(), 'set');
    t.equal(
      (await cli(['export', 'synth', '--config', 'tiny', '--seed', '1', '--out', set, '--no-progress'])).status,
      0,
    );
    const r = await cli(['export', 'engine', '--model', set, '--stages', 'embed', '--no-progress']);
    t.equal(r.status, 0, r.err);
    const plan = join(set, 'engines', 'embed.fp32.plan');
    t.ok(existsSync(plan));
    t.equal(readEngineManifest(plan).stage, 'embed');
  },
);
