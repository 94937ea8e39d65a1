/**
 * Builds a TensorRT engine from a stage's ONNX graph on this machine (the addon's EngineBuilder,
 * strongly typed, on a worker thread) and writes the manifest beside the plan. Engines are built
 * on the device they run on: a plan is bound to its TensorRT version and GPU (docs/ENGINES.md).
 * `EngineBuilder` is the interface a fleet install builds missing engines through
 * (src/fleet/engines.ts); `TensorRtEngineBuilder` is the real one.
 */
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Architecture, StageName, StageSignature } from './contract.js';
import { ENGINE_MANIFEST_FORMAT, type EngineManifest, machineInfo, writeEngineManifest } from './engine-manifest.js';
import { sha256File, type Dialect } from './manifest.js';
import { type NativeAddon, loadNative } from './native.js';
import { tensorrtUnavailableReason } from './tensorrt.js';

/** One engine to build: what every EngineBuilder takes. */
export interface EngineBuildRequest {
  stage: string;
  onnx: string;
  /** Where the plan goes; its manifest is written beside it (`<plan>.json`). */
  plan: string;
  signature: StageSignature;
  /** One optimisation profile per entry: each named dim's min/opt/max (see stageDimProfiles). */
  profiles: DimRanges[];
  /** The precision written into the ONNX graph (recorded; the network is strongly typed). */
  precision: EngineManifest['precision'];
  /** The graph dialect of `onnx` (absent: a graph for every backend); recorded for the engine cache key. */
  dialect?: Dialect;
  /** The target it is built for (src/engine/target.ts); recorded in the manifest. */
  target?: string;
  /** Builder workspace limit; small boards run out of memory without one (default 1 GiB). */
  workspaceBytes?: number;
  timingCache?: string;
  jetpack?: string | null;
  /**
   * Aborting stops the build (the native builder at TensorRT's next progress step); the build then
   * rejects with the signal's reason when it is a SetokimError (e.g. ENGINE_BUILD_TIMEOUT), else CANCELLED.
   */
  signal?: AbortSignal;
  onProgress?: (phase: string, step: number, steps: number) => void;
}

/** Builds one engine and writes its plan and manifest; what a fleet install builds missing engines with. */
export interface EngineBuilder {
  /** For logs: `tensorrt`, or a test double's name. */
  readonly name: string;
  build(request: EngineBuildRequest): Promise<EngineManifest>;
}

export interface BuildEngineOptions extends Omit<EngineBuildRequest, 'profiles'> {
  profiles?: DimRanges[];
  /** Shorthand for one profile: the largest size of each named dim (min 1, opt = max). */
  maxDims?: Record<string, number>;
  /** For tests: where the addon comes from. */
  load?: () => NativeAddon;
}

type Profile = EngineManifest['profiles'][number];

/** Sizes of each named dim in one optimisation profile. */
export type DimRanges = Record<string, { min: number; opt: number; max: number }>;

/** Where a model set's engines live: machine-specific, so beside the portable set, not in its manifest. */
export const engineDir = (setDir: string): string => path.join(setDir, 'engines');
export const enginePlanPath = (setDir: string, stage: string, precision: string): string =>
  path.join(engineDir(setDir), `${stage}.${precision}.plan`);

const range = (min: number, opt: number, max: number) => ({ min, opt: Math.min(Math.max(opt, min), max), max });

/**
 * Default profiles per stage from the architecture: vision tokens L in 1..maxTokens, the LLM with a
 * prefill profile (T up to the context over a cache of S rows, tuned for an empty one) and a decode
 * profile (T = 1; S, the query's fixed cache size, up to the context: every decode step of a query
 * has the same shape), the diffusion batch B up to `diffusionBatch`, by default L: the pipeline
 * denoises every `<target>` token of an image in one batch, and an image has up to maxTokens of them.
 */
export function stageDimProfiles(
  stage: StageName,
  a: Architecture,
  limits: { maxTokens?: number; maxContext?: number; diffusionBatch?: number } = {},
): DimRanges[] {
  const L = limits.maxTokens ?? a.cluster.maxTokens;
  const ctx = limits.maxContext ?? a.llm.maxContext;
  const B = limits.diffusionBatch ?? L;
  const common = {
    batch: range(1, 1, 1),
    L: range(1, Math.ceil(L / 2), L),
    B: range(1, 2, B),
    T: range(1, Math.min(64, ctx), ctx),
  };
  if (stage === 'llm') {
    return [
      { ...common, T: range(1, Math.min(512, ctx), ctx), S: range(0, 0, ctx) },
      { ...common, T: range(1, 1, 1), S: range(1, Math.ceil(ctx / 2), ctx) },
    ];
  }
  return [common];
}

/** One optimisation profile from the signature: fixed dims stay fixed, named dims span min..max. */
export function profileFromSignature(sig: StageSignature, dims: DimRanges): Profile {
  const profile: Profile = {};
  for (const spec of sig.inputs) {
    const min: number[] = [];
    const opt: number[] = [];
    const max: number[] = [];
    for (const d of spec.shape) {
      if (typeof d === 'number') {
        min.push(d);
        opt.push(d);
        max.push(d);
        continue;
      }
      const r = dims[d];
      if (r === undefined) {
        throw new SetokimError(
          ErrorCodes.BAD_ARGUMENT,
          `input '${spec.name}' has dynamic dim '${d}': the profile needs its min/opt/max`,
        );
      }
      const { min: lo, opt: mid, max: hi } = r;
      if (!(lo <= mid && mid <= hi))
        throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `dim '${d}' needs min <= opt <= max, got ${lo}, ${mid}, ${hi}`);
      min.push(lo);
      opt.push(mid);
      max.push(hi);
    }
    profile[spec.name] = { min, opt, max };
  }
  return profile;
}

/** What the machine and the build add to a manifest: versions, GPU, build time and settings. */
export interface EngineBuildFacts {
  tensorrt: string;
  cuda: string;
  sm: string;
  gpu: string;
  l4t: string | null;
  seconds: number;
}

/** The manifest of a plan just written at `r.plan`: hashes the plan and the ONNX it came from. */
export async function engineManifestFor(r: EngineBuildRequest, facts: EngineBuildFacts): Promise<EngineManifest> {
  return {
    format: ENGINE_MANIFEST_FORMAT,
    stage: r.stage,
    plan: path.basename(r.plan),
    sha256: await sha256File(r.plan),
    bytes: statSync(r.plan).size,
    source: { file: path.basename(r.onnx), sha256: await sha256File(r.onnx) },
    tensorrt: facts.tensorrt,
    cuda: facts.cuda,
    sm: facts.sm,
    gpu: facts.gpu,
    jetpack: r.jetpack ?? null,
    l4t: facts.l4t,
    precision: r.precision,
    stronglyTyped: true,
    versionCompatible: false,
    profiles: r.profiles.map((p) => profileFromSignature(r.signature, p)),
    io: r.signature,
    builder: {
      workspaceBytes: r.workspaceBytes ?? DEFAULT_WORKSPACE_BYTES,
      timingCache: !!r.timingCache,
      seconds: facts.seconds,
    },
    builtAt: new Date().toISOString(),
    ...(r.target ? { target: r.target } : {}),
    ...(r.dialect ? { dialect: r.dialect } : {}),
  };
}

export const DEFAULT_WORKSPACE_BYTES = 1 << 30;

/** The error an aborted build ends with: the signal's reason when it is one of ours. */
function abortError(stage: string, signal: AbortSignal): SetokimError {
  if (signal.reason instanceof SetokimError) return signal.reason;
  return new SetokimError(ErrorCodes.CANCELLED, `the engine build of stage '${stage}' was cancelled`);
}

export async function buildEngine(o: BuildEngineOptions): Promise<EngineManifest> {
  const load = o.load ?? loadNative;
  const reason = tensorrtUnavailableReason(load);
  if (reason) {
    throw new SetokimError(
      ErrorCodes.BACKEND_UNAVAILABLE,
      `cannot build a TensorRT engine for stage '${o.stage}': ${reason}. Engines are built on the Jetson that runs them.`,
    );
  }
  if (o.signal?.aborted) throw abortError(o.stage, o.signal);
  const addon = load();
  const machine = machineInfo(addon.capabilities());
  const gpu = machine.gpus[0]!;
  const dimProfiles = o.profiles ?? [
    Object.fromEntries(Object.entries(o.maxDims ?? {}).map(([k, v]) => [k, { min: 1, opt: v, max: v }])),
  ];
  const profiles = dimProfiles.map((p) => profileFromSignature(o.signature, p));
  const workspaceBytes = o.workspaceBytes ?? DEFAULT_WORKSPACE_BYTES;
  mkdirSync(path.dirname(o.plan), { recursive: true });
  let cancel: (() => void) | undefined;
  const onAbort = () => cancel?.();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  let result;
  try {
    result = await addon.trtBuildEngine!(
      { onnx: o.onnx, plan: o.plan, workspaceBytes, timingCache: o.timingCache, profiles, device: gpu.index },
      o.onProgress,
      (c) => (cancel = c),
    );
  } catch (err) {
    if (o.signal?.aborted) throw abortError(o.stage, o.signal);
    const why = `TensorRT could not build stage '${o.stage}' from ${o.onnx}: ${(err as Error).message}`;
    throw new SetokimError(ErrorCodes.ENGINE_BUILD_FAILED, why, { cause: err });
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
  const facts = {
    tensorrt: machine.tensorrt!,
    cuda: machine.cuda ?? '0',
    sm: gpu.sm,
    gpu: gpu.name,
    l4t: machine.l4t,
    seconds: result.seconds,
  };
  const manifest = await engineManifestFor({ ...o, profiles: dimProfiles, workspaceBytes }, facts);
  await writeEngineManifest(o.plan, manifest);
  return manifest;
}

/** The real builder: TensorRT through the native addon (buildEngine). */
export class TensorRtEngineBuilder implements EngineBuilder {
  readonly name = 'tensorrt';
  constructor(private readonly load?: () => NativeAddon) {}

  build(request: EngineBuildRequest): Promise<EngineManifest> {
    return buildEngine({ ...request, ...(this.load ? { load: this.load } : {}) });
  }
}
