/** Deterministic feature generators for the clustering tests and benchmark. */

/** Mulberry32: a small seeded PRNG so every run sees the same features. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomFeatures(n: number, dim: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(n * dim);
  for (let i = 0; i < x.length; i++) x[i] = (r() * 2 - 1) * scale;
  return x;
}

/** A grid of patches split into `regions` vertical bands, each around its own random centre plus noise. */
export function plantedFeatures(
  rows: number,
  cols: number,
  dim: number,
  regions: number,
  seed: number,
  noise = 0.1,
): Float32Array {
  const r = rng(seed);
  const centres = Array.from({ length: regions }, () => Float32Array.from({ length: dim }, () => (r() * 2 - 1) * 2));
  const x = new Float32Array(rows * cols * dim);
  for (let p = 0; p < rows * cols; p++) {
    const region = Math.min(regions - 1, Math.floor(((p % cols) * regions) / cols));
    for (let c = 0; c < dim; c++) x[p * dim + c] = centres[region]![c]! + (r() * 2 - 1) * noise;
  }
  return x;
}

/** Only `distinct` different rows, repeated: many exact ties in distances and densities. */
export function repeatedFeatures(n: number, dim: number, distinct: number, seed: number): Float32Array {
  const base = randomFeatures(distinct, dim, seed);
  const r = rng(seed + 1);
  const x = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const src = Math.floor(r() * distinct);
    x.set(base.subarray(src * dim, src * dim + dim), i * dim);
  }
  return x;
}
