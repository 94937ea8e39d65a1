/**
 * The Q/DQ rewrite on the tiny set's encoder, merger and LLM: calibrated on the fp32 pipeline's own
 * stage inputs, the rewritten graph loads in ONNX Runtime with the same IO, holds the expected
 * Q/DQ nodes, stores its weights ~4x smaller and stays close to fp32 on held-out inputs.
 */
import t from 'tap';
import { readFile } from 'node:fs/promises';
import onnxProto from 'onnx-proto';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { openModelSet } from '../../src/engine/modelset.js';
import {
  activationNames,
  activationRanges,
  collectFeeds,
  decodeModel,
  findTargets,
  opCounts,
  quantizeModel,
  splitSamples,
  tensorError,
  withOutputs,
  withSession,
  type Feeds,
} from '../../src/quant/index.js';
import { GraphBuilder } from '../../tools/export/onnx/builder.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { sampleImages } from '../../tools/export/quantize.js';
import { tinySet } from '../pipeline/fixtures.js';

const DT = onnxProto.onnx.TensorProto.DataType;
const STAGES = ['encoder', 'merger', 'llm'] as const;

const set = await tinySet();
t.teardown(set.cleanup);
const ms = await openModelSet(set.dir);
const backend = new OrtBackend({ threads: 1 });
const recorder = await collectFeeds({
  modelsDir: set.dir,
  stages: STAGES,
  images: await sampleImages(8),
  verify: false,
  threads: 1,
});

for (const stage of STAGES) {
  t.test(`${stage}: the int8 rewrite loads, keeps its IO, holds Q/DQ nodes and stays close to fp32`, async (t) => {
    const fp32 = new Uint8Array(await readFile(ms.stagePath(stage)));
    const signature = ms.manifest.stages[stage]!.signature;
    const { targets } = findTargets(decodeModel(fp32));
    const names = activationNames(targets);
    const { calibrate, heldOut, disjoint } = splitSamples(recorder.samples(stage));
    t.ok(
      disjoint && heldOut.length >= 1 && calibrate.length >= 2,
      `${calibrate.length} calibration and ${heldOut.length} held-out inputs`,
    );
    const { ranges, dynamic } = await activationRanges(backend, fp32, names, calibrate, {
      stage,
      signature,
      threads: 1,
    });
    t.same(dynamic, [], 'every activation of this stage shares one static scale');
    const { bytes, report } = quantizeModel(fp32, ranges);

    // Q/DQ structure: one DQ per weight and one Q -> DQ pair per quantised MatMul (each with that
    // one consumer, as ONNX Runtime's integer fusion needs), MatMuls unchanged.
    const before = opCounts(fp32);
    const after = opCounts(bytes);
    t.equal(report.weights.length, targets.length);
    t.equal(report.activations.length, names.length);
    t.equal(after.QuantizeLinear, targets.length);
    t.equal(after.DequantizeLinear, 2 * targets.length);
    t.equal(after.MatMul, before.MatMul);
    const m = decodeModel(bytes);
    const consumers = (name: string) => m.graph!.node!.filter((n) => n.input!.includes(name)).length;
    const qdq = m.graph!.node!.filter((n) => n.opType === 'QuantizeLinear' || n.opType === 'DequantizeLinear');
    t.ok(
      qdq.every((n) => consumers(n.output![0]!) === 1),
      'every Q and DQ output has one consumer',
    );
    t.equal(Number(m.opsetImport![0]!.version), 17, 'still opset 17');
    const inits = new Map(m.graph!.initializer!.map((x) => [x.name!, x]));
    for (const tg of targets) {
      if (inits.has(tg.weight)) t.fail(`${tg.weight} is still a float initializer`);
      const q = inits.get(`${tg.weight}_quantized`);
      if (q?.dataType !== DT.INT8) t.fail(`${tg.weight}_quantized is not int8`);
    }
    for (const n of m.graph!.node!) {
      if (n.opType === 'DequantizeLinear' && inits.get(n.input![0]!)?.dataType === DT.INT8) {
        if (Number(n.attribute?.find((a) => a.name === 'axis')?.i) !== 1) t.fail(`${n.name}: weight DQ without axis=1`);
      }
    }
    // the weights are stored ~4x smaller (int8 + one float scale and int8 zero point per column)
    const wBefore = report.weights.reduce((s, w) => s + w.bytesBefore, 0);
    const wAfter = report.weights.reduce((s, w) => s + w.bytesAfter, 0);
    t.ok(
      wBefore / wAfter > 3.5 && wBefore / wAfter < 4,
      `weights ${wBefore} -> ${wAfter} bytes (${(wBefore / wAfter).toFixed(2)}x)`,
    );
    t.ok(bytes.length < fp32.length, `file ${fp32.length} -> ${bytes.length} bytes`);

    // Loads in ONNX Runtime with the stage's signature, same IO names, close outputs on held-out inputs.
    const refOuts: Record<string, import('../../src/engine/backend.js').Tensor>[] = [];
    let refIo: string[] = [];
    await withSession(backend, fp32, { stage, signature, threads: 1 }, async (run) => {
      for (const f of heldOut) refOuts.push(await run(f));
    });
    refIo = Object.keys(refOuts[0]!).sort();
    await withSession(backend, bytes, { stage, signature, threads: 1 }, async (run) => {
      let i = 0;
      for (const f of heldOut) {
        const out = await run(f);
        t.same(Object.keys(out).sort(), refIo, 'same outputs');
        for (const [name, r] of Object.entries(refOuts[i]!)) {
          if (r.dtype !== 'float32') continue;
          t.same(out[name]!.dims, r.dims, `${name} dims`);
          const e = tensorError(r, out[name]!);
          // Measured on this set: cosine >= 0.9995 and max|d|/max|ref| <= 0.043 for all three stages
          // (7-bit weights, max calibration); a clipped activation gives cosine ~0.5, saturating
          // 8-bit kernels ~0.97-0.99 and relative error 0.2-0.4.
          t.ok(e.cosine > 0.999, `${stage}.${name}: cosine ${e.cosine.toFixed(6)} > 0.999`);
          t.ok(e.relError < 0.1, `${stage}.${name}: max rel error ${e.relError.toExponential(2)} < 0.1`);
        }
        i++;
      }
    });
  });
}

t.test(
  'small, non-2-D and activation x activation MatMuls are left alone; a weight shared by two MatMuls is dequantised once',
  async (t) => {
    const g = new GraphBuilder('toy');
    const rng = new Rng(1);
    const x = g.input('x', 'float32', [2, 64]);
    const big = g.weight('big', rng.uniform(64 * 32, 0.1), [64, 32]);
    const small = g.weight('small', rng.uniform(32 * 16, 0.1), [32, 16]);
    const cube = g.weight('cube', rng.uniform(2 * 32 * 32, 0.1), [2, 32, 32]);
    const y1 = g.op('MatMul', [x, big]);
    const y2 = g.op('MatMul', [x, big]);
    const y = g.op('MatMul', [g.op('Add', [y1, y2]), small]);
    const z = g.op('MatMul', [y, g.op('Transpose', [y])]);
    const c = g.op('MatMul', [g.op('Reshape', [y1, g.ints([1, 2, 32])]), cube]);
    g.output('z', z, 'float32', [2, 2]);
    g.output('c', c, 'float32', [2, 2, 32]);
    const model = g.encode();
    const { targets, skipped } = findTargets(decodeModel(model));
    t.same(
      targets.map((x) => x.weight),
      ['big', 'big'],
    );
    t.match(skipped.map((s) => s.why).join('\n'), /small has 512 values \(< 1024\)[\s\S]*cube is 3-D, not 2-D/);
    const feeds: Feeds = { x: { dtype: 'float32', dims: [2, 64], data: new Rng(2).uniform(128, 1), location: 'host' } };
    const { ranges } = await activationRanges(backend, model, ['x'], [feeds], { stage: 'toy' });
    t.equal(ranges.size, 1);
    const { bytes, report } = quantizeModel(model, ranges);
    t.equal(report.weights.length, 1, 'big quantised once');
    t.same(opCounts(bytes).DequantizeLinear, 3, 'one for the shared weight, one per MatMul for x');
    t.same(opCounts(bytes).QuantizeLinear, 2, 'one per MatMul for x');
    // without a range for x, its MatMuls keep a float activation (weights only) and say why
    const partial = quantizeModel(model, new Map());
    t.equal(opCounts(partial.bytes).QuantizeLinear, undefined);
    t.match(partial.report.skipped.map((s) => s.why).join('\n'), /no calibration range for x/);
    const ref = await withSession(backend, model, { stage: 'toy' }, (run) => run(feeds));
    const got = await withSession(backend, bytes, { stage: 'toy' }, (run) => run(feeds));
    t.ok(tensorError(ref.z!, got.z!).cosine > 0.999);
    // withOutputs exposes inner tensors without touching the rest
    const aug = await withSession(backend, withOutputs(model, [y1]), { stage: 'toy' }, (run) => run(feeds));
    t.same(
      Object.keys(aug).sort(),
      ['MatMul_3_out0', 'c', 'z']
        .sort()
        .map((k) => (k.startsWith('MatMul') ? y1 : k))
        .sort(),
    );
  },
);

t.test('an activation whose range varies more than 16x between inputs stays float; max |x| is the range', async (t) => {
  const g = new GraphBuilder('spread');
  const x = g.input('x', 'float32', [1, 64]);
  const u = g.input('u', 'float32', [1, 64]);
  const w = (n: string) => g.weight(n, new Rng(5).uniform(64 * 32, 0.1), [64, 32]);
  g.output('y', g.op('Add', [g.op('MatMul', [x, w('wx')]), g.op('MatMul', [u, w('wu')])]), 'float32', [1, 32]);
  const model = g.encode();
  const feed = (xs: number, us: number): Feeds => ({
    x: { dtype: 'float32', dims: [1, 64], data: new Rng(9).uniform(64, xs), location: 'host' },
    u: { dtype: 'float32', dims: [1, 64], data: new Rng(8).uniform(64, us), location: 'host' },
  });
  const feeds = [feed(1, 1), feed(40, 2)]; // x's range grows 40x, u's 2x
  const { ranges, dynamic } = await activationRanges(backend, model, ['x', 'u'], feeds, { stage: 'spread' });
  t.same(
    dynamic.map((d) => d.name),
    ['x'],
  );
  t.ok(Math.abs(dynamic[0]!.spread - 40) < 1e-3, `spread ${dynamic[0]!.spread}`);
  const maxU = Math.max(...[...(feeds[1]!.u!.data as Float32Array)].map(Math.abs));
  t.equal(ranges.get('u'), maxU, 'the range is the largest |u| seen');
  t.equal(ranges.has('x'), false);
  const { report } = quantizeModel(model, ranges);
  t.same(
    report.activations.map((a) => a.name),
    ['u'],
  );
  t.equal(report.weights.length, 2, 'both weights are int8 (x`s MatMul is weight-only)');
  const loose = await activationRanges(backend, model, ['x', 'u'], feeds, { stage: 'spread', maxSpread: 100 });
  t.same(loose.dynamic, []);
});

t.test('a weight whose values are not in the file (external data) is MODEL_INVALID, not a RangeError', async (t) => {
  const g = new GraphBuilder('ext');
  const x = g.input('x', 'float32', [1, 64]);
  g.output('y', g.op('MatMul', [x, g.weight('w', new Rng(3).uniform(64 * 32, 0.1), [64, 32])]), 'float32', [1, 32]);
  const m = decodeModel(g.encode());
  const w = m.graph!.initializer!.find((i) => i.name!.endsWith('w'))!;
  // As an exporter writes a > 2 GB model: the values live in a side file.
  w.rawData = new Uint8Array(0);
  w.floatData = [];
  w.dataLocation = onnxProto.onnx.TensorProto.DataLocation.EXTERNAL;
  w.externalData = [onnxProto.onnx.StringStringEntryProto.create({ key: 'location', value: 'w.bin' })];
  const model = onnxProto.onnx.ModelProto.encode(m).finish();
  t.equal(findTargets(decodeModel(model)).targets.length, 1);
  t.throws(() => quantizeModel(model, new Map()), { code: 'MODEL_INVALID', message: /external data/ });
});

t.test('a graph below opset 13 is refused (per-axis DequantizeLinear needs 13)', async (t) => {
  const g = new GraphBuilder('old');
  const x = g.input('x', 'float32', [1, 64]);
  g.output('y', g.op('MatMul', [x, g.weight('w', new Float32Array(64 * 32), [64, 32])]), 'float32', [1, 32]);
  const m = g.model();
  m.opsetImport = [{ domain: '', version: 11 }];
  t.throws(() => quantizeModel(onnxProto.onnx.ModelProto.encode(m).finish(), new Map()), {
    code: 'MODEL_INVALID',
    message: /opset 11/,
  });
});
