/**
 * Every stage of a synthesised `tiny` set: the ONNX file declares exactly the contract's IO
 * (names, dtypes, fixed and symbolic dims), uses opset 17 / IR 8 and only TensorRT-parsable ops,
 * loads in ONNX Runtime and returns the contract's shapes for concrete dynamic sizes.
 */
import t from 'tap';
import { STAGES, stageSignature, type Dim } from '../../src/engine/contract.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { IR_VERSION, OPSET } from '../../tools/export/onnx/builder.js';
import { TENSORRT_OPS } from '../../tools/export/onnx/ops.js';
import { synthesize } from '../../tools/export/synth.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { decodeModel, randn, session } from './helpers.js';

const a = CONFIGS.tiny;
const ELEM: Record<number, string> = { 1: 'float32', 7: 'int64' };
/** Concrete values for the named dims (sums such as P+T are evaluated). */
const SIZES: Record<string, number> = { batch: 1, L: 5, T: 3, S: 4, B: 2 };
const evalDim = (d: Dim) => (typeof d === 'number' ? d : d.split('+').reduce((s, n) => s + SIZES[n]!, 0));

t.test('tiny: every stage follows the contract', async (t) => {
  const dir = t.testdir();
  const manifest = await synthesize({ config: 'tiny', seed: 1, out: dir });
  t.same(Object.keys(manifest.stages), [...STAGES]);
  for (const stage of STAGES) {
    await t.test(stage, async (t) => {
      const sig = stageSignature(stage, a);
      const bytes = await readFile(join(dir, `${stage}.onnx`));
      const model = decodeModel(bytes);
      t.equal(Number(model.irVersion), IR_VERSION);
      t.same(
        model.opsetImport.map((o) => [o.domain, Number(o.version)]),
        [['', OPSET]],
      );
      const io = (vs: NonNullable<typeof model.graph>['input']) =>
        vs!.map((v) => ({
          name: v.name,
          dtype: ELEM[v.type!.tensorType!.elemType!],
          shape: v.type!.tensorType!.shape!.dim!.map((d) => (d.dimParam ? d.dimParam : Number(d.dimValue))),
        }));
      t.same(io(model.graph!.input), sig.inputs, 'declared inputs');
      t.same(io(model.graph!.output), sig.outputs, 'declared outputs');
      const ops = new Set(model.graph!.node!.map((n) => n.opType!));
      t.same(
        [...ops].filter((o) => !TENSORRT_OPS.has(o)),
        [],
        'only TensorRT-parsable ops',
      );

      const s = await session(join(dir, `${stage}.onnx`));
      t.teardown(() => s.release());
      t.same(
        [...s.inputNames],
        sig.inputs.map((i) => i.name),
      );
      t.same(
        [...s.outputNames],
        sig.outputs.map((o) => o.name),
      );
      const feeds: Record<string, ort.Tensor> = {};
      sig.inputs.forEach((spec, i) => {
        const dims = spec.shape.map(evalDim);
        const n = dims.reduce((x, y) => x * y, 1);
        if (spec.dtype === 'int64')
          feeds[spec.name] = new ort.Tensor(
            'int64',
            BigInt64Array.from({ length: n }, (_, j) => BigInt((j * 7919) % a.llm.vocab)),
            dims,
          );
        else if (spec.name === 'assign') {
          const [, L, N] = dims as [number, number, number];
          const asg = new Float32Array(L * N);
          for (let p = 0; p < N; p++) asg[(p % L) * N + p] = 1;
          feeds[spec.name] = new ort.Tensor('float32', asg, dims);
        } else feeds[spec.name] = new ort.Tensor('float32', randn(n, 10 + i), dims);
      });
      const out = await s.run(feeds);
      for (const spec of sig.outputs) {
        t.same(out[spec.name]!.dims, spec.shape.map(evalDim), `${spec.name} shape`);
        t.ok((out[spec.name]!.data as Float32Array).every(Number.isFinite), `${spec.name} finite`);
      }
    });
  }
});
