/** Each ONNX building block, run in ONNX Runtime, against the plain TypeScript reference. */
import t from 'tap';
import { gelu, layerNorm, MASK_NEG, Model, rmsNorm, rope, ropeTables, sdpa } from '../../tools/export/onnx/layers.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { attentionRef, geluTanhRef, layerNormRef, ropeRef, rmsNormRef } from './reference.js';
import { data, f32, i64, maxAbsDiff, randn, run } from './helpers.js';

const model = () => new Model('block', new Rng(1));

t.test('LayerNormalization matches (x - mean) / sqrt(var + eps)', async (t) => {
  const m = model();
  const x = m.g.input('x', 'float32', [2, 5, 8]);
  m.g.output('y', layerNorm(m, x, 8, 'ln', 1e-5), 'float32', [2, 5, 8]);
  const xs = randn(80, 2, 3);
  const y = data((await run(m, { x: f32(xs, [2, 5, 8]) })).y);
  t.ok(maxAbsDiff(y, layerNormRef(xs, 8, 1e-5)) < 1e-5);
});

t.test('RMSNorm (Pow/ReduceMean/Sqrt/Div) matches x / sqrt(mean(x^2) + eps)', async (t) => {
  const m = model();
  const x = m.g.input('x', 'float32', [3, 16]);
  m.g.output('y', rmsNorm(m, x, 16, 'rms', 1e-6), 'float32', [3, 16]);
  const xs = randn(48, 3, 5);
  const y = data((await run(m, { x: f32(xs, [3, 16]) })).y);
  t.ok(maxAbsDiff(y, rmsNormRef(xs, 16, 1e-6)) < 1e-5);
});

t.test('GELU (tanh approximation, decomposed)', async (t) => {
  const m = model();
  const x = m.g.input('x', 'float32', [64]);
  m.g.output('y', gelu(m, x), 'float32', [64]);
  const xs = Float32Array.from({ length: 64 }, (_, i) => -6 + (12 * i) / 63);
  const y = data((await run(m, { x: f32(xs, [64]) })).y);
  t.ok(maxAbsDiff(y, Array.from(xs, geluTanhRef)) < 1e-5);
  t.ok(Math.abs(y[63]! - 6) < 1e-5 && Math.abs(y[0]!) < 1e-5, 'gelu(6) = 6 and gelu(-6) = 0 to float precision');
});

for (const theta of [10000, 500000]) {
  t.test(`RoPE (theta ${theta}) at positions start..start+T-1, with start from a dynamic input`, async (t) => {
    const [heads, T, hd] = [2, 5, 8];
    const m = model();
    const x = m.g.input('x', 'float32', [1, heads, 'T', hd]);
    const start = m.g.input('start', 'int64', []);
    const count = m.g.op('Gather', [m.g.op('Shape', [x]), m.g.ints([2], [])], { axis: 0 });
    const { cos, sin } = ropeTables(m, start, count, hd, theta);
    m.g.output('y', rope(m, x, cos, sin, hd), 'float32', [1, heads, 'T', hd]);
    const xs = randn(heads * T * hd, 4);
    for (const s of [0, 7, 1000]) {
      const y = data((await run(m, { x: f32(xs, [1, heads, T, hd]), start: i64([s], []) })).y);
      // float32 angles at position 1000 lose ~1e-4 of absolute precision
      t.ok(maxAbsDiff(y, ropeRef(xs, heads, T, hd, s, theta)) < (s > 100 ? 5e-4 : 1e-5), `start ${s}`);
    }
  });
}

t.test('masked attention equals the reference, and masked keys have no influence', async (t) => {
  const [heads, Sq, Sk, hd] = [2, 4, 6, 8];
  const m = model();
  const q = m.g.input('q', 'float32', [1, heads, Sq, hd]);
  const k = m.g.input('k', 'float32', [1, heads, Sk, hd]);
  const v = m.g.input('v', 'float32', [1, heads, Sk, hd]);
  const mask = m.g.input('mask', 'float32', [1, 1, Sq, Sk]);
  m.g.output('o', sdpa(m, q, k, v, hd, mask), 'float32', [1, heads, Sq, hd]);
  const qs = randn(heads * Sq * hd, 5, 2);
  const ks = randn(heads * Sk * hd, 6, 2);
  const vs = randn(heads * Sk * hd, 7, 2);
  // query i sees keys j with (i + j) % 3 != 0, plus always key i
  const ms = Float32Array.from({ length: Sq * Sk }, (_, n) => {
    const [i, j] = [Math.floor(n / Sk), n % Sk];
    return (i + j) % 3 !== 0 || i === j ? 0 : MASK_NEG;
  });
  const feeds = {
    q: f32(qs, [1, heads, Sq, hd]),
    k: f32(ks, [1, heads, Sk, hd]),
    v: f32(vs, [1, heads, Sk, hd]),
    mask: f32(ms, [1, 1, Sq, Sk]),
  };
  const o = data((await run(m, feeds)).o);
  t.ok(maxAbsDiff(o, attentionRef(qs, ks, vs, heads, Sq, Sk, hd, ms)) < 1e-5, 'matches reference');
  // change the values of one masked-out key: the query that cannot see it must not move
  for (const [i, j] of [
    [0, 3],
    [1, 5],
  ] as const) {
    t.equal(ms[i * Sk + j], MASK_NEG);
    const vs2 = Float32Array.from(vs);
    for (let h = 0; h < heads; h++) for (let d = 0; d < hd; d++) vs2[(h * Sk + j) * hd + d] = 100;
    const o2 = data((await run(m, { ...feeds, v: f32(vs2, [1, heads, Sk, hd]) })).o);
    const rows = (a: Float32Array, r: number) =>
      Array.from({ length: heads * hd }, (_, n) => a[(Math.floor(n / hd) * Sq + r) * hd + (n % hd)]!);
    t.ok(maxAbsDiff(rows(o, i), rows(o2, i)) < 1e-6, `query ${i} ignores masked key ${j}`);
    t.ok(maxAbsDiff(rows(o, 2), rows(o2, 2)) > 1e-2, 'a query that sees it moves');
  }
});
