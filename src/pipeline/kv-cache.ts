/**
 * The KV-cache budget shared by every request in flight: a request reserves the bytes of its whole
 * context (prompt + max new tokens) before its prefill and gives them back when it completes, is
 * cancelled or fails. Requests that do not fit wait in FIFO order; one larger than the whole
 * budget is refused at once.
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
}

interface Waiter {
  bytes: number;
  resolve: (lease: KvLease) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

export class KvBudget {
  private usedBytes = 0;
  private readonly waiters: Waiter[] = [];

  constructor(readonly totalBytes: number) {
    if (!(totalBytes > 0)) throw new SetokimError(ErrorCodes.BAD_CONFIG, `the KV-cache budget must be > 0 bytes, got ${totalBytes}`);
  }

  get used(): number {
    return this.usedBytes;
  }
  get waiting(): number {
    return this.waiters.length;
  }

  /** Resolves with a lease once `bytes` fit; rejects with CANCELLED if the signal aborts first. */
  reserve(bytes: number, signal?: AbortSignal): Promise<KvLease> {
    if (bytes > this.totalBytes)
      return Promise.reject(
        new SetokimError(
          ErrorCodes.PROMPT_TOO_LONG,
          `this request needs ${bytes} bytes of KV cache, more than the whole ${this.totalBytes}-byte budget; lower max tokens or the prompt`,
        ),
      );
    if (signal?.aborted) return Promise.reject(cancelled());
    if (this.waiters.length === 0 && this.usedBytes + bytes <= this.totalBytes) return Promise.resolve(this.grant(bytes));
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
    };
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.usedBytes + this.waiters[0]!.bytes <= this.totalBytes) {
      const w = this.waiters.shift()!;
      w.cleanup();
      w.resolve(this.grant(w.bytes));
    }
  }
}

function cancelled(): SetokimError {
  return new SetokimError(ErrorCodes.CANCELLED, 'the request was cancelled while it waited for KV-cache memory');
}
