/** The agent area's public face: serve a Pipeline over MQTT, and talk to agents as a client. */
export { Agent, type AgentEvents, type AgentOptions, type Logger, type LogLevel } from './agent.js';
export { startEmbeddedBroker, type EmbeddedBroker } from './broker.js';
export { QueryClient, newQueryId, type ClientStats, type QueryClientOptions, type QueryOptions } from './client.js';
export {
  decodeQuery,
  decodeReply,
  decodeStatus,
  encodeQuery,
  encodeReply,
  encodeStatus,
  type AgentStatus,
  type ReplyEvent,
  type WireQuery,
} from './codec.js';
export { StreamClient, type StreamClientOptions, type StreamHandle } from './stream-client.js';
export {
  decodeStreamEvent,
  encodeStreamStart,
  encodeStreamControl,
  type StreamReply,
  type StreamStartInput,
} from './stream-codec.js';
export { startStreams, type StreamService } from './streams.js';
export {
  agentConfigSchema,
  loadAgentConfig,
  parseAgentConfig,
  type AgentConfig,
  type AgentConfigInput,
} from './config.js';
export {
  cancelTopic,
  deviceTopics,
  fleetStatusFilter,
  fleetStreamStopTopic,
  queryTopic,
  replyTopicFor,
  streamTopics,
  TOPIC_ROOT,
  type Target,
} from '../mqtt/topics.js';
