/**
 * Where and how answers go. An MQTT 5 request carries a Response Topic and Correlation Data in its
 * properties; an MQTT 3.1.1 request carries reply_topic (and optional correlation) in the payload.
 * Each event is one QoS 1 message to that topic; MQTT keeps one publisher's messages on one topic
 * in order, and `seq` lets a client check it. Unsafe reply topics (isSafeReplyTopic) are ignored.
 */
import type { IPublishPacket, MqttClient } from 'mqtt';
import type { PipelineEvent } from '../pipeline/types.js';
import { encodeReply, type Salvage } from './codec.js';
import { isSafeReplyTopic } from '../mqtt/topics.js';

export interface ReplyAddress {
  topic: string;
  /** MQTT 5 Correlation Data, returned as the same property. */
  correlationData?: Buffer;
  /** The 3.1.1 stand-in, returned inside the Reply. */
  correlation?: Uint8Array;
}

/** The reply address of a request; the MQTT 5 properties win over the payload. */
export function replyAddress(packet: IPublishPacket, fromPayload: Salvage): ReplyAddress | undefined {
  const props = packet.properties;
  const correlation = fromPayload.correlation;
  if (props?.responseTopic && isSafeReplyTopic(props.responseTopic)) {
    return { topic: props.responseTopic, ...(props.correlationData ? { correlationData: props.correlationData } : {}), ...(correlation ? { correlation } : {}) };
  }
  if (fromPayload.replyTopic) return { topic: fromPayload.replyTopic, ...(correlation ? { correlation } : {}) };
  return undefined;
}

/** Publishes the events of one query in order, numbering them. */
export class ReplyStream {
  private seq = 0;
  private ended = false;

  constructor(
    private readonly client: MqttClient,
    private readonly address: ReplyAddress,
    private readonly device: string,
  ) {}

  get finished(): boolean {
    return this.ended;
  }

  /**
   * Sends one event. Does not wait for the broker's PUBACK: while the broker is away mqtt.js keeps
   * QoS 1 messages in its outgoing store and sends them after reconnecting.
   */
  send(event: PipelineEvent): void {
    if (this.ended) return; // one terminal event per query, whatever races produced more
    if (event.type === 'done' || event.type === 'error') this.ended = true;
    const payload = encodeReply(event, { seq: this.seq++, device: this.device, ...(this.address.correlation ? { correlation: this.address.correlation } : {}) });
    const properties = this.address.correlationData ? { correlationData: this.address.correlationData } : undefined;
    this.client.publish(this.address.topic, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), { qos: 1, ...(properties ? { properties } : {}) }, () => undefined);
  }
}
