/**
 * GPTQ error feedback (src/quant/gptq.ts): the inverse Hessian's Cholesky factor, a lower output error
 * ||X W - X W_q|| than round-to-nearest with the same block-scale rule (on the calibration rows and on
 * held-out rows of the same distribution), the same INT4 format (q in [-7, 7], positive float16 scales),
 * and dead input channels that produce no NaN.
 */
import t, { type Test } from 'tap';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { ActivationStats, dequantizeInt4, quantizeInt4, searchAwq, type Int4Weights } from '../../src/quant/index.js';
import { gram, InverseHessian, quantizeGptq, GPTQ_DAMP } from '../../src/quant/gptq.js';
import { CLIP_RATIOS, INT4_MAX } from '../../src/quant/int4.js';
import { fromFloat16Bits, toFloat16Bits } from '../../src/quant/onnx-model.js';
import { Rng } from '../../tools/export/onnx/random.js';

/** Rows of correlated activations: z [rows, K] uniform, mixed by a random [K, K] matrix plus the identity. */
function activations(rng: Rng, rows: number, K: number, mix: Float32Array): Float32Array {
  const z = rng.uniform(rows * K, 1);
  const x = new Float32Array(rows * K);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < K; j++) {
      let s = z[r * K + j]!;
      for (let i = 0; i < K; i++) s += z[r * K + i]! * mix[i * K + j]!;
      x[r * K + j] = s;
    }
  }
  return x;
}

/** ||X (W - deq(Q))||^2. */
function outputError(x: Float32Array, rows: number, w: Float32Array, q: Int4Weights): number {
  const { K, N } = q;
  const d = dequantizeInt4(q);
  let sum = 0;
  const y = new Float64Array(N);
  for (let r = 0; r < rows; r++) {
    y.fill(0);
    for (let k = 0; k < K; k++) {
      const a = x[r * K + k]!;
      for (let n = 0; n < N; n++) y[n]! += a * (w[k * N + n]! - d[k * N + n]!);
    }
    for (const v of y) sum += v * v;
  }
  return sum;
}

function checkFormat(t: Test, q: Int4Weights): void {
  t.ok(
    [...q.q].every((v) => Number.isInteger(v) && v >= -INT4_MAX && v <= INT4_MAX),
    'every value in [-7, 7]',
  );
  t.ok(
    [...q.scales].every((s) => s > 0 && Number.isFinite(s) && fromFloat16Bits(toFloat16Bits(s)) === s),
    'scales are positive float16 values',
  );
}

const K = 128;
const N = 48;
const block = 32;
const rng = new Rng(11);
const mix = rng.uniform(K * K, 0.15);
const w = rng.uniform(K * N, 0.05); // seeded uniform, like the synthetic sets: no outliers to protect
const rows = 384;
const x = activations(rng, rows, K, mix);
const heldOut = activations(rng, 256, K, mix);

t.test('U is the upper Cholesky factor of (X^T X + lambda I)^-1', async (t) => {
  const h = gram(x, rows, K);
  const hinv = InverseHessian.fromHessian(h, K);
  let mean = 0;
  for (let k = 0; k < K; k++) mean += h[k * K + k]! / K;
  t.ok(Math.abs(hinv.lambda - GPTQ_DAMP * mean) <= 1e-12 * mean, 'lambda = 1% of the mean diagonal');
  const u = hinv.u;
  let lower = 0;
  for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) lower = Math.max(lower, Math.abs(u[i * K + j]!));
  t.equal(lower, 0, 'upper triangular');
  t.ok(
    [...Array(K).keys()].every((k) => u[k * K + k]! > 0),
    'positive diagonal',
  );
  // (U^T U) (H + lambda I) = I
  let worst = 0;
  const utu = new Float64Array(K * K);
  for (let i = 0; i < K; i++)
    for (let j = 0; j < K; j++) {
      let s = 0;
      for (let k = 0; k <= Math.min(i, j); k++) s += u[k * K + i]! * u[k * K + j]!;
      utu[i * K + j] = s;
    }
  for (let i = 0; i < K; i++)
    for (let j = 0; j < K; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += utu[i * K + k]! * (h[k * K + j]! + (k === j ? hinv.lambda : 0));
      worst = Math.max(worst, Math.abs(s - (i === j ? 1 : 0)));
    }
  t.ok(worst < 1e-9, `max |U^T U (H + lambda I) - I| = ${worst.toExponential(2)}`);
  // the per-channel multipliers scale H as diag(m) H diag(m)
  const m = Float32Array.from({ length: K }, (_, k) => 0.5 + (k % 7) / 4);
  const hm = gram(x, rows, K, m);
  const rel = Math.abs(hm[3 * K + 10]! - m[3]! * m[10]! * h[3 * K + 10]!) / Math.abs(h[3 * K + 10]!);
  t.ok(rel < 1e-9, 'gram with multipliers is diag(m) H diag(m)');
});

t.test('a lower output error than round-to-nearest with the same block-scale rule, same format', async (t) => {
  const hinv = InverseHessian.fromRows(x, rows, K);
  for (const [label, ratios] of [
    ['max|w| / 7 scales', [1]],
    ['clip search', CLIP_RATIOS],
  ] as const) {
    const rtn = quantizeInt4(w, K, N, block, 'w', ratios);
    const gptq = quantizeGptq(w, K, N, block, hinv, 'w', ratios);
    checkFormat(t, gptq);
    t.equal(gptq.scales.length, (K / block) * N, 'one scale per block and column');
    const [er, eg] = [outputError(x, rows, w, rtn), outputError(x, rows, w, gptq)];
    t.ok(eg < 0.75 * er, `${label}, calibration rows: GPTQ ${eg.toExponential(3)} < 0.75 x RTN ${er.toExponential(3)}`);
    const [hr, hg] = [outputError(heldOut, 256, w, rtn), outputError(heldOut, 256, w, gptq)];
    t.ok(hg < 0.85 * hr, `${label}, held-out rows: GPTQ ${hg.toExponential(3)} < 0.85 x RTN ${hr.toExponential(3)}`);
    // the weights themselves move further from W than rounding does: the error went where X does not look
    const mse = (q: Int4Weights) => dequantizeInt4(q).reduce((s, v, i) => s + (v - w[i]!) ** 2, 0);
    t.ok(mse(gptq) > mse(rtn), 'the weight error itself is larger (it was moved, not removed)');
  }
});

t.test('without activations GPTQ is round-to-nearest; a dead channel gives no NaN', async (t) => {
  const zero = new Float32Array(rows * K);
  const none = InverseHessian.fromRows(zero, rows, K);
  t.equal(none.dead, K, 'every channel dead');
  const a = quantizeGptq(w, K, N, block, none, 'w');
  const b = quantizeInt4(w, K, N, block, 'w');
  t.same([...a.q], [...b.q], 'the same values as round-to-nearest');
  t.same([...a.scales], [...b.scales], 'the same scales');

  const dead = Float32Array.from(x);
  for (let r = 0; r < rows; r++) for (const k of [0, 5, 77]) dead[r * K + k] = 0;
  const hinv = InverseHessian.fromRows(dead, rows, K);
  t.equal(hinv.dead, 3, 'three dead channels');
  t.ok(
    hinv.u.every((v) => Number.isFinite(v)),
    'the factor is finite',
  );
  const q = quantizeGptq(w, K, N, block, hinv, 'w');
  checkFormat(t, q);
  for (const k of [0, 5, 77]) {
    const coupled = [...Array(K).keys()].filter((j) => j !== k && (hinv.u[k * K + j] !== 0 || hinv.u[j * K + k] !== 0));
    t.same(coupled, [], `channel ${k} passes no error on and takes none`);
  }
  t.ok(outputError(dead, rows, w, q) < outputError(dead, rows, w, quantizeInt4(w, K, N, block, 'w')));
});

t.test('refused: a Hessian with a NaN diagonal (QUANT_SCALE_INVALID), mismatched sizes', async (t) => {
  const h = gram(x, rows, K);
  h[9 * K + 9] = NaN;
  t.throws(() => InverseHessian.fromHessian(h, K, { damp: GPTQ_DAMP, where: 'llm a' }), {
    code: 'QUANT_SCALE_INVALID',
    message: /llm a: the Hessian's diagonal entry 9 is NaN/,
  });
  const hinv = InverseHessian.fromRows(x, rows, K);
  t.throws(() => quantizeGptq(w.subarray(0, 64 * N), 64, N, block, hinv, 'w'), RangeError);
});

t.test('the AWQ search runs GPTQ on its chosen alpha by default; gptq: false keeps round-to-nearest', async (t) => {
  const backend = new OrtBackend({ threads: 1 });
  const st = new ActivationStats('x', { stage: 'test', channels: true, rows: rows });
  st.add({ dtype: 'float32', dims: [rows, K], data: x, location: 'host' });
  const run = (gptq?: boolean) =>
    searchAwq(backend, [{ activation: 'x', K, weights: [{ name: 'w', w, N, block }] }], new Map([['x', st]]), {
      stage: 'test',
      threads: 1,
      ...(gptq === undefined ? {} : { gptq }),
    });
  const [[on], [off]] = await Promise.all([run(), run(false)]);
  t.equal(on!.gptq, true, 'GPTQ by default');
  t.equal(off!.gptq, false);
  t.equal(on!.alpha, off!.alpha, 'the same alpha');
  checkFormat(t, on!.quantized[0]!);
  t.ok(on!.loss < 0.8 * off!.loss, `output error ${off!.loss.toExponential(3)} -> ${on!.loss.toExponential(3)}`);
});
