/**
 * Recording what each stage receives, for calibration. `RecordingSession` decorates a Session: it
 * keeps a copy of every run's feeds (copied before the run, since a caller may hand the buffers
 * over with `transfer`) in a bounded, seeded reservoir per stage, then runs the inner session.
 * `recordStages` puts one in front of every stage of a running pipeline (its `models` are public
 * for this), so the fp32 pipeline itself produces the real inputs each stage sees.
 */
import { createHash } from 'node:crypto';
import type { Feed, Session, SessionRunOptions, Tensor, TypedArray } from '../engine/backend.js';
import type { ResidentSpec, ResidentTensor, RowCopy } from '../engine/resident.js';
import type { StageName } from '../engine/contract.js';
import { GatedStage } from '../pipeline/scheduler.js';
import type { LocalPipeline } from '../pipeline/pipeline.js';

export type Feeds = Record<string, Tensor>;

const copy = (t: Tensor): Tensor => ({
  dtype: t.dtype,
  dims: [...t.dims],
  data: t.data.slice() as TypedArray,
  location: 'host',
});

/** xorshift32: deterministic, good enough to pick reservoir slots; a number in [0, 1) per call. */
export class Xorshift32 {
  constructor(private state = 0x2545f491) {}

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state / 2 ** 32;
  }
}

/**
 * Up to `capacity` feeds per stage, a uniform sample of all runs (reservoir sampling with a fixed
 * seed, so the same queries keep the same samples). Samples come back in arrival order.
 */
export class FeedRecorder {
  private readonly kept = new Map<string, { seq: number; feeds: Feeds }[]>();
  private readonly seen = new Map<string, number>();
  private readonly hashes = new Map<string, Set<string>>();
  private readonly rng = new Xorshift32();

  constructor(readonly capacity = 48) {}

  /** Keeps a copy of the feeds; identical feeds (the same image asked twice) count once. */
  add(stage: string, feeds: Feeds): void {
    const h = createHash('sha1');
    for (const [k, t] of Object.entries(feeds).sort(([a], [b]) => (a < b ? -1 : 1)))
      h.update(`${k}:${t.dtype}:${t.dims.join('x')};`).update(
        new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      );
    const digest = h.digest('hex');
    const hashes = this.hashes.get(stage) ?? new Set<string>();
    this.hashes.set(stage, hashes);
    if (hashes.has(digest)) return;
    hashes.add(digest);
    const n = this.seen.get(stage) ?? 0;
    this.seen.set(stage, n + 1);
    const list = this.kept.get(stage) ?? [];
    this.kept.set(stage, list);
    if (list.length < this.capacity)
      list.push({ seq: n, feeds: Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, copy(t)])) });
    else {
      const j = Math.floor(this.rng.next() * (n + 1));
      if (j < this.capacity)
        list[j] = { seq: n, feeds: Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, copy(t)])) };
    }
  }

  /** The kept feeds of a stage, in the order the runs happened. */
  samples(stage: string): Feeds[] {
    return [...(this.kept.get(stage) ?? [])].sort((a, b) => a.seq - b.seq).map((s) => s.feeds);
  }

  /** How many distinct feeds the stage received (kept or not). */
  runs(stage: string): number {
    return this.seen.get(stage) ?? 0;
  }
}

export class RecordingSession implements Session {
  constructor(
    private readonly inner: Session,
    private readonly stage: string,
    private readonly recorder: FeedRecorder,
  ) {}

  get backend(): string {
    return this.inner.backend;
  }
  get inputNames(): readonly string[] {
    return this.inner.inputNames;
  }
  get outputNames(): readonly string[] {
    return this.inner.outputNames;
  }

  get residentBytes(): number {
    return this.inner.residentBytes;
  }

  /** Records the feeds (a resident one, such as the LLM's KV cache, read back to the host), then runs. */
  async run(feeds: Record<string, Feed>, options?: SessionRunOptions): Promise<Feeds> {
    const host: Feeds = {};
    for (const [name, t] of Object.entries(feeds)) {
      host[name] = t.location === 'resident' ? await this.inner.read(t) : t;
    }
    this.recorder.add(this.stage, host);
    return this.inner.run(feeds, options);
  }

  allocate(specs: readonly ResidentSpec[]): Promise<ResidentTensor[]> {
    return this.inner.allocate(specs);
  }

  copyRows(copies: readonly RowCopy[]): Promise<void> {
    return this.inner.copyRows(copies);
  }

  read(t: ResidentTensor): Promise<Tensor> {
    return this.inner.read(t);
  }

  release(tensors: readonly ResidentTensor[]): Promise<void> {
    return this.inner.release(tensors);
  }

  dispose(): Promise<void> {
    return this.inner.dispose();
  }
}

/** Routes the pipeline's runs of the given stages through RecordingSessions. */
export function recordStages(pipeline: LocalPipeline, stages: readonly StageName[], recorder: FeedRecorder): void {
  for (const s of stages) {
    const g = pipeline.models.stages[s];
    if (g) pipeline.models.stages[s] = new GatedStage(s, new RecordingSession(g.session, s, recorder));
  }
}
