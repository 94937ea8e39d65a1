/**
 * Staged rollout over MQTT (`setokim fleet rollout`): send an update job to the canary devices,
 * wait until each commits or fails; then to the rest, `concurrency` at a time; stop sending new
 * jobs once more than `maxFailures` devices failed (canary failures always stop it). A device
 * that says nothing for `timeoutMs` counts as failed. `signal` is the emergency stop. Devices
 * already updating finish on their own.
 */
import type { MqttClient } from 'mqtt';
import { z } from 'zod';
import { SetokimError } from '../errors.js';
import { deviceOfStateTopic, fleetUpdateStateFilter, updateTopic } from './topics.js';
import { TERMINAL_STATES, UPDATE_STATES, type UpdateEvent, type UpdateJob } from './update.js';

const EventSchema = z.object({ jobId: z.string(), state: z.enum(UPDATE_STATES), code: z.string().optional(), message: z.string().optional() }).loose();

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
}

export type DeviceOutcome = { device: string; result: 'committed' | 'failed' | 'timeout' | 'skipped'; code?: string; message?: string };

export interface RolloutResult {
  aborted: boolean;
  outcomes: DeviceOutcome[];
}

export async function rollout(client: MqttClient, o: RolloutOptions): Promise<RolloutResult> {
  // A device named twice would be sent its job id twice: the device dedupes it and stays silent,
  // so the second wait could only end in a timeout (a failure).
  const devices = [...new Set(o.devices)];
  const canary = [...new Set(o.canary ?? devices.slice(0, 1))];
  for (const c of canary) if (!devices.includes(c)) throw new SetokimError('BAD_ARGUMENT', `canary device ${c} is not in --devices`);
  const rest = devices.filter((d) => !canary.includes(d));
  const rolloutId = o.rolloutId ?? `rollout-${Date.now()}`;
  const jobId = (d: string) => `${rolloutId}-${d}`;
  const waiting = new Map<string, (e: UpdateEvent) => void>();
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
    if (TERMINAL_STATES.has(e.state)) waiting.get(device)?.(e);
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
        resolve({ device, result: e.state === 'committed' ? 'committed' : 'failed', code: e.code, message: e.message });
      });
      const job: UpdateJob = { ...o.job, jobId: jobId(device) };
      client.publish(updateTopic(o.fleet, device), JSON.stringify(job), { qos: 1 });
    });

  const outcomes: DeviceOutcome[] = [];
  const maxFailures = o.maxFailures ?? 0;
  const failures = () => outcomes.filter((x) => x.result === 'failed' || x.result === 'timeout').length;
  let aborted = false;
  const stopped = () => (aborted ||= o.signal?.aborted === true);
  try {
    for (const d of canary) {
      if (stopped()) break;
      const r = await updateOne(d);
      outcomes.push(r);
      if (r.result !== 'committed') aborted = true;
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
  } finally {
    client.off('message', onMessage);
    await client.unsubscribeAsync(fleetUpdateStateFilter(o.fleet)).catch(() => {});
  }
  return { aborted, outcomes };
}
