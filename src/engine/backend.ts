/**
 * The backend interface: every inference backend (ONNX Runtime CPU, TensorRT) opens a stage as a
 * Session with named inputs and outputs. Modelled on onnxruntime-common's Backend/SessionHandler,
 * plus resident tensors (resident.ts): state such as the LLM's KV cache that stays in the
 * backend's memory between runs and is fed and written by handle.
 */
import type { DType, StageSignature } from './contract.js';
import type { ResidentSpec, ResidentTensor, RowCopy, RowWrite } from './resident.js';

export type TypedArray = Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array;

/** A tensor in host memory: what a run takes as a feed and gives back as an output. */
export interface Tensor {
  readonly dtype: DType;
  readonly dims: readonly number[];
  readonly data: TypedArray;
  readonly location: 'host';
}

/** A run's feed: host data, or a resident tensor the session holds (only its handle crosses). */
export type Feed = Tensor | ResidentTensor;

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
  /**
   * Outputs written into resident tensors of this session (rows at an offset along an axis, e.g.
   * the new tokens' keys into a KV cache at the write position) instead of being returned.
   */
  writeInto?: Readonly<Record<string, RowWrite>>;
}

export interface Session {
  readonly backend: string;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Runs the graph off the JS thread. Inputs are checked against the signature first. */
  run(feeds: Record<string, Feed>, options?: SessionRunOptions): Promise<Record<string, Tensor>>;
  /** Zero-filled tensors in the backend's memory, for later runs to read and write by handle. */
  allocate(specs: readonly ResidentSpec[]): Promise<ResidentTensor[]>;
  /** Copies rows between this session's resident tensors, inside the backend. */
  copyRows(copies: readonly RowCopy[]): Promise<void>;
  /** A resident tensor's data, copied to the host (tests, calibration, debugging). */
  read(t: ResidentTensor): Promise<Tensor>;
  /** Frees resident tensors; releasing one twice, or one already lost, is harmless. */
  release(tensors: readonly ResidentTensor[]): Promise<void>;
  /** Bytes this session's live resident tensors hold. */
  readonly residentBytes: number;
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
