/**
 * Frame -> vision tokens for a stream: encoder -> ClusterStream -> merger, with stable token ids.
 *
 * A ViT encoder mixes every patch into every feature, so two frames that differ in one corner give
 * features that differ (a little) everywhere. The stream therefore gates by pixels: a patch whose
 * pixels moved by at most `gate` (mean absolute difference, 0-255 levels) since its features were
 * last taken keeps those features; the others take the new encoder output. The clustering then sees
 * changes only where the picture changed: ClusterStream recomputes only those rows (bit-identical
 * to clustering the gated features alone), and the token ids of still regions stay as they were.
 * A frame in which no patch changed runs nothing at all. gate < 0 turns gating off (every frame's
 * encoder output as it is).
 */
import { patchGrid, type Architecture } from '../../engine/contract.js';
import { ErrorCodes, SetokimError } from '../../errors.js';
import type { Frame } from '../../media/frames.js';
import { ClusterStream } from '../../setok/stream.js';
import type { PipelineModels } from '../query.js';
import type { GatedStage, RequestContext } from '../scheduler.js';
import type { StageTimes } from '../types.js';
import { clusterOptions, encodeFeatures, mergeTokens, type VisionTokens } from '../vision.js';
import { normalizePixels } from '../preprocess.js';
import { modelRgb } from './model-frame.js';

/** Patches whose mean pixel change is at most this many levels keep their features (default). */
export const DEFAULT_GATE = 2;

export interface TokenChange {
  /** Token ids new in this frame, gone since the previous one, and kept. */
  added: number[];
  removed: number[];
  kept: number[];
  /** Patches whose token id differs from the previous processed frame's. */
  relabelled: number;
  /** Where they are: their bounding box in patch rows and columns (inclusive). */
  region?: { row0: number; col0: number; row1: number; col1: number };
}

export interface FrameTokens {
  /** The source's frame number. */
  index: number;
  vision: VisionTokens;
  /** Token id of each vision token (in the order the LLM reads them). */
  ids: Int32Array;
  /** Token id of each patch (raster order, grid x grid). */
  patchIds: Int32Array;
  /** Patches re-encoded (their pixels changed beyond the gate). */
  changedPatches: number;
  change: TokenChange;
  /** The frame at the model's size, S x S RGB (for the token-mask picture). */
  rgb: Uint8Array;
  /** Milliseconds per stage for this frame (encoder, cluster, merger, ...). */
  times: StageTimes;
}

/** The set and per-patch differences between two frames' token ids. */
export function tokenChange(
  prevIds: Int32Array | undefined,
  prevPatchIds: Int32Array | undefined,
  ids: Int32Array,
  patchIds: Int32Array,
  grid: number,
): TokenChange {
  const before = new Set(prevIds ?? []);
  const now = new Set(ids);
  const added = [...now].filter((id) => !before.has(id)).sort((x, y) => x - y);
  const removed = [...before].filter((id) => !now.has(id)).sort((x, y) => x - y);
  const kept = [...now].filter((id) => before.has(id)).sort((x, y) => x - y);
  let relabelled = 0;
  let row0 = grid,
    col0 = grid,
    row1 = -1,
    col1 = -1;
  for (let p = 0; p < patchIds.length; p++) {
    if (prevPatchIds && prevPatchIds[p] === patchIds[p]) continue;
    relabelled++;
    const r = Math.floor(p / grid),
      c = p % grid;
    row0 = Math.min(row0, r);
    row1 = Math.max(row1, r);
    col0 = Math.min(col0, c);
    col1 = Math.max(col1, c);
  }
  return { added, removed, kept, relabelled, ...(relabelled ? { region: { row0, col0, row1, col1 } } : {}) };
}

export class FrameVision {
  private readonly a: Architecture;
  private readonly encoder: GatedStage;
  private readonly merger: GatedStage;
  private readonly grid: number;
  private readonly clusters: ClusterStream;
  /** Per patch, the pixels its current features were taken from. */
  private reference: Uint8Array | undefined;
  private features: Float32Array | undefined;
  private ids: Int32Array | undefined;
  private patchIds: Int32Array | undefined;

  constructor(
    models: PipelineModels,
    private readonly gate = DEFAULT_GATE,
  ) {
    const { encoder, merger } = models.stages;
    if (!encoder || !merger)
      throw new SetokimError(
        ErrorCodes.MODEL_NOT_FOUND,
        'the model set has no encoder or merger stage, so it cannot tokenize video frames',
      );
    this.a = models.arch;
    this.encoder = encoder;
    this.merger = merger;
    this.grid = patchGrid(this.a);
    this.clusters = new ClusterStream(clusterOptions(this.a));
  }

  /** The frame's vision tokens; undefined when no patch changed (nothing ran, the tokens stand). */
  async process(frame: Frame, signal: AbortSignal): Promise<FrameTokens | undefined> {
    const seen = await modelRgb(this.a, frame);
    const changed = this.changedPatches(seen);
    if (changed.count === 0) return undefined;
    const rgb = seen === frame.rgb ? seen.slice() : seen; // the source reuses its buffer
    const ctx: RequestContext = { signal, times: {} };
    const fresh = await encodeFeatures(this.a, this.encoder, normalizePixels(rgb, this.a.image), ctx);
    const features = this.compose(fresh, changed.flags, rgb);
    const t0 = performance.now();
    const clustered = await this.clusters.push(features);
    ctx.times.cluster = performance.now() - t0;
    const vision = await mergeTokens(this.a, this.merger, features, clustered, ctx);
    const patchIds = new Int32Array(clustered.labels.length);
    for (let p = 0; p < patchIds.length; p++) patchIds[p] = clustered.ids[clustered.labels[p]!]!;
    const change = tokenChange(this.ids, this.patchIds, clustered.ids, patchIds, this.grid);
    this.features = features;
    this.ids = clustered.ids;
    this.patchIds = patchIds;
    return {
      index: frame.index,
      vision,
      ids: clustered.ids,
      patchIds,
      changedPatches: changed.count,
      change,
      rgb,
      times: ctx.times,
    };
  }

  close(): void {
    this.clusters.close();
  }

  /** Which patches' pixels moved beyond the gate since their features were taken (all, at first). */
  private changedPatches(rgb: Uint8Array): { flags: Uint8Array; count: number } {
    const G = this.grid,
      P = this.a.image.patch,
      S = this.a.image.size;
    const flags = new Uint8Array(G * G);
    const ref = this.reference;
    if (!ref || this.gate < 0) return { flags: flags.fill(1), count: G * G };
    const limit = this.gate * 3 * P * P;
    let count = 0;
    for (let r = 0; r < G; r++) {
      for (let c = 0; c < G; c++) {
        let sum = 0;
        for (let y = r * P; y < (r + 1) * P; y++) {
          const row = (y * S + c * P) * 3;
          for (let i = row; i < row + 3 * P; i++) sum += Math.abs(rgb[i]! - ref[i]!);
        }
        if (sum > limit) {
          flags[r * G + c] = 1;
          count++;
        }
      }
    }
    return { flags, count };
  }

  /** New features where patches changed, the previous ones elsewhere; records the pixels taken. */
  private compose(fresh: Float32Array, flags: Uint8Array, rgb: Uint8Array): Float32Array {
    const G = this.grid,
      P = this.a.image.patch,
      S = this.a.image.size,
      C = this.a.encoder.width;
    if (!this.reference || !this.features || this.gate < 0) {
      this.reference = rgb.slice();
      return fresh;
    }
    for (let p = 0; p < G * G; p++) {
      if (!flags[p]) {
        fresh.set(this.features.subarray(p * C, (p + 1) * C), p * C);
        continue;
      }
      const r = Math.floor(p / G),
        c = p % G;
      for (let y = r * P; y < (r + 1) * P; y++) {
        const row = (y * S + c * P) * 3;
        this.reference.set(rgb.subarray(row, row + 3 * P), row);
      }
    }
    return fresh;
  }
}
