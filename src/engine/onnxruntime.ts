/**
 * The ONNX Runtime CPU backend (onnxruntime-node): the default everywhere and the fallback on a
 * Jetson without engines. Each session lives in its own worker thread (ort-worker.mjs) because the
 * native run is synchronous; the JS thread only copies feeds in (or moves those the caller gives up,
 * see SessionRunOptions.transfer) and receives the outputs, which are moved, not copied.
 */
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { SetokimError } from '../errors.js';
import type { Backend, Session, SessionOptions, SessionRunOptions, Tensor, TypedArray } from './backend.js';
import { DTYPES, type DType, type Dim, type StageSignature } from './contract.js';
import { checkFeeds } from './signature.js';
import { packageRoot } from './native.js';

/** Messages to and from ort-worker.mjs. */
interface WireTensor {
  dtype: string;
  dims: number[];
  data: ArrayBufferView;
}
type ToWorker = { type: 'run'; id: number; feeds: Record<string, WireTensor> } | { type: 'dispose' };
type FromWorker =
  | { type: 'ready'; inputNames: string[]; outputNames: string[]; inputMetadata: unknown[] }
  | { type: 'result'; id: number; outputs: Record<string, WireTensor> }
  | { type: 'error'; id?: number; message: string }
  | { type: 'disposed' };

/** The worker is plain JS under src/, so it runs the same from tests and from the installed package. */
const workerFile = () => path.join(packageRoot(), 'src', 'engine', 'ort-worker.mjs');

interface OrtMetadata {
  name: string;
  isTensor: boolean;
  type?: string;
  shape?: (number | string)[];
}

/** The signature the graph itself declares; unnamed dynamic dims become free ('?axis'). */
export function signatureFromMetadata(meta: readonly OrtMetadata[]): StageSignature {
  return {
    inputs: meta
      .filter((m) => m.isTensor && (DTYPES as readonly string[]).includes(m.type ?? ''))
      .map((m) => ({
        name: m.name,
        dtype: m.type as DType,
        shape: (m.shape ?? []).map((d, i): Dim => (typeof d === 'string' && d === '' ? `?${i}` : d)),
      })),
    outputs: [],
  };
}

/**
 * The distinct ArrayBuffers of the named feeds, each only when the feed's array covers it whole:
 * a view into a larger buffer (a subarray, a pooled Buffer) or shared memory is copied instead, so
 * no data the caller did not name is detached.
 */
function transferList(feeds: Record<string, Tensor>, names: readonly string[] = []): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const name of names) {
    const data = feeds[name]?.data;
    if (data && data.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) out.add(data.buffer);
  }
  return [...out];
}

const toWire = (t: Tensor): WireTensor => ({ dtype: t.dtype, dims: [...t.dims], data: t.data });

function fromWire(w: WireTensor): Tensor {
  return { dtype: w.dtype as DType, dims: w.dims, data: w.data as TypedArray, location: 'host' };
}

class OrtSession implements Session {
  readonly backend = 'onnxruntime-cpu';
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (o: Record<string, Tensor>) => void; reject: (e: Error) => void }>();
  private disposed = false;
  private exited: Error | undefined;

  constructor(
    private readonly worker: Worker,
    private readonly stage: string,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    private readonly signature: StageSignature,
  ) {
    worker.on('message', (m: FromWorker) => this.onMessage(m));
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', (code) => {
      this.exited = new Error(`the ONNX Runtime worker exited (code ${code})`);
      if (!this.disposed) this.failAll(this.exited);
    });
    worker.unref(); // an idle session never keeps the process alive
  }

  async run(feeds: Record<string, Tensor>, options: SessionRunOptions = {}): Promise<Record<string, Tensor>> {
    if (this.disposed) throw new SetokimError('BAD_ARGUMENT', `stage '${this.stage}': session is disposed`);
    checkFeeds(this.stage, this.signature, feeds);
    if (this.exited) throw new SetokimError('INTERNAL', `stage '${this.stage}': ${this.exited.message}; reopen the stage`);
    const id = this.nextId++;
    const msg: ToWorker = { type: 'run', id, feeds: Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toWire(t)])) };
    const transfer = transferList(feeds, options.transfer);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker.ref();
      try {
        // Copies the feeds (the caller keeps its arrays) except those it gave up in `transfer`.
        try {
          this.worker.postMessage(msg, transfer);
        } catch (err) {
          if (transfer.length === 0) throw err;
          this.worker.postMessage(msg); // a buffer that cannot move (e.g. Node's Buffer pool) is copied instead
        }
      } catch (err) {
        this.settle(id)?.reject(new SetokimError('INTERNAL', `stage '${this.stage}': cannot send the inputs to the worker: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.failAll(new SetokimError('CANCELLED', `stage '${this.stage}': session disposed during a run`));
    if (this.exited) return;
    this.worker.ref();
    await new Promise<void>((resolve) => {
      this.worker.once('exit', () => resolve());
      // A run still in flight answers first; wait for the 'disposed' reply itself.
      const onDisposed = (m: FromWorker) => {
        if (m.type !== 'disposed') return;
        this.worker.off('message', onDisposed);
        void this.worker.terminate();
      };
      this.worker.on('message', onDisposed);
      this.worker.postMessage({ type: 'dispose' } satisfies ToWorker);
    });
  }

  private settle(id: number | undefined): { resolve: (o: Record<string, Tensor>) => void; reject: (e: Error) => void } | undefined {
    if (id === undefined) return undefined;
    const p = this.pending.get(id);
    if (!p) return undefined; // e.g. a run's answer after dispose cancelled it
    this.pending.delete(id);
    // Idle sessions let the process exit; a disposing one stays referenced until its worker exits.
    if (this.pending.size === 0 && !this.disposed) this.worker.unref();
    return p;
  }

  private onMessage(m: FromWorker): void {
    if (m.type === 'result') {
      this.settle(m.id)?.resolve(Object.fromEntries(Object.entries(m.outputs).map(([k, w]) => [k, fromWire(w)])));
    } else if (m.type === 'error') {
      this.settle(m.id)?.reject(
        new SetokimError('INTERNAL', `stage '${this.stage}': ONNX Runtime failed to run: ${m.message}`),
      );
    }
  }

  private failAll(err: Error): void {
    for (const id of [...this.pending.keys()]) {
      this.settle(id)?.reject(
        err instanceof SetokimError ? err : new SetokimError('INTERNAL', `stage '${this.stage}': ${err.message}`, { cause: err }),
      );
    }
  }
}

export interface OrtBackendOptions {
  /** Default intra-op threads per session (ONNX Runtime's default is one per core). */
  threads?: number;
}

export class OrtBackend implements Backend {
  readonly name = 'onnxruntime-cpu';
  readonly priority = 10;
  constructor(private readonly defaults: OrtBackendOptions = {}) {}

  async available(): Promise<boolean> {
    return true; // onnxruntime-node ships its CPU provider in the package
  }

  async open(file: string, options: SessionOptions = {}): Promise<Session> {
    const stage = options.stage ?? path.basename(file);
    if (!existsSync(file)) {
      throw new SetokimError('MODEL_NOT_FOUND', `stage '${stage}': ${file} does not exist; check the model set's path`);
    }
    const threads = options.threads ?? this.defaults.threads;
    if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
      throw new SetokimError('BAD_ARGUMENT', `threads must be a positive integer, got ${threads}`);
    }
    const worker = new Worker(workerFile(), {
      execArgv: [],
      workerData: {
        file,
        options: {
          intraOpNumThreads: threads ?? Math.max(1, availableParallelism()),
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
          logSeverityLevel: 3,
        },
      },
    });
    const ready = await new Promise<FromWorker>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    }).catch((err: Error) => ({ type: 'error' as const, message: err.message }));
    if (ready.type !== 'ready') {
      await worker.terminate();
      const message = ready.type === 'error' ? ready.message : 'unexpected reply';
      throw new SetokimError(
        'MODEL_INVALID',
        `stage '${stage}': ONNX Runtime cannot load ${file}: ${message}. Re-export the model set or check the file is a complete ONNX graph.`,
      );
    }
    const signature = options.signature ?? signatureFromMetadata(ready.inputMetadata as OrtMetadata[]);
    return new OrtSession(worker, stage, ready.inputNames, ready.outputNames, signature);
  }
}
