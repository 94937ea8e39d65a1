/**
 * Conversations: a query may name a conversation, so that its follow-ups continue where it left
 * off. A conversation keeps its transcript (token ids, and the image's vision embeddings) and, when
 * KV reuse is on, its KV cache in the LLM session's memory: a follow-up then prefills only its own
 * tokens. The first turn carries the image; follow-ups carry none. A conversation ends when it has
 * been idle for `idleMs`, when the KV budget takes its cache back for a request (least recently
 * used first), or when more than `maxCount` exist; its next turn is then refused with
 * CONVERSATION_UNKNOWN, never quietly started over. A conversation with a turn running is never
 * ended: if the budget takes its cache then (the turn's own reservation may), the turn prefills the
 * transcript again. A turn that fails or is cancelled leaves it at its last complete turn.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import type { KvBudget, KvHold, KvLease } from './kv-cache.js';
import type { KvCache } from './kv-tensors.js';
import type { PromptSegment } from './template.js';

export interface ConversationOptions {
  /** A conversation with no turn for this long ends. */
  idleMs: number;
  /** At most this many conversations; starting one more ends the least recently used. */
  maxCount: number;
}

export interface ConversationStats {
  active: number;
  started: number;
  /** Ended by the idle timeout, by the budget (memory) or by the count limit. */
  expired: number;
  evicted: number;
  /** Follow-ups answered from the kept KV cache, and those that had to prefill the transcript again. */
  resumed: number;
  replayed: number;
}

/** A conversation's state between turns. */
export class Conversation {
  /** The context so far: every prompt and answer, in order (a vision segment for the image). */
  transcript: PromptSegment[] = [];
  vision: Float32Array | undefined;
  visionTokens = 0;
  /** Positions the transcript takes; the KV cache's filled rows when there is one. */
  length = 0;
  /** Ids the last turn generated but never fed, and `</s>` when it did not end with one. */
  closing: number[] = [];
  cache: KvCache | undefined;
  hold: KvHold | undefined;
  busy = false;
  timer: NodeJS.Timeout | undefined;
  constructor(readonly id: string) {}

  /** The KV cache, while it is alive (a crashed worker loses it: the transcript is replayed then). */
  get liveCache(): KvCache | undefined {
    return this.cache?.alive ? this.cache : undefined;
  }
}

/** One turn in progress: the conversation it belongs to (new or resumed), finished with commit or abandon. */
export interface Turn {
  conversation: Conversation;
  isNew: boolean;
  /** Set by commit: abandon() then leaves the conversation alone. */
  committed: boolean;
}

const unknown = (id: string) =>
  new SetokimError(
    ErrorCodes.CONVERSATION_UNKNOWN,
    `conversation '${id}' is not held here: it was never started on this device, or it ended ` +
      '(idle too long, or its memory was needed). Start it again: send the image with the first question.',
  );

export type EndReason = 'expired' | 'evicted' | 'closed';

export class Conversations {
  private readonly live = new Map<string, Conversation>();
  private readonly counters = { started: 0, expired: 0, evicted: 0, resumed: 0, replayed: 0 };
  private readonly watchers = new Map<string, ((why: EndReason) => void)[]>();

  constructor(
    private readonly budget: KvBudget,
    private readonly options: ConversationOptions,
  ) {}

  get stats(): ConversationStats {
    return { active: this.live.size, ...this.counters };
  }

  /** Bytes the conversations' KV caches hold in the budget. */
  get bytes(): number {
    let n = 0;
    for (const c of this.live.values()) n += c.hold?.bytes ?? 0;
    return n;
  }

  /**
   * Starts a turn. With an image it starts the conversation (the id must be new); without, it
   * resumes one (it must exist: CONVERSATION_UNKNOWN otherwise). One turn at a time (BUSY).
   */
  begin(id: string, hasImage: boolean): Turn {
    const c = this.live.get(id);
    if (hasImage) {
      if (c)
        throw new SetokimError(
          ErrorCodes.BAD_INPUT,
          `conversation '${id}' already exists; its follow-ups carry no image. ` +
            'Use a new conversation id for another image.',
        );
      const fresh = new Conversation(id);
      fresh.busy = true;
      this.live.set(id, fresh);
      this.trim();
      return { conversation: fresh, isNew: true, committed: false };
    }
    if (!c) throw unknown(id);
    if (c.busy)
      throw new SetokimError(
        ErrorCodes.BUSY,
        `conversation '${id}' has a turn running; send the next turn after its answer`,
      );
    c.busy = true;
    clearTimeout(c.timer);
    return { conversation: c, isNew: false, committed: false };
  }

  /**
   * A turn completed: the conversation now ends with its answer. `cache` (when KV reuse is on) holds
   * the whole transcript's rows, `lease` its bytes, which become the conversation's hold.
   */
  commit(
    turn: Turn,
    next: {
      transcript: PromptSegment[];
      length: number;
      closing: number[];
      vision?: Float32Array;
      visionTokens?: number;
      cache?: KvCache;
      lease?: KvLease;
      resumed?: boolean;
    },
  ): void {
    const c = turn.conversation;
    turn.committed = true;
    if (!turn.isNew) this.counters[next.resumed ? 'resumed' : 'replayed']++;
    if (!this.live.has(c.id)) {
      // Ended while the turn ran (the pipeline closed): nothing to keep.
      next.cache?.release();
      next.lease?.release();
      return;
    }
    c.transcript = next.transcript;
    c.length = next.length;
    c.closing = next.closing;
    if (next.vision) {
      c.vision = next.vision;
      c.visionTokens = next.visionTokens ?? 0;
    }
    if (next.cache !== c.cache) {
      c.cache?.release();
      c.hold?.release();
      c.cache = next.cache;
      c.hold = next.cache && next.lease ? next.lease.toHold(() => this.end(c.id, 'evicted')) : undefined;
    } else {
      next.lease?.release(); // the cache grew in place: its hold already counts it
    }
    if (turn.isNew) this.counters.started++;
    this.finish(c);
  }

  /** A turn failed or was cancelled: a new conversation is forgotten, a resumed one keeps its last complete turn. */
  abandon(turn: Turn): void {
    const c = turn.conversation;
    if (turn.committed) return;
    if (turn.isNew) {
      this.end(c.id, 'closed'); // never started: nothing was counted
      return;
    }
    if (this.live.has(c.id)) this.finish(c);
  }

  /** Resolves when conversation `id` ends (idle, evicted, closed); at once when none is held. */
  ended(id: string): Promise<EndReason | 'unknown'> {
    const c = this.live.get(id);
    if (!c) return Promise.resolve('unknown');
    c.timer?.ref(); // someone waits for it: the idle timer keeps the process alive now
    return new Promise((resolve) => this.watchers.set(id, [...(this.watchers.get(id) ?? []), resolve]));
  }

  /** Ends every conversation (the pipeline is closing). */
  clear(): void {
    for (const id of [...this.live.keys()]) this.end(id, 'closed');
  }

  private finish(c: Conversation): void {
    c.busy = false;
    c.hold?.touch();
    this.touch(c);
    clearTimeout(c.timer);
    c.timer = setTimeout(() => this.end(c.id, 'expired'), this.options.idleMs);
    if (!this.watchers.has(c.id)) c.timer.unref(); // never what keeps the process alive
  }

  private touch(c: Conversation): void {
    this.live.delete(c.id);
    this.live.set(c.id, c);
  }

  /** Over maxCount: end the least recently used idle conversations. */
  private trim(): void {
    for (const c of [...this.live.values()]) {
      if (this.live.size <= this.options.maxCount) return;
      if (!c.busy) this.end(c.id, 'expired');
    }
  }

  private end(id: string, why: EndReason): void {
    const c = this.live.get(id);
    if (!c || (c.busy && why === 'expired')) return;
    if (c.busy && why === 'evicted') {
      // A turn is running: it keeps the conversation and prefills the transcript again.
      c.cache?.release();
      c.cache = undefined;
      c.hold = undefined;
      return;
    }
    this.live.delete(id);
    clearTimeout(c.timer);
    c.cache?.release();
    c.hold?.release(); // no-op when the budget took it back
    c.cache = undefined;
    if (why !== 'closed') this.counters[why]++;
    for (const w of this.watchers.get(id) ?? []) w(why);
    this.watchers.delete(id);
  }
}
