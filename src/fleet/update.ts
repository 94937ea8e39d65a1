/**
 * The device side of a fleet update, for an agent to call: one job (a bundle URL and its sha256)
 * becomes download -> install (src/fleet/install.ts) with a stream of state events (wire.ts).
 *
 * Before anything is fetched a job is checked: its schema, its URL against the policy (policy.ts;
 * jobs from MQTT never name file:), its signature when the device requires signed jobs, and the
 * queue's room (BUSY past `maxQueued` waiting). Jobs run one at a time, each within its time limit
 * (`jobTimeoutMs`): past it, or when the handler stops, a download ends at once and an install not
 * yet committed rolls back at its next step. The states a job publishes carry generic text per
 * code; what went wrong in detail (URLs redacted) goes to `log`, the device's own log.
 * Jobs are deduplicated by id while they wait or run and once committed (MQTT QoS 1 delivers at
 * least once); a failed job id may run again (a broken download resumes).
 */
import type { KeyObject } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, errorCode, SetokimError, type ErrorCode } from '../errors.js';
import { DEFAULT_MAX_DOWNLOAD_BYTES, downloadBundle } from './download.js';
import type { BindingPolicy } from './compat.js';
import type { HealthCheck } from './health.js';
import type { EngineProgress } from './engines.js';
import { installBundle, type EngineInstallOptions, type InstallResult, type InstallStep } from './install.js';
import { fleetDir } from './journal.js';
import { UrlPolicy, type JobSource, type UrlPolicyOptions } from './policy.js';
import {
  jobSignatureProblem,
  publicText,
  sealState,
  UpdateJobSchema,
  type UpdateEvent,
  type UpdateJob,
  type UpdateState,
} from './wire.js';

export {
  TERMINAL_STATES,
  UPDATE_STATES,
  UpdateJobSchema,
  UpdateStateSchema,
  type UpdateEvent,
  type UpdateJob,
  type UpdateState,
} from './wire.js';

/** A job's total time limit unless configured. */
export const DEFAULT_JOB_TIMEOUT_MS = 60 * 60_000;
/** Jobs waiting behind the running one, unless configured; more are refused BUSY. */
export const DEFAULT_MAX_QUEUED = 4;
/** Committed job ids remembered for deduplication. */
const REMEMBERED = 64;
/** What the downloads folder holds: `<sha256>.bundle` and its `.partial`. */
const DOWNLOAD_NAME = /^[0-9a-f]{64}\.bundle(\.partial)?$/;

/** What a code means while downloading, where ERRORS' general meaning would mislead. */
const DOWNLOAD_TEXT: Partial<Record<ErrorCode, string>> = {
  [ErrorCodes.BUNDLE_TAMPERED]: "the downloaded file's sha256 is not the job's sha256 (damaged or replaced)",
  [ErrorCodes.BUNDLE_INVALID]: 'the download failed: no connection, no file at the URL, or a broken transfer',
  [ErrorCodes.BAD_ARGUMENT]: "the job's URL cannot be read",
};

/** The warning a `committed` event carries when `hook` threw after the commit (code UPDATE_HOOK_FAILED). */
export function hookWarning(hook: string, err: unknown): NonNullable<UpdateEvent['warning']> {
  const why = `[${errorCode(err)}] ${(err as Error)?.message ?? String(err)}`;
  return {
    code: ErrorCodes.UPDATE_HOOK_FAILED,
    message: `${hook} failed after the release was committed: ${why}; the new set stays committed and active`,
  };
}

export interface UpdateHandlerOptions {
  store: string;
  pubkey: KeyObject;
  health?: HealthCheck;
  reserveBytes?: number;
  /**
   * The device's fleet and target (and maxReleaseJump) a bundle's signed binding is checked against.
   * There is no allowUnbound: format-1 bundles are always refused on this path.
   */
  binding?: Omit<BindingPolicy, 'allowUnbound'>;
  /** Progress events at most this often per state (default 500 ms); state changes always go out. */
  progressIntervalMs?: number;
  /**
   * Awaited after each install step (installBundle's onStep): e.g. at `placed`, an agent on a
   * small board closes its serving pipeline so the canary has the memory.
   */
  onInstallStep?: (step: InstallStep, detail: string) => void | Promise<void>;
  /** The URLs jobs from MQTT may name (policy.ts; default: none). */
  urls?: UrlPolicyOptions;
  /** This device's fleet and name: a signed job must name them (wire.ts). */
  jobsFor?: { fleet: string; device: string };
  /** Jobs from MQTT must be signed with `pubkey` for `jobsFor` (default false). A signed job is checked either way. */
  signedJobs?: boolean;
  /** Each job's total time limit (default DEFAULT_JOB_TIMEOUT_MS). */
  jobTimeoutMs?: number;
  /** Jobs waiting behind the running one (default DEFAULT_MAX_QUEUED). */
  maxQueued?: number;
  /** The cap of a download, so of the downloads folder (default 8 GiB). */
  maxDownloadBytes?: number;
  /** A download that receives nothing for this long is DOWNLOAD_STALLED (download.ts' default). */
  stallMs?: number;
  /**
   * How installs prepare engines (install.ts; default: detected for this device). The job's time
   * limit and stop cancel a build under way; each build's progress goes out as `building-engines`.
   */
  engines?: EngineInstallOptions | false;
  /** The details of each refusal and failure (the device's log; URLs redacted). Never published. */
  log?: (level: 'info' | 'warn', message: string) => void;
}

export class UpdateHandler {
  /** Jobs waiting, running, or committed (the last REMEMBERED). */
  private readonly jobs = new Map<string, Promise<InstallResult>>();
  private readonly committed: string[] = [];
  private readonly policy: UrlPolicy;
  private readonly stopping = new AbortController();
  private queue: Promise<unknown> = Promise.resolve();
  private admitted = 0;

  constructor(private readonly o: UpdateHandlerOptions) {
    this.policy = new UrlPolicy(o.urls);
  }

  /**
   * Runs a job (validated here: it comes off the wire) and reports its states through `emit`;
   * resolves with the install result or rejects with the SetokimError that `failed` carried.
   * `source` says who sent it: `mqtt` jobs are held to the policy, `local` ones (the device's own
   * caller) may name any file: or http(s): URL. The same jobId again, while it waits or runs or
   * after it committed, returns the first run's promise and emits nothing.
   */
  run(raw: unknown, emit: (e: UpdateEvent) => void, source: JobSource): Promise<InstallResult> {
    const parsed = UpdateJobSchema.safeParse(raw);
    if (!parsed.success) {
      const id = (raw as { jobId?: unknown })?.jobId;
      const jobId = typeof id === 'string' && /^[A-Za-z0-9._-]{1,128}$/.test(id) ? id : '';
      const err = new SetokimError(
        ErrorCodes.BAD_MESSAGE,
        `update job: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
      );
      emit({ jobId, state: 'failed', code: err.code, message: err.message, at: new Date().toISOString() });
      return Promise.reject(err);
    }
    const job = parsed.data;
    const seen = this.jobs.get(job.jobId);
    if (seen) return seen;
    try {
      this.admit(job, source);
    } catch (err) {
      this.o.log?.('warn', `update ${job.jobId} refused: [${errorCode(err)}] ${(err as Error).message}`);
      emit(
        sealState(
          {
            jobId: job.jobId,
            state: 'failed',
            code: errorCode(err),
            message: publicText(errorCode(err)),
            at: new Date().toISOString(),
          },
          job.nonce,
        ),
      );
      return Promise.reject(err);
    }
    this.admitted++;
    const p = this.queue.then(() => new JobRun(job, source, this.o, this.policy, emit, this.stopping.signal).execute());
    this.queue = p.catch(() => {});
    this.jobs.set(job.jobId, p);
    p.then(
      () => this.remember(job.jobId),
      () => this.jobs.delete(job.jobId), // a failed job may be sent again (e.g. to resume a broken download)
    ).finally(() => this.admitted--);
    return p;
  }

  /** Jobs waiting or running. */
  get busy(): boolean {
    return this.admitted > 0;
  }

  /** Resolves when no job waits or runs. */
  async idle(): Promise<void> {
    while (this.admitted > 0) await this.queue;
  }

  /**
   * Takes no further job: queued ones fail CANCELLED without fetching anything, a running
   * download ends at once (its partial kept), an install not yet committed rolls back at its next
   * step. Resolves when the running job has settled.
   */
  async stop(): Promise<void> {
    this.stopping.abort(
      new SetokimError(
        ErrorCodes.CANCELLED,
        'the device stopped taking update jobs (shutting down); send the job again later',
      ),
    );
    await this.queue;
  }

  /** Refuses a job before it takes a place in the queue: nothing is fetched for it. */
  private admit(job: UpdateJob, source: JobSource): void {
    if (this.stopping.signal.aborted)
      throw new SetokimError(ErrorCodes.BUSY, 'the device is shutting down; send the job again later');
    this.policy.check(job.url, source);
    if (job.signature || (source === 'mqtt' && this.o.signedJobs)) {
      const problem = this.o.jobsFor
        ? jobSignatureProblem(job, this.o.pubkey, this.o.jobsFor)
        : 'this device has no fleet and device name to check a signed job against';
      if (problem) throw new SetokimError(ErrorCodes.JOB_SIGNATURE, `update job ${job.jobId}: ${problem}`);
    }
    const max = this.o.maxQueued ?? DEFAULT_MAX_QUEUED;
    if (this.admitted > max)
      throw new SetokimError(
        ErrorCodes.BUSY,
        `${this.admitted} update jobs are waiting or running (at most ${max} wait); send the job again once they are done`,
      );
  }

  private remember(jobId: string): void {
    this.committed.push(jobId);
    while (this.committed.length > REMEMBERED) this.jobs.delete(this.committed.shift()!);
  }
}

const STATE_OF: Partial<Record<InstallStep, UpdateState>> = {
  staging: 'installing',
  'building-engines': 'building-engines',
  placed: 'activating',
  activated: 'health',
};

/** One job from its first state to its last: download, install, report. */
class JobRun {
  private state: UpdateState = 'downloading';
  private lastProgress = 0;
  private warning: UpdateEvent['warning'];
  private readonly deadline = new AbortController();
  private readonly signal: AbortSignal;
  private readonly dest: string;

  constructor(
    private readonly job: UpdateJob,
    private readonly source: JobSource,
    private readonly o: UpdateHandlerOptions,
    private readonly policy: UrlPolicy,
    private readonly emit: (e: UpdateEvent) => void,
    stopping: AbortSignal,
  ) {
    this.signal = AbortSignal.any([this.deadline.signal, stopping]);
    this.dest = join(this.downloads, `${job.sha256}.bundle`); // an http(s) download, kept while it runs
  }

  private get downloads(): string {
    return join(fleetDir(this.o.store), 'downloads');
  }

  async execute(): Promise<InstallResult> {
    const ms = this.o.jobTimeoutMs ?? DEFAULT_JOB_TIMEOUT_MS;
    const timer = setTimeout(
      () =>
        this.deadline.abort(
          new SetokimError(
            ErrorCodes.UPDATE_TIMED_OUT,
            `update job ${this.job.jobId} ran past its time limit of ${ms} ms`,
          ),
        ),
      ms,
    );
    try {
      this.signal.throwIfAborted(); // stopped while it waited: nothing fetched
      this.send('downloading');
      const path = await this.download();
      this.send((this.state = 'verifying'));
      const r = await this.install(path);
      this.send('committed', {
        modelSetId: r.modelSetId,
        release: r.release,
        message: `canary answered in ${r.health.ms.toFixed(0)} ms`,
        ...(this.warning ? { warning: this.warning } : {}),
      });
      return r;
    } catch (err) {
      this.fail(err);
      throw err;
    } finally {
      clearTimeout(timer);
      // A finished download is not kept: the store holds the set now, or it was refused.
      if (!this.job.url.startsWith('file:')) await rm(this.dest, { force: true });
    }
  }

  private send(state: UpdateState, extra: Partial<UpdateEvent> = {}): void {
    this.emit(sealState({ jobId: this.job.jobId, state, ...extra, at: new Date().toISOString() }, this.job.nonce));
  }

  private progress(state: UpdateState) {
    const every = this.o.progressIntervalMs ?? 500;
    return (done: number, total: number) => {
      this.signal.throwIfAborted(); // an unpack past the deadline stops (and rolls back)
      const now = performance.now();
      if (now - this.lastProgress < every && done < total) return;
      this.lastProgress = now;
      this.send(state, { done, total });
    };
  }

  /** Keeps one partial at most (this job's, to resume), then fetches within the policy. */
  private async download(): Promise<string> {
    for (const name of await readdir(this.downloads).catch(() => [] as string[])) {
      if (DOWNLOAD_NAME.test(name) && name !== `${this.job.sha256}.bundle.partial`)
        await rm(join(this.downloads, name), { force: true });
    }
    return downloadBundle(this.job.url, {
      sha256: this.job.sha256,
      size: this.job.size,
      dest: this.dest,
      maxBytes: this.o.maxDownloadBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES,
      signal: this.signal,
      onProgress: this.progress('downloading'),
      checkUrl: (url, what) => this.policy.check(url, this.source, what),
      ...(this.o.stallMs !== undefined ? { stallMs: this.o.stallMs } : {}),
    });
  }

  private install(bundle: string): Promise<InstallResult> {
    return installBundle({
      bundle,
      store: this.o.store,
      pubkey: this.o.pubkey,
      device: this.o.binding?.device,
      maxReleaseJump: this.o.binding?.maxReleaseJump,
      health: this.o.health,
      reserveBytes: this.o.reserveBytes,
      onProgress: this.progress('installing'),
      onStep: (s, detail) => this.onStep(s, detail),
      engines: this.engines(),
    });
  }

  /** The install's engine options: cancelled with the job, progress as `building-engines` states (stages done of stages to build). */
  private engines(): EngineInstallOptions | false {
    const o = this.o.engines;
    if (o === false) return false;
    const every = this.o.progressIntervalMs ?? 500;
    let last = 0;
    const onProgress = (p: EngineProgress) => {
      o?.onProgress?.(p);
      const now = performance.now();
      const edge = p.phase === 'start' || p.phase === 'done';
      if (!edge && now - last < every) return;
      last = now;
      this.send('building-engines', { done: p.index - (p.phase === 'done' ? 0 : 1), total: p.count, stage: p.stage });
    };
    return { ...o, signal: this.signal, onProgress };
  }

  private async onStep(s: InstallStep, detail: string): Promise<void> {
    const next = STATE_OF[s];
    if (next) {
      this.state = next;
      this.send(next);
    }
    if (s !== 'committed') {
      // Past the time limit, or stopping: roll back now (a rollback itself goes on to its end).
      if (s !== 'rolled-back') this.signal.throwIfAborted();
      return void (await this.o.onInstallStep?.(s, detail));
    }
    // Past the commit point nothing rolls back: a throwing hook is a warning on `committed`, not a failed job.
    try {
      await this.o.onInstallStep?.(s, detail);
    } catch (err) {
      this.warning = hookWarning('onInstallStep(committed)', err);
    }
  }

  /** The detail to the device's log; generic text to the wire. */
  private fail(err: unknown): void {
    const code = errorCode(err);
    this.o.log?.(
      'warn',
      `update ${this.job.jobId} failed while ${this.state}: [${code}] ${(err as Error)?.message ?? String(err)}`,
    );
    const message = publicText(code, this.state === 'downloading' ? DOWNLOAD_TEXT : undefined);
    // Once the new set was active, a failure means it was rolled back (install did it).
    if (this.state === 'activating' || this.state === 'health') this.send('rolled-back', { code, message });
    this.send('failed', { code, message });
  }
}
