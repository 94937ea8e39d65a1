/**
 * Admission control: at most `concurrency` queries run, at most `queueSize` wait, the rest are
 * BUSY. Deadlines (from the query or MQTT 5 Message Expiry) and cancels abort a query wherever it
 * is, with the reason as a SetokimError (EXPIRED, CANCELLED) on its AbortSignal. Ids are unique
 * among live queries; SeenIds (used by the agent before any reply) makes sure each id is answered
 * once: QoS 1 may deliver a message twice, and the second copy must not run again.
 */
import { ErrorCodes, SetokimError } from '../errors.js';

export interface Ticket {
  /** Dedupe and cancel key: the query id. */
  id: string;
  /** Absolute deadline (Date.now() ms) or undefined for none. */
  deadline?: number;
}

/** setTimeout's longest delay (2^31 - 1 ms, 24.8 days): a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export type AdmitResult = 'started' | 'queued' | 'busy' | 'duplicate' | 'expired' | 'closed';

interface Entry<T extends Ticket> {
  ticket: T;
  controller: AbortController;
  aborted: Promise<SetokimError>;
  abortWith: (reason: SetokimError) => void;
  timer?: NodeJS.Timeout;
  state: 'queued' | 'running';
}

export interface AdmissionOptions<T extends Ticket> {
  queueSize: number;
  concurrency: number;
  /**
   * Runs one admitted query; the promise settles when its slot may be reused. `aborted` resolves
   * with the reason when it is cancelled or expires (as `signal` aborts; no listener needed).
   */
  run(ticket: T, signal: AbortSignal, aborted: Promise<SetokimError>): Promise<void>;
  /** A query that left the queue without running (cancelled or expired while waiting). */
  dropped(ticket: T, reason: SetokimError): void;
  /** Queue depth or in-flight count changed. */
  changed?(): void;
}

/**
 * A bounded set of recently seen keys, oldest evicted first. The order lives in a ring, not in the
 * Set: evicting a Set's first entry walks past every entry deleted before it (V8 compacts late),
 * which made a check cost O(capacity) once the window was full (35 us at 100,000 ids).
 */
export class SeenIds {
  private readonly ids = new Set<string>();
  private readonly ring: (string | undefined)[];
  private next = 0;
  constructor(private readonly capacity: number) {
    this.ring = new Array<string | undefined>(capacity);
  }
  /** True when the key was already there. */
  check(key: string): boolean {
    if (this.ids.has(key)) return true;
    const oldest = this.ring[this.next];
    if (oldest !== undefined) this.ids.delete(oldest);
    this.ring[this.next] = key;
    this.next = (this.next + 1) % this.capacity;
    this.ids.add(key);
    return false;
  }
}

export class Admission<T extends Ticket> {
  private readonly queue: Entry<T>[] = [];
  private readonly live = new Map<string, Entry<T>>();
  private running = 0;
  private closed = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly opts: AdmissionOptions<T>) {}

  get depth(): number {
    return this.queue.length;
  }

  get inFlight(): number {
    return this.running;
  }

  admit(ticket: T, now = Date.now()): AdmitResult {
    if (this.closed) return 'closed';
    if (this.live.has(ticket.id)) return 'duplicate';
    if (ticket.deadline !== undefined && ticket.deadline <= now) return 'expired';
    const hasSlot = this.running < this.opts.concurrency;
    if (!hasSlot && this.queue.length >= this.opts.queueSize) return 'busy';
    let abortWith!: (reason: SetokimError) => void;
    const aborted = new Promise<SetokimError>((resolve) => (abortWith = resolve));
    const entry: Entry<T> = { ticket, controller: new AbortController(), aborted, abortWith, state: 'queued' };
    this.live.set(ticket.id, entry);
    if (ticket.deadline !== undefined) this.armDeadline(entry, ticket.deadline - now);
    if (hasSlot) {
      this.start(entry);
      return 'started';
    }
    this.queue.push(entry);
    this.opts.changed?.();
    return 'queued';
  }

  /** Cancels a waiting or running query; false when the id is not here (finished or elsewhere). */
  cancel(id: string): boolean {
    const entry = this.live.get(id);
    if (!entry) return false;
    this.abort(entry, new SetokimError(ErrorCodes.CANCELLED, `query ${id} was cancelled by the client`));
    return true;
  }

  /** Stops admitting; queued and running queries go on. */
  close(): void {
    this.closed = true;
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.running === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Aborts everything (shutdown past its grace period). */
  abortAll(reason: SetokimError): void {
    for (const entry of [...this.live.values()]) this.abort(entry, reason);
  }

  private abort(entry: Entry<T>, reason: SetokimError): void {
    if (entry.state === 'queued') {
      const at = this.queue.indexOf(entry);
      if (at >= 0) this.queue.splice(at, 1);
      this.finish(entry);
      this.opts.dropped(entry.ticket, reason);
      this.opts.changed?.();
      this.checkIdle();
    } else if (!entry.controller.signal.aborted) {
      entry.controller.abort(reason);
      entry.abortWith(reason);
    }
  }

  /** EXPIRED at the deadline; one further than setTimeout reaches waits in steps of MAX_TIMER_MS. */
  private armDeadline(entry: Entry<T>, ms: number): void {
    entry.timer = setTimeout(
      () => {
        const left = entry.ticket.deadline! - Date.now();
        if (left > 0) return this.armDeadline(entry, left);
        const message = `query ${entry.ticket.id} passed its deadline; send it again with a later deadline or expiry`;
        this.abort(entry, new SetokimError(ErrorCodes.EXPIRED, message));
      },
      Math.min(ms, MAX_TIMER_MS),
    );
    entry.timer.unref();
  }

  private start(entry: Entry<T>): void {
    entry.state = 'running';
    this.running++;
    this.opts.changed?.();
    this.opts
      .run(entry.ticket, entry.controller.signal, entry.aborted)
      .catch(() => undefined) // run reports its own errors; a slot must never leak
      .finally(() => {
        this.running--;
        this.finish(entry);
        const next = this.queue.shift();
        if (next) this.start(next);
        else this.opts.changed?.();
        this.checkIdle();
      });
  }

  private finish(entry: Entry<T>): void {
    if (entry.timer) clearTimeout(entry.timer);
    this.live.delete(entry.ticket.id);
  }

  private checkIdle(): void {
    if (this.running > 0 || this.queue.length > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
