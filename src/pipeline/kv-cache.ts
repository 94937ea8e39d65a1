/**
 * The KV-cache budget shared by every request in flight and by the caches that keep KV rows
 * between requests (prompt prefixes, conversations). A request reserves the bytes of its whole
 * context (prompt + max new tokens) before its prefill and gives them back when it completes, is
 * cancelled or fails. Caches hold bytes only while nobody needs them: a request that does not fit
 * first evicts cache holds, least recently used first (never one pinned by a running request);
 * then it waits in FIFO order; one larger than the whole budget is refused at once.
 */
import { ErrorCodes, SetokimError } from '../errors.js';

/** Bytes of keys + values for `tokens` positions of a float32 cache. */
export function kvBytesPerToken(layers: number, kvHeads: number, headDim: number, bytesPerValue = 4): number {
  return 2 * layers * kvHeads * headDim * bytesPerValue;
}

export interface KvLease {
  readonly bytes: number;
  /** Idempotent. */
  release(): void;
  /**
   * Turns the lease into a cache hold of the same bytes, without letting them go in between (the
   * request's cache becomes a conversation's). The lease is released by this.
   */
  toHold(onEvict: () => void): KvHold;
}

/** Bytes a cache keeps while no request needs them; taken back (onEvict) under pressure. */
export interface KvHold {
  readonly bytes: number;
  /** False once released or evicted. */
  readonly held: boolean;
  /** Marks it most recently used. */
  touch(): void;
  /** A pinned hold is not evicted (a request is reading it); pins nest. */
  pin(): void;
  unpin(): void;
  /** Gives the bytes back without calling onEvict. Idempotent. */
  release(): void;
}

interface Waiter {
  bytes: number;
  resolve: (lease: KvLease) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

class Hold implements KvHold {
  held = true;
  pins = 0;
  constructor(
    private readonly budget: KvBudget,
    readonly bytes: number,
    readonly onEvict: () => void,
  ) {}
  touch(): void {
    if (this.held) this.budget.touch(this);
  }
  pin(): void {
    this.pins++;
  }
  unpin(): void {
    this.pins = Math.max(0, this.pins - 1);
  }
  release(): void {
    if (this.held) this.budget.drop(this);
  }
}

export class KvBudget {
  private usedBytes = 0;
  private readonly waiters: Waiter[] = [];
  /** Cache holds, least recently used first. */
  private readonly holds: Hold[] = [];
  private evictions = 0;

  constructor(readonly totalBytes: number) {
    if (!(totalBytes > 0))
      throw new SetokimError(ErrorCodes.BAD_CONFIG, `the KV-cache budget must be > 0 bytes, got ${totalBytes}`);
  }

  /** Bytes held by requests and caches. */
  get used(): number {
    return this.usedBytes;
  }
  /** Bytes held by caches (part of `used`). */
  get cached(): number {
    return this.holds.reduce((n, h) => n + h.bytes, 0);
  }
  get waiting(): number {
    return this.waiters.length;
  }
  /** Cache holds taken back for requests (or newer cache entries) so far. */
  get evicted(): number {
    return this.evictions;
  }

  /** A lease once `bytes` fit, evicting cache holds first; rejects with CANCELLED if the signal aborts first. */
  reserve(bytes: number, signal?: AbortSignal): Promise<KvLease> {
    if (bytes > this.totalBytes)
      return Promise.reject(
        new SetokimError(
          ErrorCodes.PROMPT_TOO_LONG,
          `this request needs ${bytes} bytes of KV cache, more than the whole ${this.totalBytes}-byte budget; lower max tokens or the prompt`,
        ),
      );
    if (signal?.aborted) return Promise.reject(cancelled());
    if (this.waiters.length === 0 && this.makeRoom(bytes)) return Promise.resolve(this.grant(bytes));
    return new Promise<KvLease>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(cancelled());
        this.drain(); // the head may have changed
      };
      const waiter: Waiter = {
        bytes,
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /**
   * A cache hold of `bytes` when they fit, evicting older holds if need be; undefined when they
   * do not fit even then, or when a request is waiting (caches never take memory from requests).
   */
  tryHold(bytes: number, onEvict: () => void): KvHold | undefined {
    if (this.waiters.length > 0 || !this.makeRoom(bytes)) return undefined;
    this.usedBytes += bytes;
    return this.adopt(bytes, onEvict);
  }

  /** Evicts every unpinned hold (the pipeline is closing, or a test wants a clean budget). */
  evictAll(): void {
    for (const h of [...this.holds]) if (h.pins === 0) this.evict(h);
    this.drain();
  }

  /** @internal Hold.touch */
  touch(h: Hold): void {
    const i = this.holds.indexOf(h);
    if (i >= 0) this.holds.push(...this.holds.splice(i, 1));
  }

  /** @internal Hold.release */
  drop(h: Hold): void {
    this.remove(h);
    this.drain();
  }

  private remove(h: Hold): void {
    const i = this.holds.indexOf(h);
    if (i >= 0) this.holds.splice(i, 1);
    h.held = false;
    this.usedBytes -= h.bytes;
  }

  private adopt(bytes: number, onEvict: () => void): Hold {
    const h = new Hold(this, bytes, onEvict);
    this.holds.push(h);
    return h;
  }

  /** Takes a hold back (no drain here: the caller is granting the freed bytes). */
  private evict(h: Hold): void {
    this.evictions++;
    this.remove(h);
    h.onEvict();
  }

  /** Evicts unpinned holds, oldest first, until `bytes` fit; false when they cannot. */
  private makeRoom(bytes: number): boolean {
    if (this.usedBytes + bytes <= this.totalBytes) return true;
    const evictable = this.holds.filter((h) => h.pins === 0).reduce((n, h) => n + h.bytes, 0);
    if (this.usedBytes - evictable + bytes > this.totalBytes) return false;
    for (const h of [...this.holds]) {
      if (this.usedBytes + bytes <= this.totalBytes) break;
      if (h.pins === 0) this.evict(h);
    }
    return true;
  }

  private grant(bytes: number): KvLease {
    this.usedBytes += bytes;
    let released = false;
    return {
      bytes,
      release: () => {
        if (released) return;
        released = true;
        this.usedBytes -= bytes;
        this.drain();
      },
      toHold: (onEvict) => {
        if (released) throw new SetokimError(ErrorCodes.INTERNAL, 'a released KV lease cannot become a cache hold');
        released = true;
        return this.adopt(bytes, onEvict);
      },
    };
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.makeRoom(this.waiters[0]!.bytes)) {
      const w = this.waiters.shift()!;
      w.cleanup();
      w.resolve(this.grant(w.bytes));
    }
  }
}

function cancelled(): SetokimError {
  return new SetokimError(ErrorCodes.CANCELLED, 'the request was cancelled while it waited for KV-cache memory');
}
