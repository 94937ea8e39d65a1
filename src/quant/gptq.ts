/**
 * GPTQ error feedback (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
 * Pre-trained Transformers") for the INT4 blocks of int4.ts. For a MatMul y = x W, W [K, N], it quantises
 * the input channels (rows of W) in order and, after each row k, moves that row's rounding error onto
 * the rows not yet quantised so that x W_q stays close to x W on the calibration activations X: with
 * H = X^T X + lambda I and U the upper Cholesky factor of H^-1 (U^T U = H^-1),
 *
 *   e = (W[k, :] - W_q[k, :]) / U[k, k],   W[j, :] -= U[k, j] e   for every j > k.
 *
 * lambda = GPTQ_DAMP * mean(diag H): 1, not the paper's 1%, measured on the `small` set's LLM (docs/QUANT.md).
 * Calibration there gives ~220 rows for K = 512 and 1408, so X^T X has rank <= 220: at 1% GPTQ cuts the
 * calibration rows' output error 18x but pushes the error into directions those rows miss, and held-out
 * logits get worse than round-to-nearest (cosine 0.977 against 0.982 worst); lambda 0.1 / 0.3 / 1 / 2 / 10
 * times the mean diagonal gave 0.983 / 0.986 / 0.988 / 0.987 / 0.987 worst, 0.990 / 0.991 / 0.992 / 0.992 /
 * 0.991 mean. Scales stay per block of `block` rows and are chosen (int4.ts's
 * clip search) from the error-updated rows when a block's first row is reached, as GPTQ does with its
 * group size, so the output is the same Int4Weights as round-to-nearest: q in [-7, 7], float16 scales.
 * The updates run block-wise ("lazy batch"): inside a block at once, onto the later rows at the block's
 * end. H and its factors are Float64.
 *
 * With AWQ (awq.ts) the problem is the scaled one: weights W / m and activations X m, so
 * H = diag(m) X^T X diag(m).
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import { blockScales, CLIP_RATIOS, roundInt4, type Int4Weights } from './int4.js';

/** lambda as a fraction of the mean diagonal of X^T X (see the header for why not the paper's 0.01). */
export const GPTQ_DAMP = 1;
/** Retries of the factorisation, each with 10x the dampening, before giving up. */
const RETRIES = 4;

/** X^T X of the rows of x ([rows, K] row-major), each channel k scaled by m[k] when given. Float64, full. */
export function gram(x: Float32Array, rows: number, K: number, m?: Float32Array): Float64Array {
  if (x.length < rows * K) throw new RangeError(`gram: ${x.length} values for ${rows} rows of ${K}`);
  const h = new Float64Array(K * K);
  const row = new Float64Array(K);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < K; k++) row[k] = m ? x[r * K + k]! * m[k]! : x[r * K + k]!;
    for (let i = 0; i < K; i++) {
      const a = row[i]!;
      if (a === 0) continue;
      const base = i * K;
      for (let j = i; j < K; j++) h[base + j]! += a * row[j]!;
    }
  }
  for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) h[i * K + j] = h[j * K + i]!;
  return h;
}

/** How the inverse Hessian is built: AWQ multipliers and dampening. */
export interface HessianOptions {
  /** Per input channel multipliers (AWQ's m): H of the scaled activations. */
  m?: Float32Array;
  /** lambda as a fraction of the mean diagonal (default GPTQ_DAMP). */
  damp?: number;
  /** Names the activation in errors. */
  where?: string;
}

/** The upper Cholesky factor of the dampened inverse Hessian of one activation. */
export class InverseHessian {
  private constructor(
    readonly K: number,
    /** U, [K, K] row-major, upper triangular with a positive diagonal: U^T U = (H + lambda I)^-1. */
    readonly u: Float64Array,
    /** The lambda used (after any retries). */
    readonly lambda: number,
    /** Input channels that were zero on every calibration row (their diagonal was replaced). */
    readonly dead: number,
  ) {}

  /** From calibration rows x [rows, K]. */
  static fromRows(x: Float32Array, rows: number, K: number, opts: HessianOptions = {}): InverseHessian {
    return InverseHessian.fromHessian(gram(x, rows, K, opts.m), K, opts);
  }

  /** From H = X^T X ([K, K], symmetric; not modified). */
  static fromHessian(hessian: Float64Array, K: number, opts: HessianOptions = {}): InverseHessian {
    const { damp = GPTQ_DAMP, where = 'GPTQ' } = opts;
    const h = Float64Array.from(hessian);
    let live = 0;
    let liveSum = 0;
    for (let k = 0; k < K; k++) {
      const d = h[k * K + k]!;
      if (!(Number.isFinite(d) && d >= 0))
        throw new SetokimError(
          ErrorCodes.QUANT_SCALE_INVALID,
          `${where}: the Hessian's diagonal entry ${k} is ${d}; calibrate on other inputs`,
        );
      if (d > 0) [live, liveSum] = [live + 1, liveSum + d];
    }
    // A channel that is zero on every row has no error to weigh: give it the mean diagonal and no
    // coupling, so its rows round to nearest and nothing flows into or out of it.
    const fill = live > 0 ? liveSum / live : 1;
    let dead = 0;
    for (let k = 0; k < K; k++) if (h[k * K + k] === 0) [h[k * K + k], dead] = [fill, dead + 1];
    let mean = 0;
    for (let k = 0; k < K; k++) mean += h[k * K + k]! / K;
    for (let attempt = 0, d = damp; attempt <= RETRIES; attempt++, d *= 10) {
      const v = upperLowerCholesky(h, K, d * mean);
      if (v) return new InverseHessian(K, invertUpper(v, K), d * mean, dead);
    }
    throw new SetokimError(
      ErrorCodes.QUANT_SCALE_INVALID,
      `${where}: the Hessian is not positive definite even with ${damp * 10 ** RETRIES} x its mean diagonal added; ` +
        'calibrate on other inputs',
    );
  }
}

/**
 * V upper triangular with V V^T = H + lambda I (the Cholesky factorisation in reverse order), or
 * undefined when a pivot is not positive.
 */
function upperLowerCholesky(h: Float64Array, K: number, lambda: number): Float64Array | undefined {
  const v = new Float64Array(K * K);
  for (let j = K - 1; j >= 0; j--) {
    const rj = j * K;
    let s = h[rj + j]! + lambda;
    for (let k = j + 1; k < K; k++) s -= v[rj + k]! * v[rj + k]!;
    if (!(s > 0) || !Number.isFinite(s)) return undefined;
    const d = Math.sqrt(s);
    v[rj + j] = d;
    for (let i = 0; i < j; i++) {
      const ri = i * K;
      let t = h[ri + j]!;
      for (let k = j + 1; k < K; k++) t -= v[ri + k]! * v[rj + k]!;
      v[ri + j] = t / d;
    }
  }
  return v;
}

/**
 * V^-1 for V upper triangular: upper triangular U with U^T U = (V V^T)^-1, so U is the upper Cholesky
 * factor of H^-1. Row i: U[i][i] = 1 / V[i][i], U[i][c] = -sum_{i<=k<c} U[i][k] V[k][c] / V[c][c].
 */
function invertUpper(v: Float64Array, K: number): Float64Array {
  const vt = new Float64Array(K * K); // V^T, so the sums over k read both operands in order
  for (let i = 0; i < K; i++) for (let c = i; c < K; c++) vt[c * K + i] = v[i * K + c]!;
  const u = new Float64Array(K * K);
  for (let i = 0; i < K; i++) {
    const ri = i * K;
    u[ri + i] = 1 / v[ri + i]!;
    for (let c = i + 1; c < K; c++) {
      const rc = c * K;
      let s = 0;
      for (let k = i; k < c; k++) s += u[ri + k]! * vt[rc + k]!;
      u[ri + c] = -s / vt[rc + c]!;
    }
  }
  return u;
}

/**
 * Quantises a row-major [K, N] matrix per block of `block` rows with GPTQ error feedback (see the
 * header); `ratios` are int4.ts's clip-search ratios ([1]: max|w| / 7 scales).
 */
export function quantizeGptq(
  w: Float32Array | Float64Array,
  K: number,
  N: number,
  block: number,
  hinv: InverseHessian,
  name = 'weight',
  ratios: readonly number[] = CLIP_RATIOS,
): Int4Weights {
  if (w.length !== K * N) throw new RangeError(`${name}: ${w.length} values for [${K}, ${N}]`);
  if (K % block !== 0) throw new RangeError(`${name}: block ${block} does not divide K = ${K}`);
  if (hinv.K !== K) throw new RangeError(`${name}: a Hessian of ${hinv.K} channels for K = ${K}`);
  const W = Float64Array.from(w);
  const U = hinv.u;
  const q = new Int8Array(K * N);
  const scales = new Float32Array((K / block) * N);
  const err = new Float64Array(block * N); // the block's scaled errors e, one row per input channel
  for (let k0 = 0; k0 < K; k0 += block) {
    const s = blockScales(W, k0, block, N, ratios, name);
    scales.set(s, (k0 / block) * N);
    for (let k = k0; k < k0 + block; k++) {
      const d = U[k * K + k]!;
      const eo = (k - k0) * N;
      for (let n = 0; n < N; n++) {
        const x = W[k * N + n]!;
        const qv = roundInt4(x, s[n]!);
        q[k * N + n] = qv;
        err[eo + n] = (x - qv * s[n]!) / d;
      }
      for (let j = k + 1; j < k0 + block; j++) subtractScaled(W, j * N, err, eo, U[k * K + j]!, N);
    }
    for (let j = k0 + block; j < K; j++) {
      for (let k = k0; k < k0 + block; k++) subtractScaled(W, j * N, err, (k - k0) * N, U[k * K + j]!, N);
    }
  }
  return { q, scales, K, N, block };
}

/** W[row .. row + N) -= u * e[eo .. eo + N). */
function subtractScaled(W: Float64Array, row: number, e: Float64Array, eo: number, u: number, N: number): void {
  if (u === 0) return;
  for (let n = 0; n < N; n++) W[row + n]! -= u * e[eo + n]!;
}
