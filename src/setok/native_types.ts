/** Shapes of the native clustering bindings (native/trt/addon/cluster_binding.cc). */
import type { ClusterResult } from './reference.js';

/** setokCluster(features, n, dim, k, threshold, fallback, maxTokens): runs in a worker thread. */
export type NativeClusterFn = (
  features: Float32Array,
  n: number,
  dim: number,
  k: number,
  threshold: number,
  fallback: number,
  maxTokens: number,
) => Promise<ClusterResult>;

/** A native stream: keeps the previous frame and its Gram matrix (on the C++ side). */
export interface NativeStreamHandle {
  push(features: Float32Array): Promise<ClusterResult & { changedPatches: number }>;
  close(): void;
}

/** setokClusterStream(n, dim, k, threshold, fallback, maxTokens). */
export type NativeStreamFactory = (
  n: number,
  dim: number,
  k: number,
  threshold: number,
  fallback: number,
  maxTokens: number,
) => NativeStreamHandle;
