/** `setokim export engine` through the CLI entry. */
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { buildProgram, main } from '../../src/cli/main.js';
import { readEngineManifest } from '../../src/engine/engine-manifest.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';

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

const reason = tensorrtUnavailableReason();

t.test('export engine is registered under export and says what it does', async (t) => {
  // Not through --help: commander exits the process from a subcommand's help (see main.ts).
  const engine = buildProgram().commands.find((c) => c.name() === 'export')?.commands.find((c) => c.name() === 'engine');
  t.ok(engine, 'registered');
  t.match(engine!.description(), /build TensorRT engines for a model set on this device/);
  t.match(engine!.helpInformation(), /--workspace-mb/);
});

t.test('bad options are BAD_ARGUMENT', async (t) => {
  const r = await cli(['export', 'engine', '--model', '/nowhere', '--stages', 'encoder,vision', '--no-progress']);
  t.equal(r.status, 2);
  t.match(r.err, /\[BAD_ARGUMENT\]: export engine: --stages: Invalid option: expected one of "encoder"/);
  const w = await cli(['export', 'engine', '--model', '/nowhere', '--workspace-mb', '0']);
  t.match(w.err, /--workspace-mb: /);
});

t.test('without TensorRT: one clear BACKEND_UNAVAILABLE line, exit 3, no stack trace', { skip: !reason && 'TensorRT is available here' }, async (t) => {
  const set = join(t.testdir(), 'set');
  t.equal((await cli(['export', 'synth', '--config', 'tiny', '--seed', '1', '--out', set, '--no-progress'])).status, 0);
  const r = await cli(['export', 'engine', '--model', set, '--no-progress']);
  t.equal(r.status, 3);
  t.match(r.err, /^setokim: error \[BACKEND_UNAVAILABLE\]: export engine needs TensorRT and a GPU: /);
  t.match(r.err, reason!.slice(0, 40));
  t.notMatch(r.err, /\n\s+at /, 'no stack trace');
  t.notOk(existsSync(join(set, 'engines')), 'nothing written');
});

t.test('with TensorRT: builds the embed stage with a manifest', { skip: !!reason && `TensorRT is not available here: ${reason}` }, async (t) => {
  const set = join(t.testdir(), 'set');
  t.equal((await cli(['export', 'synth', '--config', 'tiny', '--seed', '1', '--out', set, '--no-progress'])).status, 0);
  const r = await cli(['export', 'engine', '--model', set, '--stages', 'embed', '--no-progress']);
  t.equal(r.status, 0, r.err);
  const plan = join(set, 'engines', 'embed.fp32.plan');
  t.ok(existsSync(plan));
  t.equal(readEngineManifest(plan).stage, 'embed');
});
