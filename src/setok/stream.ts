/**
 * ClusterStream: clustering over the frames of one camera. Each frame's centres, labels and scores
 * equal clustering that frame alone; token ids persist across frames (tracking.ts). The native
 * cache (native/trt/setok/cluster_cache.h) recomputes the Gram and distance entries of the patches
 * whose features changed (bitwise) and the densities those changes can touch, each in the
 * reference's order, so results are bit-identical; the TypeScript path keeps the Gram matrix the
 * same way. Memory: one frame's features and the n x n distances, whatever the stream's length.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import { loadNative, type NativeStreamFactory, type NativeStreamHandle } from '../engine/native.js';
import { clusterFromDistances, distancesFromGram, gramReference, type ClusterResult } from './reference.js';
import { asSetokimError, checkFinite, validateCluster, validateOptions, type ClusterOptions } from './options.js';
import { assignIds, type TrackState } from './tracking.js';

export interface StreamFrame extends ClusterResult {
  /** Persistent token id of each centre (same order as centers). */
  ids: Int32Array;
  /** Patches whose features differ from the previous frame (all of them on the first frame). */
  changedPatches: number;
  /** Frame number, from 0. */
  frame: number;
}

export interface ClusterStreamOptions {
  /** 'auto' (native when built), 'native' or 'reference'. */
  backend?: 'auto' | 'native' | 'reference';
}

/** Recomputes rows/cols of changed patches in a cached Gram matrix (TypeScript path). */
class ReferenceGramCache {
  private prev: Float32Array | undefined;
  private gram: Float32Array | undefined;
  constructor(
    private readonly n: number,
    private readonly dim: number,
  ) {}

  update(x: Float32Array): { gram: Float32Array; changed: number } {
    const { n, dim } = this;
    if (!this.prev || !this.gram) {
      this.prev = x.slice();
      this.gram = gramReference(x, n, dim);
      return { gram: this.gram, changed: n };
    }
    const changed: number[] = [];
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < dim; c++) {
        if (x[i * dim + c] !== this.prev[i * dim + c]) {
          changed.push(i);
          break;
        }
      }
    }
    const g = this.gram;
    for (const i of changed) {
      const oi = i * dim;
      for (let j = 0; j < n; j++) {
        const oj = j * dim;
        let acc = 0;
        for (let c = 0; c < dim; c++) acc = Math.fround(acc + Math.fround(x[oi + c]! * x[oj + c]!));
        g[i * n + j] = acc;
        g[j * n + i] = acc;
      }
    }
    this.prev.set(x);
    return { gram: g, changed: changed.length };
  }
}

export class ClusterStream {
  private readonly params;
  private readonly native: NativeStreamHandle | null;
  private readonly refCache: ReferenceGramCache | null;
  private track: TrackState | undefined;
  private idCounter = 0;
  private frameNo = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(options: ClusterOptions, streamOptions: ClusterStreamOptions = {}) {
    this.params = validateOptions(options);
    const backend = streamOptions.backend ?? 'auto';
    let factory: NativeStreamFactory | null = null;
    if (backend !== 'reference') {
      try {
        const f = loadNative().setokClusterStream;
        if (typeof f === 'function') factory = f;
      } catch (err) {
        if (backend === 'native') throw err;
      }
      if (!factory && backend === 'native') {
        throw new SetokimError(
          ErrorCodes.NATIVE_MISSING,
          'ClusterStream: the addon has no setokClusterStream; rebuild it with `npm run build:native`.',
        );
      }
    }
    const p = this.params;
    this.native = factory ? factory(p.n, p.dim, p.k, p.threshold, p.fallback, p.maxTokens ?? 0) : null;
    this.refCache = this.native ? null : new ReferenceGramCache(p.n, p.dim);
  }

  /**
   * Clusters the next frame; frames are processed in push order, one at a time. The native path
   * reads `features` in place (a 729 x 1152 frame is 3.4 MB): do not change the array until the
   * returned promise settles.
   */
  push(features: Float32Array): Promise<StreamFrame> {
    if (this.closed)
      return Promise.reject(new SetokimError(ErrorCodes.BAD_ARGUMENT, 'ClusterStream: push() after close().'));
    try {
      validateCluster(features, { ...this.params });
    } catch (err) {
      return Promise.reject(err);
    }
    const run = this.queue.then(() => this.process(features));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Frees the cached matrix; later pushes reject. */
  close(): void {
    this.closed = true;
    this.native?.close();
  }

  private async process(features: Float32Array): Promise<StreamFrame> {
    let result: ClusterResult;
    let changed: number;
    if (this.native) {
      try {
        const r = await this.native.push(features);
        result = r;
        changed = r.changedPatches;
      } catch (err) {
        throw asSetokimError(err);
      }
    } else {
      checkFinite(features, this.params.dim);
      const u = this.refCache!.update(features);
      changed = u.changed;
      result = clusterFromDistances(distancesFromGram(u.gram, this.params.n, this.params.dim), this.params);
    }
    const ids = assignIds(result.labels, result.centers.length, this.track, () => this.idCounter++);
    this.track = { labels: result.labels, ids };
    return { ...result, ids, changedPatches: changed, frame: this.frameNo++ };
  }
}
