/**
 * A topic taken by a service beside the agent's queries (the fleet's update jobs): subscribed
 * now and again after every reconnect (the agent connects with a clean session and resubscribe
 * off), its messages routed to that service's handler by exact topic. `TopicLink` is all such a
 * service needs of a connection; the Agent offers one on its own connection (Agent.subscribe and
 * Agent.publish), and `topicLink(client)` makes one of a bare mqtt.js client (tools, tests).
 */
import type { IPublishPacket, MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import { refusedSubscriptions } from './topics.js';

export type TopicHandler = (payload: Buffer, packet: IPublishPacket) => void;

export interface TopicSubscription {
  /** Unsubscribes (when connected) and routes nothing more to the handler. */
  close(): Promise<void>;
}

export interface SubscribeOptions {
  qos?: 0 | 1;
  /** After each SUBACK that granted it (at start and after every reconnect). */
  onSubscribed?: () => void;
}

export interface TopicLink {
  /**
   * Subscribes `topic` (exact: no wildcards) now and after every reconnect; its messages go to
   * `handler` only. Rejects BROKER_REFUSED naming the topic when the broker refuses the first
   * SUBACK (its ACL), leaving the connection as it was; a refusal after a reconnect is tried again
   * at the next one.
   */
  subscribe(topic: string, handler: TopicHandler, o?: SubscribeOptions): Promise<TopicSubscription>;
  /** Publishes on the connection (queued by mqtt.js while it reconnects). */
  publish(topic: string, payload: string | Buffer, o: { qos: 0 | 1; retain?: boolean }): void;
}

/**
 * Subscribes `topics` (filters too); a SUBACK that refuses any of them (the broker's ACL) rejects
 * BROKER_REFUSED naming each refused topic and its reason code.
 */
export async function subscribeOrRefuse(client: MqttClient, topics: string[], qos: 0 | 1): Promise<void> {
  try {
    await client.subscribeAsync(topics, { qos });
  } catch (err) {
    const refused = refusedSubscriptions(topics, (err as { packet?: { granted?: unknown[] } }).packet?.granted);
    if (refused.length)
      throw new SetokimError(
        ErrorCodes.BROKER_REFUSED,
        `the broker refused the subscription to ${refused.join(', ')}; allow this client to subscribe to it in the broker's ACL`,
        { cause: err },
      );
    throw err;
  }
}

/**
 * Exact-topic routes on one mqtt.js client. With `listen`, each subscription also listens to the
 * client's messages itself; without, the owner of the client (the Agent) calls dispatch() first
 * for every message it receives.
 */
export class TopicRoutes implements TopicLink {
  private readonly routes = new Map<string, TopicHandler>();

  constructor(
    private readonly client: MqttClient,
    private readonly o: { listen: boolean },
  ) {}

  /** Hands a message to its topic's handler; false when no route takes the topic. */
  dispatch(topic: string, payload: Buffer, packet: IPublishPacket): boolean {
    const handler = this.routes.get(topic);
    if (!handler) return false;
    handler(payload, packet);
    return true;
  }

  async subscribe(topic: string, handler: TopicHandler, o: SubscribeOptions = {}): Promise<TopicSubscription> {
    if (/[#+]/.test(topic))
      throw new SetokimError(ErrorCodes.INTERNAL, `TopicLink.subscribe takes an exact topic, not ${topic}`);
    if (this.routes.has(topic))
      throw new SetokimError(ErrorCodes.INTERNAL, `${topic} is subscribed already on this connection`);
    const grant = async () => {
      await subscribeOrRefuse(this.client, [topic], o.qos ?? 1);
      o.onSubscribed?.();
    };
    const onConnect = () => void grant().catch(() => {}); // the next reconnect tries again
    const onMessage = (t: string, payload: Buffer, packet: IPublishPacket) =>
      void (t === topic && handler(payload, packet));
    const detach = () => {
      this.routes.delete(topic);
      this.client.off('connect', onConnect);
      if (this.o.listen) this.client.off('message', onMessage);
    };
    this.routes.set(topic, handler);
    this.client.on('connect', onConnect);
    if (this.o.listen) this.client.on('message', onMessage);
    try {
      await grant();
    } catch (err) {
      detach(); // a failed start leaves the client as it was: a retry attaches its own listeners
      throw err;
    }
    return {
      close: async () => {
        detach();
        if (this.client.connected) await this.client.unsubscribeAsync(topic);
      },
    };
  }

  publish(topic: string, payload: string | Buffer, o: { qos: 0 | 1; retain?: boolean }): void {
    this.client.publish(topic, payload, { qos: o.qos, retain: o.retain ?? false });
  }
}

/** A TopicLink on a bare client that listens to its messages itself. */
export function topicLink(client: MqttClient): TopicLink {
  return new TopicRoutes(client, { listen: true });
}
