/** Shared helpers for the export tests: run graphs in ONNX Runtime, read initializers back. */
import onnxProto from 'onnx-proto';
import ort from 'onnxruntime-node';
import type { Model } from '../../tools/export/onnx/layers.js';
import { Rng } from '../../tools/export/onnx/random.js';

const { onnx } = onnxProto;

export type Feeds = Record<string, ort.Tensor>;

export async function session(model: Model | Uint8Array | string): Promise<ort.InferenceSession> {
  if (typeof model === 'string') return ort.InferenceSession.create(model);
  const bytes = model instanceof Uint8Array ? model : model.g.encode();
  return ort.InferenceSession.create(bytes);
}

export async function run(model: Model | Uint8Array | string, feeds: Feeds): Promise<Record<string, ort.Tensor>> {
  const s = await session(model);
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

export const f32 = (data: Float32Array | number[], dims: number[]) =>
  new ort.Tensor('float32', Float32Array.from(data), dims);
export const i64 = (data: number[], dims: number[]) =>
  new ort.Tensor('int64', BigInt64Array.from(data.map(BigInt)), dims);

/** n seeded values uniform in [-scale, scale]. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => (r.next() * 2 - 1) * scale);
}

export const data = (t: ort.Tensor | undefined) => t!.data as Float32Array;

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Decodes a serialised ModelProto (for checking what the builder wrote). */
export function decodeModel(bytes: Uint8Array) {
  return onnx.ModelProto.decode(bytes);
}

/** Rows `rows` of a [n, width] row-major matrix. */
export function gatherRows(x: Float32Array, width: number, rows: number[]): Float32Array {
  const out = new Float32Array(rows.length * width);
  rows.forEach((r, i) => out.set(x.subarray(r * width, (r + 1) * width), i * width));
  return out;
}
