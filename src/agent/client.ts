/**
 * The query client: sends queries to one device or a fleet and streams the replies back as an
 * async iterable. Used by `setokim query`, the demo, tests and benchmarks. MQTT 5 requests carry
 * Response Topic + Correlation Data; MQTT 3.1.1 requests carry reply_topic + correlation inside.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, type IClientPublishOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import { noDelay, WriteCoalescer } from './connection.js';
import type { QueryRequest } from '../pipeline/types.js';
import { decodeReply, decodeStatus, encodeCancel, encodeQuery } from './codec.js';
import type { AgentStatus, ReplyEvent, WireQuery } from './codec.js';
import { cancelTopic, queryTopic, replyTopicFor, TOPIC_ROOT, type Target } from '../mqtt/topics.js';
import { clientOptions, type ClientConnectOptions } from '../mqtt/connection.js';
import { redactUrl } from '../redact.js';

/** Where the broker is, and the credentials and TLS files (src/mqtt/connection.ts credentialOptions) to reach it. */
export type QueryClientOptions = ClientConnectOptions;

export interface QueryOptions {
  /** Give up (EXPIRED) after this long without the final reply; also sent as the query deadline. */
  timeoutMs?: number;
  /** MQTT 5 Message Expiry Interval: the broker drops the query if no agent takes it in time. */
  expirySeconds?: number;
  signal?: AbortSignal;
}

/** Counters that let tests prove nothing was lost or answered twice. */
export interface ClientStats {
  replies: number;
  /** Replies whose seq was already seen for the query (a QoS 1 redelivery). */
  duplicates: number;
  /** Replies for no open query (after its end, or never asked). */
  strays: number;
}

/** A single-consumer queue that ends with the stream. */
class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting?: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void };
  private ended = false;
  private failure?: unknown;

  push(item: T): void {
    if (this.ended) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: item, done: false });
    } else this.items.push(item);
  }

  end(failure?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = failure;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      if (failure) w.reject(failure);
      else w.resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.ended)
          return this.failure ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
      },
    };
  }
}

interface Pending {
  channel: Channel<ReplyEvent>;
  lastSeq: number;
  timer?: NodeJS.Timeout;
  cleanup: () => void;
}

export interface QueryClientEvents {
  ready: [{ reconnect: boolean }];
  offline: [];
}

export class QueryClient extends EventEmitter<QueryClientEvents> {
  readonly stats: ClientStats = { replies: 0, duplicates: 0, strays: 0 };
  readonly replyTopic: string;
  private readonly pending = new Map<string, Pending>();
  private connects = 0;
  /** Correlation keys: this client's random prefix and a count (unique per client, no random bytes per query). */
  private readonly keyPrefix = randomBytes(4);
  private keys = 0;
  /** The PUBACKs of replies that arrive together leave together, once the last of them is handled. */
  private readonly acks: WriteCoalescer;

  private constructor(
    private readonly client: MqttClient,
    readonly protocolVersion: 4 | 5,
    clientId: string,
  ) {
    super();
    this.replyTopic = replyTopicFor(clientId);
    this.acks = new WriteCoalescer(client);
    client.on('message', (topic, payload, packet) => this.onReply(topic, payload, packet));
    client.on('connect', () => noDelay(client));
    client.on('offline', () => this.emit('offline'));
  }

  /** Connects and subscribes to this client's reply topic (again after every reconnect). */
  static async connect(opts: QueryClientOptions): Promise<QueryClient> {
    const protocolVersion = opts.protocolVersion ?? 5;
    const clientId = opts.clientId ?? `setokim-q-${randomBytes(6).toString('hex')}`;
    const mqttClient = connect(opts.url, { ...clientOptions(opts, clientId), resubscribe: false });
    const qc = new QueryClient(mqttClient, protocolVersion, clientId);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => {
        void mqttClient.endAsync(true);
        const why = `cannot reach the broker ${redactUrl(opts.url)}: ${err.message}; check --broker and that it runs`;
        reject(new SetokimError(ErrorCodes.BAD_ARGUMENT, why));
      };
      const timer = setTimeout(() => fail(new Error('no answer within 10 s')), 10_000);
      mqttClient.once('error', (err) => {
        if (qc.connects === 0) {
          clearTimeout(timer);
          fail(err);
        }
      });
      mqttClient.on('connect', () => {
        mqttClient.subscribeAsync(qc.replyTopic, { qos: 1 }).then(
          () => {
            clearTimeout(timer);
            qc.emit('ready', { reconnect: qc.connects++ > 0 });
            resolve();
          },
          () => undefined, // retried on the next connect
        );
      });
    });
    return qc;
  }

  /** The raw connection, for tests and tools that publish by hand. */
  get mqtt(): MqttClient {
    return this.client;
  }

  /** Sends a query and streams its replies; the stream ends after done or error. */
  query(target: Target, request: QueryRequest, opts: QueryOptions = {}): AsyncIterable<ReplyEvent> {
    const key = this.nextKey();
    // Built field by field: object spreads cost more than the encoding on this path.
    const wire: WireQuery = Object.assign({}, request);
    if (opts.timeoutMs) wire.deadlineUnixMs = Date.now() + opts.timeoutMs;
    if (this.protocolVersion === 4) {
      wire.replyTopic = this.replyTopic;
      wire.correlation = key;
    }
    return this.send(queryTopic(target), encodeQuery(wire), opts, key);
  }

  /**
   * Publishes any payload as a query with this client's reply address and streams whatever comes
   * back: how tests send malformed messages. On MQTT 3.1.1 only payloads that carry their own
   * reply_topic can be answered.
   */
  sendRaw(topic: string, payload: Uint8Array, opts: QueryOptions & { key?: Buffer } = {}): AsyncIterable<ReplyEvent> {
    return this.send(topic, payload, opts, opts.key ?? this.nextKey());
  }

  private nextKey(): Buffer {
    const key = Buffer.allocUnsafe(8);
    this.keyPrefix.copy(key);
    key.writeUInt32BE((this.keys = (this.keys + 1) >>> 0), 4);
    return key;
  }

  private send(topic: string, payload: Uint8Array, opts: QueryOptions, key: Buffer): AsyncIterable<ReplyEvent> {
    const keyHex = key.toString('hex');
    const channel = new Channel<ReplyEvent>();
    const pending: Pending = {
      channel,
      lastSeq: -1,
      cleanup: () => {
        if (pending.timer) clearTimeout(pending.timer);
        opts.signal?.removeEventListener('abort', onAbort);
        this.pending.delete(keyHex);
      },
    };
    const onAbort = (): void => {
      pending.cleanup();
      channel.end(new SetokimError(ErrorCodes.CANCELLED, 'the query was cancelled'));
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.timeoutMs) {
      pending.timer = setTimeout(() => {
        pending.cleanup();
        channel.end(
          new SetokimError(
            ErrorCodes.EXPIRED,
            `no final answer within ${opts.timeoutMs} ms; is an agent serving ${topic}? (check its status topic)`,
          ),
        );
      }, opts.timeoutMs);
    }
    this.pending.set(keyHex, pending);
    const options: IClientPublishOptions = { qos: 1 };
    if (this.protocolVersion === 5) {
      options.properties = { responseTopic: this.replyTopic, correlationData: key };
      if (opts.expirySeconds) options.properties.messageExpiryInterval = opts.expirySeconds;
    }
    this.client.publish(topic, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), options, (err) => {
      if (err) {
        pending.cleanup();
        channel.end(new SetokimError(ErrorCodes.INTERNAL, `publishing the query failed: ${err.message}`));
      }
    });
    return channel;
  }

  /** Asks the agent(s) to stop a query; its stream then ends with CANCELLED. */
  async cancel(target: Target, id: string): Promise<void> {
    await this.client.publishAsync(cancelTopic(target), Buffer.from(encodeCancel(id)), { qos: 1 });
  }

  /** The retained status of a device (undefined if none arrives within waitMs). */
  async status(fleet: string, device: string, waitMs = 2000): Promise<AgentStatus | undefined> {
    const topic = `${TOPIC_ROOT}/${fleet}/${device}/status`;
    return new Promise((resolve) => {
      const onMessage = (t: string, payload: Buffer): void => {
        if (t !== topic) return;
        // Anyone may publish here: a payload that is not a Status is ignored, never thrown into mqtt.js.
        let status: AgentStatus;
        try {
          status = decodeStatus(payload);
        } catch {
          return;
        }
        done(status);
      };
      const done = (s: AgentStatus | undefined): void => {
        clearTimeout(timer);
        this.client.off('message', onMessage);
        void this.client.unsubscribeAsync(topic).catch(() => undefined);
        resolve(s);
      };
      const timer = setTimeout(() => done(undefined), waitMs);
      this.client.on('message', onMessage);
      void this.client.subscribeAsync(topic, { qos: 1 });
    });
  }

  private onReply(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (topic !== this.replyTopic) return;
    this.acks.hold();
    let reply: ReplyEvent;
    try {
      reply = decodeReply(payload);
    } catch {
      this.stats.strays++;
      return;
    }
    this.stats.replies++;
    const key = packet.properties?.correlationData ?? reply.correlation;
    const keyHex = key && Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('hex');
    const pending = keyHex ? this.pending.get(keyHex) : undefined;
    if (!pending) {
      this.stats.strays++;
      return;
    }
    if (reply.seq <= pending.lastSeq) {
      this.stats.duplicates++;
      return;
    }
    pending.lastSeq = reply.seq;
    pending.channel.push(reply);
    if (reply.type === 'done' || reply.type === 'error') {
      // Its PUBACK is written later in this tick: let it go with the others now, not after the caller's next step.
      process.nextTick(() => this.acks.release());
      pending.cleanup();
      pending.channel.end();
    }
  }

  async close(): Promise<void> {
    for (const p of [...this.pending.values()]) {
      p.cleanup();
      p.channel.end(new SetokimError(ErrorCodes.CANCELLED, 'the client was closed'));
    }
    await this.client.endAsync();
  }
}

export function newQueryId(): string {
  return randomUUID();
}
