/**
 * The whole topic tree, versioned so a v2 protocol can live beside v1 on one broker. It sits below
 * both src/agent (which serves queries) and src/fleet (which serves update jobs), so neither imports
 * the other for a topic name:
 *   setokim/v1/<fleet>/<device>/query          one device
 *   setokim/v1/<fleet>/query                   the fleet; agents take it through $share/<fleet>/...
 *   setokim/v1/<fleet>/<device>/cancel         and setokim/v1/<fleet>/cancel (every agent hears it)
 *   setokim/v1/<fleet>/<device>/status         retained presence; the Last Will marks it offline
 *   setokim/v1/<fleet>/<device>/update         an update job (JSON, QoS 1; docs/FLEET.md)
 *   setokim/v1/<fleet>/<device>/update/state   the device's update events (QoS 1; the latest retained)
 *   setokim/v1/<fleet>/<device>/stream/start   start a video stream (docs/STREAMS.md); .../stream/stop,
 *                                              .../stream/renew; setokim/v1/<fleet>/stream/stop (every agent:
 *                                              a stream client's Last Will)
 */
import { ReasonCodes } from 'mqtt';
import { z } from 'zod';

export const TOPIC_ROOT = 'setokim/v1';

/** Fleet and device names are single topic levels: no /, no wildcards, no $ at the start. */
export const levelName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, _ . or - (it becomes one MQTT topic level)');

export interface DeviceTopics {
  query: string;
  cancel: string;
  status: string;
  fleetQuery: string;
  fleetCancel: string;
  /** The fleet query filter as a shared subscription: one delivery per message to the group. */
  sharedFleetQuery: string;
}

export function deviceTopics(fleet: string, device: string): DeviceTopics {
  const f = `${TOPIC_ROOT}/${fleet}`;
  return {
    query: `${f}/${device}/query`,
    cancel: `${f}/${device}/cancel`,
    status: `${f}/${device}/status`,
    fleetQuery: `${f}/query`,
    fleetCancel: `${f}/cancel`,
    sharedFleetQuery: `$share/${fleet}/${f}/query`,
  };
}

/** Where a client sends a query: one device, or any agent of a fleet. */
export type Target = { fleet: string; device: string } | { fleet: string; device?: undefined };

export function queryTopic(target: Target): string {
  return target.device ? `${TOPIC_ROOT}/${target.fleet}/${target.device}/query` : `${TOPIC_ROOT}/${target.fleet}/query`;
}

export function cancelTopic(target: Target): string {
  return target.device
    ? `${TOPIC_ROOT}/${target.fleet}/${target.device}/cancel`
    : `${TOPIC_ROOT}/${target.fleet}/cancel`;
}

/** Status of every device of a fleet (subscribe filter). */
export function fleetStatusFilter(fleet: string): string {
  return `${TOPIC_ROOT}/${fleet}/+/status`;
}

/** A per-client reply topic for MQTT 3.1.1 clients and for MQTT 5 clients that want one. */
export function replyTopicFor(clientId: string): string {
  return `${TOPIC_ROOT}/replies/${clientId}`;
}

/** Where every agent publishes replies; other reply topics only when configured (an agent's replyTopics). */
export const REPLY_FILTER = `${TOPIC_ROOT}/replies/#`;

/** The longest reply topic an agent takes. */
export const MAX_REPLY_TOPIC = 1024;

/**
 * A reply topic an agent could ever publish to: a concrete topic (no wildcards), not a
 * broker-internal `$` topic, and nothing inside setokim/ but setokim/v1/replies/..., so a client
 * cannot make an agent write onto other devices' query or status topics whatever filters allow.
 */
export function isSafeReplyTopic(topic: string): boolean {
  if (
    !topic ||
    topic.length > MAX_REPLY_TOPIC ||
    /[#+]/.test(topic) ||
    topic.includes('\u0000') ||
    topic.startsWith('$')
  )
    return false;
  return !topic.startsWith('setokim/') || topic.startsWith(`${TOPIC_ROOT}/replies/`);
}

/** Whether `topic` matches the MQTT filter (`+` one level, `#` the rest, and the parent level too). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/**
 * An extra filter replies may go to (an agent's replyTopics): valid MQTT (`#` only as the last
 * level, `+` only as a whole level), not a `$` topic, and not inside setokim/ but under
 * setokim/v1/replies/ (isSafeReplyTopic refuses those topics whatever the filter says).
 */
export const replyTopicFilter = z
  .string()
  .min(1)
  .max(MAX_REPLY_TOPIC)
  .refine(isTopicFilter, 'not an MQTT topic filter (# only as the last level, + only as a whole level)')
  .refine((f) => !f.startsWith('$'), "a $ topic is the broker's own")
  .refine(
    (f) => !f.startsWith('setokim/') || f.startsWith(`${TOPIC_ROOT}/replies/`),
    `inside setokim/ replies go to ${REPLY_FILTER} only`,
  );

/** MQTT filter syntax: `#` only as the whole last level, `+` only as a whole level, no NUL. */
function isTopicFilter(filter: string): boolean {
  if (filter.includes('\u0000')) return false;
  const levels = filter.split('/');
  const last = levels.length - 1;
  return levels.every((level, i) =>
    level.includes('#') ? level === '#' && i === last : !level.includes('+') || level === '+',
  );
}

/**
 * The topics a SUBACK refused (a reason code >= 0x80, e.g. the broker's ACL), in the order they
 * were asked for, each as `topic (reason, reason code 0x87)` for a BROKER_REFUSED message.
 */
export function refusedSubscriptions(topics: readonly string[], granted: readonly unknown[] | undefined): string[] {
  return topics.flatMap((topic, i) => {
    const rc = granted?.[i];
    return typeof rc === 'number' && rc >= 0x80
      ? [`${topic} (${ReasonCodes[rc as keyof typeof ReasonCodes] ?? 'refused'}, reason code 0x${rc.toString(16)})`]
      : [];
  });
}

export const updateTopic = (fleet: string, device: string) => `${TOPIC_ROOT}/${fleet}/${device}/update`;
export const updateStateTopic = (fleet: string, device: string) => `${TOPIC_ROOT}/${fleet}/${device}/update/state`;
/** Every device's update states in a fleet (subscribe filter); the device is topic level 3. */
export const fleetUpdateStateFilter = (fleet: string) => `${TOPIC_ROOT}/${fleet}/+/update/state`;
export const deviceOfStateTopic = (topic: string): string | undefined => topic.split('/')[3];

/** A device's video stream topics (docs/STREAMS.md), and the fleet-wide stop a client's Last Will uses. */
export interface StreamTopics {
  start: string;
  stop: string;
  renew: string;
  fleetStop: string;
}

export function streamTopics(fleet: string, device: string): StreamTopics {
  const d = `${TOPIC_ROOT}/${fleet}/${device}/stream`;
  return { start: `${d}/start`, stop: `${d}/stop`, renew: `${d}/renew`, fleetStop: fleetStreamStopTopic(fleet) };
}

/** Every agent of a fleet stops the streams a StreamControl names here (a stream client's Last Will). */
export const fleetStreamStopTopic = (fleet: string) => `${TOPIC_ROOT}/${fleet}/stream/stop`;
