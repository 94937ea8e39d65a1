/**
 * How far a quantised stage's outputs are from fp32's on the same feeds. Per output tensor:
 * relative error = max |q - f| / max |f| (relative to the output's range: an element-wise ratio
 * blows up on values near zero and says nothing), and cosine similarity of the flattened tensors.
 */
import type { Tensor } from '../engine/backend.js';

export interface OutputError {
  output: string;
  /** Worst over the samples. */
  relError: number;
  cosine: number;
}

export function tensorError(ref: Tensor, got: Tensor): { relError: number; cosine: number } {
  const a = ref.data as Float32Array;
  const b = got.data as Float32Array;
  if (a.length !== b.length) return { relError: Infinity, cosine: -1 };
  let maxRef = 0;
  let maxDiff = 0;
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    maxRef = Math.max(maxRef, Math.abs(x));
    maxDiff = Math.max(maxDiff, Math.abs(x - y));
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  if (!Number.isFinite(maxDiff)) return { relError: Infinity, cosine: -1 };
  const relError = maxRef === 0 ? (maxDiff === 0 ? 0 : Infinity) : maxDiff / maxRef;
  const cosine = na === 0 && nb === 0 ? 1 : na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
  return { relError, cosine };
}

/** Folds one sample's outputs into the running worst per output (float32 outputs only). */
export function accumulate(
  worst: Map<string, OutputError>,
  ref: Record<string, Tensor>,
  got: Record<string, Tensor>,
): void {
  for (const [name, r] of Object.entries(ref)) {
    if (r.dtype !== 'float32') continue;
    const g = got[name];
    const e = g ? tensorError(r, g) : { relError: Infinity, cosine: -1 };
    const w = worst.get(name);
    worst.set(name, {
      output: name,
      relError: Math.max(w?.relError ?? 0, e.relError),
      cosine: Math.min(w?.cosine ?? 1, e.cosine),
    });
  }
}

/** The output with the largest relative error (ties: the lower cosine). */
export function worstOutput(errors: Iterable<OutputError>): OutputError | undefined {
  let out: OutputError | undefined;
  for (const e of errors)
    if (!out || e.relError > out.relError || (e.relError === out.relError && e.cosine < out.cosine)) out = e;
  return out;
}
