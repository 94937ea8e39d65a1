/**
 * Serving update jobs on a device's MQTT connection: subscribe to its update topic, run each
 * job through an UpdateHandler, publish every state. An agent wires it in with one call on its
 * connected client (docs/FLEET.md, "Wiring into the agent").
 */
import type { MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { InstallResult } from './install.js';
import { refusedSubscriptions, updateStateTopic, updateTopic } from '../mqtt/topics.js';
import { hookWarning, type UpdateEvent, type UpdateHandler } from './update.js';

export interface ServeUpdatesOptions {
  fleet: string;
  device: string;
  /**
   * Called once after a job committed (e.g. drain the serving pipeline and reopen the active set),
   * not again when the broker redelivers that job. A rejection is published as the job's
   * `committed` state again with `warning` (UPDATE_HOOK_FAILED): the release stays committed.
   */
  onCommitted?: (r: InstallResult) => void | Promise<void>;
  /** Every event, also for logging. */
  onEvent?: (e: UpdateEvent) => void;
  /** After each subscription to the job topic is granted (at start and after every reconnect). */
  onSubscribed?: () => void;
}

/**
 * Subscribes to the device's job topic and serves it until stop(). A refused subscription
 * rejects (BROKER_REFUSED for a SUBACK failure code) and leaves the client's listeners as they were.
 */
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
    run.then(
      async (r) => {
        try {
          await o.onCommitted?.(r);
        } catch (err) {
          // Never an unhandled rejection, never `failed`: the release is committed and active.
          const jobId = (job as { jobId: string }).jobId; // run() resolved: the job was valid
          emit({ jobId, state: 'committed', modelSetId: r.modelSetId, release: r.release, warning: hookWarning('onCommitted', err), at: new Date().toISOString() });
        }
      },
      () => {}, // a failure was already reported as `failed`
    ).catch(() => {}); // a throwing onEvent while reporting it
  };
  // Subscribed again on every reconnect: the agent connects with resubscribe off.
  const subscribe = async () => {
    try {
      await client.subscribeAsync(jobs, { qos: 1 });
    } catch (err) {
      const [refused] = refusedSubscriptions([jobs], (err as { packet?: { granted?: unknown[] } }).packet?.granted);
      if (refused) throw new SetokimError(ErrorCodes.BROKER_REFUSED, `the broker refused the subscription to ${refused}; allow this client to subscribe to it in the broker's ACL`, { cause: err });
      throw err;
    }
    o.onSubscribed?.();
  };
  const onConnect = () => void subscribe().catch(() => {}); // the next reconnect tries again
  client.on('message', onMessage);
  client.on('connect', onConnect);
  const detach = () => {
    client.off('message', onMessage);
    client.off('connect', onConnect);
  };
  try {
    await subscribe();
  } catch (err) {
    detach(); // a failed start leaves the client as it was: a retry attaches its own listeners
    throw err;
  }
  return {
    stop: async () => {
      detach();
      if (client.connected) await client.unsubscribeAsync(jobs);
    },
  };
}
