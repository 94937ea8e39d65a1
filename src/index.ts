/** setokim-edge: the package's public entry. Each area re-exports its public face here. */
export { addPositionEncoding, cluster, clusterReference, ClusterStream } from './setok/index.js';
export type { ClusterOptions, ClusterResult, ClusterParams, StreamFrame } from './setok/index.js';
