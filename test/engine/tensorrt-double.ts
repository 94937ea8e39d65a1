/**
 * TensorRtEngineTestDouble: stands in for the addon's TrtEngine (native EngineSession) where
 * TensorRT itself cannot run, so that the TensorRT session's TypeScript side (src/engine/tensorrt.ts)
 * is tested for real. It computes its graph with a TypeScript function and keeps resident tensors
 * as the native side does: zero-filled on allocation, fed by handle, written with output rows at an
 * offset, copied between handles, read back, released. What reaches it is recorded.
 */
import type { NativeTrtCopy, NativeTrtEngine, NativeTrtTensor, NativeTrtWrite } from '../../src/engine/native.js';

type Io = NativeTrtEngine['io'];
export type Compute = (feeds: Record<string, NativeTrtTensor>) => Record<string, NativeTrtTensor>;

const count = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

/** Rows along `axis` of a row-major float tensor into another (the native RowCopy's arithmetic). */
function copyRows(
  src: Float32Array,
  srcDims: number[],
  dst: Float32Array,
  dstDims: number[],
  axis: number,
  rows: number,
  from: number,
  at: number,
): void {
  if (
    srcDims.some((d, i) => i !== axis && d !== dstDims[i]) ||
    from + rows > srcDims[axis]! ||
    at + rows > dstDims[axis]!
  ) {
    throw new Error(`row copy: [${srcDims}] into [${dstDims}] at ${at} overruns axis ${axis}`);
  }
  const inner = count(srcDims.slice(axis + 1));
  const outer = count(srcDims.slice(0, axis));
  for (let o = 0; o < outer; o++) {
    const s = (o * srcDims[axis]! + from) * inner;
    dst.set(src.subarray(s, s + rows * inner), (o * dstDims[axis]! + at) * inner);
  }
}

export class TensorRtEngineTestDouble implements NativeTrtEngine {
  readonly runs: {
    feeds: Record<string, NativeTrtTensor>;
    resident: Record<string, number>;
    writes: Record<string, NativeTrtWrite>;
  }[] = [];
  readonly released: number[] = [];
  readonly mappedIo = false;
  disposed = 0;
  private readonly held = new Map<number, NativeTrtTensor & { data: Float32Array }>();

  constructor(
    readonly io: Io,
    private readonly compute: Compute,
  ) {}

  get residentCount(): number {
    return this.held.size;
  }

  async run(
    feeds: Record<string, NativeTrtTensor>,
    resident: Record<string, number> = {},
    writes: Record<string, NativeTrtWrite> = {},
  ) {
    this.runs.push({ feeds, resident, writes });
    const all: Record<string, NativeTrtTensor> = { ...feeds };
    for (const [name, h] of Object.entries(resident)) all[name] = this.get(h);
    const out = this.compute(all);
    for (const [name, w] of Object.entries(writes)) {
      const t = out[name]!;
      const into = this.get(w.handle);
      copyRows(t.data as Float32Array, t.dims, into.data, into.dims, w.axis, t.dims[w.axis]!, 0, w.offset);
      delete out[name];
    }
    return out;
  }

  async allocate(tensors: { handle: number; dtype: string; dims: number[] }[]): Promise<void> {
    for (const t of tensors)
      this.held.set(t.handle, { dtype: t.dtype, dims: t.dims, data: new Float32Array(count(t.dims)) });
  }

  async copyRows(copies: NativeTrtCopy[]): Promise<void> {
    for (const c of copies) {
      const [from, to] = [this.get(c.from), this.get(c.to)];
      copyRows(from.data, from.dims, to.data, to.dims, c.axis, c.rows, c.fromOffset, c.toOffset);
    }
  }

  async read(handle: number): Promise<NativeTrtTensor> {
    const t = this.get(handle);
    return { dtype: t.dtype, dims: t.dims, data: t.data.slice() };
  }

  async release(handles: number[]): Promise<void> {
    this.released.push(...handles);
    for (const h of handles) this.held.delete(h);
  }

  dispose(): void {
    this.disposed++;
    this.held.clear();
  }

  private get(handle: number) {
    const t = this.held.get(handle);
    if (!t) throw new Error(`resident tensor #${handle} is not held by this session`);
    return t;
  }
}
