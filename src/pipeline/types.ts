/**
 * One query, from image and prompt to a stream of events. The agent (MQTT) and the CLI consume
 * these; the protobuf messages in proto/ mirror them field for field.
 */
import type { ErrorCode } from '../errors.js';
import type { VisionTokens } from './vision.js';

export const TASKS = ['ask', 'describe', 'segment', 'generate', 'edit'] as const;
export type Task = (typeof TASKS)[number];

export interface GenerationParams {
  maxTokens?: number; // new tokens to generate (default from the pipeline config)
  temperature?: number; // 0 = greedy
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
}

export interface QueryRequest {
  id: string;
  task: Task;
  prompt?: string; // describe has a default prompt; the others need one
  image?: Uint8Array; // JPEG, PNG or WebP bytes; required except for generate
  generation?: GenerationParams;
  /**
   * ask / describe: continue (or, with an image, start) this conversation. A follow-up carries no
   * image and prefills only its own tokens; an unknown or ended one is CONVERSATION_UNKNOWN.
   */
  conversation?: string;
}

export type StageTimes = Record<string, number>; // milliseconds per stage

export type PipelineEvent =
  | { type: 'accepted'; id: string }
  | { type: 'clustered'; id: string; visionTokens: number; patches: number; maskPng: Uint8Array }
  | { type: 'text'; id: string; delta: string }
  | { type: 'mask'; id: string; index: number; referring: boolean; png: Uint8Array; width: number; height: number }
  | { type: 'image'; id: string; png: Uint8Array; width: number; height: number }
  | {
      type: 'done';
      id: string;
      visionTokens: number;
      promptTokens: number;
      /** Of promptTokens, those whose KV rows came from a cache (a prompt prefix, the conversation): not prefilled. */
      cachedTokens?: number;
      generatedTokens: number;
      finishReason: 'stop' | 'length' | 'eos';
      stages: StageTimes;
      totalMs: number;
      firstTokenMs?: number; // from the request's start to the first generated token
      energyMj?: number; // set by the agent: board energy while the query ran, where power rails exist
    }
  | { type: 'error'; id: string; code: ErrorCode; message: string };

export interface RunOptions {
  signal?: AbortSignal;
  /**
   * Vision tokens computed already (a stream's frame, docs/STREAMS.md): an `ask` or `describe`
   * then needs no image and skips preprocess, encoder, clustering and merger (and emits no
   * `clustered`); the rest of the query (prompt, prefill, decode) is the normal path.
   */
  vision?: VisionTokens;
}

/** What the pipeline's caches hold and how often they helped (counters only grow). */
export interface CacheStats {
  vision: { hits: number; misses: number; bytes: number; entries: number; evictions: number; capacityBytes: number };
  prefix: { hits: number; misses: number; bytes: number; entries: number };
  conversations: {
    active: number;
    bytes: number;
    started: number;
    expired: number;
    evicted: number;
    resumed: number;
    replayed: number;
  };
  kv: { budgetBytes: number; usedBytes: number; cachedBytes: number; evictions: number };
}

export interface Pipeline {
  /** Streams the events of one query; ends after `done` or `error`. Never throws for a bad query. */
  run(request: QueryRequest, options?: RunOptions): AsyncIterable<PipelineEvent>;
  /** What the agent advertises in its status message. */
  readonly info: { modelSetId: string; backend: string; maxTokens: number; maxContext: number };
  /** The caches' counters, for metrics (pipelines without caches leave it out). */
  cacheStats?(): CacheStats;
  close(): Promise<void>;
}
