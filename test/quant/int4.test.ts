/**
 * INT4 weights per block: the half-step bound, float16 scales, the block sizes TensorRT and
 * MatMulNBits accept, both graph forms computing exactly x . dequant(W) in ONNX Runtime, and the AWQ
 * search choosing per-channel scales where the activations call for them. Bad values are refused.
 */
import t from 'tap';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import {
  awqMultipliers,
  dequantizeInt4,
  int4Block,
  quantizeInt4,
  searchAwq,
  tensorError,
  withSession,
  ActivationStats,
} from '../../src/quant/index.js';
import { CLIP_RATIOS, packInt4, packMatMulNBits, unpackInt4, INT4_MAX } from '../../src/quant/int4.js';
import { DT, encodeModel, fromFloat16Bits, node, onnx, tensor, toFloat16Bits } from '../../src/quant/onnx-model.js';
import { Rng } from '../../tools/export/onnx/random.js';

const backend = new OrtBackend({ threads: 1 });

t.test('block sizes: the requested one, else the largest half dividing K, none below 16', async (t) => {
  t.equal(int4Block(512, 128), 128);
  t.equal(int4Block(1408, 128), 128);
  t.equal(int4Block(64, 128), 64, 'K below the block: one block of K');
  t.equal(int4Block(176, 128), 16, '176 = 11 x 16');
  t.equal(int4Block(192, 128), 64);
  t.equal(int4Block(100, 128), undefined, 'no power of two >= 16 divides 100');
  t.equal(int4Block(512, 32), 32);
});

t.test('every element within half a step of its block scale; scales are positive float16 values', async (t) => {
  const K = 256;
  const N = 24;
  const w = new Rng(3).uniform(K * N, 0.4);
  for (let k = 0; k < K; k++) w[k * N + 5]! *= 80; // a column with a much wider range
  for (let k = 0; k < 128; k++) w[k * N + 7] = 0; // an all-zero block
  for (const block of [32, 64, 128]) {
    const q = quantizeInt4(w, K, N, block, 'w');
    const d = dequantizeInt4(q);
    let worst = 0;
    for (let i = 0; i < w.length; i++) {
      const s = q.scales[Math.floor(Math.floor(i / N) / block) * N + (i % N)]!;
      worst = Math.max(worst, Math.abs(w[i]! - d[i]!) / (s / 2));
      if (Math.abs(q.q[i]!) > INT4_MAX) t.fail(`q[${i}] = ${q.q[i]}`);
    }
    t.ok(worst <= 1 + 1e-6, `block ${block}: worst |w - dq| / (scale/2) = ${worst.toFixed(6)}`);
    t.ok(
      [...q.scales].every((s) => s > 0 && fromFloat16Bits(toFloat16Bits(s)) === s),
      'scales are positive float16 values',
    );
    t.equal(q.scales[0 * N + 7], 1, 'an all-zero block gets scale 1');
    t.ok(q.scales[5]! > 20 * q.scales[4]!, 'the wide column has its own scales');
  }
  // The clip search only tries scales down to max|w| / 7.5, where the bound still holds.
  t.equal(CLIP_RATIOS.at(-1), 7 / 7.5);
  const plain = quantizeInt4(w, K, N, 128, 'w', [1]);
  const clipped = quantizeInt4(w, K, N, 128, 'w');
  const mse = (q: typeof plain) => dequantizeInt4(q).reduce((s, v, i) => s + (v - w[i]!) ** 2, 0);
  t.ok(
    mse(clipped) < mse(plain),
    `the clip search lowers the squared error (${mse(plain).toExponential(3)} -> ${mse(clipped).toExponential(3)})`,
  );
});

t.test('refused: a NaN weight (MODEL_INVALID), a block scale beyond float16 (QUANT_SCALE_INVALID)', async (t) => {
  const w = new Float32Array(32 * 2).fill(0.1);
  w[9] = NaN;
  t.throws(() => quantizeInt4(w, 32, 2, 32, 'layer.w'), {
    code: 'MODEL_INVALID',
    message: /layer\.w: element \[4, 1\] is NaN/,
  });
  w[9] = 1e6;
  t.throws(() => quantizeInt4(w, 32, 2, 32, 'layer.w'), {
    code: 'QUANT_SCALE_INVALID',
    message: /largest \|w\| is 1\.00e\+6.*beyond float16's 65504/,
  });
});

t.test('packing: ONNX INT4 (low nibble first) and MatMulNBits round-trip', async (t) => {
  const q = Int8Array.from([-7, 7, 0, -1, 3, -4, 5]);
  t.same([...unpackInt4(packInt4(q), q.length)], [...q]);
  t.same([...packInt4(Int8Array.from([1, -1]))], [0xf1]);
});

/** y = x . W for a MatMulNBits or blocked-DequantizeLinear graph of `q`, run in ONNX Runtime. */
async function runForm(
  form: 'nbits' | 'dq',
  q: ReturnType<typeof quantizeInt4>,
  x: Float32Array,
  rows: number,
): Promise<Float32Array> {
  const { K, N, block } = q;
  const io = (name: string, d: number) =>
    onnx.ValueInfoProto.create({
      name,
      type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimValue: rows }, { dimValue: d }] } } },
    });
  let nodes;
  let inits;
  if (form === 'nbits') {
    const p = packMatMulNBits(q);
    inits = [tensor('b', DT.UINT8, [N, K / block, block / 2], p.b), tensor('s', DT.FLOAT, [N * (K / block)], p.scales)];
    nodes = [
      node(
        'MatMulNBits',
        'mm',
        ['x', 'b', 's'],
        ['y'],
        { K, N, bits: 4, block_size: block, accuracy_level: 0 },
        'com.microsoft',
      ),
    ];
  } else {
    inits = [tensor('wq', DT.INT4, [K, N], packInt4(q.q)), tensor('ws', DT.FLOAT, [K / block, N], q.scales)];
    nodes = [
      node('DequantizeLinear', 'dq', ['wq', 'ws'], ['w'], { axis: 0, block_size: block }),
      node('MatMul', 'mm', ['x', 'w'], ['y']),
    ];
  }
  const opsetImport =
    form === 'nbits'
      ? [
          { domain: '', version: 17 },
          { domain: 'com.microsoft', version: 1 },
        ]
      : [{ domain: '', version: 21 }];
  const m = onnx.ModelProto.create({
    irVersion: 10,
    opsetImport,
    graph: { name: form, node: nodes, initializer: inits, input: [io('x', K)], output: [io('y', N)] },
  });
  return withSession(
    backend,
    encodeModel(m),
    { stage: form, threads: 1 },
    async (run) =>
      (await run({ x: { dtype: 'float32', dims: [rows, K], data: x, location: 'host' } })).y!.data as Float32Array,
  );
}

t.test('both forms compute x . dequant(W) in ONNX Runtime', async (t) => {
  const K = 128;
  const N = 48;
  const rows = 5;
  const q = quantizeInt4(new Rng(9).uniform(K * N, 0.5), K, N, 32, 'w');
  const d = dequantizeInt4(q);
  const x = new Rng(10).uniform(rows * K, 1);
  const ref = new Float32Array(rows * N);
  for (let r = 0; r < rows; r++)
    for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) ref[r * N + n]! += x[r * K + k]! * d[k * N + n]!;
  const want = { dtype: 'float32' as const, dims: [rows, N], data: ref, location: 'host' as const };
  // MatMulNBits with accuracy_level 0 computes in float32: exact. ONNX Runtime fuses DequantizeLinear
  // -> MatMul into the same kernel at its default accuracy level 4 (int8 activations): within 1%.
  for (const [form, tol] of [
    ['nbits', 1e-5],
    ['dq', 1e-2],
  ] as const) {
    const y = await runForm(form, q, x, rows);
    const e = tensorError(want, { ...want, data: y });
    t.ok(e.relError < tol, `${form}: max rel error ${e.relError.toExponential(2)} against the dequantised product`);
  }
});

t.test(
  'AWQ: alpha 0 is round-to-nearest; channels with large activations get finer weight steps and a smaller output error',
  async (t) => {
    t.same([...awqMultipliers(Float64Array.from([1, 5, 0.2]), 0, 'x')], [1, 1, 1]);
    t.throws(() => awqMultipliers(Float64Array.from([1, NaN, 2]), 0.5, 'layers.0/x'), {
      code: 'QUANT_SCALE_INVALID',
      message: /layers\.0\/x: the AWQ scale of input channel 1 is NaN \(its mean \|x\|/,
    });

    const K = 64;
    const N = 32;
    const rng = new Rng(4);
    const st = new ActivationStats('x', { stage: 'test', channels: true, rows: 128 });
    // 4 of the 64 input channels carry activations ~30x larger: their weights matter 30x more
    const x = rng.uniform(128 * K, 1).map((v, i) => (i % K < 4 ? v * 30 : v));
    st.add({ dtype: 'float32', dims: [128, K], data: x, location: 'host' });
    const w = rng.uniform(K * N, 0.3);
    const [r] = await searchAwq(
      backend,
      [{ activation: 'x', K, weights: [{ name: 'w', w, N, block: 64 }] }],
      new Map([['x', st]]),
      { stage: 'test', threads: 1 },
    );
    t.ok(r!.alpha > 0, `alpha ${r!.alpha}`);
    t.ok(
      r!.loss < 0.8 * r!.lossRtn,
      `output error ${r!.lossRtn.toExponential(3)} (round to nearest) -> ${r!.loss.toExponential(3)}`,
    );
    const m = r!.multipliers!;
    t.ok(m[0]! < m[10]!, 'the loud channels are divided down (their weights scaled up before quantising)');
    t.ok(
      [...m].every((v) => fromFloat16Bits(toFloat16Bits(v)) === v),
      'multipliers are float16 values, the same in both dialects',
    );
  },
);
