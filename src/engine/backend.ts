/**
 * The backend interface: every inference backend (ONNX Runtime CPU, TensorRT) opens a stage as a
 * Session with named inputs and outputs. Modelled on onnxruntime-common's Backend/SessionHandler.
 */
import type { DType, StageSignature } from './contract.js';

export type TypedArray = Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array;

/** Where a tensor's bytes live: host memory, or GPU memory owned by a backend. */
export type TensorLocation = 'host' | 'gpu';

export interface Tensor {
  readonly dtype: DType;
  readonly dims: readonly number[];
  /** Host data; for location 'gpu' this is absent until the tensor is downloaded. */
  readonly data: TypedArray;
  readonly location: TensorLocation;
}

export interface SessionOptions {
  /** Threads for CPU backends (intra-op). */
  threads?: number;
  /** Signature to check every run's inputs against (the manifest's). */
  signature?: StageSignature;
  /** Stage name, for error messages (defaults to the file's name). */
  stage?: string;
}

export interface SessionRunOptions {
  /**
   * Feeds the caller no longer needs. A backend that runs on another thread may move their whole
   * ArrayBuffers there instead of copying them (the caller's arrays, and every other view of those
   * buffers, are then detached). A backend that copies synchronously ignores it. For large inputs
   * replaced by the run's outputs, such as an LLM's past KV cache.
   */
  transfer?: readonly string[];
}

export interface Session {
  readonly backend: string;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Runs the graph off the JS thread. Inputs are checked against the signature first. */
  run(feeds: Record<string, Tensor>, options?: SessionRunOptions): Promise<Record<string, Tensor>>;
  dispose(): Promise<void>;
}

export interface Backend {
  readonly name: string;
  /** Higher wins when several backends can open a stage. */
  readonly priority: number;
  /** Whether this backend can run on this machine at all (e.g. TensorRT: addon built with it and a GPU). */
  available(): Promise<boolean>;
  /** Opens one stage file (an .onnx for ONNX Runtime, a .plan with its manifest for TensorRT). */
  open(file: string, options?: SessionOptions): Promise<Session>;
}

export function tensor(dtype: DType, data: TypedArray, dims: readonly number[]): Tensor {
  return { dtype, data, dims, location: 'host' };
}
