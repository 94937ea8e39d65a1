/**
 * `setokim fleet status`: what every device of a fleet last told the broker, from its retained
 * messages (docs/FLEET.md "Fleet status"): the status an agent keeps (online, model set, backend,
 * target, version; protobuf, codec.ts) and its update job's latest state (state, release, error;
 * JSON, src/fleet/wire.ts). Subscribes to both fleet filters, reads the retained messages until
 * none has come for `quietMs` (a broker sends them right after the subscription; MQTT has no
 * end-of-retained marker), then unsubscribes. A message that does not decode is counted, not fatal.
 */
import type { MqttClient } from 'mqtt';
import { UpdateStateSchema, type UpdateEvent } from '../fleet/wire.js';
import { subscribeOrRefuse } from '../mqtt/subscriptions.js';
import { deviceOfStateTopic, fleetStatusFilter, fleetUpdateStateFilter } from '../mqtt/topics.js';
import { decodeStatus, type AgentStatus } from './codec.js';

/** One device as the fleet sees it; null where it said nothing of that kind. */
export interface DeviceRow {
  device: string;
  status: Pick<AgentStatus, 'online' | 'modelSetId' | 'backend' | 'version' | 'updatedUnixMs' | 'target'> | null;
  update: Pick<
    UpdateEvent,
    'jobId' | 'state' | 'code' | 'message' | 'release' | 'modelSetId' | 'warning' | 'at'
  > | null;
}

export interface FleetStatus {
  fleet: string;
  devices: DeviceRow[];
  /** Retained messages that did not decode (another version's, or not ours). */
  unreadable: number;
}

export interface FleetStatusOptions {
  fleet: string;
  /** Stop once no message came for this long (default 500 ms). */
  quietMs?: number;
  /** Stop after this long whatever comes (default 10 s). */
  maxWaitMs?: number;
}

/** Collects the retained status and update state of every device of a fleet (see the file comment). */
export async function collectFleetStatus(client: MqttClient, o: FleetStatusOptions): Promise<FleetStatus> {
  const filters = [fleetStatusFilter(o.fleet), fleetUpdateStateFilter(o.fleet)];
  const rows = new Map<string, DeviceRow>();
  const row = (device: string) =>
    rows.get(device) ?? rows.set(device, { device, status: null, update: null }).get(device)!;
  let unreadable = 0;
  let heard: () => void = () => undefined;
  const onMessage = (topic: string, payload: Buffer) => {
    const device = deviceOfStateTopic(topic);
    if (!device) return;
    if (topic.endsWith('/status')) {
      try {
        const s = decodeStatus(payload);
        const { online, modelSetId, backend, version, updatedUnixMs, target } = s;
        row(device).status = { online, modelSetId, backend, version, updatedUnixMs, ...(target ? { target } : {}) };
      } catch {
        unreadable++;
      }
    } else {
      let json: unknown;
      try {
        json = JSON.parse(payload.toString('utf8'));
      } catch {
        json = null;
      }
      const e = UpdateStateSchema.safeParse(json);
      if (!e.success) unreadable++;
      else {
        const { jobId, state, code, message, release, modelSetId, warning, at } = e.data;
        row(device).update = { jobId, state, at, ...strip({ code, message, release, modelSetId, warning }) };
      }
    }
    heard();
  };
  client.on('message', onMessage);
  try {
    await subscribeOrRefuse(client, filters, 1);
    await quiet(o.quietMs ?? 500, o.maxWaitMs ?? 10_000, (f) => (heard = f));
    await client.unsubscribeAsync(filters);
  } finally {
    client.off('message', onMessage);
  }
  const devices = [...rows.values()].sort((a, b) => a.device.localeCompare(b.device));
  return { fleet: o.fleet, devices, unreadable };
}

const strip = <T extends Record<string, unknown>>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/** Resolves once `quietMs` passed without a call of the function handed to `onHeard`, or after `maxMs`. */
function quiet(quietMs: number, maxMs: number, onHeard: (f: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    let timer = setTimeout(done, quietMs);
    const cap = setTimeout(done, maxMs);
    function done() {
      clearTimeout(timer);
      clearTimeout(cap);
      onHeard(() => undefined);
      resolve();
    }
    onHeard(() => {
      clearTimeout(timer);
      timer = setTimeout(done, quietMs);
    });
  });
}

/** The table `setokim fleet status` prints: one line per device. */
export function formatFleetStatus(s: FleetStatus, now = Date.now()): string {
  const head = ['device', 'online', 'release', 'model set', 'target', 'backend', 'update', 'last error'];
  const lines = s.devices.map((d) => {
    const st = d.status;
    const u = d.update;
    const age = st ? `${Math.max(0, Math.round((now - st.updatedUnixMs) / 1000))} s ago` : '';
    const error = u?.code
      ? `${u.code}: ${u.message ?? ''}`
      : u?.warning
        ? `warning ${u.warning.code}: ${u.warning.message}`
        : '-';
    return [
      d.device,
      st ? `${st.online ? 'yes' : 'no'} (${age})` : '?',
      u?.release !== undefined ? String(u.release) : '-',
      st?.modelSetId || '-',
      st?.target ?? '?',
      st?.backend || '-',
      u ? `${u.state} (${u.at})` : '-',
      error,
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  const tail = s.unreadable ? [`(${s.unreadable} retained messages did not decode)`] : [];
  const none = s.devices.length ? [] : [`no device of fleet ${s.fleet} has a retained status or update state`];
  return [fmt(head), ...lines.map(fmt), ...none, ...tail].join('\n');
}
