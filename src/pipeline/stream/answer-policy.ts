/**
 * When a stream answers its standing prompt: on the first frame with tokens; when the scene changed
 * since the last answer (a token id appeared or went, or at least `change` of the patches carry a
 * different token id than they did then); and every `everyMs` whatever happened. One answer runs at
 * a time: a trigger that comes while one runs is kept (one, the latest frame) and served next.
 */
import type { FrameTokens } from './frame-vision.js';

export type AnswerTrigger = 'first' | 'change' | 'interval';

export interface AnswerPolicyOptions {
  /** Answer at least this often (ms) while frames come; undefined: only on a change. */
  everyMs?: number;
  /** Fraction of patches relabelled since the last answer that counts as a change (0-1). */
  change: number;
}

export class AnswerPolicy {
  private answeredAt: number | undefined;
  private ids: Set<number> | undefined;
  private patchIds: Int32Array | undefined;

  constructor(private readonly o: AnswerPolicyOptions) {}

  /** Whether `latest` (the newest tokens; undefined when a frame changed nothing) calls for an answer now. */
  due(latest: FrameTokens | undefined, now: number): AnswerTrigger | undefined {
    if (this.answeredAt === undefined) return latest ? 'first' : undefined;
    if (latest && this.changedSince(latest)) return 'change';
    if (this.o.everyMs !== undefined && now - this.answeredAt >= this.o.everyMs) return 'interval';
    return undefined;
  }

  /** Records an answer given on `tokens` at `now`: later changes are measured from them. */
  answered(tokens: FrameTokens, now: number): void {
    this.answeredAt = now;
    this.ids = new Set(tokens.ids);
    this.patchIds = tokens.patchIds;
  }

  private changedSince(t: FrameTokens): boolean {
    const ids = this.ids!;
    if (t.ids.length !== ids.size || t.ids.some((id) => !ids.has(id))) return true;
    const before = this.patchIds!;
    let moved = 0;
    for (let p = 0; p < t.patchIds.length; p++) moved += before[p] === t.patchIds[p] ? 0 : 1;
    return moved > 0 && moved >= this.o.change * t.patchIds.length;
  }
}
