/**
 * The device side of a fleet update, for an agent to call: one job (a bundle URL and its
 * sha256) becomes download -> install (src/fleet/install.ts) with a stream of state events.
 * Jobs are deduplicated by id while running and once committed (MQTT QoS 1 delivers at least
 * once); a failed job id may run again. Jobs run one at a time.
 */
import type { KeyObject } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Sha256Hex } from '../engine/manifest.js';
import { ErrorCodes, errorCode, SetokimError, type ErrorCode } from '../errors.js';
import { downloadBundle } from './download.js';
import type { BindingPolicy } from './compat.js';
import type { HealthCheck } from './health.js';
import { installBundle, type InstallResult, type InstallStep } from './install.js';
import { fleetDir } from './journal.js';

export const UPDATE_STATES = ['downloading', 'verifying', 'installing', 'activating', 'health', 'committed', 'rolled-back', 'failed'] as const;
export type UpdateState = (typeof UPDATE_STATES)[number];
export const TERMINAL_STATES: ReadonlySet<UpdateState> = new Set(['committed', 'failed']);

export const UpdateJobSchema = z.strictObject({
  jobId: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/),
  url: z.string().min(1).max(4096),
  sha256: Sha256Hex,
  /** Informational: the release the publisher expects (the signed manifest decides). */
  release: z.number().int().positive().optional(),
  /** The bundle file's size in bytes: the download refuses more and checks free space first. Optional: older publishers omit it. */
  size: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
});
export type UpdateJob = z.infer<typeof UpdateJobSchema>;

export interface UpdateEvent {
  jobId: string;
  state: UpdateState;
  /** Set on rolled-back and failed. */
  code?: ErrorCode;
  message?: string;
  /** Bytes, while downloading or unpacking. */
  done?: number;
  total?: number;
  modelSetId?: string;
  release?: number;
  /** On committed only: a hook run after the commit point failed; the release stays committed and active. */
  warning?: { code: ErrorCode; message: string };
  at: string;
}

/** The warning a `committed` event carries when `hook` threw after the commit (code UPDATE_HOOK_FAILED). */
export function hookWarning(hook: string, err: unknown): NonNullable<UpdateEvent['warning']> {
  const why = `[${errorCode(err)}] ${(err as Error)?.message ?? String(err)}`;
  return { code: ErrorCodes.UPDATE_HOOK_FAILED, message: `${hook} failed after the release was committed: ${why}; the new set stays committed and active` };
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
}

const STATE_OF: Partial<Record<InstallStep, UpdateState>> = {
  staging: 'installing',
  placed: 'activating',
  activated: 'health',
  committed: 'committed',
  'rolled-back': 'rolled-back',
};

export class UpdateHandler {
  private readonly jobs = new Map<string, Promise<InstallResult>>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: UpdateHandlerOptions) {}

  /**
   * Runs a job (validated here: it comes off the wire) and reports its states through `emit`;
   * resolves with the install result or rejects with the SetokimError that `failed` carried.
   * The same jobId again, while it runs or after it committed, returns the first run's promise
   * and emits nothing; after a failure it runs again (a broken download resumes).
   */
  run(raw: unknown, emit: (e: UpdateEvent) => void): Promise<InstallResult> {
    const parsed = UpdateJobSchema.safeParse(raw);
    if (!parsed.success) {
      const jobId = typeof (raw as { jobId?: unknown })?.jobId === 'string' ? (raw as { jobId: string }).jobId : '';
      const err = new SetokimError(ErrorCodes.BAD_MESSAGE, `update job: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
      emit({ jobId, state: 'failed', code: err.code, message: err.message, at: new Date().toISOString() });
      return Promise.reject(err);
    }
    const job = parsed.data;
    const seen = this.jobs.get(job.jobId);
    if (seen) return seen;
    const p = this.queue.then(() => this.execute(job, emit));
    this.queue = p.catch(() => {});
    this.jobs.set(job.jobId, p);
    // A failed job may be sent again (e.g. to resume a broken download): only running and
    // committed jobs are remembered.
    p.catch(() => this.jobs.delete(job.jobId));
    return p;
  }

  private async execute(job: UpdateJob, emit: (e: UpdateEvent) => void): Promise<InstallResult> {
    const every = this.o.progressIntervalMs ?? 500;
    let last = 0;
    const send = (state: UpdateState, extra: Partial<UpdateEvent> = {}) => emit({ jobId: job.jobId, state, ...extra, at: new Date().toISOString() });
    const progress = (state: UpdateState) => (done: number, total: number) => {
      const now = performance.now();
      if (now - last < every && done < total) return;
      last = now;
      send(state, { done, total });
    };
    const dest = join(fleetDir(this.o.store), 'downloads', `${job.sha256}.bundle`); // an http(s) download, kept while it runs
    const cur = { state: 'downloading' as UpdateState };
    let warning: UpdateEvent['warning'];
    try {
      send('downloading');
      const path = await downloadBundle(job.url, { sha256: job.sha256, size: job.size, dest, onProgress: progress('downloading') });
      send((cur.state = 'verifying'));
      const r = await installBundle({
        bundle: path,
        store: this.o.store,
        pubkey: this.o.pubkey,
        device: this.o.binding?.device,
        maxReleaseJump: this.o.binding?.maxReleaseJump,
        health: this.o.health,
        reserveBytes: this.o.reserveBytes,
        onProgress: progress('installing'),
        onStep: async (s, detail) => {
          const next = STATE_OF[s];
          if (next && next !== 'committed' && next !== 'rolled-back') {
            // committed and rolled-back are sent below, with the outcome
            cur.state = next;
            send(next, { message: detail });
          }
          if (s !== 'committed') return void (await this.o.onInstallStep?.(s, detail));
          // Past the commit point nothing rolls back: a throwing hook is a warning on `committed`, not a failed job.
          try {
            await this.o.onInstallStep?.(s, detail);
          } catch (err) {
            warning = hookWarning('onInstallStep(committed)', err);
          }
        },
      });
      send('committed', { modelSetId: r.modelSetId, release: r.release, message: `canary answered in ${r.health.ms.toFixed(0)} ms`, ...(warning ? { warning } : {}) });
      return r;
    } catch (err) {
      const code = errorCode(err);
      const message = (err as Error)?.message ?? String(err);
      // Once the new set was active, a failure means it was rolled back (install did it).
      if (cur.state === 'activating' || cur.state === 'health') send('rolled-back', { code, message });
      send('failed', { code, message });
      throw err;
    } finally {
      // A finished download is not kept: the store holds the set now, or it was refused.
      if (!job.url.startsWith('file:')) await rm(dest, { force: true });
    }
  }
}
