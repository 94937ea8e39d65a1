/**
 * One sequence's KV cache as resident tensors of the LLM session (docs/CONTRACT.md, "llm"): per
 * layer, keys and values [1, kvHeads, capacity, headDim], kept in the backend's memory (the ONNX
 * Runtime worker, GPU memory) for as long as the sequence lives. Only handles cross to JavaScript.
 */
import type { Session } from '../engine/backend.js';
import { headDim, type Architecture } from '../engine/contract.js';
import type { ResidentTensor, RowWrite } from '../engine/resident.js';

export class KvCache {
  private constructor(
    private readonly session: Session,
    private readonly keys: readonly ResidentTensor[],
    private readonly values: readonly ResidentTensor[],
    readonly capacity: number,
  ) {}

  /** A zero-filled cache of `capacity` rows per layer. */
  static async allocate(session: Session, a: Architecture, capacity: number): Promise<KvCache> {
    const dims = [1, a.llm.kvHeads, capacity, headDim(a)];
    const spec = { dtype: 'float32' as const, dims };
    const t = await session.allocate(Array.from({ length: 2 * a.llm.layers }, () => spec));
    return new KvCache(session, t.slice(0, a.llm.layers), t.slice(a.llm.layers), capacity);
  }

  get bytes(): number {
    return [...this.keys, ...this.values].reduce((n, t) => n + t.bytes, 0);
  }

  /** False once released, or lost with the backend (its worker died). */
  get alive(): boolean {
    return this.keys.every((t) => t.alive) && this.values.every((t) => t.alive);
  }

  /** The cache as the LLM's past_keys.l / past_values.l feeds. */
  feeds(): Record<string, ResidentTensor> {
    const out: Record<string, ResidentTensor> = {};
    this.keys.forEach((t, l) => (out[`past_keys.${l}`] = t));
    this.values.forEach((t, l) => (out[`past_values.${l}`] = t));
    return out;
  }

  /** Where a run's new_keys.l / new_values.l go: rows from `offset` on. */
  writes(offset: number): Record<string, RowWrite> {
    const out: Record<string, RowWrite> = {};
    this.keys.forEach((into, l) => (out[`new_keys.${l}`] = { into, axis: 2, offset }));
    this.values.forEach((into, l) => (out[`new_values.${l}`] = { into, axis: 2, offset }));
    return out;
  }

  /** Copies rows 0 .. rows-1 of `src` into this cache, inside the backend. */
  copyFrom(src: KvCache, rows: number): Promise<void> {
    const pair = (from: readonly ResidentTensor[], to: readonly ResidentTensor[]) =>
      from.map((f, l) => ({ from: f, to: to[l]!, axis: 2, rows }));
    return this.session.copyRows([...pair(src.keys, this.keys), ...pair(src.values, this.values)]);
  }

  /** A new cache of `capacity` rows holding this one's first `rows`. */
  async copy(a: Architecture, capacity: number, rows: number): Promise<KvCache> {
    const out = await KvCache.allocate(this.session, a, capacity);
    try {
      await out.copyFrom(this, rows);
    } catch (err) {
      out.release();
      throw err;
    }
    return out;
  }

  /** Frees the tensors in the backend; idempotent. */
  release(): void {
    void this.session.release([...this.keys, ...this.values]).catch(() => undefined);
  }
}
