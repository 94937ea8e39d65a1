/**
 * SeTok's clustering stage: 2-D position encoding and DPC-KNN (docs/SETOK.md). The native addon does the
 * work off the JavaScript thread when it is built; otherwise the TypeScript reference (same results,
 * much slower) stands in, so the API never depends on a compiler being present.
 */
import { loadNative, type NativeClusterFn } from '../engine/native.js';
import { clusterReference, positionEncodingTable, type ClusterResult } from './reference.js';
import {
  asSetokimError,
  checkFinite,
  validateCluster,
  validatePositionEncoding,
  type ClusterOptions,
} from './options.js';

export type { ClusterResult, ClusterParams } from './reference.js';
export type { ClusterOptions } from './options.js';
export { clusterReference } from './reference.js';
export { ClusterStream, type StreamFrame } from './stream.js';

const peCache = new Map<string, Float32Array>();

/** features + the 2-D sin/cos position encoding, as a new Float32Array (the table is cached per shape). */
export function addPositionEncoding(features: Float32Array, rows: number, cols: number, dim: number): Float32Array {
  validatePositionEncoding(features, rows, cols, dim);
  const key = `${rows}x${cols}x${dim}`;
  let pe = peCache.get(key);
  if (!pe) {
    pe = positionEncodingTable(rows, cols, dim);
    if (peCache.size >= 4) peCache.delete(peCache.keys().next().value!);
    peCache.set(key, pe);
  }
  const out = new Float32Array(features.length);
  for (let i = 0; i < out.length; i++) out[i] = features[i]! + pe[i]!;
  return out;
}

let nativeCluster: NativeClusterFn | null | undefined;

/** The native clustering function, or null when the addon is missing or predates it. */
export function nativeClusterFn(): NativeClusterFn | null {
  if (nativeCluster !== undefined) return nativeCluster;
  try {
    const fn = loadNative().setokCluster;
    nativeCluster = typeof fn === 'function' ? fn : null;
  } catch {
    nativeCluster = null;
  }
  return nativeCluster;
}

/**
 * Clusters n x dim patch features (row-major) into centres and labels. Resolves off the JS thread
 * when the addon is built. Rejects with SetokimError BAD_INPUT on bad options, lengths or non-finite
 * features.
 */
export async function cluster(features: Float32Array, options: ClusterOptions): Promise<ClusterResult> {
  const p = validateCluster(features, options);
  const native = nativeClusterFn();
  if (!native) {
    checkFinite(features, p.dim);
    return clusterReference(features, p);
  }
  try {
    return await native(features, p.n, p.dim, p.k, p.threshold, p.fallback, p.maxTokens ?? 0);
  } catch (err) {
    throw asSetokimError(err);
  }
}
