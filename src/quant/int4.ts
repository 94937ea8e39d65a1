/**
 * Symmetric INT4 weights per block of K, the form TensorRT (IDequantizeLayer block quantization) and
 * ONNX Runtime (blocked DequantizeLinear, MatMulNBits) read for a MatMul's B [K, N]: one scale per
 * block of `block` consecutive rows of a column, scale[b, n] = max_{k in block b} |w[k, n]| / 7,
 * zero point 0, q = clamp(round(w / scale), -7, 7) (-8 is never used: the grid is symmetric).
 *
 * Scales are float16 values (the TensorRT dialect stores them as float16; the ONNX Runtime dialect
 * stores the same values as float32), rounded *up* to the next float16 so that |w| / scale <= 7
 * holds after the rounding. Every element then dequantises to within scale / 2 of its value.
 *
 * A block must divide K (TensorRT infers the block size from the scale's shape, and MatMulNBits
 * wants a power of two >= 16): `int4Block` picks the largest of the requested size, its halves down
 * to 16, that divides K, or none.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import { FLOAT16_MAX, FLOAT16_MIN_POSITIVE, fromFloat16Bits, toFloat16Bits } from './onnx-model.js';

export const INT4_MAX = 7;
export const BLOCK_SIZES = [32, 64, 128] as const;
export type BlockSize = (typeof BLOCK_SIZES)[number];
export const DEFAULT_BLOCK_SIZE: BlockSize = 128;
/** MatMulNBits' smallest block; also the smallest block this exporter writes. */
export const MIN_BLOCK = 16;

/**
 * The block used for a weight with K input rows: the largest of requested, requested/2, ..., 16
 * dividing K; undefined when none does.
 */
export function int4Block(K: number, requested: number): number | undefined {
  for (let b = requested; b >= MIN_BLOCK; b /= 2) if (K % b === 0) return b;
  return undefined;
}

/** Bytes of a weight stored as INT4 with float16 block scales (what TensorRT holds). */
export const int4Bytes = (K: number, N: number, block: number) => Math.ceil((K * N) / 2) + 2 * (K / block) * N;

export interface Int4Weights {
  /** [K, N] row-major, each in [-7, 7]. */
  q: Int8Array;
  /** [K / block, N] row-major, float16 values (held as float32), all > 0. */
  scales: Float32Array;
  K: number;
  N: number;
  block: number;
}

/** The smallest float16 value >= x (x >= 0 and finite). */
export function float16AtLeast(x: number): number {
  let h = toFloat16Bits(x);
  if (fromFloat16Bits(h) < x) h++;
  return fromFloat16Bits(h);
}

/** A block's scale for its largest |w|: float16, rounded up; 1 for an all-zero block. */
export function blockScale(maxAbs: number, where: string): number {
  if (maxAbs === 0) return 1;
  const s = float16AtLeast(maxAbs / INT4_MAX);
  if (!Number.isFinite(s) || s > FLOAT16_MAX) {
    throw new SetokimError(
      ErrorCodes.QUANT_SCALE_INVALID,
      `${where}: a block's largest |w| is ${maxAbs.toPrecision(3)}, so its INT4 scale ` +
        `${(maxAbs / INT4_MAX).toPrecision(3)} is beyond float16's ${FLOAT16_MAX}; this weight cannot be stored ` +
        `as INT4 with float16 scales`,
    );
  }
  return Math.max(s, FLOAT16_MIN_POSITIVE);
}

/**
 * Scales tried below max|w| / 7: down to max|w| / 7.5, where the largest |w| still rounds to 7 within
 * half a step (|w| <= 7.5 scale), so the half-step bound holds for every element.
 */
export const CLIP_RATIOS = [1, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 7 / 7.5];

/** Quantises a row-major [K, N] float matrix per block of `block` rows. Throws MODEL_INVALID on NaN or Inf. */
export function quantizeInt4(
  w: Float32Array | Float64Array,
  K: number,
  N: number,
  block: number,
  name = 'weight',
  ratios: readonly number[] = CLIP_RATIOS,
): Int4Weights {
  if (w.length !== K * N) throw new RangeError(`${name}: ${w.length} values for [${K}, ${N}]`);
  if (K % block !== 0) throw new RangeError(`${name}: block ${block} does not divide K = ${K}`);
  const blocks = K / block;
  const scales = new Float32Array(blocks * N);
  const q = new Int8Array(K * N);
  const maxAbs = new Float64Array(N);
  for (let b = 0; b < blocks; b++) {
    maxAbs.fill(0);
    for (let k = b * block; k < (b + 1) * block; k++) {
      for (let n = 0; n < N; n++) {
        const v = w[k * N + n]!;
        if (!Number.isFinite(v))
          throw new SetokimError(
            ErrorCodes.MODEL_INVALID,
            `${name}: element [${k}, ${n}] is ${v}; a weight must be finite to quantise it; re-export the model`,
          );
        const a = Math.abs(v);
        if (a > maxAbs[n]!) maxAbs[n] = a;
      }
    }
    for (let n = 0; n < N; n++)
      scales[b * N + n] = bestScale(w, b * block, block, N, n, maxAbs[n]!, ratios, `${name} block ${b} column ${n}`);
    for (let k = b * block; k < (b + 1) * block; k++) {
      for (let n = 0; n < N; n++) {
        const x = Math.round(w[k * N + n]! / scales[b * N + n]!);
        q[k * N + n] = x > INT4_MAX ? INT4_MAX : x < -INT4_MAX ? -INT4_MAX : x;
      }
    }
  }
  return { q, scales, K, N, block };
}

/** The scale of one block column with the smallest squared error among max|w| * ratio / 7. */
function bestScale(
  w: Float32Array | Float64Array,
  k0: number,
  block: number,
  N: number,
  n: number,
  maxAbs: number,
  ratios: readonly number[],
  where: string,
): number {
  let best = blockScale(maxAbs, where);
  if (ratios.length < 2 || maxAbs === 0) return best;
  let bestErr = Infinity;
  for (const r of ratios) {
    const s = r === 1 ? best : Math.max(float16AtLeast((maxAbs * r) / INT4_MAX), FLOAT16_MIN_POSITIVE);
    if (s * (INT4_MAX + 0.5) < maxAbs) continue; // the largest |w| would leave the half-step bound
    let err = 0;
    for (let k = k0; k < k0 + block; k++) {
      const v = w[k * N + n]!;
      const q = Math.max(-INT4_MAX, Math.min(INT4_MAX, Math.round(v / s)));
      err += (v - q * s) ** 2;
    }
    if (err < bestErr) [best, bestErr] = [s, err];
  }
  return best;
}

/** What DequantizeLinear(axis=0, block_size) computes: q * scale[k / block, n]. */
export function dequantizeInt4(w: Int4Weights): Float32Array {
  const out = new Float32Array(w.K * w.N);
  for (let k = 0; k < w.K; k++) {
    const row = Math.floor(k / w.block) * w.N;
    for (let n = 0; n < w.N; n++) out[k * w.N + n] = w.q[k * w.N + n]! * w.scales[row + n]!;
  }
  return out;
}

/** ONNX INT4 raw_data: two values per byte, the first element in the low nibble (row-major order). */
export function packInt4(q: Int8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(q.length / 2));
  for (let i = 0; i < q.length; i++) out[i >> 1]! |= (q[i]! & 0x0f) << ((i & 1) * 4);
  return out;
}

export function unpackInt4(packed: Uint8Array, count: number): Int8Array {
  const out = new Int8Array(count);
  for (let i = 0; i < count; i++) {
    const nib = (packed[i >> 1]! >> ((i & 1) * 4)) & 0x0f;
    out[i] = nib >= 8 ? nib - 16 : nib;
  }
  return out;
}

/**
 * com.microsoft MatMulNBits' B: [N, K / block, block / 2] bytes, column n's block b holding
 * q + 8 (its default zero point) for rows b*block .. b*block+block-1, the even row in the low nibble.
 * Its scales are [N, K / block], transposed from ours.
 */
export function packMatMulNBits(w: Int4Weights): { b: Uint8Array; scales: Float32Array } {
  const blocks = w.K / w.block;
  const b = new Uint8Array(w.N * blocks * (w.block / 2));
  const scales = new Float32Array(w.N * blocks);
  for (let n = 0; n < w.N; n++) {
    for (let blk = 0; blk < blocks; blk++) {
      scales[n * blocks + blk] = w.scales[blk * w.N + n]!;
      const base = (n * blocks + blk) * (w.block / 2);
      for (let j = 0; j < w.block; j++) {
        const k = blk * w.block + j;
        b[base + (j >> 1)]! |= ((w.q[k * w.N + n]! + 8) & 0x0f) << ((j & 1) * 4);
      }
    }
  }
  return { b, scales };
}
