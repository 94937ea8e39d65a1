/** setokim-edge: the package's public entry. Each area re-exports its public face here. */
export { addPositionEncoding, cluster, clusterReference, ClusterStream } from './setok/index.js';
export type { ClusterOptions, ClusterResult, ClusterParams, StreamFrame } from './setok/index.js';
export {
  Agent,
  QueryClient,
  startEmbeddedBroker,
  loadAgentConfig,
  parseAgentConfig,
  newQueryId,
  deviceTopics,
  queryTopic,
  cancelTopic,
} from './agent/index.js';
export type {
  AgentConfig,
  AgentEvents,
  AgentStatus,
  EmbeddedBroker,
  QueryClientOptions,
  QueryOptions,
  ReplyEvent,
  Target,
} from './agent/index.js';
