/**
 * Calibration: run the fp32 pipeline on sample images and prompts, record what every stage
 * receives (record.ts), then run each stage's graph, with the MatMul activations added as graph
 * outputs, over those feeds in ONNX Runtime and keep each activation's range.
 *
 * The range is max |x| over every calibration sample, not a percentile. The activations quantised
 * here feed linear layers right after a LayerNorm / RMSNorm or an activation function, so their
 * tails are short; with tens of samples a 99.99th percentile is set by a handful of values and
 * clips inputs the held-out check then sees, while max never clips what calibration saw. A set with
 * outlier channels (real LLMs beyond ~6B) wants a percentile or SmoothQuant; see docs/QUANT.md.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Backend, Tensor } from '../engine/backend.js';
import type { StageName, StageSignature } from '../engine/contract.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { createPipeline } from '../pipeline/pipeline.js';
import type { QueryRequest, Task } from '../pipeline/types.js';
import { withOutputs } from './graph.js';
import type { ModelProto } from './onnx-model.js';
import { FeedRecorder, recordStages, Xorshift32, type Feeds } from './record.js';

const PROMPTS = [
  'What is in this picture?',
  'Describe the shapes and their colours.',
  'How many objects are there?',
  'Where is the largest shape?',
  'Is there anything red?',
];

/** Which task exercises which stage (ask covers encoder, merger, embed and llm). */
const STAGE_TASK: Partial<Record<StageName, Task>> = {
  mask_decoder: 'segment',
  diffusion: 'edit',
  detokenizer: 'edit',
};

/**
 * The calibration queries over encoded images: every image is asked a question, and also segmented
 * or edited when a wanted stage only runs in that task. Greedy and seeded: the same images give the
 * same queries, hence the same feeds.
 */
export function calibrationQueries(
  stages: readonly StageName[],
  images: readonly Uint8Array[],
  maxTokens = 8,
): QueryRequest[] {
  const tasks: Task[] = ['ask', ...new Set(stages.map((s) => STAGE_TASK[s]).filter((t): t is Task => t !== undefined))];
  const out: QueryRequest[] = [];
  for (const [i, image] of images.entries()) {
    for (const task of tasks) {
      out.push({
        id: `calibration-${i}-${task}`,
        task,
        image,
        prompt:
          task === 'edit'
            ? 'Make it look like a painting.'
            : task === 'segment'
              ? 'the largest shape'
              : PROMPTS[i % PROMPTS.length],
        generation: { maxTokens, temperature: 0, seed: i + 1 },
      });
    }
  }
  return out;
}

export interface CollectOptions {
  modelsDir: string;
  stages: readonly StageName[];
  /** Encoded calibration images (JPEG, PNG or WebP), e.g. tools/export/sample-images.ts. */
  images: readonly Uint8Array[];
  /** Feeds kept per stage (a uniform sample of all its runs). */
  samplesPerStage?: number;
  threads?: number;
  verify?: boolean;
  onQuery?: (done: number, total: number) => void;
}

/** Runs the fp32 pipeline over the calibration queries and returns what each stage received. */
export async function collectFeeds(o: CollectOptions): Promise<FeedRecorder> {
  const pipeline = await createPipeline({
    modelsDir: o.modelsDir,
    threads: o.threads,
    maxInFlight: 1,
    verify: o.verify,
    backend: 'onnxruntime-cpu',
  });
  const recorder = new FeedRecorder(o.samplesPerStage);
  try {
    recordStages(pipeline, o.stages, recorder);
    const queries = calibrationQueries(o.stages, o.images);
    let done = 0;
    o.onQuery?.(done, queries.length);
    for (const q of queries) {
      for await (const e of pipeline.run(q)) {
        if (e.type === 'error') throw new SetokimError(e.code, `calibration query ${q.id} failed: ${e.message}`);
      }
      o.onQuery?.(++done, queries.length);
    }
  } finally {
    await pipeline.close();
  }
  return recorder;
}

/**
 * Feeds for calibration and the held-out ones for the error check: every fourth sample (the 2nd, 6th,
 * ...) is held out.
 */
export function splitSamples(samples: readonly Feeds[]): { calibrate: Feeds[]; heldOut: Feeds[]; disjoint: boolean } {
  if (samples.length < 2) return { calibrate: [...samples], heldOut: [...samples], disjoint: false };
  const calibrate = samples.filter((_, i) => i % 4 !== 1);
  const heldOut = samples.filter((_, i) => i % 4 === 1);
  return heldOut.length > 0
    ? { calibrate, heldOut, disjoint: true }
    : { calibrate: samples.slice(0, -1), heldOut: samples.slice(-1), disjoint: true };
}

/** Opens a graph given as bytes on a backend (ONNX Runtime opens files: a temp file, removed after). */
export async function withSession<T>(
  backend: Backend,
  bytes: Uint8Array,
  opts: { stage: string; signature?: StageSignature; threads?: number },
  fn: (run: (f: Feeds) => Promise<Record<string, Tensor>>) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), 'setokim-quant-'));
  try {
    const file = path.join(dir, `${opts.stage}.onnx`);
    await writeFile(file, bytes);
    const session = await backend.open(file, { stage: opts.stage, signature: opts.signature, threads: opts.threads });
    try {
      return await fn((f) => session.run(f));
    } finally {
      await session.dispose();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Above this ratio between the largest and the smallest per-input max |x| an activation stays
 * float: one static scale fit to the largest input leaves the smallest fewer than 127 / 16 ~ 8
 * levels. (The tiny set's diffusion input x grows ~500x over the sampling steps.)
 */
export const MAX_RANGE_SPREAD = 16;

export interface ActivationRanges {
  /** max |x| over every feed, for the activations that can share one static scale. */
  ranges: Map<string, number>;
  /** Activations left float, with the spread of their per-input ranges. */
  dynamic: { name: string; spread: number }[];
}

export interface StatsOptions {
  stage: string;
  signature?: StageSignature;
  threads?: number;
  /** Also the mean |x| of each channel (the last axis) over every row (AWQ's activation scales). */
  channels?: boolean;
  /** Also up to this many rows (vectors along the last axis), a seeded uniform sample of all rows. */
  rows?: number;
  onSample?: (done: number, total: number) => void;
}

/** What calibration measured of one activation over the feeds. */
export class ActivationStats {
  /** max |x| over every feed. */
  maxAbs = 0;
  /** The smallest of the per-feed max |x|. */
  minFeedMaxAbs = Infinity;
  width = 0;
  rowsSeen = 0;
  /** Sum of |x| per channel (channels option); channelMeanAbs divides it. */
  private absSum?: Float64Array;
  /** Sampled rows, [rowCount, width] (rows option). */
  private sample: Float32Array[] = [];
  private readonly rng = new Xorshift32(0x9e3779b9);

  constructor(
    readonly name: string,
    private readonly opts: Pick<StatsOptions, 'channels' | 'rows' | 'stage'>,
  ) {}

  add(t: Tensor): void {
    if (!(t.data instanceof Float32Array)) {
      throw new SetokimError(
        ErrorCodes.INTERNAL,
        `stage ${this.opts.stage}: calibration output ${this.name} is not float32`,
      );
    }
    const x = t.data;
    let m = 0;
    for (const v of x) {
      const a = Math.abs(v);
      if (a > m) m = a;
    }
    if (!Number.isFinite(m)) {
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `stage ${this.opts.stage}: activation ${this.name} reached ${m} on a calibration input; ` +
          'the fp32 graph overflows, fix it before quantising',
      );
    }
    this.maxAbs = Math.max(this.maxAbs, m);
    this.minFeedMaxAbs = Math.min(this.minFeedMaxAbs, m);
    if (!this.opts.channels && !this.opts.rows) return;
    const w = Number(t.dims[t.dims.length - 1] ?? 1);
    this.width = w;
    const sum = (this.absSum ??= new Float64Array(w));
    for (let r = 0; r < x.length / w; r++) {
      if (this.opts.channels) for (let c = 0; c < w; c++) sum[c]! += Math.abs(x[r * w + c]!);
      this.keepRow(x.subarray(r * w, (r + 1) * w));
      this.rowsSeen++;
    }
  }

  /** Reservoir sampling of rows: every row seen has the same chance to be kept. */
  private keepRow(row: Float32Array): void {
    const cap = this.opts.rows ?? 0;
    if (cap === 0) return;
    if (this.sample.length < cap) this.sample.push(row.slice());
    else {
      const j = Math.floor(this.rng.next() * (this.rowsSeen + 1));
      if (j < cap) this.sample[j] = row.slice();
    }
  }

  /** Mean |x| per channel over every row seen. */
  channelMeanAbs(): Float64Array {
    const sum = this.absSum ?? new Float64Array(0);
    return sum.map((v) => v / Math.max(1, this.rowsSeen));
  }

  /** The sampled rows, [count, width] row-major. */
  rows(): { data: Float32Array; count: number } {
    const data = new Float32Array(this.sample.length * this.width);
    this.sample.forEach((r, i) => data.set(r, i * this.width));
    return { data, count: this.sample.length };
  }
}

/**
 * Runs the graph with the named float32 activations as extra outputs over the feeds (one ONNX Runtime
 * session) and measures each.
 */
export async function activationStats(
  backend: Backend,
  model: Uint8Array | ModelProto,
  names: readonly string[],
  feeds: readonly Feeds[],
  opts: StatsOptions,
): Promise<Map<string, ActivationStats>> {
  const stats = new Map(names.map((n) => [n, new ActivationStats(n, opts)]));
  if (names.length === 0 || feeds.length === 0) return stats;
  await withSession(backend, withOutputs(model, names), opts, async (run) => {
    let done = 0;
    for (const f of feeds) {
      const out = await run(f);
      for (const n of names) {
        const t = out[n];
        if (!t) throw new SetokimError(ErrorCodes.INTERNAL, `stage ${opts.stage}: calibration output ${n} is missing`);
        stats.get(n)!.add(t);
      }
      opts.onSample?.(++done, feeds.length);
    }
  });
  return stats;
}

/** max |x| of each named float32 activation over the feeds, from one ONNX Runtime session of the augmented graph. */
export async function activationRanges(
  backend: Backend,
  model: Uint8Array | ModelProto,
  names: readonly string[],
  feeds: readonly Feeds[],
  opts: StatsOptions & { maxSpread?: number },
): Promise<ActivationRanges> {
  const stats = await activationStats(backend, model, names, feeds, opts);
  const ranges = new Map<string, number>();
  const dynamic: ActivationRanges['dynamic'] = [];
  for (const [n, st] of stats) {
    if (st.minFeedMaxAbs === Infinity) continue; // no feed
    const spread = st.maxAbs === 0 ? 1 : st.maxAbs / st.minFeedMaxAbs;
    if (spread > (opts.maxSpread ?? MAX_RANGE_SPREAD)) dynamic.push({ name: n, spread });
    else ranges.set(n, st.maxAbs);
  }
  return { ranges, dynamic };
}
