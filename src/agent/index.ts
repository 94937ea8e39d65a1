/** The agent area's public face: serve a Pipeline over MQTT, and talk to agents as a client. */
export { Agent, type AgentEvents, type AgentOptions, type Logger, type LogLevel } from './agent.js';
export { startEmbeddedBroker, type EmbeddedBroker } from './broker.js';
export { QueryClient, newQueryId, type ClientStats, type QueryClientOptions, type QueryOptions } from './client.js';
export { decodeQuery, decodeReply, decodeStatus, encodeQuery, encodeReply, encodeStatus, type AgentStatus, type ReplyEvent, type WireQuery } from './codec.js';
export { agentConfigSchema, loadAgentConfig, parseAgentConfig, type AgentConfig, type AgentConfigInput } from './config.js';
export { cancelTopic, deviceTopics, fleetStatusFilter, queryTopic, replyTopicFor, TOPIC_ROOT, type Target } from '../mqtt/topics.js';
