/**
 * What a device builds and checks engines with during an install (src/fleet/engines.ts): its
 * target, what its machine offers an engine, the builder, and what it has free; and the build
 * preflight, which compares the builder's peak estimate (src/engine/build-estimate.ts) with that
 * and refuses with ENGINE_BUILD_RESOURCES and the numbers instead of being OOM-killed halfway.
 */
import {
  builderPeakEstimate,
  hostResources,
  largestWeightBytes,
  type BuildEstimate,
  type HostResources,
} from '../engine/build-estimate.js';
import type { Architecture, StageName } from '../engine/contract.js';
import { TensorRtEngineBuilder, type EngineBuilder } from '../engine/engine-builder.js';
import { machineInfo, type MachineInfo } from '../engine/engine-manifest.js';
import { capabilities } from '../engine/native.js';
import { detectTarget } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';

/** Where a device builds and checks engines. Every field is detected by detectEngineEnvironment. */
export interface EngineEnvironment {
  /** This device's target id (src/engine/target.ts). */
  target: string;
  /** What the machine offers an engine (TensorRT, GPUs, CUDA, L4T); null without TensorRT. */
  machine: MachineInfo | null;
  /** A Jetson: the GPU allocates from host memory and CMA. */
  jetson: boolean;
  /** The JetPack release, recorded in the manifests of engines built here. */
  jetpack: string | null;
  builder: EngineBuilder;
  /** Free host memory, CMA and disk (for `dir`) now. */
  resources: (dir: string) => Promise<HostResources>;
}

/** Whether engines serve on this target (its runtime is TensorRT, not the CPU). */
export const runsEngines = (target: string): boolean => target.split('/')[2] !== 'cpu';

/** This device: detectTarget(), the addon's machine info, TensorRT's builder, /proc/meminfo and statfs. */
export async function detectEngineEnvironment(): Promise<EngineEnvironment> {
  const t = await detectTarget();
  return {
    target: t.id,
    machine: t.tensorrt ? machineInfo(capabilities()) : null,
    jetson: t.jetson !== null,
    jetpack: t.jetson?.jetpack ?? null,
    builder: new TensorRtEngineBuilder(),
    resources: (dir) => hostResources(dir),
  };
}

/** One stage to build, as the preflight sees it. */
export interface PlannedBuild {
  stage: StageName;
  /** Bytes of the ONNX file it is built from. */
  weightBytes: number;
  precision: string;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

/**
 * Refuses the builds when the device lacks what the largest of them needs (host memory, CMA on a
 * Jetson) or what all of them write (disk, plus `reserveBytes`): one ENGINE_BUILD_RESOURCES naming
 * every shortfall with its numbers. Returns the estimates (for the log).
 */
export async function preflightBuilds(
  builds: readonly PlannedBuild[],
  a: Architecture,
  env: EngineEnvironment,
  o: { dir: string; workspaceBytes: number; reserveBytes: number },
): Promise<Map<StageName, BuildEstimate>> {
  const estimates = new Map<StageName, BuildEstimate>();
  if (builds.length === 0) return estimates;
  for (const b of builds) {
    const largest = largestWeightBytes(b.stage, a, b.precision);
    const input = { weightBytes: b.weightBytes, workspaceBytes: o.workspaceBytes, integratedGpu: env.jetson };
    estimates.set(
      b.stage,
      builderPeakEstimate({ ...input, ...(largest !== undefined ? { largestTensorBytes: largest } : {}) }),
    );
  }
  const free = await env.resources(o.dir);
  const short: string[] = [];
  const worst = (k: keyof BuildEstimate) => [...estimates].reduce((w, e) => (e[1][k] > w[1][k] ? e : w));
  const [hostStage, host] = worst('hostBytes');
  if (host.hostBytes > free.memAvailableBytes) {
    const weights = builds.find((b) => b.stage === hostStage)!.weightBytes;
    const workspace = env.jetson ? `the ${mib(o.workspaceBytes)} workspace` : 'no workspace on a discrete GPU';
    short.push(
      `host memory: building ${hostStage} needs about ${mib(host.hostBytes)} (4 x ${mib(weights)} of weights, ` +
        `the builder and ${workspace}), MemAvailable is ${mib(free.memAvailableBytes)}`,
    );
  }
  const [cmaStage, cma] = worst('cmaBytes');
  if (env.jetson && free.cmaFreeBytes !== null && cma.cmaBytes > free.cmaFreeBytes) {
    short.push(
      `CMA: ${cmaStage}'s largest tensor needs ${mib(cma.cmaBytes)} contiguous, CmaFree is ${mib(free.cmaFreeBytes)}`,
    );
  }
  const disk = [...estimates.values()].reduce((n, e) => n + e.diskBytes, 0) + o.reserveBytes;
  if (disk > free.diskFreeBytes) {
    short.push(
      `disk: the plans need about ${mib(disk)} with the reserve, ${o.dir} has ${mib(free.diskFreeBytes)} free`,
    );
  }
  if (short.length) {
    const stages = builds.map((b) => b.stage).join(', ');
    throw new SetokimError(
      ErrorCodes.ENGINE_BUILD_RESOURCES,
      `cannot build the engines of ${stages} on ${env.target}: ${short.join('; ')}. Free memory or disk on the ` +
        'device (stop other work, lower the builder workspace), or publish prebuilt engines for ' +
        `${env.target} (bundle create --engines)`,
    );
  }
  return estimates;
}
