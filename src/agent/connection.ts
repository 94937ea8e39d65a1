/**
 * The agent's one MQTT connection, as named steps: the connect options (Last Will, credentials,
 * the largest packet the agent takes), reconnecting with exponential backoff, subscribing again on
 * every connect (a restarted broker has forgotten us), routing each message by its exact topic, and
 * the two steps of a stop (take no more queries; publish offline and disconnect). The broker's URL
 * is only ever logged redacted (no user info, no query string).
 */
import { connect, type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import { credentialOptions } from '../mqtt/connection.js';
import { refusedSubscriptions, type DeviceTopics } from '../mqtt/topics.js';
import { redactUrl } from '../redact.js';
import type { Logger } from './agent.js';
import { maxQueryPacketBytes } from './codec.js';
import type { AgentConfig } from './config.js';
import type { AgentMetrics } from './metrics.js';

/** How long stop() waits for the broker at each step (unsubscribe; offline status and DISCONNECT). */
export const BROKER_STOP_WAIT_MS = 2_000;

/** CONNACK reason codes that retrying will not change: bad user name or password, not authorised. */
const REFUSED_CREDENTIALS = new Set([4, 5, 134, 135]);

/** What `p` resolves to, 'failed' if it rejects, or 'timeout' after ms. */
export function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout' | 'failed'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  return Promise.race([p.catch(() => 'failed' as const), late]).finally(() => clearTimeout(timer));
}

/** Replies are small and streamed: without this, Nagle + delayed ACK add ~40 ms per round trip. */
export function noDelay(client: MqttClient): void {
  (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
}

/**
 * Holds what a client writes until release() or, at the latest, the end of this turn of the event
 * loop: the PUBACK of a message and what its handler publishes at once (a refusal, or an answer that
 * is ready) leave in one TCP segment instead of one each. Nothing waits beyond the current turn.
 */
export class WriteCoalescer {
  private held: Array<{ uncork(): void }> = [];

  constructor(private readonly client: MqttClient) {}

  hold(): void {
    const stream = this.client.stream as { cork?: () => void; uncork?: () => void; writable?: boolean } | undefined;
    if (!stream?.cork || !stream.uncork || !stream.writable) return;
    stream.cork();
    this.held.push(stream as { uncork(): void });
    if (this.held.length === 1) setImmediate(() => this.release());
  }

  /** Writes what was held (what is written in this same tick joins it). */
  release(): void {
    const held = this.held;
    this.held = [];
    for (const stream of held) stream.uncork();
  }

  /**
   * Writes what was held and every packet written so far, now. mqtt-packet corks the stream for each
   * packet and uncorks it on the next tick, which Node runs only after every microtask queued by then
   * (a finished query's bookkeeping): this undoes those corks at once (their later uncork does nothing
   * on an uncorked stream). Call between packets only, as any JavaScript outside mqtt.js is.
   */
  releaseNow(): void {
    this.release();
    const stream = this.client.stream as { writableCorked?: number; uncork?: () => void } | undefined;
    while (stream?.uncork && stream.writableCorked) stream.uncork();
  }
}

export type Route = (payload: Buffer, packet: IPublishPacket) => void;

/** A filter the agent subscribes to, the topic its messages arrive on, and what they are. */
export interface Subscription {
  filter: string;
  topic: string;
  kind: 'query' | 'cancel';
}

/** Every filter the agent serves: its device's query and cancel topics, and the fleet's as configured. */
export function agentSubscriptions(
  t: DeviceTopics,
  fleetSubscription: AgentConfig['fleetSubscription'],
): Subscription[] {
  const subs: Subscription[] = [
    { filter: t.query, topic: t.query, kind: 'query' },
    { filter: t.cancel, topic: t.cancel, kind: 'cancel' },
    { filter: t.fleetCancel, topic: t.fleetCancel, kind: 'cancel' },
  ];
  // A shared subscription's messages arrive on the topic they were published to.
  if (fleetSubscription === 'shared') subs.push({ filter: t.sharedFleetQuery, topic: t.fleetQuery, kind: 'query' });
  if (fleetSubscription === 'plain') subs.push({ filter: t.fleetQuery, topic: t.fleetQuery, kind: 'query' });
  return subs;
}

export interface AgentConnectionOptions {
  config: AgentConfig;
  topics: DeviceTopics;
  subscriptions: Subscription[];
  /** One handler per kind; a message on any other topic is not the agent's (another service's, e.g. update jobs). */
  handlers: Record<Subscription['kind'], Route>;
  /** The Last Will's payload: the status with online = false. */
  will: () => Buffer;
  log: Logger;
  metrics: AgentMetrics;
  /** Connected (and subscribed, unless stopping). */
  onConnected: (e: { reconnect: boolean; stopping: boolean }) => void;
  onOffline: () => void;
  /** A message on any other topic: a service's beside the queries (Agent.subscribe), or nobody's. */
  other?: (topic: string, payload: Buffer, packet: IPublishPacket) => void;
}

export class AgentConnection {
  readonly client: MqttClient;
  private readonly url: string;
  private readonly routes: Map<string, Route>;
  private readonly writes: WriteCoalescer;
  /** True while a query's or cancel's handler runs (mqtt.js writes its PUBACK after it returns). */
  private routing = false;
  private backoffMs: number;
  private connects = 0;
  private stopping = false;
  /** Settles start(): the first connect and subscription, or the error that retrying will not fix. */
  private first?: { resolve: () => void; reject: (err: Error) => void };

  constructor(private readonly o: AgentConnectionOptions) {
    const b = o.config.broker;
    this.url = redactUrl(b.url);
    this.backoffMs = b.reconnectMinMs;
    this.routes = new Map(o.subscriptions.map((s) => [s.topic, o.handlers[s.kind]]));
    this.client = connect(b.url, this.options());
    this.writes = new WriteCoalescer(this.client);
    this.client.on('message', (topic, payload, packet) => this.route(topic, payload, packet));
    this.client.on('connect', () => this.onConnect());
    this.client.on('close', () => this.onClose());
    this.client.on('offline', () => this.onOffline());
    this.client.on('error', (err: Error & { code?: number }) => this.onError(err));
  }

  /** Resolves once connected and subscribed (it keeps retrying while the broker is unreachable). */
  started(): Promise<void> {
    return new Promise((resolve, reject) => (this.first = { resolve, reject }));
  }

  /** The MQTT options: who we are, the Last Will, credentials and TLS, and the largest packet we take. */
  private options(): IClientOptions {
    const { config } = this.o;
    const b = config.broker;
    return {
      clientId: b.clientId ?? `setokim-${config.fleet}-${config.device}`,
      clean: true,
      keepalive: b.keepaliveS,
      reconnectPeriod: b.reconnectMinMs,
      connectTimeout: 10_000,
      resubscribe: false, // we subscribe on every connect ourselves
      will: { topic: this.o.topics.status, payload: this.o.will(), qos: 1, retain: true },
      ...credentialOptions(b),
      // MQTT 5: the broker drops a larger message instead of sending it (3.1.1 has no such limit).
      ...(b.protocolVersion === 5 ? { properties: { maximumPacketSize: maxQueryPacketBytes(config.limits) } } : {}),
    };
  }

  /**
   * Messages by exact topic: the query topics' are queries, the cancel topics' cancels; anything else
   * that arrives on this connection (an update job, a stream request) goes to `other`, never to a query.
   */
  private route(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const handler = this.routes.get(topic);
    if (!handler) return void this.o.other?.(topic, payload, packet);
    this.writes.hold();
    this.routing = true;
    try {
      handler(payload, packet);
    } finally {
      this.routing = false;
    }
  }

  private onConnect(): void {
    noDelay(this.client);
    if (this.stopping) {
      // A reconnect while stop() drains must not take work again (it unsubscribed): say offline only.
      this.o.metrics.connected.set(1);
      this.o.onConnected({ reconnect: true, stopping: true });
      this.first?.resolve();
      return;
    }
    this.subscribe().then(
      () => this.onSubscribed(),
      (err: Error) => {
        // A subscription the broker refuses (an ACL) will be refused again: fail start() with it.
        if (this.connects === 0 && err instanceof SetokimError) this.first?.reject(err);
        else this.o.log('error', `subscribing failed: ${err.message}; will retry on the next connect`);
      },
    );
  }

  private onSubscribed(): void {
    const { config } = this.o;
    this.backoffMs = config.broker.reconnectMinMs;
    this.client.options.reconnectPeriod = config.broker.reconnectMinMs;
    this.o.metrics.connected.set(1);
    const reconnect = this.connects++ > 0;
    this.o.log('info', `${reconnect ? 're' : ''}connected to ${this.url} as ${config.fleet}/${config.device}`);
    this.o.onConnected({ reconnect, stopping: false });
    this.first?.resolve();
  }

  /** Subscribes to every topic the agent serves; a refused one is a BROKER_REFUSED naming it. */
  private subscribe(): Promise<void> {
    const filters = this.o.subscriptions.map((s) => s.filter);
    const request = Object.fromEntries(filters.map((f) => [f, { qos: 1 as const }]));
    return new Promise((resolve, reject) => {
      // The callback, not subscribeAsync: its error keeps only the last reason code, not which topic.
      this.client.subscribe(request, (err, _granted, packet) => {
        const refused = refusedSubscriptions(filters, (packet as { granted?: unknown[] } | undefined)?.granted);
        if (refused.length) reject(this.refusal(refused));
        else if (err) reject(err);
        else resolve();
      });
    });
  }

  private refusal(refused: string[]): SetokimError {
    const shared = this.o.config.fleetSubscription === 'shared' && refused.some((r) => r.startsWith('$share/'));
    return new SetokimError(
      ErrorCodes.BROKER_REFUSED,
      `the broker ${this.url} refused the subscription to ${refused.join(', ')}; ` +
        `allow this client to subscribe to ${refused.length > 1 ? 'these topics' : 'it'} in the broker's ACL` +
        (shared ? ', or set fleetSubscription to plain (a broker without shared subscriptions) or off' : ''),
    );
  }

  private onClose(): void {
    this.o.metrics.connected.set(0);
    if (this.stopping) return;
    // Exponential backoff with jitter; mqtt.js reads reconnectPeriod each time it schedules.
    this.client.options.reconnectPeriod = Math.round(this.backoffMs * (0.75 + Math.random() * 0.5));
    this.backoffMs = Math.min(this.backoffMs * 2, this.o.config.broker.reconnectMaxMs);
  }

  private onOffline(): void {
    this.o.log('warn', `lost the broker ${this.url}; reconnecting with backoff`);
    this.o.onOffline();
  }

  private onError(err: Error & { code?: number }): void {
    this.o.log('warn', `mqtt: ${err.message}`);
    // Refused credentials will not get better by retrying: fail start() with a clear message.
    if (this.connects === 0 && err.code !== undefined && REFUSED_CREDENTIALS.has(err.code)) {
      this.first?.reject(
        new SetokimError(
          ErrorCodes.BAD_CONFIG,
          `the broker ${this.url} refused the credentials (${err.message}); ` +
            'check broker.username, broker.password or the client certificate',
        ),
      );
    }
  }

  /**
   * An answer is complete: inside a message's handler (a refusal) what is held is written once the
   * message's PUBACK, which mqtt.js writes after the handler, has joined it; later (a pipeline's
   * last event) at once, ahead of the query's bookkeeping.
   */
  flush(): void {
    if (this.routing) process.nextTick(() => this.writes.release());
    else this.writes.releaseNow();
  }

  /** The Last Will for later reconnects (the status names what is served now). */
  set will(payload: Buffer) {
    this.client.options.will = { ...this.client.options.will!, payload };
  }

  /** Stop, step 1: no more queries (the broker sends the fleet's work elsewhere); cancels still arrive. */
  async takeNoWork(): Promise<void> {
    this.stopping = true;
    if (!this.client.connected) return;
    const queries = this.o.subscriptions.filter((s) => s.kind === 'query').map((s) => s.filter);
    await within(this.client.unsubscribeAsync(queries), BROKER_STOP_WAIT_MS);
  }

  /**
   * Stop, step 2: `goodbye` (the offline status) and a clean DISCONNECT when the broker answers within
   * BROKER_STOP_WAIT_MS; otherwise drop the connection (and the replies still waiting for it): the
   * broker then publishes the Last Will, the same status, once it notices the connection is gone.
   * True when the offline status went out.
   */
  async close(goodbye: () => Promise<void>): Promise<boolean> {
    this.stopping = true;
    const client = this.client;
    const outcome = client.connected
      ? await within(
          goodbye().then(() => client.endAsync()),
          BROKER_STOP_WAIT_MS,
        )
      : 'timeout';
    if (outcome !== 'timeout' && outcome !== 'failed') return true;
    this.o.log(
      'warn',
      `the broker ${this.url} is unreachable: could not publish offline; ` +
        `its Last Will marks ${this.o.config.device} offline`,
    );
    const ended = client.endAsync(true); // resolves at once when a clean end is already under way...
    client.stream?.destroy(); // ...which this unblocks: it waited for a broker that does not answer
    await within(ended, BROKER_STOP_WAIT_MS);
    return false;
  }

  /** A failed start: drop everything at once, so the process can exit with the error. */
  async abort(): Promise<void> {
    this.stopping = true;
    await this.client.endAsync(true).catch(() => undefined);
  }
}
