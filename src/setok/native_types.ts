/** Shapes of the native clustering bindings (native/trt/addon/cluster_binding.cc). */
import type { ClusterResult } from './reference.js';

/** The clustering parameters both bindings take, positionally, after any features. */
export type NativeClusterParams = [
  n: number,
  dim: number,
  k: number,
  threshold: number,
  fallback: number,
  maxTokens: number,
];

/** setokCluster(features, n, dim, k, threshold, fallback, maxTokens): runs in a worker thread. */
export type NativeClusterFn = (features: Float32Array, ...params: NativeClusterParams) => Promise<ClusterResult>;

/** A native stream: keeps the previous frame and its Gram matrix (on the C++ side). */
export interface NativeStreamHandle {
  push(features: Float32Array): Promise<ClusterResult & { changedPatches: number }>;
  close(): void;
}

/** setokClusterStream(n, dim, k, threshold, fallback, maxTokens). */
export type NativeStreamFactory = (...params: NativeClusterParams) => NativeStreamHandle;
