/**
 * The float16 rewrite on the tiny LLM and diffusion graphs (built in memory): the IO stays float32,
 * norm statistics, softmax and the trigonometric tables run in float32 behind explicit Casts,
 * weights are stored float16, and the graph runs in ONNX Runtime close to its fp32 original.
 * Bit conversion checked exhaustively; values float16 cannot hold and unknown ops are refused.
 */
import t from 'tap';
import { stageSignature, type StageName } from '../../src/engine/contract.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { decodeModel, encodeModel, tensorError, toFloat16, withSession, type Feeds } from '../../src/quant/index.js';
import {
  DT,
  floatValues,
  fromFloat16Bits,
  roundToFloat16,
  tensor,
  toFloat16Bits,
  type ModelProto,
} from '../../src/quant/onnx-model.js';
import { inferTypes } from '../../src/quant/op-types.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { GraphBuilder } from '../../tools/export/onnx/builder.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { STAGE_BUILDERS } from '../../tools/export/stages/index.js';

const a = CONFIGS.tiny;
const backend = new OrtBackend({ threads: 1 });
const graph = (s: StageName) => decodeModel(STAGE_BUILDERS[s](a, new Rng(1)).g.encode());

t.test('float16 bits: every finite value round-trips, rounding is to nearest even, overflow is Infinity', async (t) => {
  let bad = 0;
  for (let h = 0; h < 0x10000; h++) {
    const x = fromFloat16Bits(h);
    if (Number.isNaN(x)) continue;
    if (toFloat16Bits(x) !== h && !(x === 0 && (h === 0 || h === 0x8000))) bad++;
  }
  t.equal(bad, 0, 'toFloat16Bits(fromFloat16Bits(h)) === h for all non-NaN h');
  t.equal(roundToFloat16(1 + 2 ** -11), 1, 'a tie between 1 and 1+2^-10 goes to the even 1');
  t.equal(roundToFloat16(1 + 3 * 2 ** -11), 1 + 2 ** -9, 'and the next tie to the even 1+2^-9');
  t.equal(roundToFloat16(65520), Infinity, '65520 rounds past the largest float16');
  t.equal(roundToFloat16(65519), 65504);
  t.equal(roundToFloat16(2 ** -25), 0, 'half the smallest subnormal ties to 0');
  t.equal(roundToFloat16(3 * 2 ** -26), 2 ** -24);
});

/** Random feeds for a stage (a prefill after 3 cached rows for the LLM, a batch of 3 for diffusion). */
function feeds(s: StageName, seed: number): Feeds {
  const rng = new Rng(seed);
  const f = (dims: number[], scale = 1, offset = 0) => ({
    dtype: 'float32' as const,
    dims,
    data: rng
      .uniform(
        dims.reduce((x, y) => x * y, 1),
        scale,
      )
      .map((v) => v + offset),
    location: 'host' as const,
  });
  const { layers, kvHeads, hidden } = a.llm;
  const hd = hidden / a.llm.heads;
  if (s === 'llm') {
    // 5 new tokens after 3 cached rows of an 8-row cache (docs/CONTRACT.md, llm): rows past 3 are masked
    const out: Feeds = {
      inputs_embeds: f([1, 5, hidden]),
      past_length: { dtype: 'int64', dims: [1], data: BigInt64Array.from([3n]), location: 'host' },
    };
    for (let l = 0; l < layers; l++) {
      out[`past_keys.${l}`] = f([1, kvHeads, 8, hd]);
      out[`past_values.${l}`] = f([1, kvHeads, 8, hd]);
    }
    return out;
  }
  return { x: f([3, a.merger.tokenWidth]), t: f([3], 0.5, 0.5), cond: f([3, hidden]) };
}

for (const s of ['llm', 'diffusion'] as const) {
  t.test(
    `${s}: float32 IO, float32 statistics behind Casts, float16 weights, close to fp32 in ONNX Runtime`,
    async (t) => {
      const m = graph(s);
      const { model, report } = toFloat16(m, s);
      const g = model.graph!;
      t.same(
        g.input!.map((v) => v.type!.tensorType!.elemType),
        m.graph!.input!.map((v) => v.type!.tensorType!.elemType),
        'graph inputs keep their types',
      );
      t.ok(
        g.output!.every((v) => v.type!.tensorType!.elemType === DT.FLOAT),
        'every output is float32',
      );
      const types = inferTypes(g);
      const inits = new Map(g.initializer!.map((x) => [x.name!, x]));
      for (const n of g.node!) {
        const x = types.get(n.input![0]!);
        if (
          ['LayerNormalization', 'Softmax', 'ReduceMean', 'Pow', 'Sqrt', 'Sin', 'Cos'].includes(n.opType!) &&
          x !== DT.FLOAT
        )
          t.fail(`${n.name} (${n.opType}) reads ${x}, not float32`);
        if (n.opType === 'MatMul') {
          if (types.get(n.input![0]!) !== DT.FLOAT16 || types.get(n.input![1]!) !== DT.FLOAT16)
            t.fail(`${n.name} is not a float16 MatMul`);
          const w = inits.get(n.input![1]!);
          if (w && w.dataType !== DT.FLOAT16) t.fail(`${w.name} is not stored float16`);
        }
      }
      t.ok(
        report.casts > 0 && g.node!.filter((n) => n.opType === 'Cast').length >= report.casts,
        `${report.casts} explicit casts`,
      );
      t.ok(
        report.weightBytesAfter < 0.52 * report.weightBytesBefore,
        `weights ${report.weightBytesBefore} -> ${report.weightBytesAfter} bytes`,
      );
      if (s === 'llm')
        t.same(
          Object.keys(report.fp32Nodes).sort(),
          ['Add', 'Pow', 'ReduceMean', 'Softmax', 'Sqrt'],
          'RMSNorm statistics (x^2, mean, + eps, sqrt) and softmax',
        );
      if (s === 'diffusion') {
        // the timestep embedding's arguments (t * 1000 * freqs) are computed in float32 back to t
        const mul = g.node!.find((n) => n.opType === 'Mul' && n.input!.includes('t'));
        t.equal(mul && types.get(mul.output![0]!), DT.FLOAT, 't * 1000 stays float32');
      }

      const sig = stageSignature(s, a);
      const run = async (bytes: Uint8Array, f: Feeds) =>
        withSession(backend, bytes, { stage: s, signature: sig, threads: 1 }, (r) => r(f));
      for (const seed of [1, 2]) {
        const f = feeds(s, seed);
        const ref = await run(encodeModel(m), f);
        const got = await run(encodeModel(model), f);
        for (const [name, r] of Object.entries(ref)) {
          const e = tensorError(r, got[name]!);
          t.ok(
            e.relError < 0.01 && e.cosine > 0.9999,
            `seed ${seed} ${name}: rel ${e.relError.toExponential(2)}, cosine ${e.cosine.toFixed(6)}`,
          );
        }
      }
    },
  );
}

t.test('raw_data is little-endian bytes, written and read back exactly (float32, float16, int64)', async (t) => {
  const values = Float32Array.from([0, -0, 1.5, -2.25e-30, 3.4e38, Infinity, -Infinity, NaN, 1e-45]);
  const t32 = tensor('x', DT.FLOAT, [values.length], values);
  const view = new DataView(t32.rawData!.buffer, t32.rawData!.byteOffset, t32.rawData!.byteLength);
  values.forEach((v, i) => t.ok(Object.is(view.getFloat32(i * 4, true), v), `float32 byte order, value ${i}`));
  const back = floatValues(t32);
  t.same(new Uint32Array(back.buffer), new Uint32Array(values.buffer), 'float32 bits back, -0 and NaN included');
  t.not(back.buffer, t32.rawData!.buffer, 'a copy: changing it leaves the initializer alone');
  values[2] = 7;
  t.equal(floatValues(t32)[2], 1.5, 'nor does changing the array it was made from');
  const t16 = tensor('h', DT.FLOAT16, [3], Float32Array.from([1, -0.5, 65504]));
  t.same([...new Uint16Array(t16.rawData!.slice().buffer)], [0x3c00, 0xb800, 0x7bff], 'float16 bits, little-endian');
  t.same([...floatValues(t16)], [1, -0.5, 65504]);
  const t64 = tensor('i', DT.INT64, [2], BigInt64Array.from([1n, -2n]));
  t.same([...t64.rawData!], [1, 0, 0, 0, 0, 0, 0, 0, 254, 255, 255, 255, 255, 255, 255, 255], 'int64, little-endian');
});

t.test('the rewrite does not change the model it was given', async (t) => {
  const m = graph('diffusion');
  const before = encodeModel(m);
  toFloat16(m, 'diffusion');
  t.same(encodeModel(m), before);
});

t.test('refused, naming the stage and why: a weight float16 cannot hold, an op it cannot type', async (t) => {
  const big = (): ModelProto => {
    const b = new GraphBuilder('big');
    const x = b.input('x', 'float32', [1, 4]);
    const w = b.weight('w', Float32Array.from([1, 2, 3, 70000, 5, 6, 7, 8]), [4, 2]);
    b.output('y', b.op('MatMul', [x, w]), 'float32', [1, 2]);
    return decodeModel(b.encode());
  };
  t.throws(() => toFloat16(big(), 'big'), {
    code: 'QUANT_UNSUPPORTED',
    message: /stage big cannot be built in fp16: initializer w holds 7\.00e\+4, beyond float16's largest value 65504/,
  });
  const b = new GraphBuilder('erf');
  const x = b.input('x', 'float32', [1, 4]);
  b.output('y', b.op('Erf', [x]), 'float32', [1, 4]);
  t.throws(() => toFloat16(decodeModel(b.encode()), 'erf'), {
    code: 'QUANT_UNSUPPORTED',
    message: /stage erf cannot be built in fp16: it uses Erf/,
  });
});
