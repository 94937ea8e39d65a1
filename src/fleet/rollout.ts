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
 */
import type { MqttClient } from 'mqtt';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { deviceOfStateTopic, fleetUpdateStateFilter, updateTopic } from '../mqtt/topics.js';
import { TERMINAL_STATES, UPDATE_STATES, type UpdateEvent, type UpdateJob } from './update.js';

const WarningSchema = z.object({ code: z.string(), message: z.string() });
const EventSchema = z.object({ jobId: z.string(), state: z.enum(UPDATE_STATES), code: z.string().optional(), message: z.string().optional(), warning: WarningSchema.optional() }).loose();

export interface RolloutOptions {
  fleet: string;
  devices: string[];
  /** Updated first, one after another; default: the first device. */
  canary?: string[];
  job: Omit<UpdateJob, 'jobId'>;
  /** Prefix of each device's job id (default: rollout-<time>). */
  rolloutId?: string;
  maxFailures?: number;
  concurrency?: number;
  /** Per device, from sending the job to its final state (default 10 minutes). */
  timeoutMs?: number;
  onEvent?: (device: string, e: UpdateEvent) => void;
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

export async function rollout(client: MqttClient, o: RolloutOptions): Promise<RolloutResult> {
  // A device named twice would be sent its job id twice: the device dedupes it and stays silent,
  // so the second wait could only end in a timeout (a failure).
  const devices = [...new Set(o.devices)];
  const canary = [...new Set(o.canary ?? devices.slice(0, 1))];
  for (const c of canary) if (!devices.includes(c)) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `canary device ${c} is not in --devices`);
  const rest = devices.filter((d) => !canary.includes(d));
  const rolloutId = o.rolloutId ?? `rollout-${Date.now()}`;
  const jobId = (d: string) => `${rolloutId}-${d}`;
  const waiting = new Map<string, (e: UpdateEvent) => void>();
  /** Committed devices, and when their commit arrived (a later warning attaches to the outcome). */
  const committed = new Map<string, { outcome: DeviceOutcome; at: number }>();
  let warned: (() => void) | undefined;
  const onMessage = (topic: string, payload: Buffer) => {
    const device = deviceOfStateTopic(topic);
    if (!device) return;
    let e: UpdateEvent;
    try {
      const parsed = EventSchema.safeParse(JSON.parse(payload.toString('utf8')));
      if (!parsed.success) return;
      e = parsed.data as unknown as UpdateEvent;
    } catch {
      return;
    }
    if (e.jobId !== jobId(device)) return; // another rollout's, or a retained old state
    o.onEvent?.(device, e);
    const late = committed.get(device);
    if (late && e.state === 'committed' && e.warning && !late.outcome.warning) {
      late.outcome.warning = e.warning;
      warned?.();
    } else if (TERMINAL_STATES.has(e.state)) waiting.get(device)?.(e);
  };
  client.on('message', onMessage);
  await client.subscribeAsync(fleetUpdateStateFilter(o.fleet), { qos: 1 });

  const timeoutMs = o.timeoutMs ?? 600_000;
  const updateOne = (device: string): Promise<DeviceOutcome> =>
    new Promise<DeviceOutcome>((resolve) => {
      const timer = setTimeout(() => {
        waiting.delete(device);
        resolve({ device, result: 'timeout', message: `no final state within ${timeoutMs} ms` });
      }, timeoutMs);
      waiting.set(device, (e) => {
        clearTimeout(timer);
        waiting.delete(device);
        const outcome: DeviceOutcome = { device, result: e.state === 'committed' ? 'committed' : 'failed', code: e.code, message: e.message, ...(e.warning ? { warning: e.warning } : {}) };
        if (outcome.result === 'committed') committed.set(device, { outcome, at: performance.now() });
        resolve(outcome);
      });
      const job: UpdateJob = { ...o.job, jobId: jobId(device) };
      client.publish(updateTopic(o.fleet, device), JSON.stringify(job), { qos: 1 });
    });

  const outcomes: DeviceOutcome[] = [];
  const maxFailures = o.maxFailures ?? 0;
  const failed = (x: DeviceOutcome) => x.result === 'failed' || x.result === 'timeout' || (x.warning !== undefined && canary.includes(x.device));
  const failures = () => outcomes.filter(failed).length;
  let aborted = false;
  // A canary's warning that comes only after its settle time (settleMs too short) still stops new jobs.
  const stopped = () => (aborted ||= o.signal?.aborted === true || canary.some((c) => committed.get(c)?.outcome.warning));
  const settleMs = o.settleMs ?? 0;
  /** Until `only` (default: each committed device) has had settleMs since its commit unless it has a warning; a warning or the emergency stop ends the wait early. */
  const settle = async (only?: string) => {
    for (;;) {
      const quiet = [...committed].filter(([d, c]) => (only === undefined || d === only) && !c.outcome.warning).map(([, c]) => c.at + settleMs);
      const wait = Math.max(0, ...quiet) - performance.now();
      if (wait <= 0 || o.signal?.aborted) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          o.signal?.removeEventListener('abort', done);
          warned = undefined;
          resolve();
        };
        const timer = setTimeout(done, wait);
        o.signal?.addEventListener('abort', done);
        warned = done;
      });
    }
  };
  try {
    for (const d of canary) {
      if (stopped()) break;
      const r = await updateOne(d);
      outcomes.push(r);
      if (r.result === 'committed') await settle(d); // the canary's agent may still report that it cannot serve the set
      if (failed(r)) aborted = true;
      if (aborted) break;
    }
    const queue = [...rest];
    const worker = async () => {
      while (!stopped() && queue.length > 0) {
        outcomes.push(await updateOne(queue.shift()!));
        if (failures() > maxFailures) aborted = true;
      }
    };
    if (!aborted) await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, worker));
    for (const d of devices) if (!outcomes.some((x) => x.device === d)) outcomes.push({ device: d, result: 'skipped' });
    await settle(); // late warnings from the rest (an emergency stop skips it)
  } finally {
    client.off('message', onMessage);
    await client.unsubscribeAsync(fleetUpdateStateFilter(o.fleet)).catch(() => {});
  }
  return { aborted, outcomes, failures: outcomes.filter(failed).map((x) => x.device) };
}
