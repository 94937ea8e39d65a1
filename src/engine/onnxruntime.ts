/**
 * The ONNX Runtime CPU backend (onnxruntime-node): the default everywhere and the fallback on a
 * Jetson without engines. Each session lives in its own worker thread (ort-worker.mjs) because the
 * native run is synchronous; the JS thread only copies feeds in (or moves those the caller gives up,
 * see SessionRunOptions.transfer) and receives the outputs, which are moved, not copied. Resident
 * tensors (the LLM's KV cache) live in the worker and cross as handles.
 */
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Backend, Feed, Session, SessionOptions, SessionRunOptions, Tensor, TypedArray } from './backend.js';
import { DTYPES, type DType, type Dim, type StageSignature } from './contract.js';
import { checkRowWrites, ResidentRegistry, wireRowCopies, wireRowWrites } from './resident.js';
import type { ResidentSpec, ResidentTensor, RowCopy, WireRowCopy, WireRowWrite } from './resident.js';
import { checkFeeds } from './signature.js';
import { packageRoot } from './native.js';

/** Messages to and from ort-worker.mjs. */
interface WireTensor {
  dtype: string;
  dims: number[];
  data: ArrayBufferView;
}
/** Requests the worker answers with a result or an error, in the order they were sent. */
type Request =
  | {
      type: 'run';
      id: number;
      feeds: Record<string, WireTensor>;
      resident: Record<string, number>;
      writes: Record<string, WireRowWrite>;
    }
  | { type: 'allocate'; id: number; tensors: { handle: number; dtype: DType; dims: number[] }[] }
  | { type: 'copy'; id: number; copies: WireRowCopy[] }
  | { type: 'read'; id: number; handle: number };
type ToWorker =
  | Request
  | { type: 'release'; handles: number[] }
  | { type: 'dispose' }
  /** Tests only: the worker dies as a crash kills it (process.exit, an uncaught error), now or on the next run. */
  | { type: 'crash'; how: 'exit' | 'throw'; atNextRun?: boolean };
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
function transferList(feeds: Record<string, WireTensor>, names: readonly string[] = []): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const name of names) {
    const data = feeds[name]?.data;
    if (
      data &&
      data.buffer instanceof ArrayBuffer &&
      data.byteOffset === 0 &&
      data.byteLength === data.buffer.byteLength
    )
      out.add(data.buffer);
  }
  return [...out];
}

const toWire = (t: Tensor): WireTensor => ({ dtype: t.dtype, dims: [...t.dims], data: t.data });

function fromWire(w: WireTensor): Tensor {
  return { dtype: w.dtype as DType, dims: w.dims, data: w.data as TypedArray, location: 'host' };
}

/** What a worker needs to open the session: the same for the first worker and any reopened one. */
interface WorkerSpec {
  file: string;
  options: Record<string, unknown>;
}

type Ready = Extract<FromWorker, { type: 'ready' }>;

/** Starts a worker and waits until it holds the session; rejects with ONNX Runtime's reason. */
async function startWorker(spec: WorkerSpec): Promise<{ worker: Worker; ready: Ready }> {
  const worker = new Worker(workerFile(), { execArgv: [], workerData: spec });
  const ready = await new Promise<FromWorker>((resolve, reject) => {
    const onExit = (code: number): void =>
      reject(new Error(`the worker exited (code ${code}) before the session was ready`));
    worker.once('error', reject);
    worker.once('exit', onExit);
    worker.once('message', (m: FromWorker) => {
      worker.off('error', reject);
      worker.off('exit', onExit);
      resolve(m);
    });
  }).catch((err: Error) => ({ type: 'error' as const, message: err.message }));
  if (ready.type !== 'ready') {
    await worker.terminate();
    throw new Error(ready.type === 'error' ? ready.message : 'unexpected reply');
  }
  return { worker, ready };
}

type Outputs = Record<string, Tensor>;
type Pending = { what: string; resolve: (o: Outputs) => void; reject: (e: Error) => void };

/** How often a dead worker is replaced before the session gives up (OrtBackendOptions). */
interface CrashLoopLimit {
  maxRestarts: number;
  windowMs: number;
}

const span = (ms: number): string => (ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`);

/**
 * One stage's session in its worker. A worker that dies (an uncaught error, process.exit, its heap
 * limit) fails the runs it held with BACKEND_CRASHED; the next run opens a new worker on the same
 * file, and if that fails the session stays broken with the reason. A worker that dies more than
 * `maxRestarts` times within `windowMs` (a graph that kills it on every run, a heap too small for
 * it) also leaves the session broken: each reopen loads the model again, so a crash loop would
 * keep the device busy reloading. (A native crash such as a segfault ends the whole process:
 * threads share it.)
 */
class OrtSession implements Session {
  readonly backend = 'onnxruntime-cpu';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private disposed = false;
  /** Undefined once the worker has died, until a run reopens it. */
  private worker: Worker | undefined;
  private lastError: string | undefined;
  private reopening: Promise<void> | undefined;
  private broken: SetokimError | undefined;
  /** When recent workers died (performance.now()), oldest first; at most maxRestarts + 1. */
  private readonly deaths: number[] = [];
  /** How many times a dead worker was replaced. */
  restarts = 0;
  private readonly residents: ResidentRegistry;

  constructor(
    worker: Worker,
    private readonly spec: WorkerSpec,
    private readonly stage: string,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    private readonly signature: StageSignature,
    private readonly limit: CrashLoopLimit,
  ) {
    this.residents = new ResidentRegistry(stage);
    this.attach(worker);
  }

  get residentBytes(): number {
    return this.residents.bytes;
  }

  private attach(worker: Worker): void {
    this.worker = worker;
    this.lastError = undefined;
    // Events of a worker already replaced are ignored.
    worker.on('message', (m: FromWorker) => worker === this.worker && this.onMessage(m));
    worker.on('error', (err) => worker === this.worker && (this.lastError = err.message)); // 'exit' follows
    worker.on('exit', (code) => worker === this.worker && this.onExit(code));
    worker.unref(); // an idle session never keeps the process alive
  }

  private onExit(code: number): void {
    const how = this.lastError ? `an uncaught error: ${this.lastError}` : `exit code ${code}`;
    this.worker = undefined;
    if (this.disposed) return;
    this.residents.loseAll(`the ONNX Runtime worker died: ${how}`);
    this.lastError = how;
    const now = performance.now();
    this.deaths.push(now);
    while (this.deaths.length > 0 && now - this.deaths[0]! > this.limit.windowMs) this.deaths.shift();
    if (this.deaths.length > this.limit.maxRestarts) {
      // Every run from now on, and those in flight, fail at once without loading the model again.
      this.broken ??= new SetokimError(
        ErrorCodes.BACKEND_CRASHED,
        `stage '${this.stage}': the ONNX Runtime worker keeps crashing: it died ${this.deaths.length} time${this.deaths.length === 1 ? '' : 's'} within ${span(this.limit.windowMs)} (last: ${how}), so this session no longer restarts it. ` +
          'Check the model (a graph that fails the same way on every run) and the memory free on the device, then restart the agent.',
      );
      this.failAll(this.broken);
      return;
    }
    this.failAll(
      new SetokimError(
        ErrorCodes.BACKEND_CRASHED,
        `stage '${this.stage}': the ONNX Runtime worker died (${how}) during this run; send the query again (the next run restarts the worker)`,
      ),
    );
  }

  async run(feeds: Record<string, Feed>, options: SessionRunOptions = {}): Promise<Record<string, Tensor>> {
    this.assertOpen();
    const bound = checkFeeds(this.stage, this.signature, feeds);
    const writes = options.writeInto ?? {};
    checkRowWrites(this.stage, this.signature, bound, writes, this.outputNames);
    const host: Record<string, WireTensor> = {};
    const resident: Record<string, number> = {};
    for (const [name, t] of Object.entries(feeds)) {
      if (t.location === 'resident') resident[name] = this.residents.idOf(t, `input '${name}'`);
      else host[name] = toWire(t);
    }
    const wireWrites = wireRowWrites(this.residents, writes);
    const transfer = transferList(host, options.transfer);
    return this.request('run', (id) => ({ type: 'run', id, feeds: host, resident, writes: wireWrites }), transfer);
  }

  async allocate(specs: readonly ResidentSpec[]): Promise<ResidentTensor[]> {
    this.assertOpen();
    return this.residents.allocate(specs, (tensors) =>
      this.request('allocate resident tensors', (id) => ({ type: 'allocate', id, tensors })),
    );
  }

  async copyRows(copies: readonly RowCopy[]): Promise<void> {
    this.assertOpen();
    const wire = wireRowCopies(this.residents, this.stage, copies);
    await this.request('copy rows', (id) => ({ type: 'copy', id, copies: wire }));
  }

  async read(t: ResidentTensor): Promise<Tensor> {
    this.assertOpen();
    const handle = this.residents.idOf(t, 'the tensor to read');
    return (await this.request('read a resident tensor', (id) => ({ type: 'read', id, handle }))).tensor!;
  }

  async release(tensors: readonly ResidentTensor[]): Promise<void> {
    const handles = tensors.map((t) => this.residents.drop(t)).filter((h): h is number => h !== undefined);
    // Ordered after every request already sent; a dead worker took its tensors with it.
    if (handles.length && this.worker && !this.disposed) {
      this.worker.postMessage({ type: 'release', handles } satisfies ToWorker);
    }
  }

  private assertOpen(): void {
    if (this.disposed) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `stage '${this.stage}': session is disposed`);
  }

  /** Sends one request to the worker (reopened if it died) and waits for its answer. */
  private async request(what: string, make: (id: number) => Request, transfer: ArrayBuffer[] = []): Promise<Outputs> {
    if (this.broken) throw this.broken;
    if (!this.worker) await this.reopen();
    const worker = this.worker;
    if (!worker || this.disposed)
      throw new SetokimError(ErrorCodes.CANCELLED, `stage '${this.stage}': session disposed during a run`);
    const id = this.nextId++;
    const msg = make(id);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { what, resolve, reject });
      if (this.pending.size === 1) worker.ref();
      try {
        // Copies the feeds (the caller keeps its arrays) except those it gave up in `transfer`.
        try {
          worker.postMessage(msg, transfer);
        } catch (err) {
          if (transfer.length === 0) throw err;
          worker.postMessage(msg); // a buffer that cannot move (e.g. Node's Buffer pool) is copied instead
        }
      } catch (err) {
        this.settle(id)?.reject(
          new SetokimError(
            ErrorCodes.INTERNAL,
            `stage '${this.stage}': cannot send the inputs to the worker: ${(err as Error).message}`,
            { cause: err },
          ),
        );
      }
    });
  }

  /** Opens a new worker on the same file; concurrent runs share one attempt; a failure is final. */
  private reopen(): Promise<void> {
    this.reopening ??= (async () => {
      const died = this.lastError ?? 'unknown cause';
      try {
        const { worker, ready } = await startWorker(this.spec);
        if (this.disposed) {
          await worker.terminate();
          return;
        }
        const same = (a: readonly string[], b: readonly string[]): boolean =>
          a.length === b.length && a.every((n, i) => n === b[i]);
        if (!same(ready.inputNames, this.inputNames) || !same(ready.outputNames, this.outputNames)) {
          await worker.terminate();
          throw new Error(
            `the file now has inputs ${ready.inputNames.join(', ')} and outputs ${ready.outputNames.join(', ')}, not those the session opened with`,
          );
        }
        this.attach(worker);
        this.restarts++;
      } catch (err) {
        this.broken = new SetokimError(
          ErrorCodes.BACKEND_CRASHED,
          `stage '${this.stage}': the ONNX Runtime worker died (${died}) and reopening ${this.spec.file} failed: ${(err as Error).message}. Check the model set and restart the agent.`,
          { cause: err },
        );
        throw this.broken;
      } finally {
        this.reopening = undefined;
      }
    })();
    return this.reopening;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.residents.loseAll('the session was disposed');
    this.failAll(new SetokimError(ErrorCodes.CANCELLED, `stage '${this.stage}': session disposed during a run`));
    await this.reopening?.catch(() => undefined); // a worker it opens now is terminated at once
    const worker = this.worker;
    if (!worker) return;
    worker.ref();
    await new Promise<void>((resolve) => {
      worker.once('exit', () => resolve());
      // A run still in flight answers first; wait for the 'disposed' reply itself.
      const onDisposed = (m: FromWorker) => {
        if (m.type !== 'disposed') return;
        worker.off('message', onDisposed);
        void worker.terminate();
      };
      worker.on('message', onDisposed);
      worker.postMessage({ type: 'dispose' } satisfies ToWorker);
    });
  }

  private settle(id: number | undefined): Pending | undefined {
    if (id === undefined) return undefined;
    const p = this.pending.get(id);
    if (!p) return undefined; // e.g. a run's answer after dispose cancelled it
    this.pending.delete(id);
    // Idle sessions let the process exit; a disposing one stays referenced until its worker exits.
    if (this.pending.size === 0 && !this.disposed) this.worker?.unref();
    return p;
  }

  private onMessage(m: FromWorker): void {
    if (m.type === 'result') {
      this.settle(m.id)?.resolve(Object.fromEntries(Object.entries(m.outputs).map(([k, w]) => [k, fromWire(w)])));
    } else if (m.type === 'error') {
      const p = this.settle(m.id);
      const why = `stage '${this.stage}': ONNX Runtime failed to ${p?.what}: ${m.message}`;
      p?.reject(new SetokimError(ErrorCodes.INTERNAL, why));
    }
  }

  private failAll(err: SetokimError): void {
    for (const id of [...this.pending.keys()]) this.settle(id)?.reject(err);
  }
}

export interface OrtBackendOptions {
  /** Default intra-op threads per session (ONNX Runtime's default is one per core). */
  threads?: number;
  /**
   * Dead workers a session replaces within `restartWindowMs` (default 3; 0: never). One more death
   * in that window leaves the session failing every run with BACKEND_CRASHED, without loading
   * the model again, until the stage is opened anew (e.g. the agent restarts).
   */
  maxRestarts?: number;
  /** The crash-loop window in milliseconds (default 60 000); older deaths no longer count. */
  restartWindowMs?: number;
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
      throw new SetokimError(
        ErrorCodes.MODEL_NOT_FOUND,
        `stage '${stage}': ${file} does not exist; check the model set's path`,
      );
    }
    const threads = options.threads ?? this.defaults.threads;
    if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `threads must be a positive integer, got ${threads}`);
    }
    const limit: CrashLoopLimit = {
      maxRestarts: this.defaults.maxRestarts ?? 3,
      windowMs: this.defaults.restartWindowMs ?? 60_000,
    };
    if (!Number.isInteger(limit.maxRestarts) || limit.maxRestarts < 0) {
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `maxRestarts must be a whole number (0 or more), got ${limit.maxRestarts}`,
      );
    }
    if (!Number.isFinite(limit.windowMs) || limit.windowMs <= 0) {
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `restartWindowMs must be a positive number of milliseconds, got ${limit.windowMs}`,
      );
    }
    const spec: WorkerSpec = {
      file,
      options: {
        intraOpNumThreads: threads ?? Math.max(1, availableParallelism()),
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      },
    };
    let started: Awaited<ReturnType<typeof startWorker>>;
    try {
      started = await startWorker(spec);
    } catch (err) {
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `stage '${stage}': ONNX Runtime cannot load ${file}: ${(err as Error).message}. Re-export the model set or check the file is a complete ONNX graph.`,
        { cause: err },
      );
    }
    const { worker, ready } = started;
    const signature = options.signature ?? signatureFromMetadata(ready.inputMetadata as OrtMetadata[]);
    return new OrtSession(worker, spec, stage, ready.inputNames, ready.outputNames, signature, limit);
  }
}
