import t from 'tap';
import {
  assignLabels,
  clusterReference,
  expDet,
  gramReference,
  distancesFromGram,
  positionEncodingTable,
  selectCenters,
} from '../../src/setok/reference.js';
import { plantedFeatures, randomFeatures, repeatedFeatures } from './helpers.js';

t.test('expDet agrees with Math.exp to a few double ulps and is monotone', async (t) => {
  let prev = Infinity;
  for (let x = 0; x > -110; x -= 0.0137) {
    const v = expDet(x);
    if (x > -100) t.ok(Math.abs(v - Math.exp(x)) <= 4e-16 * Math.exp(x), `x=${x}`);
    t.ok(v <= prev);
    prev = v;
  }
  t.equal(expDet(0), 1);
  t.equal(expDet(-200), 0);
});

t.test('position encoding follows docs/SETOK.md (row sin/cos pairs, then column pairs, cut to C)', async (t) => {
  const dim = 10; // ch = 2 * ceil(10/4) = 6: row in [0,6), column in [6,12) cut at 10
  const pe = positionEncodingTable(3, 4, dim);
  const ch = 6;
  const r = 2;
  const c = 3;
  const base = (r * 4 + c) * dim;
  for (let j = 0; j < ch / 2; j++) {
    const f = 1 / Math.pow(10000, (2 * j) / ch);
    t.equal(pe[base + 2 * j], Math.fround(Math.sin(r * f)));
    t.equal(pe[base + 2 * j + 1], Math.fround(Math.cos(r * f)));
    if (ch + 2 * j < dim) t.equal(pe[base + ch + 2 * j], Math.fround(Math.sin(c * f)));
    if (ch + 2 * j + 1 < dim) t.equal(pe[base + ch + 2 * j + 1], Math.fround(Math.cos(c * f)));
  }
  // patch (0,0): sin 0 = 0, cos 0 = 1
  t.same(Array.from(pe.subarray(0, 4)), [0, 1, 0, 1]);
});

t.test('distances: symmetric, zero diagonal, close to the direct formula', async (t) => {
  const n = 20;
  const dim = 33;
  const x = randomFeatures(n, dim, 7);
  const d = distancesFromGram(gramReference(x, n, dim), n, dim);
  for (let i = 0; i < n; i++) {
    t.equal(d[i * n + i], 0);
    for (let j = 0; j < n; j++) {
      t.equal(d[i * n + j], d[j * n + i]);
      let s = 0;
      for (let c = 0; c < dim; c++) s += (x[i * dim + c]! - x[j * dim + c]!) ** 2;
      const direct = Math.sqrt(s / dim);
      if (i !== j) t.ok(Math.abs(d[i * n + j]! - direct) < 1e-5 * (1 + direct), `D[${i}][${j}]`);
    }
  }
});

/** Straight from the spec in double precision, for cross-checking structure (not bits). */
function naive(x: Float32Array, n: number, dim: number, k: number) {
  const D = (i: number, j: number) => {
    let s = 0;
    for (let c = 0; c < dim; c++) s += (x[i * dim + c]! - x[j * dim + c]!) ** 2;
    return Math.sqrt(s / dim);
  };
  const rho = Array.from({ length: n }, (_, i) => {
    const row = Array.from({ length: n }, (_, j) => D(i, j)).sort((a, b) => a - b);
    return Math.exp(-row.slice(0, k).reduce((a, v) => a + v * v, 0) / k);
  });
  return { D, rho };
}

t.test('planted regions: one centre per region, every label inside its region', async (t) => {
  const rows = 8;
  const cols = 12;
  const dim = 16;
  const x = plantedFeatures(rows, cols, dim, 3, 11, 0.05);
  const r = clusterReference(x, { n: rows * cols, dim, k: 8, threshold: 0.5, fallback: 64 });
  t.equal(r.centers.length, 3);
  for (let p = 0; p < rows * cols; p++) {
    const region = Math.floor(((p % cols) * 3) / cols);
    const centreRegion = Math.floor(((r.centers[r.labels[p]!]! % cols) * 3) / cols);
    t.equal(centreRegion, region, `patch ${p}`);
  }
  // centres ascending, each labelled as itself
  for (let m = 0; m < r.centers.length; m++) t.equal(r.labels[r.centers[m]!], m);
  // the scores match the spec computed in double
  const { D, rho } = naive(x, rows * cols, dim, 8);
  const n = rows * cols;
  for (let i = 0; i < n; i++) {
    let delta = Infinity;
    for (let j = 0; j < n; j++) if (rho[j]! > rho[i]! || (rho[j] === rho[i] && j < i)) delta = Math.min(delta, D(i, j));
    if (delta === Infinity) {
      delta = 0;
      for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) delta = Math.max(delta, D(a, b));
    }
    t.ok(Math.abs(r.scores[i]! - rho[i]! * delta) < 1e-4, `score ${i}`);
  }
});

t.test('centre selection: threshold, fallback, cap', async (t) => {
  const s = Float32Array.from([0.1, 0.9, 0.3, 0.9, 0.7, 0.2]);
  const p = { n: 6, dim: 1, k: 1, fallback: 2 };
  t.same(Array.from(selectCenters(s, { ...p, threshold: 0.5 })), [1, 3, 4]);
  t.same(Array.from(selectCenters(s, { ...p, threshold: 0.95 })), [1, 3], 'fallback: two best, index order');
  t.same(
    Array.from(selectCenters(s, { ...p, threshold: 0.5, maxTokens: 2 })),
    [1, 3],
    'cap keeps best, tie to lower index',
  );
  t.same(Array.from(selectCenters(s, { ...p, threshold: 0.5, maxTokens: 3 })), [1, 3, 4], 'cap not reached: unchanged');
  t.same(Array.from(selectCenters(s, { ...p, threshold: 0.0, maxTokens: 1 })), [1]);
});

t.test('labels: nearest centre, first on a tie, centre is its own', async (t) => {
  // 3 points; D[2][0] == D[2][1]; point 1 duplicates point 0 (D = 0) but is a centre
  const d = Float32Array.from([0, 0, 1, 0, 0, 1, 1, 1, 0]);
  t.same(Array.from(assignLabels(d, 3, Int32Array.from([0, 1]))), [0, 1, 0]);
});

t.test('tie-heavy features are deterministic and break ties by index', async (t) => {
  const n = 60;
  const dim = 8;
  const x = repeatedFeatures(n, dim, 5, 3);
  const a = clusterReference(x, { n, dim, k: 4, threshold: 0.3, fallback: 10 });
  const b = clusterReference(x.slice(), { n, dim, k: 4, threshold: 0.3, fallback: 10 });
  t.same(a, b);
  // duplicates of a row share its density; only the first copy of a row can be a centre
  const firstCopy = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const key = Array.from(x.subarray(i * dim, i * dim + dim)).join(',');
    if (!firstCopy.has(key)) firstCopy.set(key, i);
  }
  for (const c of a.centers) {
    const key = Array.from(x.subarray(c * dim, c * dim + dim)).join(',');
    if (a.scores[c]! > 0.3) t.equal(firstCopy.get(key), c, `centre ${c} is a first copy`);
  }
});
