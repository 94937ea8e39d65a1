/**
 * The stream client: starts video streams on agents and reads their events (docs/STREAMS.md).
 * It renews each stream's lease while it runs (every third of the lease the agent granted), stops
 * its streams when closed, and leaves a Last Will on setokim/v1/<fleet>/stream/stop naming itself,
 * so that if it vanishes every agent stops its streams: MQTT 5 delays the will by `willDelayS`
 * (a reconnect within it keeps the streams), MQTT 3.1.1 sends it at once; the lease covers the rest.
 */
import { randomBytes } from 'node:crypto';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import { clientOptions } from '../mqtt/connection.js';
import { fleetStreamStopTopic, replyTopicFor, streamTopics } from '../mqtt/topics.js';
import { redactUrl } from '../redact.js';
import { EventChannel } from '../pipeline/channel.js';
import { noDelay } from './connection.js';
import type { QueryClientOptions } from './client.js';
import {
  decodeStreamEvent,
  encodeStreamControl,
  encodeStreamStart,
  type StreamReply,
  type StreamStartInput,
} from './stream-codec.js';

export interface StreamClientOptions extends QueryClientOptions {
  fleet: string;
  /** MQTT 5: seconds the broker waits before publishing the will (a reconnect within it keeps the streams). */
  willDelayS?: number;
}

export interface StreamHandle {
  readonly id: string;
  /** The stream's events, in order; ends after `ended` (or a refusing `error`). */
  readonly events: AsyncIterable<StreamReply>;
  /** Asks the agent to stop it; the events end with `ended`. */
  stop(): Promise<void>;
}

interface Open {
  device: string;
  channel: EventChannel<StreamReply>;
  lastSeq: number;
  renew?: NodeJS.Timeout;
}

export class StreamClient {
  readonly clientId: string;
  readonly replyTopic: string;
  private readonly open = new Map<string, Open>();

  private constructor(
    private readonly client: MqttClient,
    private readonly fleet: string,
    clientId: string,
  ) {
    this.clientId = clientId;
    this.replyTopic = replyTopicFor(clientId);
    client.on('message', (topic, payload) => this.onEvent(topic, payload));
    client.on('connect', () => noDelay(client));
    // The connection ended for good (closed here, or by whoever holds `mqtt`): no event can arrive
    // any more, so end every open stream's events and stop renewing.
    client.on('end', () => {
      for (const [id, o] of this.open) this.finish(id, o);
    });
  }

  static async connect(o: StreamClientOptions): Promise<StreamClient> {
    const protocolVersion = o.protocolVersion ?? 5;
    const clientId = o.clientId ?? `setokim-s-${randomBytes(6).toString('hex')}`;
    const willDelayS = o.willDelayS ?? 5;
    const options: IClientOptions = {
      ...clientOptions(o, clientId),
      will: {
        topic: fleetStreamStopTopic(o.fleet),
        payload: Buffer.from(encodeStreamControl({ owner: clientId })),
        qos: 1,
        retain: false,
        ...(protocolVersion === 5 ? { properties: { willDelayInterval: willDelayS } } : {}),
      },
      // The will waits for the session's end: keep the session as long as the will delay.
      ...(protocolVersion === 5 ? { properties: { sessionExpiryInterval: willDelayS } } : {}),
    };
    const client = connect(o.url, options);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => {
        clearTimeout(timer);
        void client.endAsync(true);
        reject(
          new SetokimError(
            ErrorCodes.BAD_ARGUMENT,
            `cannot reach the broker ${redactUrl(o.url)}: ${err.message}; check the URL and that the broker is running`,
          ),
        );
      };
      const timer = setTimeout(() => fail(new Error('no answer within 10 s')), 10_000);
      client.once('error', fail);
      client.once('connect', () => {
        clearTimeout(timer);
        client.off('error', fail);
        resolve();
      });
    });
    const sc = new StreamClient(client, o.fleet, clientId);
    await client.subscribeAsync(sc.replyTopic, { qos: 1 });
    client.on('connect', () => void client.subscribeAsync(sc.replyTopic, { qos: 1 }).catch(() => undefined));
    return sc;
  }

  /** The underlying connection (tests cut it to play a client that vanishes). */
  get mqtt(): MqttClient {
    return this.client;
  }

  /** Starts a stream on a device; its events arrive on the handle. */
  async start(device: string, start: StreamStartInput): Promise<StreamHandle> {
    if (this.open.has(start.id))
      throw new SetokimError(ErrorCodes.DUPLICATE, `stream ${start.id} is open on this client already`);
    const channel = new EventChannel<StreamReply>();
    this.open.set(start.id, { device, channel, lastSeq: -1 });
    const v5 = this.client.options.protocolVersion === 5;
    const payload = encodeStreamStart({
      ...start,
      owner: this.clientId,
      ...(v5 ? {} : { replyTopic: this.replyTopic }),
    });
    await this.client.publishAsync(streamTopics(this.fleet, device).start, Buffer.from(payload), {
      qos: 1,
      ...(v5 ? { properties: { responseTopic: this.replyTopic } } : {}),
    });
    return { id: start.id, events: channel, stop: () => this.stop(start.id) };
  }

  async stop(id: string): Promise<void> {
    const o = this.open.get(id);
    if (!o) return;
    await this.client.publishAsync(streamTopics(this.fleet, o.device).stop, Buffer.from(encodeStreamControl({ id })), {
      qos: 1,
    });
  }

  /** Renews one stream's lease now (done on a timer while it runs). */
  async renew(id: string): Promise<void> {
    const o = this.open.get(id);
    if (o)
      await this.client.publishAsync(
        streamTopics(this.fleet, o.device).renew,
        Buffer.from(encodeStreamControl({ id })),
        { qos: 1 },
      );
  }

  /** Stops every open stream and disconnects (cleanly: no will). */
  async close(): Promise<void> {
    await Promise.all([...this.open.keys()].map((id) => this.stop(id).catch(() => undefined)));
    for (const [id, o] of this.open) this.finish(id, o);
    await this.client.endAsync();
  }

  private onEvent(topic: string, payload: Buffer): void {
    if (topic !== this.replyTopic) return;
    let e: StreamReply;
    try {
      e = decodeStreamEvent(payload);
    } catch {
      return; // not a stream event (this topic is this client's alone)
    }
    const o = this.open.get(e.id);
    if (!o || e.seq <= o.lastSeq) return; // unknown, or a QoS 1 redelivery
    o.lastSeq = e.seq;
    o.channel.push(e);
    if (e.type === 'started') {
      const every = Math.max(200, Math.floor(e.leaseMs / 3));
      o.renew = setInterval(() => void this.renew(e.id).catch(() => undefined), every);
    }
    if (e.type === 'ended' || (e.type === 'error' && e.fatal && e.seq === 0)) this.finish(e.id, o);
  }

  private finish(id: string, o: Open): void {
    clearInterval(o.renew);
    o.channel.end();
    this.open.delete(id);
  }
}
