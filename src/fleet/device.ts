/**
 * Serving update jobs on a device's MQTT connection: subscribe to its update topic, run each
 * job through an UpdateHandler, publish every state. An agent wires it in with one call on its
 * connected client (docs/FLEET.md, "Wiring into the agent").
 */
import type { MqttClient } from 'mqtt';
import type { InstallResult } from './install.js';
import { updateStateTopic, updateTopic } from './topics.js';
import type { UpdateEvent, UpdateHandler } from './update.js';

export interface ServeUpdatesOptions {
  fleet: string;
  device: string;
  /**
   * Called once after a job committed (e.g. drain the serving pipeline and reopen the active set),
   * not again when the broker redelivers that job. Report its own errors: a rejection is dropped.
   */
  onCommitted?: (r: InstallResult) => void | Promise<void>;
  /** Every event, also for logging. */
  onEvent?: (e: UpdateEvent) => void;
  /** After each subscription to the job topic is granted (at start and after every reconnect). */
  onSubscribed?: () => void;
}

export async function serveUpdates(client: MqttClient, handler: UpdateHandler, o: ServeUpdatesOptions): Promise<{ stop: () => Promise<void> }> {
  const jobs = updateTopic(o.fleet, o.device);
  const states = updateStateTopic(o.fleet, o.device);
  const emit = (e: UpdateEvent) => {
    o.onEvent?.(e);
    client.publish(states, JSON.stringify(e), { qos: 1, retain: true });
  };
  const handled = new WeakSet<Promise<InstallResult>>();
  const onMessage = (topic: string, payload: Buffer) => {
    if (topic !== jobs) return;
    let job: unknown;
    try {
      job = JSON.parse(payload.toString('utf8'));
    } catch {
      job = null; // the handler answers `failed` BAD_MESSAGE
    }
    const run = handler.run(job, emit);
    // A redelivered job id returns the first run's promise: its commit was handled already.
    if (handled.has(run)) return;
    handled.add(run);
    run
      .then((r) => o.onCommitted?.(r), () => {}) // a failure was already reported as `failed`
      .catch(() => {}); // onCommitted's own rejection (documented above): never an unhandled rejection
  };
  // Subscribed again on every reconnect: the agent connects with resubscribe off.
  const subscribe = async () => {
    await client.subscribeAsync(jobs, { qos: 1 });
    o.onSubscribed?.();
  };
  const onConnect = () => void subscribe().catch(() => {}); // the next reconnect tries again
  client.on('message', onMessage);
  client.on('connect', onConnect);
  await subscribe();
  return {
    stop: async () => {
      client.off('message', onMessage);
      client.off('connect', onConnect);
      if (client.connected) await client.unsubscribeAsync(jobs);
    },
  };
}
