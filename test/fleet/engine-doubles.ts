/**
 * Test doubles for the two places TensorRT itself would run in a fleet install, and the targets
 * they pretend to be. Nothing else is doubled: the cache, the bundle, the state machine, the
 * preflight and the manifests are the real code.
 *
 * - EngineBuilderTestDouble implements the EngineBuilder interface TensorRtEngineBuilder implements:
 *   where TensorRT would build a plan it writes a real file (deterministic bytes derived from the
 *   ONNX file and the profiles, a quarter of its size), through a `.partial` file and a rename as
 *   the native builder does, and the real engine manifest (engineManifestFor) with the facts of the
 *   target it pretends to build on. It can fail, hang (honouring the abort signal, or not), and
 *   call a hook at each progress step (the crash test kills its process there).
 * - tensorRtCanaryTestDouble stands in for the canary query on TensorRT: it checks that every stage
 *   of the set has its engine (manifest, sha256, this target) where the TensorRT backend would load
 *   it, and answers as the backend `tensorrt`.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  engineDir,
  engineManifestFor,
  type EngineBuildFacts,
  type EngineBuildRequest,
  type EngineBuilder,
} from '../../src/engine/engine-builder.js';
import {
  readEngineManifest,
  verifyPlanFile,
  writeEngineManifest,
  type EngineManifest,
  type MachineInfo,
} from '../../src/engine/engine-manifest.js';
import { hostResources } from '../../src/engine/build-estimate.js';
import { loadManifest } from '../../src/engine/manifest.js';
import { STAGES } from '../../src/engine/contract.js';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import type { EngineEnvironment } from '../../src/fleet/engine-env.js';
import type { CanaryResult, HealthContext } from '../../src/fleet/health.js';

/** Targets the tests pretend to be, each with the facts its builds record. */
export const TARGETS: Record<string, EngineBuildFacts & { jetpack: string | null }> = {
  'orin-nano-8gb/jp6.2/trt10.3': {
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.7',
    gpu: 'Orin',
    l4t: '36.4.3',
    jetpack: '6.2',
    seconds: 0,
  },
  'orin-nano-8gb/jp6.1/trt10.3': {
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.7',
    gpu: 'Orin',
    l4t: '36.4.0',
    jetpack: '6.1',
    seconds: 0,
  },
  'agx-orin-64gb/jp6.1/trt10.3': {
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.7',
    gpu: 'Orin',
    l4t: '36.4.0',
    jetpack: '6.1',
    seconds: 0,
  },
  'orin-nx-16gb/jp5.1/trt8.5': {
    tensorrt: '8.5.2',
    cuda: '11.4',
    sm: '8.7',
    gpu: 'Orin',
    l4t: '35.4.1',
    jetpack: '5.1.2',
    seconds: 0,
  },
  'agx-thor-128gb/jp7.0/trt10.13': {
    tensorrt: '10.13.3',
    cuda: '13.0',
    sm: '11.0',
    gpu: 'Thor',
    l4t: '38.2.0',
    jetpack: '7.0',
    seconds: 0,
  },
  'x86_64-sm89/none/trt10.3': {
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.9',
    gpu: 'NVIDIA L4',
    l4t: null,
    jetpack: null,
    seconds: 0,
  },
};

/** What a machine of `target` offers an engine. */
export function machineOf(target: string): MachineInfo {
  const f = TARGETS[target]!;
  return {
    tensorrtCompiled: true,
    tensorrt: f.tensorrt,
    cuda: f.cuda,
    gpus: [{ index: 0, name: f.gpu, sm: f.sm }],
    l4t: f.l4t,
  };
}

export interface BuilderDoubleOptions {
  /** The target whose facts the manifests record (default: the request's). */
  facts?: EngineBuildFacts;
  /** Fail the build of this stage (as TensorRT's parser or builder would). */
  failAt?: string;
  /** Never finish this stage's build: rejects when the signal aborts (or, with ignoreAbort, never). */
  hangAt?: string;
  ignoreAbort?: boolean;
  /** Called at each progress step of each build, awaited. */
  onStep?: (stage: string, step: number) => void | Promise<void>;
  /** Called with the plan half-written (its `.partial` file on disk, not renamed yet), awaited. */
  onPartial?: (stage: string, partial: string) => void | Promise<void>;
}

export class EngineBuilderTestDouble implements EngineBuilder {
  readonly name = 'EngineBuilderTestDouble';
  /** Stages built, in order (the ones that finished). */
  readonly built: string[] = [];
  /** Stages whose build started. */
  readonly started: string[] = [];
  /** Every build request, as given. */
  readonly requests: EngineBuildRequest[] = [];

  constructor(private readonly o: BuilderDoubleOptions = {}) {}

  async build(r: EngineBuildRequest): Promise<EngineManifest> {
    this.started.push(r.stage);
    this.requests.push(r);
    const facts = this.o.facts ?? TARGETS[r.target ?? '']!;
    const steps = 3;
    r.onProgress?.('Building engine', 0, steps);
    for (let step = 1; step <= steps; step++) {
      await this.o.onStep?.(r.stage, step);
      r.onProgress?.('Building engine', step, steps);
      if (r.signal?.aborted) throw r.signal.reason as Error;
    }
    if (r.stage === this.o.hangAt) await this.hang(r.signal);
    if (r.stage === this.o.failAt) {
      throw new SetokimError(
        ErrorCodes.ENGINE_BUILD_FAILED,
        `EngineBuilderTestDouble: the ONNX parser rejected ${r.onnx} (as asked)`,
      );
    }
    const onnx = await readFile(r.onnx);
    const seed = createHash('sha256')
      .update(onnx)
      .update(JSON.stringify(r.profiles))
      .update(r.target ?? '')
      .digest();
    const bytes = Buffer.alloc(Math.max(1024, Math.floor(onnx.length / 4)));
    for (let i = 0; i < bytes.length; i++) bytes[i] = seed[i % seed.length]! ^ (i & 0xff);
    await mkdir(path.dirname(r.plan), { recursive: true });
    await writeFile(`${r.plan}.partial`, bytes);
    await this.o.onPartial?.(r.stage, `${r.plan}.partial`);
    await rename(`${r.plan}.partial`, r.plan);
    const m = await engineManifestFor(r, facts);
    await writeEngineManifest(r.plan, m);
    this.built.push(r.stage);
    return m;
  }

  private hang(signal: AbortSignal | undefined): Promise<never> {
    return new Promise((_, reject) => {
      if (!this.o.ignoreAbort) signal?.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
    });
  }
}

/** A device of `target`: its facts, the builder given, the real /proc/meminfo and statfs (or under `root`). */
export function testEnvironment(target: string, builder: EngineBuilder, root?: string): EngineEnvironment {
  const f = TARGETS[target]!;
  return {
    target,
    machine: machineOf(target),
    jetson: f.l4t !== null,
    jetpack: f.jetpack,
    builder,
    resources: (dir) => hostResources(dir, root),
  };
}

/** Builds every stage of `setDir` into `out` with the double, as `setokim export engine` on a `target` device would. */
export async function prebuiltEngines(
  setDir: string,
  target: string,
  out: string,
  stages?: readonly string[],
): Promise<string> {
  const { stageDimProfiles } = await import('../../src/engine/engine-builder.js');
  const set = await loadManifest(setDir);
  const builder = new EngineBuilderTestDouble();
  for (const stage of STAGES) {
    const e = set.stages[stage];
    if (!e || (stages && !stages.includes(stage))) continue;
    await builder.build({
      stage,
      onnx: path.join(setDir, e.file),
      plan: path.join(out, `${stage}.${e.precision}.plan`),
      signature: e.signature,
      profiles: stageDimProfiles(stage, set.architecture),
      precision: e.precision,
      target,
      jetpack: TARGETS[target]!.jetpack,
    });
  }
  return out;
}

/**
 * Stands in for the canary query on TensorRT (which would load every plan and answer): every
 * stage's engine is there, whole, for `target`; `failAt` fails as a plan that loads but cannot run.
 */
export function tensorRtCanaryTestDouble(target: string, o: { failAt?: string; backend?: string } = {}) {
  const calls: HealthContext[] = [];
  const check = async (dir: string, ctx: HealthContext): Promise<CanaryResult> => {
    calls.push(ctx);
    const set = await loadManifest(dir);
    for (const stage of STAGES) {
      const e = set.stages[stage];
      if (!e) continue;
      const plan =
        e.format === 'tensorrt' ? path.join(dir, e.file) : path.join(engineDir(dir), `${stage}.${e.precision}.plan`);
      const m = readEngineManifest(plan);
      await verifyPlanFile(plan, m);
      if (m.target !== target) throw new SetokimError(ErrorCodes.ENGINE_INCOMPATIBLE, `${plan} is for ${m.target}`);
      if (stage === o.failAt)
        throw new SetokimError(
          ErrorCodes.INTERNAL,
          `stage '${stage}': TensorRT failed to run (tensorRtCanaryTestDouble, as asked)`,
        );
    }
    return { ms: 1, visionTokens: 1, generatedTokens: 1, backend: o.backend ?? 'tensorrt' };
  };
  return Object.assign(check, { calls });
}
