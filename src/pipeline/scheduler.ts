/**
 * Overlapping requests: every stage has its own gate (a FIFO semaphore, one run at a time by
 * default), taken per session run, not per request. So the encoder of one request runs while the
 * LLM decodes another, decode steps of concurrent requests interleave, and a request that aborts
 * while it waits leaves the queue without running. Time inside a gate is the stage's backend time.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Session, SessionRunOptions, Tensor } from '../engine/backend.js';
import type { StageTimes } from './types.js';

export class Semaphore {
  private active = 0;
  private readonly queue: {
    resolve: (release: () => void) => void;
    reject: (e: unknown) => void;
    cleanup: () => void;
  }[] = [];

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new SetokimError(ErrorCodes.BAD_CONFIG, `a concurrency limit must be a positive integer, got ${capacity}`);
  }

  get inUse(): number {
    return this.active;
  }
  get waiting(): number {
    return this.queue.length;
  }

  /** Resolves with a release function (idempotent); rejects with CANCELLED if the signal aborts first. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(cancelled());
    if (this.active < this.capacity && this.queue.length === 0) {
      this.active++;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.queue.indexOf(entry);
        if (i >= 0) this.queue.splice(i, 1);
        reject(cancelled());
      };
      const entry = { resolve, reject, cleanup: () => signal?.removeEventListener('abort', onAbort) };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(entry);
    });
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.queue.shift();
      if (next) {
        next.cleanup();
        next.resolve(this.releaser()); // the slot passes straight on
      } else {
        this.active--;
      }
    };
  }
}

function cancelled(): SetokimError {
  return new SetokimError(ErrorCodes.CANCELLED, 'the request was cancelled');
}

/** What one request carries through the stages: its cancellation and its per-stage clock. */
export interface RequestContext {
  signal: AbortSignal;
  times: StageTimes;
}

/** Adds the time `fn` takes to times[stage]. For work on this thread (preprocess, clustering). */
export async function timed<T>(ctx: RequestContext, stage: string, fn: () => Promise<T> | T): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    ctx.times[stage] = (ctx.times[stage] ?? 0) + (performance.now() - t0);
  }
}

export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw cancelled();
}

/** A stage session behind its gate. */
export class GatedStage {
  readonly gate: Semaphore;
  constructor(
    readonly name: string,
    readonly session: Session,
    concurrency = 1,
  ) {
    this.gate = new Semaphore(concurrency);
  }

  async run(
    ctx: RequestContext,
    feeds: Record<string, Tensor>,
    label = this.name,
    options?: SessionRunOptions,
  ): Promise<Record<string, Tensor>> {
    const release = await this.gate.acquire(ctx.signal);
    try {
      throwIfAborted(ctx.signal);
      return await timed(ctx, label, () => this.session.run(feeds, options));
    } finally {
      release();
    }
  }
}
