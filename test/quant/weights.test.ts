/** Per-column symmetric INT8 weights: the scale/2 round-trip bound, zero and constant columns, bad values. */
import t from 'tap';
import {
  columnScale,
  dequantizeColumns,
  INT8_MAX,
  quantizeColumns,
  REDUCED_MAX,
  worstErrorRatio,
} from '../../src/quant/weights.js';
import { Rng } from '../../tools/export/onnx/random.js';

const K = 96;
const N = 40;

for (const qmax of [INT8_MAX, REDUCED_MAX]) {
  t.test(
    `random [${K}, ${N}] matrix, qmax ${qmax}: every element within scale/2, every column uses its full grid`,
    async (t) => {
      const w = new Rng(7).uniform(K * N, 0.3);
      for (let i = 0; i < K; i++) w[i * N + 3]! *= 50; // one column with a much larger range than the rest
      const qw = quantizeColumns(w, K, N, 'w', qmax);
      // float32 rounding of q * scale may add an ulp; 1e-6 relative is ~8 ulps of slack, no more
      t.ok(worstErrorRatio(w, qw, K, N) <= 1 + 1e-6, `worst |w - dq| / (scale/2) = ${worstErrorRatio(w, qw, K, N)}`);
      for (let c = 0; c < N; c++) {
        let maxQ = 0;
        let maxW = 0;
        for (let r = 0; r < K; r++) {
          maxQ = Math.max(maxQ, Math.abs(qw.q[r * N + c]!));
          maxW = Math.max(maxW, Math.abs(w[r * N + c]!));
        }
        if (maxQ !== qmax) t.fail(`column ${c}: max |q| ${maxQ}, expected ${qmax}`);
        if (Math.abs(qw.scales[c]! - maxW / qmax) > 1e-6 * qw.scales[c]!)
          t.fail(`column ${c}: scale ${qw.scales[c]} is not max|w|/${qmax} = ${maxW / qmax}`);
      }
      t.ok(qw.scales[3]! > 20 * qw.scales[4]!, 'the wide column has its own scale');
    },
  );
}

t.test('a zero column dequantises to exact zeros with a positive scale; a constant column to itself', async (t) => {
  const w = new Float32Array(8 * 3);
  for (let r = 0; r < 8; r++) {
    w[r * 3 + 1] = -0.37; // constant
    w[r * 3 + 2] = r === 5 ? 2.5 : 0; // a single non-zero
  }
  const qw = quantizeColumns(w, 8, 3);
  t.equal(qw.scales[0], 1, 'zero column: scale 1 (TensorRT refuses a zero scale)');
  t.same([...qw.q.filter((_, i) => i % 3 === 0)], new Array(8).fill(0));
  const d = dequantizeColumns(qw, 8, 3);
  t.same([...d.filter((_, i) => i % 3 === 0)], new Array(8).fill(0));
  for (let r = 0; r < 8; r++) {
    t.equal(qw.q[r * 3 + 1], -INT8_MAX);
    t.ok(Math.abs(d[r * 3 + 1]! + 0.37) <= qw.scales[1]! / 2, 'constant column within scale/2');
  }
  t.equal(
    d[5 * 3 + 2],
    Math.fround(qw.q[5 * 3 + 2]! * qw.scales[2]!),
    'dequantised in float32, as DequantizeLinear does',
  );
  t.ok(Math.abs(d[5 * 3 + 2]! - 2.5) < 1e-6);
});

t.test('columnScale never lets |w| / scale exceed qmax, even after rounding to float32', async (t) => {
  const rng = new Rng(3).uniform(2000, 1);
  let bad = 0;
  for (const x of rng) {
    const m = Math.abs(x) * 10 ** Math.round(x * 8);
    if (m / columnScale(m) > INT8_MAX || m / columnScale(m, REDUCED_MAX) > REDUCED_MAX) bad++;
  }
  t.equal(bad, 0);
  t.equal(columnScale(0), 1);
});

t.test('NaN or Inf in a weight is refused with MODEL_INVALID', async (t) => {
  const w = new Float32Array([1, 2, NaN, 4]);
  t.throws(() => quantizeColumns(w, 2, 2, 'layers.0/w'), {
    code: 'MODEL_INVALID',
    message: /layers\.0\/w: element \[1, 0\] is NaN/,
  });
  t.throws(() => quantizeColumns(new Float32Array(3), 2, 2), RangeError);
});
