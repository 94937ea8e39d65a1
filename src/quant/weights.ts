/**
 * Symmetric per-output-channel INT8 weight quantisation, the form TensorRT and ONNX Runtime read
 * from a DequantizeLinear(axis=1) on a MatMul's B [K, N]: one float scale per column n,
 * scale[n] = max_k |w[k, n]| / 127, zero point 0, q = clamp(round(w / scale), -127, 127).
 *
 * Error bound: every element dequantises to within scale[n] / 2 of its value (round to nearest;
 * the clamp never bites because |w| <= 127 scale by construction, up to one float32 rounding of the
 * scale, which `quantizeColumns` rounds up so it cannot). -128 is never used, so the grid is
 * symmetric and q * scale never overshoots the column's range.
 */
import { ErrorCodes, SetokimError } from '../errors.js';

export const INT8_MAX = 127;

export interface QuantizedWeights {
  /** [K, N] row-major like the input. */
  q: Int8Array;
  /** One per column, float32, always > 0 (TensorRT refuses zero scales). */
  scales: Float32Array;
}

/** The next float32 above a positive float32 x. */
function nextUpF32(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = u[0]! + 1;
  return f[0]!;
}

/**
 * Weights use [-127, 127] by default. REDUCED_MAX (63, 7 bits) is for ONNX Runtime on x86 without
 * VNNI: its integer MatMul runs int8 x int8 as u8 x s8 through VPMADDUBSW, whose int16 pair sums
 * saturate when |w| > 64 (255 * 127 * 2 > 32767); with |w| <= 63 they cannot (255 * 63 * 2 = 32130).
 */
export const REDUCED_MAX = 63;

/** The per-column scale: max|w| / qmax rounded up to float32; 1 for an all-zero column (any scale dequantises 0 exactly). */
export function columnScale(maxAbs: number, qmax = INT8_MAX): number {
  if (maxAbs === 0) return 1;
  let s = Math.fround(maxAbs / qmax);
  while (s * qmax < maxAbs) s = nextUpF32(s); // at most once: keeps |w| / s <= qmax
  if (s === 0) s = 1.401298464324817e-45; // a denormal column: smallest positive float32
  return s;
}

/** Quantises a row-major [rows, cols] float32 matrix per column (axis 1). Throws MODEL_INVALID on NaN or Inf. */
export function quantizeColumns(
  w: Float32Array,
  rows: number,
  cols: number,
  name = 'weight',
  qmax = INT8_MAX,
): QuantizedWeights {
  if (w.length !== rows * cols) throw new RangeError(`${name}: ${w.length} values for [${rows}, ${cols}]`);
  const maxAbs = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const v = w[row + c]!;
      if (!Number.isFinite(v))
        throw new SetokimError(
          ErrorCodes.MODEL_INVALID,
          `${name}: element [${r}, ${c}] is ${v}; a weight must be finite to quantise it; re-export the model`,
        );
      const a = Math.abs(v);
      if (a > maxAbs[c]!) maxAbs[c] = a;
    }
  }
  const scales = new Float32Array(cols);
  for (let c = 0; c < cols; c++) scales[c] = columnScale(maxAbs[c]!, qmax);
  const q = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) {
      const x = Math.round(w[row + c]! / scales[c]!);
      q[row + c] = x > qmax ? qmax : x < -qmax ? -qmax : x;
    }
  }
  return { q, scales };
}

/** What DequantizeLinear(axis=1) computes: q * scale[col], in float32. */
export function dequantizeColumns(qw: QuantizedWeights, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = qw.q[r * cols + c]! * qw.scales[c]!;
  return out;
}

/** Largest |w - dequant(q)| / (scale / 2) over the matrix: at most 1 (up to float32 rounding) by the bound above. */
export function worstErrorRatio(w: Float32Array, qw: QuantizedWeights, rows: number, cols: number): number {
  const d = dequantizeColumns(qw, rows, cols);
  let worst = 0;
  for (let i = 0; i < w.length; i++) worst = Math.max(worst, Math.abs(w[i]! - d[i]!) / (qw.scales[i % cols]! / 2));
  return worst;
}

/**
 * The symmetric per-tensor activation scale QuantizeLinear uses: range / 127 (range is max |x| seen
 * in calibration). A zero range (a tensor that was always 0) gets 1, as a zero column does.
 */
export function activationScale(range: number): number {
  if (!Number.isFinite(range) || range < 0)
    throw new RangeError(`activation range must be finite and >= 0, got ${range}`);
  return columnScale(range);
}
