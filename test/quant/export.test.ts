/**
 * `setokim export quantize` end to end on the tiny set: int8 variants written and verified, the
 * pipeline runs them (and only them) with precision int8, and the refusals carry their codes.
 */
import t from 'tap';
import { cp, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { verifyStageFile } from '../../src/engine/manifest.js';
import { ModelSet } from '../../src/engine/modelset.js';
import { createPipeline } from '../../src/pipeline/pipeline.js';
import { STAGES } from '../../src/engine/contract.js';
import { decodeModel, FeedRecorder, RecordingSession } from '../../src/quant/index.js';
import { checkTensorRtSupport } from '../../src/quant/tensorrt-support.js';
import { runCli } from '../helpers/cli.js';
import { busyImage, collect, tinySet } from '../pipeline/fixtures.js';

const fixture = await tinySet();
t.teardown(fixture.cleanup);
const dir = fixture.dir;
const fp32Sizes = Object.fromEntries(
  await Promise.all((await readdir(dir)).map(async (f) => [f, (await readFile(path.join(dir, f))).length] as const)),
);

const r = await runCli(['export', 'quantize', '--models', dir, '--precision', 'int8', '--no-progress']);

t.test('export quantize writes an int8 variant per stage with MatMul weights and reports each stage', async (t) => {
  t.equal(r.status, 0, r.err);
  for (const s of ['encoder', 'merger', 'llm', 'diffusion', 'detokenizer', 'mask_decoder']) {
    const line = r.out.split('\n').find((l) => l.startsWith(`${s}:`)) ?? '';
    const m =
      /weights ([\d.]+) KiB -> ([\d.]+) KiB.*max rel error ([\d.e+-]+), cosine ([\d.]+) on (\d+) held-out inputs/.exec(
        line,
      );
    t.ok(m, `${s}: ${line}`);
    if (!m) continue;
    t.ok(Number(m[1]) / Number(m[2]) > 3.5, `${s}: weights ${m[1]} -> ${m[2]} KiB`);
    // The LLM's outputs are one step's: the last position's logits and the new tokens' keys and
    // values per layer (a decode step: one token's). No cached rows dilute their error any more,
    // so its floor is lower (measured: new_keys.0 cosine 0.99857, rel 0.117 on the tiny set).
    const floor = s === 'llm' ? 0.998 : 0.999;
    t.ok(Number(m[3]) <= 0.15 && Number(m[4]) > floor, `${s}: rel ${m[3]}, cosine ${m[4]}`);
    t.ok(Number(m[5]) >= 1);
  }
  t.match(r.out, /embed: skipped \(no MatMul/);
  // the diffusion head's input x grows ~190x over the sampling steps: it must stay float
  t.match(r.out, /diffusion: .*1 left float: x range varies \d+x/);
  const set = await ModelSet.open(dir); // verifies every file, the variants' sha256 included
  for (const s of ['encoder', 'merger', 'llm', 'diffusion', 'detokenizer', 'mask_decoder'] as const) {
    const v = set.variants(s).find((x) => x.precision === 'int8');
    t.ok(v, `${s} lists an int8 variant`);
    t.equal(v?.file, `${s}.int8.onnx`);
    t.ok(v!.bytes < fp32Sizes[`${s}.onnx`]!, `${s}: ${fp32Sizes[`${s}.onnx`]} -> ${v!.bytes} bytes`);
    await verifyStageFile(dir, v!);
  }
  t.equal(set.variants('embed').length, 1, 'embed has only its fp32 file');
  t.equal(
    fp32Sizes['llm.onnx']! / set.variants('llm')[1]!.bytes > 3.5,
    true,
    'the LLM file (all MatMul weights) is ~4x smaller',
  );
  t.same(
    (await readdir(dir)).filter((f) => f.includes('.tmp')),
    [],
    'no temp files left',
  );
});

t.test('the pipeline with precision int8 runs the int8 files end to end and answers', async (t) => {
  const image = await busyImage(3);
  const ask = { id: 'q', task: 'ask' as const, image, prompt: 'What is in the picture?', generation: { maxTokens: 6 } };
  const p = await createPipeline({ modelsDir: dir, precision: 'int8', maxInFlight: 1, threads: 1 });
  const ev = await collect(p.run(ask)).finally(() => p.close());
  const done = ev.find((e) => e.type === 'done');
  t.ok(done, JSON.stringify(ev.find((e) => e.type === 'error')));
  t.equal(done?.type === 'done' && done.generatedTokens, 6);
  t.ok(
    ev
      .filter((e) => e.type === 'text')
      .map((e) => (e.type === 'text' ? e.delta : ''))
      .join('').length > 0,
    'some text',
  );

  // Proof the int8 file is what runs: break it, and only precision int8 fails to open.
  const broken = path.join(t.testdir(), 'set');
  await cp(dir, broken, { recursive: true });
  await writeFile(path.join(broken, 'llm.int8.onnx'), new Uint8Array(4096).fill(7));
  await t.rejects(createPipeline({ modelsDir: broken, precision: 'int8', verify: false, threads: 1 }), {
    code: 'BACKEND_UNAVAILABLE',
    message: /llm.*llm\.int8\.onnx/s,
  });
  const fp32 = await createPipeline({ modelsDir: broken, verify: false, threads: 1 });
  await fp32.close();
  await t.rejects(ModelSet.open(broken), { code: 'MODEL_INVALID' }, 'the broken variant fails verification by size');
});

t.test('setokim run --precision int8 answers through the CLI', async (t) => {
  const work = t.testdir({});
  const img = path.join(work, 'busy.jpg');
  await writeFile(img, await busyImage(4));
  const run = await runCli([
    'run',
    '--models',
    dir,
    '--precision',
    'int8',
    '--image',
    img,
    '--prompt',
    'Describe it',
    '--max-tokens',
    '4',
    '--out',
    work,
  ]);
  t.equal(run.status, 0, run.err);
  t.match(run.out, /tokens: \d+ vision, \d+ prompt, 4 generated/);
});

t.test('every int8 graph passes TensorRT 10.3 and 11.1 ONNX parser support (no error, no warning)', async (t) => {
  const set = await ModelSet.open(dir, { verify: false });
  for (const s of STAGES) {
    const v = set.variants(s).find((x) => x.precision === 'int8');
    if (!v) continue;
    const m = decodeModel(new Uint8Array(await readFile(path.join(dir, v.file))));
    for (const version of ['10.3', '11.1']) t.same(checkTensorRtSupport(m, version), [], `${v.file} on ${version}`);
  }
});

t.test('refusals: a bad precision, a missing model set, a tolerance no stage meets', async (t) => {
  const bogus = await runCli(['export', 'quantize', '--models', dir, '--precision', 'int3']);
  t.equal(bogus.status, 2);
  t.match(bogus.err, /BAD_ARGUMENT.*int3/);
  const noModels = await runCli(['export', 'quantize']);
  t.equal(noModels.status, 2);
  t.match(noModels.err, /--models: required/);
  const missing = await runCli(['export', 'quantize', '--models', path.join(t.testdir(), 'nowhere')]);
  t.equal(missing.status, 3);
  t.match(missing.err, /MODEL_NOT_FOUND/);
  const badStage = await runCli(['export', 'quantize', '--models', dir, '--stages', 'encoder,vae']);
  t.equal(badStage.status, 2);

  const manifest = await readFile(path.join(dir, 'manifest.json'), 'utf8');
  const before = await readFile(path.join(dir, 'merger.int8.onnx'));
  const strict = await runCli([
    'export',
    'quantize',
    '--models',
    dir,
    '--stages',
    'merger',
    '--calibration-images',
    '4',
    '--tolerance',
    '1e-6',
    '--no-progress',
  ]);
  t.equal(strict.status, 3, strict.err);
  t.match(strict.err, /QUANT_TOLERANCE.*stage merger.*over the tolerance 0\.000001; nothing was written/);
  t.equal(await readFile(path.join(dir, 'manifest.json'), 'utf8'), manifest, 'manifest untouched');
  t.same(await readFile(path.join(dir, 'merger.int8.onnx')), before, 'the existing variant untouched');
  t.same(
    (await readdir(dir)).filter((f) => f.includes('.tmp')),
    [],
    'no temp files left',
  );
});

t.test('a stage named twice in --stages is quantised once', async (t) => {
  const twice = await runCli([
    'export',
    'quantize',
    '--models',
    dir,
    '--stages',
    'merger,merger',
    '--calibration-images',
    '2',
    '--no-progress',
  ]);
  t.equal(twice.status, 0, twice.err);
  t.equal(twice.out.split('\n').filter((l) => l.startsWith('merger:')).length, 1, twice.out);
  await verifyStageFile(
    dir,
    (await ModelSet.open(dir)).variants('merger').find((v) => v.precision === 'int8')!,
  );
  t.same(
    (await readdir(dir)).filter((f) => f.includes('.tmp')),
    [],
    'no temp files left',
  );
});

t.test('RecordingSession copies the feeds before the run (a transferred buffer may be detached after)', async (t) => {
  const rec = new FeedRecorder(2);
  const data = new Float32Array([1, 2, 3]);
  const inner = {
    backend: 'x',
    inputNames: ['a'],
    outputNames: [],
    run: async () => (data.fill(0), {}),
    dispose: async () => {},
    // No resident tensors in this run: the recorder reads one back only when a feed is resident.
    residentBytes: 0,
    allocate: async () => [],
    copyRows: async () => {},
    read: async () => {
      throw new Error('no resident feed here');
    },
    release: async () => {},
  };
  const s = new RecordingSession(inner, 'stage', rec);
  await s.run({ a: { dtype: 'float32', dims: [3], data, location: 'host' } });
  await s.run({ a: { dtype: 'float32', dims: [3], data: new Float32Array([1, 2, 3]), location: 'host' } }); // same values as the first: kept once
  t.same([...(rec.samples('stage')[0]!.a!.data as Float32Array)], [1, 2, 3]);
  t.equal(rec.runs('stage'), 1, 'identical feeds count once');
  for (let i = 0; i < 10; i++)
    rec.add('stage', { a: { dtype: 'float32', dims: [1], data: new Float32Array([i + 10]), location: 'host' } });
  t.equal(rec.samples('stage').length, 2, 'the reservoir keeps at most its capacity');
  t.equal(rec.runs('stage'), 11);
});
