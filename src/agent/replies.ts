/**
 * Where and how answers go. An MQTT 5 request carries a Response Topic and Correlation Data in its
 * properties; an MQTT 3.1.1 request carries reply_topic (and optional correlation) in the payload.
 * Each event is one QoS 1 message to that topic; MQTT keeps one publisher's messages on one topic
 * in order, and `seq` lets a client check it. An agent publishes replies only under
 * setokim/v1/replies/ and to the filters it is configured with (ReplyTopics): a reply topic is
 * where the agent writes with its own broker permissions, so a client must not choose it freely.
 */
import type { IClientPublishOptions, IPublishPacket, MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { PipelineEvent } from '../pipeline/types.js';
import { encodeReply, MAX_CORRELATION_BYTES, type ReplyMeta, type Salvage } from './codec.js';
import { isSafeReplyTopic, REPLY_FILTER, topicMatches } from '../mqtt/topics.js';

/** How many reply topics' answers ReplyTopics keeps (at most 1 KiB each). */
const RECENT_REPLY_TOPICS = 256;

/** The topics this agent publishes replies to: setokim/v1/replies/# and its configured replyTopics. */
export class ReplyTopics {
  private readonly filters: readonly string[];
  /** Answers for recent topics: a client sends every query with the same reply topic. */
  private readonly recent = new Map<string, boolean>();

  constructor(extra: readonly string[] = []) {
    this.filters = [REPLY_FILTER, ...extra];
  }

  allows(topic: string): boolean {
    let allowed = this.recent.get(topic);
    if (allowed === undefined) {
      allowed = isSafeReplyTopic(topic) && this.filters.some((f) => topicMatches(f, topic));
      if (this.recent.size >= RECENT_REPLY_TOPICS) this.recent.clear();
      this.recent.set(topic, allowed);
    }
    return allowed;
  }

  toString(): string {
    return this.filters.join(', ');
  }
}

export interface ReplyAddress {
  topic: string;
  /** MQTT 5 Correlation Data, returned as the same property. */
  correlationData?: Buffer;
  /** The 3.1.1 stand-in, returned inside the Reply. */
  correlation?: Uint8Array;
}

/** A reply address (with what is wrong with the request's, if anything), or why there is none. */
export type Addressing = { address: ReplyAddress; problem?: SetokimError } | { address?: undefined; reason: string };

/** A client's text in a log line or message: quoted, and no longer than a line. */
const quoted = (s: string): string => JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}...` : s);

/**
 * The reply address of a request; an allowed MQTT 5 Response Topic wins over the payload's. Correlation
 * Data longer than the 3.1.1 field may be is a BAD_MESSAGE, answered without it (never echoed).
 */
export function replyAddress(packet: IPublishPacket, fromPayload: Salvage, topics: ReplyTopics): Addressing {
  const props = packet.properties;
  const responseTopic = props?.responseTopic;
  const at = (topic: string): ReplyAddress => {
    const address: ReplyAddress = { topic };
    if (fromPayload.correlation) address.correlation = fromPayload.correlation;
    return address;
  };
  if (responseTopic && topics.allows(responseTopic)) {
    const address = at(responseTopic);
    const data = props.correlationData;
    if (data && data.length > MAX_CORRELATION_BYTES) {
      const why = `the Correlation Data is ${data.length} bytes; at most ${MAX_CORRELATION_BYTES} (as correlation)`;
      return { address, problem: new SetokimError(ErrorCodes.BAD_MESSAGE, why) };
    }
    if (data) address.correlationData = data;
    return { address };
  }
  if (fromPayload.replyTopic) return { address: at(fromPayload.replyTopic) };
  if (responseTopic) {
    return { reason: `the Response Topic ${quoted(responseTopic)} is not a reply topic of this agent (${topics})` };
  }
  return { reason: 'the query has no reply address (MQTT 5 Response Topic or reply_topic)' };
}

/** Publishes the events of one query in order, numbering them. */
export class ReplyStream {
  private readonly meta: ReplyMeta;
  private readonly options: IClientPublishOptions;
  private over = false;

  /** `ended` is called once the last event (done or error) has been handed to the client library. */
  constructor(
    private readonly client: MqttClient,
    private readonly address: ReplyAddress,
    device: string,
    private readonly ended?: () => void,
  ) {
    this.meta = { seq: 0, device };
    if (address.correlation) this.meta.correlation = address.correlation;
    this.options = { qos: 1 };
    if (address.correlationData) this.options.properties = { correlationData: address.correlationData };
  }

  get finished(): boolean {
    return this.over;
  }

  /**
   * Sends one event. Does not wait for the broker's PUBACK: while the broker is away mqtt.js keeps
   * QoS 1 messages in its outgoing store and sends them after reconnecting.
   */
  send(event: PipelineEvent): void {
    if (this.over) return; // one terminal event per query, whatever races produced more
    const last = event.type === 'done' || event.type === 'error';
    if (last) this.over = true;
    const payload = encodeReply(event, this.meta);
    this.meta.seq++;
    const bytes = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    this.client.publish(this.address.topic, bytes, this.options, () => undefined);
    if (last) this.ended?.();
  }
}
