/**
 * Plain TypeScript reference of SeTok's position encoding and DPC-KNN clustering (docs/SETOK.md,
 * "Position encoding" and "The clustering"). The native CPU and CUDA code must give the same
 * centres and labels bit for bit, so this file DEFINES the float32 computation order, and the C++
 * (native/trt/setok/dpc_knn*.{h,cc,cu}) follows it step by step:
 *
 *  1. Gram matrix g[i][j] = sum over c = 0..C-1, in ascending c, of acc = f32(acc + f32(x_i[c] * x_j[c]))
 *     starting from acc = 0: one rounding for the product, one for the sum, NEVER a fused
 *     multiply-add (the C++ blocks contraction, CUDA uses __fmul_rn/__fadd_rn). A GEMM that keeps one
 *     accumulator per output and walks c in order (vectorised across outputs) computes exactly this,
 *     and g is exactly symmetric because a*b == b*a.
 *  2. d2 = f32(f32(g_ii + g_jj) - f32(2 g_ij)), clamped at 0 (so d2_ii is exactly 0);
 *     D[i][j] = f32(sqrt(f32(d2 / C))).
 *  3. For row i, t = the k-th smallest D (self included); the k nearest are every j with D < t plus
 *     the lowest-index j with D == t until there are k. Add f32(D * D) over them in ascending j into
 *     a float32 sum (index order needs no sort, only a selection), mean = f32(sum / k),
 *     rho = f32(expDet(-mean)), where expDet is the double-precision exp below built from +, -, *
 *     only (so JS, C++ and CUDA agree).
 *  4. delta_i = min D[i][j] over j with rho_j > rho_i or (rho_j == rho_i and j < i); the one point
 *     with no such j takes the maximum of the whole matrix D. score = f32(rho * delta).
 *  5. Centres: score > threshold (compared in double) in index order; if none, the `fallback` best
 *     (score descending, index ascending), sorted by index; a maxTokens cap keeps the best of those
 *     the same way and re-sorts by index.
 *  6. labels[i] = the position (in centres) of the centre with the smallest D[i][c], the first one on
 *     a tie; a centre always gets its own position.
 */

const f32 = Math.fround;

export interface ClusterParams {
  n: number;
  dim: number;
  k: number;
  threshold: number;
  fallback: number;
  /** Cap on the number of centres; undefined or 0 means no cap. */
  maxTokens?: number;
}

export interface ClusterResult {
  /** Patch indices of the centres, ascending. */
  centers: Int32Array;
  /** For each patch, the position in `centers` of its cluster. */
  labels: Int32Array;
  /** score = rho * delta for every patch. */
  scores: Float32Array;
}

/** 2^e for the exponents expDet needs, built by exact halving/doubling (no pow()). */
const POW2 = new Float64Array(200);
{
  let v = 1;
  for (let e = 0; e >= -160; e--) {
    POW2[e + 160] = v;
    v /= 2;
  }
  v = 1;
  for (let e = 0; e < 39; e++) {
    POW2[e + 160] = v;
    v *= 2;
  }
}
const LOG2E = 1.4426950408889634;
const LN2_HI = 0.6931471803691238; // high 32 bits of ln 2 (n * LN2_HI is exact)
const LN2_LO = 1.9082149292705877e-10;
const INV_FACT = [
  1,
  1,
  1 / 2,
  1 / 6,
  1 / 24,
  1 / 120,
  1 / 720,
  1 / 5040,
  1 / 40320,
  1 / 362880,
  1 / 3628800,
  1 / 39916800,
  1 / 479001600,
  1 / 6227020800,
];

/**
 * exp(x) for x <= 0 from IEEE double +, -, * only (range reduction by ln 2, Taylor degree 13, scaling by
 * an exact power of two), so every platform computes the same bits. Below -104 the float32 result is 0.
 */
export function expDet(x: number): number {
  if (!(x > -104)) return 0;
  const n = Math.floor(x * LOG2E + 0.5);
  const r = x - n * LN2_HI - n * LN2_LO;
  let p = INV_FACT[13]!;
  for (let i = 12; i >= 0; i--) p = INV_FACT[i]! + r * p;
  return p * POW2[n + 160]!;
}

/** 2-D sin/cos table (rows*cols x dim) of docs/SETOK.md, rounded to float32. */
export function positionEncodingTable(rows: number, cols: number, dim: number): Float32Array {
  const ch = 2 * Math.ceil(dim / 4);
  const invFreq = new Float64Array(ch / 2);
  for (let j = 0; j < ch / 2; j++) invFreq[j] = 1 / Math.pow(10000, (2 * j) / ch);
  const out = new Float32Array(rows * cols * dim);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const base = (r * cols + c) * dim;
      for (let j = 0; j < ch / 2; j++) {
        const a = r * invFreq[j]!;
        const b = c * invFreq[j]!;
        if (2 * j < dim) out[base + 2 * j] = Math.sin(a);
        if (2 * j + 1 < dim) out[base + 2 * j + 1] = Math.cos(a);
        if (ch + 2 * j < dim) out[base + ch + 2 * j] = Math.sin(b);
        if (ch + 2 * j + 1 < dim) out[base + ch + 2 * j + 1] = Math.cos(b);
      }
    }
  }
  return out;
}

/** features + position encoding, as a new array (float32 add). */
export function addPositionEncodingReference(
  features: Float32Array,
  rows: number,
  cols: number,
  dim: number,
): Float32Array {
  const pe = positionEncodingTable(rows, cols, dim);
  const out = new Float32Array(features.length);
  for (let i = 0; i < out.length; i++) out[i] = features[i]! + pe[i]!;
  return out;
}

/** Step 1: the Gram matrix in the defined order (upper triangle computed, mirrored). */
export function gramReference(x: Float32Array, n: number, dim: number): Float32Array {
  const g = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    const oi = i * dim;
    for (let j = i; j < n; j++) {
      const oj = j * dim;
      let acc = 0;
      for (let c = 0; c < dim; c++) acc = f32(acc + f32(x[oi + c]! * x[oj + c]!));
      g[i * n + j] = acc;
      g[j * n + i] = acc;
    }
  }
  return g;
}

/** Step 2: D from the Gram matrix. */
export function distancesFromGram(g: Float32Array, n: number, dim: number): Float32Array {
  const d = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    const gii = g[i * n + i]!;
    for (let j = 0; j < n; j++) {
      let d2 = f32(f32(gii + g[j * n + j]!) - 2 * g[i * n + j]!);
      if (!(d2 > 0)) d2 = 0;
      d[i * n + j] = f32(Math.sqrt(f32(d2 / dim)));
    }
  }
  return d;
}

/** Steps 3 to 6 on a distance matrix. */
export function clusterFromDistances(d: Float32Array, p: ClusterParams): ClusterResult {
  const { n, k } = p;
  const rho = new Float32Array(n);
  const row = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const di = d.subarray(i * n, i * n + n);
    row.set(di);
    row.sort();
    const t = row[k - 1]!;
    let need = k;
    for (let m = 0; m < k; m++) if (row[m]! < t) need--; // ties at t still to take, lowest j first
    let sum = 0;
    for (let j = 0; j < n; j++) {
      const v = di[j]!;
      if (v < t) sum = f32(sum + f32(v * v));
      else if (v === t && need > 0) {
        sum = f32(sum + f32(v * v));
        need--;
      }
    }
    rho[i] = f32(expDet(-f32(sum / k)));
  }
  let dmax = 0;
  for (let i = 0; i < n * n; i++) if (d[i]! > dmax) dmax = d[i]!;
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const ri = rho[i]!;
    let delta = Infinity;
    for (let j = 0; j < n; j++) {
      const rj = rho[j]!;
      if (rj > ri || (rj === ri && j < i)) {
        const v = d[i * n + j]!;
        if (v < delta) delta = v;
      }
    }
    if (delta === Infinity) delta = dmax;
    scores[i] = f32(ri * delta);
  }
  const centers = selectCenters(scores, p);
  const labels = assignLabels(d, n, centers);
  return { centers, labels, scores };
}

/** Step 5: centres from the scores. */
export function selectCenters(scores: Float32Array, p: ClusterParams): Int32Array {
  const n = scores.length;
  const byScore = (a: number, b: number) => scores[b]! - scores[a]! || a - b;
  let picked: number[] = [];
  for (let i = 0; i < n; i++) if (scores[i]! > p.threshold) picked.push(i);
  if (picked.length === 0) {
    picked = Array.from({ length: n }, (_, i) => i)
      .sort(byScore)
      .slice(0, Math.min(p.fallback, n));
  }
  if (p.maxTokens && picked.length > p.maxTokens) picked = picked.sort(byScore).slice(0, p.maxTokens);
  return Int32Array.from(picked.sort((a, b) => a - b));
}

/** Step 6: nearest centre, first on a tie, centres their own. */
export function assignLabels(d: Float32Array, n: number, centers: Int32Array): Int32Array {
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    let bestD = d[i * n + centers[0]!]!;
    for (let m = 1; m < centers.length; m++) {
      const v = d[i * n + centers[m]!]!;
      if (v < bestD) {
        bestD = v;
        best = m;
      }
    }
    labels[i] = best;
  }
  for (let m = 0; m < centers.length; m++) labels[centers[m]!] = m;
  return labels;
}

/** The whole clustering of n x dim features (no validation: callers validate). */
export function clusterReference(features: Float32Array, p: ClusterParams): ClusterResult {
  const g = gramReference(features, p.n, p.dim);
  return clusterFromDistances(distancesFromGram(g, p.n, p.dim), p);
}
