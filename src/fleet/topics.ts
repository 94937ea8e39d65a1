/**
 * Update topics, beside the agent's (src/agent/topics.ts), JSON payloads validated with zod:
 *   setokim/v1/<fleet>/<device>/update         an UpdateJob (QoS 1)
 *   setokim/v1/<fleet>/<device>/update/state   UpdateEvents (QoS 1; the latest one retained)
 */
import { TOPIC_ROOT } from '../agent/topics.js';

export const updateTopic = (fleet: string, device: string) => `${TOPIC_ROOT}/${fleet}/${device}/update`;
export const updateStateTopic = (fleet: string, device: string) => `${TOPIC_ROOT}/${fleet}/${device}/update/state`;
/** Every device's update states in a fleet (subscribe filter); the device is topic level 3. */
export const fleetUpdateStateFilter = (fleet: string) => `${TOPIC_ROOT}/${fleet}/+/update/state`;
export const deviceOfStateTopic = (topic: string): string | undefined => topic.split('/')[3];
