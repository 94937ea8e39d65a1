/**
 * Pixels -> vision tokens: encoder -> 2-D position encoding -> DPC-KNN clustering -> assign matrix
 * -> merger (inner/inter-cluster transformer + projector). Tokens come out in the order of their
 * centres, which is the order clustering returns them in.
 */
import { tensor } from '../engine/backend.js';
import { patchGrid, type Architecture } from '../engine/contract.js';
import { addPositionEncoding, cluster, type ClusterOptions, type ClusterResult } from '../setok/index.js';
import type { GatedStage, RequestContext } from './scheduler.js';
import { timed } from './scheduler.js';

export interface VisionTokens {
  /** Encoder features with the position encoding added, [N, C] row-major (what merger and mask decoder read). */
  features: Float32Array;
  clusters: ClusterResult;
  /** L: the number of vision tokens. */
  count: number;
  /** Merger tokens [L, D] (what the mask decoder and detokenizer read). */
  tokens: Float32Array;
  /** Projected tokens [L, H]: the LLM's input embeddings. */
  embeds: Float32Array;
}

/** assign[l][n] = 1 iff labels[n] = l, as [1, L, N]. */
export function assignMatrix(labels: Int32Array, count: number): Float32Array {
  const n = labels.length;
  const out = new Float32Array(count * n);
  for (let i = 0; i < n; i++) out[labels[i]! * n + i] = 1;
  return out;
}

export async function encodeFeatures(
  a: Architecture,
  encoder: GatedStage,
  pixels: Float32Array,
  ctx: RequestContext,
): Promise<Float32Array> {
  const S = a.image.size;
  const out = await encoder.run(ctx, { pixels: tensor('float32', pixels, [1, 3, S, S]) });
  const G = patchGrid(a);
  return addPositionEncoding(out.features!.data as Float32Array, G, G, a.encoder.width);
}

/** The clustering options of a model set (SETOK.md; k at most the patch count). */
export function clusterOptions(a: Architecture): ClusterOptions {
  const G = patchGrid(a);
  const { k, threshold, fallback, maxTokens } = a.cluster;
  return { n: G * G, dim: a.encoder.width, k: Math.min(k, G * G), threshold, fallback, maxTokens };
}

export async function clusterFeatures(
  a: Architecture,
  features: Float32Array,
  ctx: RequestContext,
): Promise<ClusterResult> {
  return timed(ctx, 'cluster', () => cluster(features, clusterOptions(a)));
}

export async function mergeTokens(
  a: Architecture,
  merger: GatedStage,
  features: Float32Array,
  clusters: ClusterResult,
  ctx: RequestContext,
): Promise<VisionTokens> {
  const N = patchGrid(a) ** 2;
  const C = a.encoder.width;
  const L = clusters.centers.length;
  const out = await merger.run(ctx, {
    features: tensor('float32', features, [1, N, C]),
    assign: tensor('float32', assignMatrix(clusters.labels, L), [1, L, N]),
  });
  return {
    features,
    clusters,
    count: L,
    tokens: out.tokens!.data as Float32Array,
    embeds: out.embeds!.data as Float32Array,
  };
}

/** The whole vision path for one preprocessed image. */
export async function visionTokens(
  a: Architecture,
  stages: { encoder: GatedStage; merger: GatedStage },
  pixels: Float32Array,
  ctx: RequestContext,
): Promise<VisionTokens> {
  const features = await encodeFeatures(a, stages.encoder, pixels, ctx);
  const clusters = await clusterFeatures(a, features, ctx);
  return mergeTokens(a, stages.merger, features, clusters, ctx);
}
