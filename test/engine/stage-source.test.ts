/** A real (tiny) model set through stageSource and the default registry. */
import t from 'tap';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tensor } from '../../src/engine/backend.js';
import { enginePlanPath } from '../../src/engine/engine-builder.js';
import { openModelSet } from '../../src/engine/modelset.js';
import { type Attempt, createDefaultRegistry } from '../../src/engine/registry.js';
import { stageSource } from '../../src/engine/stage-source.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { synthesize } from '../../tools/export/synth.js';
import { tmpDir } from './fixtures.js';

const dir = path.join(tmpDir(), 'set');
await synthesize({ config: 'tiny', seed: 3, out: dir });
const set = await openModelSet(dir);

t.test('a stage offers its ONNX graph and signature; an engine once one is built', async (t) => {
  const src = stageSource(set, 'embed');
  t.equal(src.stage, 'embed');
  t.equal(src.onnx, set.stagePath('embed'));
  t.equal(src.engine, undefined, 'no engine built yet');
  t.same(src.signature, set.manifest.stages.embed!.signature);
  const plan = enginePlanPath(dir, 'embed', set.manifest.stages.embed!.precision);
  mkdirSync(path.dirname(plan), { recursive: true });
  writeFileSync(plan, 'a plan from another machine');
  t.equal(stageSource(set, 'embed').engine, plan);
  t.throws(() => stageSource(set, 'embed', 'int4w'), { code: 'MODEL_NOT_FOUND', message: /no int4w build of embed/ });
});

t.test(
  'at a precision, ONNX Runtime gets the build written for it, TensorRT the engine of its own build',
  async (t) => {
    const d = path.join(tmpDir(), 'dialects');
    await synthesize({ config: 'tiny', seed: 3, out: d });
    const json = JSON.parse(readFileSync(path.join(d, 'manifest.json'), 'utf8'));
    const entry = (file: string, dialect?: string) => ({
      file,
      format: 'onnx',
      sha256: json.stages.encoder.sha256,
      bytes: json.stages.encoder.bytes,
      precision: 'int4w',
      ...(dialect ? { dialect } : {}),
    });
    copyFileSync(path.join(d, 'encoder.onnx'), path.join(d, 'encoder.int4w.trt.onnx'));
    json.stages.encoder.variants = [entry('encoder.int4w.trt.onnx', 'tensorrt')];
    writeFileSync(path.join(d, 'manifest.json'), JSON.stringify(json));
    const s = await openModelSet(d);
    const src = stageSource(s, 'encoder', 'int4w');
    t.equal(src.onnx, path.join(d, 'encoder.onnx'), 'ONNX Runtime: no int4w build for it, the main file');
    t.equal(src.engine, undefined);
    const plan = enginePlanPath(d, 'encoder', 'int4w');
    mkdirSync(path.dirname(plan), { recursive: true });
    writeFileSync(plan, 'a plan built from encoder.int4w.trt.onnx');
    t.equal(stageSource(s, 'encoder', 'int4w').engine, plan, 'TensorRT: the engine built from the tensorrt build');
    t.equal(stageSource(s, 'encoder').engine, undefined, 'fp32 has no engine');
  },
);

t.test(
  'the default registry serves every stage of the set, falling back from TensorRT',
  { skip: !tensorrtUnavailableReason() && 'TensorRT is available here' },
  async (t) => {
    const reg = createDefaultRegistry();
    const skipped: Attempt[] = [];
    const embed = await reg.open(stageSource(set, 'embed'), { threads: 1, onSkip: (a) => skipped.push(a) });
    t.teardown(() => embed.dispose());
    t.equal(embed.backend, 'onnxruntime-cpu');
    t.equal(skipped[0]!.backend, 'tensorrt');
    const H = set.architecture.llm.hidden;
    const out = await embed.run({ input_ids: tensor('int64', BigInt64Array.from([1n, 2n, 3n]), [1, 3]) });
    t.same(out.embeds!.dims, [1, 3, H]);
    // The manifest's signature guards the session: token ids are int64.
    await t.rejects(embed.run({ input_ids: tensor('int32', Int32Array.from([1, 2, 3]), [1, 3]) }), {
      code: 'BAD_INPUT',
      message: /stage 'embed': input 'input_ids' must be int64, got int32/,
    });
    for (const stage of ['encoder', 'merger', 'llm'] as const) {
      const s = await reg.open(stageSource(set, stage), { threads: 1 });
      t.same(
        [...s.inputNames].sort(),
        set.manifest.stages[stage]!.signature.inputs.map((i) => i.name).sort(),
        `${stage} inputs`,
      );
      await s.dispose();
    }
  },
);
