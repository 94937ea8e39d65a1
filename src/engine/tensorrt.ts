/**
 * The TensorRT backend's TypeScript side. It opens a plan only after its manifest says the plan was
 * built for this TensorRT, GPU and CUDA, and its bytes match; the addon (tensorrt_binding.cc) then
 * deserialises it and runs enqueueV3 on a worker thread. Available only when the addon was built
 * with TensorRT and a GPU is present.
 */
import path from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Backend, Feed, Session, SessionOptions, SessionRunOptions, Tensor, TypedArray } from './backend.js';
import type { DType } from './contract.js';
import {
  type CompatibilityOptions,
  type EngineManifest,
  assertEngineCompatible,
  machineInfo,
  readEngineManifest,
  verifyPlanFile,
} from './engine-manifest.js';
import { signatureDifference } from './manifest.js';
import { loadNative } from './native.js';
import type { Capabilities, NativeAddon, NativeTrtEngine, NativeTrtTensor } from './native.js';
import { checkRowWrites, ResidentRegistry, wireRowCopies, wireRowWrites } from './resident.js';
import type { ResidentSpec, ResidentTensor, RowCopy } from './resident.js';
import { type DimLimits, checkFeeds } from './signature.js';

/** Why TensorRT cannot run here, or undefined when it can. */
export function tensorrtUnavailableReason(load: () => NativeAddon = loadNative): string | undefined {
  let addon: NativeAddon;
  let caps: Capabilities;
  try {
    addon = load();
    caps = addon.capabilities();
  } catch (err) {
    return (err as Error).message;
  }
  if (!caps.compiled.tensorrt || typeof addon.trtLoadEngine !== 'function') {
    return 'the addon was built without TensorRT (rebuild with SETOKIM_TENSORRT=ON and TENSORRT_ROOT set, on a machine with TensorRT)';
  }
  if (caps.present.gpus.length === 0) return `no GPU is present (${caps.present.gpuProbeError ?? 'none found'})`;
  return undefined;
}

/** Profile limits as per-name bounds, where an input's named dim maps to one axis. */
function profileLimits(m: EngineManifest): DimLimits {
  const limits: DimLimits = {};
  for (const spec of m.io.inputs) {
    spec.shape.forEach((d, axis) => {
      if (typeof d !== 'string') return;
      const lo = Math.min(...m.profiles.map((p) => p[spec.name]?.min[axis] ?? Infinity));
      const hi = Math.max(...m.profiles.map((p) => p[spec.name]?.max[axis] ?? -Infinity));
      if (Number.isFinite(lo) && Number.isFinite(hi)) limits[d] = { min: lo, max: hi };
    });
  }
  return limits;
}

const fromNative = (t: NativeTrtTensor): Tensor => ({
  dtype: t.dtype as DType,
  dims: t.dims,
  data: t.data as TypedArray,
  location: 'host',
});

/**
 * One engine's session. Resident tensors are device buffers the addon keeps under the handles
 * of this session's registry: the KV cache stays on the GPU for the whole query.
 */
class TrtSession implements Session {
  readonly backend = 'tensorrt';
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  private readonly limits: DimLimits;
  private readonly residents: ResidentRegistry;
  private disposed = false;

  constructor(
    private readonly engine: NativeTrtEngine,
    private readonly manifest: EngineManifest,
    private readonly stage: string,
  ) {
    this.inputNames = engine.io.filter((t) => t.mode === 'input').map((t) => t.name);
    this.outputNames = engine.io.filter((t) => t.mode === 'output').map((t) => t.name);
    this.limits = profileLimits(manifest);
    this.residents = new ResidentRegistry(stage);
  }

  get residentBytes(): number {
    return this.residents.bytes;
  }

  async run(feeds: Record<string, Feed>, options: SessionRunOptions = {}): Promise<Record<string, Tensor>> {
    this.assertOpen();
    const bound = checkFeeds(this.stage, this.manifest.io, feeds, this.limits);
    const writes = options.writeInto ?? {};
    checkRowWrites(this.stage, this.manifest.io, bound, writes, this.outputNames);
    const host: Record<string, NativeTrtTensor> = {};
    const resident: Record<string, number> = {};
    for (const [name, t] of Object.entries(feeds)) {
      if (t.location === 'resident') resident[name] = this.residents.idOf(t, `input '${name}'`);
      else host[name] = { dtype: t.dtype, dims: [...t.dims], data: t.data };
    }
    const wireWrites = wireRowWrites(this.residents, writes);
    const out = await this.native('run', () => this.engine.run(host, resident, wireWrites));
    return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, fromNative(t)]));
  }

  async allocate(specs: readonly ResidentSpec[]): Promise<ResidentTensor[]> {
    this.assertOpen();
    return this.residents.allocate(specs, (tensors) =>
      this.native('allocate device memory', () => this.engine.allocate(tensors)),
    );
  }

  async copyRows(copies: readonly RowCopy[]): Promise<void> {
    this.assertOpen();
    const wire = wireRowCopies(this.residents, this.stage, copies);
    await this.native('copy rows', () => this.engine.copyRows(wire));
  }

  async read(t: ResidentTensor): Promise<Tensor> {
    this.assertOpen();
    const handle = this.residents.idOf(t, 'the tensor to read');
    return fromNative(await this.native('read a resident tensor', () => this.engine.read(handle)));
  }

  async release(tensors: readonly ResidentTensor[]): Promise<void> {
    const handles = tensors.map((t) => this.residents.drop(t)).filter((h): h is number => h !== undefined);
    if (handles.length === 0 || this.disposed) return;
    await this.native('release device memory', () => this.engine.release(handles));
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.residents.loseAll('the session was disposed');
    this.engine.dispose(); // frees the device buffers once no run holds the session
  }

  private assertOpen(): void {
    if (this.disposed) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `stage '${this.stage}': session is disposed`);
  }

  private async native<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      // The addon marks what the caller passed wrong (std::invalid_argument in the session) BAD_ARGUMENT.
      const code =
        (err as { code?: unknown }).code === ErrorCodes.BAD_ARGUMENT ? ErrorCodes.BAD_ARGUMENT : ErrorCodes.INTERNAL;
      const why = `stage '${this.stage}': TensorRT failed to ${what}: ${(err as Error).message}`;
      throw new SetokimError(code, why, { cause: err });
    }
  }
}

export interface TensorRtBackendOptions extends CompatibilityOptions {
  /** CUDA device index (default 0). */
  device?: number;
  /** For tests: where the addon comes from. */
  load?: () => NativeAddon;
}

export class TensorRtBackend implements Backend {
  readonly name = 'tensorrt';
  readonly priority = 100;
  private readonly load: () => NativeAddon;
  constructor(private readonly options: TensorRtBackendOptions = {}) {
    this.load = options.load ?? loadNative;
  }

  async available(): Promise<boolean> {
    return tensorrtUnavailableReason(this.load) === undefined;
  }

  async unavailableReason(): Promise<string> {
    return tensorrtUnavailableReason(this.load) ?? 'available';
  }

  async open(plan: string, options: SessionOptions = {}): Promise<Session> {
    const stage = options.stage ?? path.basename(plan);
    const addon = this.load();
    const reason = tensorrtUnavailableReason(() => addon);
    if (reason)
      throw new SetokimError(ErrorCodes.BACKEND_UNAVAILABLE, `stage '${stage}': TensorRT is unavailable: ${reason}`);
    const manifest = readEngineManifest(plan);
    assertEngineCompatible(manifest, machineInfo(addon.capabilities()), this.options);
    // An engine left over from an older export of the set must not serve the new contract.
    const diff = options.signature && signatureDifference(options.signature, manifest.io);
    if (diff) {
      throw new SetokimError(
        ErrorCodes.ENGINE_INCOMPATIBLE,
        `stage '${stage}': engine ${plan} was built for another signature (${diff}); rebuild it with \`setokim export engine\``,
      );
    }
    await verifyPlanFile(plan, manifest);
    let engine: NativeTrtEngine;
    try {
      engine = await addon.trtLoadEngine!(plan, this.options.device ?? 0);
    } catch (err) {
      throw new SetokimError(
        ErrorCodes.ENGINE_INCOMPATIBLE,
        `stage '${stage}': TensorRT refused ${plan}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    // There is no compatibility preflight: one canary inference at the first profile's opt shapes
    // proves the plan runs here before the stage takes traffic.
    try {
      await engine.run(canaryFeeds(manifest));
    } catch (err) {
      engine.dispose();
      throw new SetokimError(
        ErrorCodes.ENGINE_INCOMPATIBLE,
        `stage '${stage}': the canary inference of ${plan} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return new TrtSession(engine, manifest, stage);
  }
}

const ZEROS: Record<DType, (n: number) => TypedArray> = {
  float32: (n) => new Float32Array(n),
  float16: (n) => new Uint16Array(n),
  int64: (n) => new BigInt64Array(n),
  int32: (n) => new Int32Array(n),
  int8: (n) => new Int8Array(n),
  uint8: (n) => new Uint8Array(n),
  bool: (n) => new Uint8Array(n),
};

/** Zero tensors at the first profile's opt shapes. */
export function canaryFeeds(m: EngineManifest): Record<string, NativeTrtTensor> {
  const profile = m.profiles[0]!;
  return Object.fromEntries(
    m.io.inputs.map((spec) => {
      const dims = profile[spec.name]?.opt ?? spec.shape.map((d) => (typeof d === 'number' ? d : 1));
      return [spec.name, { dtype: spec.dtype, dims, data: ZEROS[spec.dtype](dims.reduce((a, b) => a * b, 1)) }];
    }),
  );
}
