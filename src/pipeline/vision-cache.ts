/**
 * The vision-token cache: what the vision path made of an image (the merger's tokens and LLM
 * embeddings, the clustering, the patch features the mask decoder reads, the token-mask picture and
 * the image geometry), kept per image so that a later query on the same image skips preprocess,
 * encoder, clustering and merger. Keyed by the image bytes' sha256 with the model set, its
 * precision and backend, and the clustering settings: anything that changes the tokens changes the
 * key. Bounded by bytes, least recently used out first; hits, misses and bytes are counted.
 */
import { createHash } from 'node:crypto';
import type { Architecture } from '../engine/contract.js';
import { sha256Bytes } from '../engine/manifest.js';
import type { Geometry } from './preprocess.js';
import type { VisionTokens } from './vision.js';

export interface CachedVision {
  vision: VisionTokens;
  geometry: Geometry;
  /** The `clustered` event's token-mask PNG. */
  maskPng: Uint8Array;
}

export interface CacheCounters {
  hits: number;
  misses: number;
  bytes: number;
  entries: number;
  evictions: number;
}

/** What an entry costs: its arrays and PNG (the small objects around them are not counted). */
function entryBytes(v: CachedVision): number {
  const t = v.vision;
  const c = t.clusters;
  return (
    t.features.byteLength +
    t.tokens.byteLength +
    t.embeds.byteLength +
    c.centers.byteLength +
    c.labels.byteLength +
    c.scores.byteLength +
    v.maskPng.byteLength
  );
}

/** The model side of every vision key: which set, build and backend, and how it clusters. */
export function visionModelKey(modelSetId: string, precision: string, backend: string, a: Architecture): string {
  const { k, threshold, fallback, maxTokens } = a.cluster;
  const clustering = `k=${k},threshold=${threshold},fallback=${fallback},maxTokens=${maxTokens}`;
  return `${modelSetId}|${precision}|${backend}|${clustering}`;
}

/** The key of one image under one model: sha256 of the image bytes and the model key. */
export function visionKey(image: Uint8Array, modelKey: string): string {
  return createHash('sha256').update(sha256Bytes(image)).update('\n').update(modelKey).digest('hex');
}

/**
 * The key of vision tokens computed elsewhere (RunOptions.vision, a stream's frame) under one model: sha256 of
 * the LLM embeddings they give, so equal tokens share prefix-cache rows. Never equal to an image's key.
 */
export function tokensKey(vision: VisionTokens, modelKey: string): string {
  const e = vision.embeds;
  const bytes = new Uint8Array(e.buffer, e.byteOffset, e.byteLength);
  return createHash('sha256').update('tokens\n').update(bytes).update('\n').update(modelKey).digest('hex');
}

export class VisionCache {
  private readonly entries = new Map<string, { value: CachedVision; bytes: number }>();
  private readonly counters = { hits: 0, misses: 0, bytes: 0, evictions: 0 };

  /** `capacityBytes` 0 turns the cache off (every lookup a miss, nothing kept). */
  constructor(readonly capacityBytes: number) {}

  get stats(): CacheCounters {
    return { ...this.counters, entries: this.entries.size };
  }

  /** The entry for `key`, now the most recently used; counts a hit or a miss. */
  get(key: string): CachedVision | undefined {
    const e = this.entries.get(key);
    if (!e) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  /** Keeps `value` (its arrays must not change afterwards), dropping the least recently used to fit. */
  put(key: string, value: CachedVision): void {
    const bytes = entryBytes(value);
    if (bytes > this.capacityBytes) return;
    this.remove(key);
    while (this.counters.bytes + bytes > this.capacityBytes) {
      const oldest = this.entries.keys().next().value as string;
      this.remove(oldest);
      this.counters.evictions++;
    }
    this.entries.set(key, { value, bytes });
    this.counters.bytes += bytes;
  }

  clear(): void {
    this.entries.clear();
    this.counters.bytes = 0;
  }

  private remove(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.counters.bytes -= e.bytes;
  }
}
