/**
 * The prefix cache: the KV rows of a prompt's shared beginning (the system prompt and the image
 * through `<im_end>`), kept in the LLM session's memory so that the next query with the same
 * prefix copies them instead of prefilling them. Entries hold their bytes in the KV budget as
 * cache holds: a request that needs the memory evicts them first (least recently used), and an
 * entry being copied from is pinned until the copy is done.
 */
import { createHash } from 'node:crypto';
import type { Architecture } from '../engine/contract.js';
import { headDim } from '../engine/contract.js';
import { kvBytesPerToken, type KvBudget, type KvHold } from './kv-cache.js';
import { KvCache } from './kv-tensors.js';
import type { PromptSegment } from './template.js';

interface Entry {
  cache: KvCache;
  rows: number;
  hold: KvHold;
}

export interface PrefixStats {
  hits: number;
  misses: number;
  bytes: number;
  entries: number;
}

/** A borrowed entry: its first `rows` rows, readable until `done()`. */
export interface PrefixLoan {
  cache: KvCache;
  rows: number;
  done(): void;
}

/** The key of a prefix: its text ids, and the image's vision key when it has a vision segment. */
export function prefixKey(modelKey: string, segments: readonly PromptSegment[], visionKey: string | undefined): string {
  const h = createHash('sha256').update(modelKey);
  for (const s of segments) h.update(s.kind === 'text' ? `|t:${s.ids.join(',')}` : `|v:${visionKey ?? ''}`);
  return h.digest('hex');
}

export class PrefixCache {
  private readonly entries = new Map<string, Entry>();
  private hits = 0;
  private misses = 0;

  constructor(
    private readonly budget: KvBudget,
    private readonly a: Architecture,
  ) {}

  get stats(): PrefixStats {
    let bytes = 0;
    for (const e of this.entries.values()) bytes += e.hold.bytes;
    return { hits: this.hits, misses: this.misses, bytes, entries: this.entries.size };
  }

  /** The entry for `key`, pinned until the loan's done(); counts a hit or a miss. */
  borrow(key: string): PrefixLoan | undefined {
    const e = this.entries.get(key);
    if (!e || !e.cache.alive) {
      if (e) this.drop(key); // lost with a crashed worker
      this.misses++;
      return undefined;
    }
    this.hits++;
    e.hold.touch();
    e.hold.pin();
    let done = false;
    return { cache: e.cache, rows: e.rows, done: () => (done ? undefined : ((done = true), e.hold.unpin())) };
  }

  /** Keeps a copy of `source`'s first `rows` rows under `key`, if the budget has room for it. */
  async store(key: string, source: KvCache, rows: number): Promise<void> {
    if (rows === 0 || this.entries.has(key)) return;
    const bytes = rows * kvBytesPerToken(this.a.llm.layers, this.a.llm.kvHeads, headDim(this.a));
    let evicted = false;
    const hold = this.budget.tryHold(bytes, () => {
      evicted = true;
      this.evicted(key);
    });
    if (!hold) return;
    hold.pin(); // not taken back while the copy runs
    try {
      const cache = await source.copy(this.a, rows, rows);
      if (evicted || this.entries.has(key)) {
        cache.release();
        hold.release();
        return;
      }
      this.entries.set(key, { cache, rows, hold });
    } catch {
      hold.release(); // a cache we cannot fill is simply not kept
    } finally {
      hold.unpin();
    }
  }

  /** Drops every entry (the pipeline is closing). */
  clear(): void {
    for (const key of [...this.entries.keys()]) this.drop(key);
  }

  private drop(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    e.hold.release();
    e.cache.release();
  }

  /** The budget took the hold back: free the tensors. */
  private evicted(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    e.cache.release();
  }
}
