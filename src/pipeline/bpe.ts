/**
 * SentencePiece-style byte-pair encoding in O(n log n) with small constants: the same ids as
 * llama-tokenizer-js and @huggingface/tokenizers give for a LLaMA vocabulary (test/pipeline/bpe.test.ts
 * compares them on thousands of texts), at under a microsecond per character where they take 1.5
 * to 60 (bench/agent.ts): a maximal prompt is tokenised without holding the event loop for long
 * (docs/MQTT.md, limits.maxPromptBytes).
 *
 * The input is already normalised (spaces as "▁", the dummy prefix added). Every character starts as
 * its own symbol (a character outside the vocabulary as its UTF-8 bytes "<0xNN>", which never
 * merge); then the adjacent pair with the best (lowest) merge rank is merged, the leftmost first
 * among equals, until no adjacent pair has a merge.
 */

/** The ids of a pair key: left * 2^20 + right (vocabularies stay well below a million pieces). */
const ID_SPACE = 1 << 20;
/** Positions in a heap key: rank * 2^22 + position (texts to 4 M characters; the codec caps prompts far below). */
const POS_SPACE = 1 << 22;

export class SentencePieceBpe {
  /** Pair key -> rank * ID_SPACE + merged id. */
  private readonly merges = new Map<number, number>();
  private readonly idOf: Map<string, number>;
  private readonly byteIds: Int32Array;

  /**
   * @param pieces the vocabulary by id
   * @param merges the merges in rank order, each as its two pieces
   * @param unk the id of a character neither in the vocabulary nor coverable by byte pieces
   */
  constructor(pieces: readonly (string | undefined)[], merges: Iterable<readonly [string, string]>, unk: number) {
    if (pieces.length >= ID_SPACE)
      throw new RangeError(`a vocabulary of ${pieces.length} pieces is beyond this encoder's ${ID_SPACE}`);
    this.idOf = new Map();
    pieces.forEach((p, id) => p !== undefined && !this.idOf.has(p) && this.idOf.set(p, id));
    this.byteIds = new Int32Array(256).map(
      (_, b) => this.idOf.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`) ?? unk,
    );
    let rank = 0;
    for (const [left, right] of merges) {
      const l = this.idOf.get(left);
      const r = this.idOf.get(right);
      const merged = this.idOf.get(left + right);
      rank++;
      if (l === undefined || r === undefined || merged === undefined) continue;
      const key = l * ID_SPACE + r;
      if (!this.merges.has(key)) this.merges.set(key, rank * ID_SPACE + merged);
    }
  }

  encode(normalized: string): number[] {
    const ids: number[] = [];
    const mergeable: boolean[] = [];
    const utf8 = new TextEncoder();
    for (const ch of normalized) {
      const id = this.idOf.get(ch);
      if (id !== undefined) {
        ids.push(id);
        mergeable.push(true);
      } else {
        for (const b of utf8.encode(ch)) {
          ids.push(this.byteIds[b]!);
          mergeable.push(false);
        }
      }
    }
    return this.mergeAll(ids, mergeable);
  }

  /** The merge of the pair at (left, right): rank * ID_SPACE + merged id, or undefined. */
  private mergeOf(left: number, right: number): number | undefined {
    return this.merges.get(left * ID_SPACE + right);
  }

  private mergeAll(ids: number[], mergeable: boolean[]): number[] {
    const n = ids.length;
    if (n > POS_SPACE) throw new RangeError(`a text of ${n} symbols is beyond this encoder's ${POS_SPACE}`);
    const next = new Int32Array(n).map((_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = new Int32Array(n).map((_, i) => i - 1);
    const alive = new Uint8Array(n).fill(1);
    const heap = new MinHeap();
    const consider = (i: number): void => {
      const j = next[i]!;
      if (j < 0 || !mergeable[i] || !mergeable[j]) return;
      const m = this.mergeOf(ids[i]!, ids[j]!);
      if (m !== undefined) heap.push(Math.floor(m / ID_SPACE) * POS_SPACE + i);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.size > 0) {
      const key = heap.pop();
      const rank = Math.floor(key / POS_SPACE);
      const i = key - rank * POS_SPACE;
      const j = next[i]!;
      if (!alive[i] || j < 0) continue;
      const m = this.mergeOf(ids[i]!, ids[j]!);
      // Stale: the pair at i changed since this entry was pushed (its current merge has its own entry).
      if (m === undefined || Math.floor(m / ID_SPACE) !== rank) continue;
      ids[i] = m % ID_SPACE;
      alive[j] = 0;
      next[i] = next[j]!;
      if (next[i]! >= 0) prev[next[i]!] = i;
      if (prev[i]! >= 0) consider(prev[i]!);
      consider(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]!) out.push(ids[i]!);
    return out;
  }
}

/** A binary min-heap of numbers (rank * POS_SPACE + position). */
class MinHeap {
  private items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  push(v: number): void {
    const a = this.items;
    let i = a.push(v) - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= v) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = v;
  }

  pop(): number {
    const a = this.items;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length === 0) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const r = l + 1;
      const c = r < a.length && a[r]! < a[l]! ? r : l;
      if (a[c]! >= last) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
    return top;
  }
}
