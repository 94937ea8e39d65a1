/**
 * Builds a TensorRT engine from a stage's ONNX graph on this machine (the addon's EngineBuilder,
 * strongly typed, on a worker thread) and writes the manifest beside the plan. Engines are built
 * on the device they run on: a plan is bound to its TensorRT version and GPU (docs/ENGINES.md).
 */
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SetokimError } from '../errors.js';
import type { StageSignature } from './contract.js';
import { ENGINE_MANIFEST_FORMAT, type EngineManifest, engineManifestPath, machineInfo, sha256File } from './engine-manifest.js';
import { type NativeAddon, loadNative } from './native.js';
import { tensorrtUnavailableReason } from './tensorrt.js';

export interface BuildEngineOptions {
  stage: string;
  onnx: string;
  plan: string;
  signature: StageSignature;
  /** Largest size of each named input dim (e.g. { L: 256 }); every named dim needs one. */
  maxDims: Record<string, number>;
  /** Smallest size of each named dim (default 1). */
  minDims?: Record<string, number>;
  /** The size TensorRT tunes kernels for (default: the max). */
  optDims?: Record<string, number>;
  /** The precision written into the ONNX graph (recorded; the network is strongly typed). */
  precision: EngineManifest['precision'];
  /** Builder workspace limit; small boards run out of memory without one (default 1 GiB). */
  workspaceBytes?: number;
  timingCache?: string;
  jetpack?: string | null;
  onProgress?: (phase: string, step: number, steps: number) => void;
  /** For tests: where the addon comes from. */
  load?: () => NativeAddon;
}

type Profile = EngineManifest['profiles'][number];

/** One optimisation profile from the signature: fixed dims stay fixed, named dims span min..max. */
export function profileFromSignature(
  sig: StageSignature,
  maxDims: Record<string, number>,
  minDims: Record<string, number> = {},
  optDims: Record<string, number> = {},
): Profile {
  const profile: Profile = {};
  for (const spec of sig.inputs) {
    const min: number[] = [];
    const opt: number[] = [];
    const max: number[] = [];
    for (const d of spec.shape) {
      if (typeof d === 'number') {
        min.push(d), opt.push(d), max.push(d);
        continue;
      }
      const hi = maxDims[d];
      if (hi === undefined) {
        throw new SetokimError('BAD_ARGUMENT', `input '${spec.name}' has dynamic dim '${d}': give its largest size (maxDims.${d})`);
      }
      const lo = minDims[d] ?? 1;
      const mid = optDims[d] ?? hi;
      if (!(lo <= mid && mid <= hi)) throw new SetokimError('BAD_ARGUMENT', `dim '${d}' needs min <= opt <= max, got ${lo}, ${mid}, ${hi}`);
      min.push(lo), opt.push(mid), max.push(hi);
    }
    profile[spec.name] = { min, opt, max };
  }
  return profile;
}

export async function buildEngine(o: BuildEngineOptions): Promise<EngineManifest> {
  const load = o.load ?? loadNative;
  const reason = tensorrtUnavailableReason(load);
  if (reason) {
    throw new SetokimError('BACKEND_UNAVAILABLE', `cannot build a TensorRT engine for stage '${o.stage}': ${reason}. Engines are built on the Jetson that runs them.`);
  }
  const addon = load();
  const machine = machineInfo(addon.capabilities());
  const gpu = machine.gpus[0]!;
  const profile = profileFromSignature(o.signature, o.maxDims, o.minDims, o.optDims);
  const workspaceBytes = o.workspaceBytes ?? 1 << 30;
  let result;
  try {
    result = await addon.trtBuildEngine!(
      { onnx: o.onnx, plan: o.plan, workspaceBytes, timingCache: o.timingCache, profiles: [profile], device: gpu.index },
      o.onProgress,
    );
  } catch (err) {
    throw new SetokimError('MODEL_INVALID', `TensorRT could not build stage '${o.stage}' from ${o.onnx}: ${(err as Error).message}`, { cause: err });
  }
  const manifest: EngineManifest = {
    format: ENGINE_MANIFEST_FORMAT,
    stage: o.stage,
    plan: path.basename(o.plan),
    sha256: await sha256File(o.plan),
    bytes: statSync(o.plan).size,
    source: { file: path.basename(o.onnx), sha256: await sha256File(o.onnx) },
    tensorrt: machine.tensorrt!,
    cuda: machine.cuda ?? '0',
    sm: gpu.sm,
    gpu: gpu.name,
    jetpack: o.jetpack ?? null,
    l4t: machine.l4t,
    precision: o.precision,
    stronglyTyped: true,
    versionCompatible: false,
    profiles: [profile],
    io: o.signature,
    builder: { workspaceBytes, timingCache: !!o.timingCache, seconds: result.seconds },
    builtAt: new Date().toISOString(),
  };
  writeFileSync(engineManifestPath(o.plan), JSON.stringify(manifest, null, 2) + '\n');
  return manifest;
}
