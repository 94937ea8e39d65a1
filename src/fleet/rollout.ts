/**
 * Staged rollout over MQTT (`setokim fleet rollout`): send an update job to the canary devices,
 * wait until each commits or fails; then to the rest, `concurrency` at a time; stop sending new
 * jobs once more than `maxFailures` devices failed (canary failures always stop it). A device
 * that says nothing for `timeoutMs` counts as failed. `signal` is the emergency stop. Devices
 * already updating finish on their own. A device that committed but whose hook after the commit
 * failed (e.g. an agent that could not open the new set) says so with a `warning` on `committed`,
 * at once or a little later: it counts as committed and its outcome carries the warning. A canary
 * is there to prove the release serves, so a canary's warning is a canary failure: each canary
 * gets `settleMs` after its commit for a late warning before the rollout goes on.
 *
 * Each device gets its own job: a random job id and a random nonce (wire.ts). Only states sealed
 * with that nonce count, so a client that can publish on a state topic (or read the retained
 * states) cannot fake a device's `committed`. With `signKey` each job is signed for its device.
 */
import type { KeyObject } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import { deviceOfStateTopic, fleetUpdateStateFilter, updateTopic } from '../mqtt/topics.js';
import {
  isSealedBy,
  newJobId,
  newNonce,
  signJob,
  TERMINAL_STATES,
  UpdateStateSchema,
  type UpdateEvent,
  type UpdateJob,
} from './wire.js';

export interface RolloutOptions {
  fleet: string;
  devices: string[];
  /** Updated first, one after another; default: the first device. */
  canary?: string[];
  /** What every device fetches; each device's job adds its own id, nonce and (signKey) signature. */
  job: Pick<UpdateJob, 'url' | 'sha256' | 'release' | 'size'>;
  /** The fleet's private key (bundle keygen's): each job is signed for its device, valid for timeoutMs. */
  signKey?: KeyObject;
  maxFailures?: number;
  concurrency?: number;
  /** Per device, from sending the job to its final state (default 10 minutes). */
  timeoutMs?: number;
  onEvent?: (device: string, e: UpdateEvent) => void;
  /** A state for a device's job that is not sealed with the job's nonce (ignored): someone else published it. */
  onForged?: (device: string) => void;
  /** Emergency stop: no job is sent after it fires; devices already updating are waited for. */
  signal?: AbortSignal;
  /**
   * How long after a device committed a warning from its hooks may still arrive (an agent
   * reopening its pipeline reports a failure only after the commit went out). Each canary has
   * this long before the next device is sent the job; at the end the rollout waits until each
   * committed device without a warning has had this long (default 0). Warnings that arrive
   * earlier, while it runs, are always kept.
   */
  settleMs?: number;
}

export type DeviceOutcome = {
  device: string;
  result: 'committed' | 'failed' | 'timeout' | 'skipped';
  code?: string;
  message?: string;
  /** Committed, but a hook after the commit failed (UPDATE_HOOK_FAILED): e.g. the device still serves its old set. */
  warning?: { code: string; message: string };
};

export interface RolloutResult {
  aborted: boolean;
  outcomes: DeviceOutcome[];
  /** Devices that count as failures: failed, timed out, or a canary that committed with a warning. */
  failures: string[];
}

/** One rollout: the jobs sent, the states heard, the outcomes; steps named below. */
class Rollout {
  private readonly devices: string[];
  private readonly canary: string[];
  private readonly timeoutMs: number;
  /** The job sent to each device (its id and nonce decide which states count). */
  private readonly sent = new Map<string, UpdateJob>();
  private readonly waiting = new Map<string, (e: UpdateEvent) => void>();
  /** Committed devices, and when their commit arrived (a later warning attaches to the outcome). */
  private readonly committed = new Map<string, { outcome: DeviceOutcome; at: number }>();
  private readonly outcomes: DeviceOutcome[] = [];
  private aborted = false;
  /** Ends a settle() wait early (a warning arrived). */
  private warned?: () => void;
  private readonly onMessage = (topic: string, payload: Buffer) => this.onState(topic, payload);

  constructor(
    private readonly client: MqttClient,
    private readonly o: RolloutOptions,
  ) {
    // A device named twice would be sent two jobs; a canary twice, waited for twice.
    this.devices = [...new Set(o.devices)];
    this.canary = [...new Set(o.canary ?? this.devices.slice(0, 1))];
    for (const c of this.canary)
      if (!this.devices.includes(c))
        throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `canary device ${c} is not in --devices`);
    if (!/^https?:\/\//i.test(o.job.url))
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `--url must be https:// (or http://): devices refuse other URLs in jobs from MQTT`,
      );
    this.timeoutMs = o.timeoutMs ?? 600_000;
  }

  async run(): Promise<RolloutResult> {
    this.client.on('message', this.onMessage);
    await this.client.subscribeAsync(fleetUpdateStateFilter(this.o.fleet), { qos: 1 });
    try {
      await this.canaries();
      if (!this.aborted) await this.others();
      for (const d of this.devices)
        if (!this.outcomes.some((x) => x.device === d)) this.outcomes.push({ device: d, result: 'skipped' });
      await this.settle(); // late warnings from the rest (an emergency stop skips it)
    } finally {
      this.client.off('message', this.onMessage);
      await this.client.unsubscribeAsync(fleetUpdateStateFilter(this.o.fleet)).catch(() => {});
    }
    return {
      aborted: this.aborted,
      outcomes: this.outcomes,
      failures: this.outcomes.filter((x) => this.isFailure(x)).map((x) => x.device),
    };
  }

  /** The canaries, one after another; any failure (or a warning within settleMs) aborts. */
  private async canaries(): Promise<void> {
    for (const d of this.canary) {
      if (this.stopped()) break;
      const r = await this.updateOne(d);
      this.outcomes.push(r);
      // The canary's agent may still report that it cannot serve the set.
      if (r.result === 'committed') await this.settle(d);
      if (this.isFailure(r)) this.aborted = true;
      if (this.aborted) break;
    }
  }

  /** The rest, `concurrency` at a time, until more than maxFailures failed. */
  private async others(): Promise<void> {
    const queue = this.devices.filter((d) => !this.canary.includes(d));
    const maxFailures = this.o.maxFailures ?? 0;
    const worker = async () => {
      while (!this.stopped() && queue.length > 0) {
        this.outcomes.push(await this.updateOne(queue.shift()!));
        if (this.outcomes.filter((x) => this.isFailure(x)).length > maxFailures) this.aborted = true;
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.o.concurrency ?? 1) }, worker));
  }

  private isFailure(x: DeviceOutcome): boolean {
    return (
      x.result === 'failed' || x.result === 'timeout' || (x.warning !== undefined && this.canary.includes(x.device))
    );
  }

  /** The emergency stop, or a canary's warning that came only after its settle time. */
  private stopped(): boolean {
    return (this.aborted ||=
      this.o.signal?.aborted === true || this.canary.some((c) => this.committed.get(c)?.outcome.warning));
  }

  /** The device's own job: a fresh id and nonce, signed for it when there is a key. */
  private jobFor(device: string): UpdateJob {
    const job: UpdateJob = { ...this.o.job, jobId: newJobId(), nonce: newNonce() };
    if (!this.o.signKey) return job;
    const expiresAt = new Date(Date.now() + this.timeoutMs).toISOString();
    return signJob({ ...job, fleet: this.o.fleet, device, expiresAt }, this.o.signKey);
  }

  /** Sends the device its job and resolves with its final state, or a timeout. */
  private updateOne(device: string): Promise<DeviceOutcome> {
    return new Promise<DeviceOutcome>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(device);
        resolve({ device, result: 'timeout', message: `no final state within ${this.timeoutMs} ms` });
      }, this.timeoutMs);
      this.waiting.set(device, (e) => {
        clearTimeout(timer);
        this.waiting.delete(device);
        const outcome: DeviceOutcome = {
          device,
          result: e.state === 'committed' ? 'committed' : 'failed',
          code: e.code,
          message: e.message,
          ...(e.warning ? { warning: e.warning } : {}),
        };
        if (outcome.result === 'committed') this.committed.set(device, { outcome, at: performance.now() });
        resolve(outcome);
      });
      const job = this.jobFor(device);
      this.sent.set(device, job);
      this.client.publish(updateTopic(this.o.fleet, device), JSON.stringify(job), { qos: 1 });
    });
  }

  /** A state message: counted only when it is the device's current job's and sealed with its nonce. */
  private onState(topic: string, payload: Buffer): void {
    const device = deviceOfStateTopic(topic);
    const job = device === undefined ? undefined : this.sent.get(device);
    if (!device || !job) return;
    let raw: unknown;
    try {
      raw = JSON.parse(payload.toString('utf8'));
    } catch {
      return;
    }
    if ((raw as { jobId?: unknown })?.jobId !== job.jobId) return; // another rollout's, or a retained old state
    if (!isSealedBy(raw, job.nonce!)) return void this.o.onForged?.(device);
    const parsed = UpdateStateSchema.safeParse(raw);
    if (!parsed.success) return;
    const e = parsed.data;
    this.o.onEvent?.(device, e);
    const late = this.committed.get(device);
    if (late && e.state === 'committed' && e.warning && !late.outcome.warning) {
      late.outcome.warning = e.warning;
      this.warned?.();
    } else if (TERMINAL_STATES.has(e.state)) this.waiting.get(device)?.(e);
  }

  /**
   * Until `only` (default: each committed device) has had settleMs since its commit unless it has a
   * warning; a warning or the emergency stop ends the wait early.
   */
  private async settle(only?: string): Promise<void> {
    const settleMs = this.o.settleMs ?? 0;
    for (;;) {
      const quiet = [...this.committed]
        .filter(([d, c]) => (only === undefined || d === only) && !c.outcome.warning)
        .map(([, c]) => c.at + settleMs);
      const wait = Math.max(0, ...quiet) - performance.now();
      if (wait <= 0 || this.o.signal?.aborted) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.o.signal?.removeEventListener('abort', done);
          this.warned = undefined;
          resolve();
        };
        const timer = setTimeout(done, wait);
        this.o.signal?.addEventListener('abort', done);
        this.warned = done;
      });
    }
  }
}

export async function rollout(client: MqttClient, o: RolloutOptions): Promise<RolloutResult> {
  return new Rollout(client, o).run();
}
