/**
 * What building one TensorRT engine needs on the device, estimated before the build starts, and
 * what the device has free: the build preflight of a fleet install (src/fleet/engines.ts) refuses
 * with ENGINE_BUILD_RESOURCES and the numbers rather than being OOM-killed halfway. The planner
 * (tools/export/plan.ts) may show the same estimate per stage; it lives here, below both.
 *
 * The estimate (docs/ENGINES.md "Build preflight"):
 *   host memory  BUILDER_PEAK_FACTOR (4) x the stage's weight bytes: the parser's copy of the graph,
 *                the network's weights, the builder's optimised copy and the serialised plan are alive
 *                at once; users report builder peaks of 3-4x the weights (OOM-killed builds on 8 GB
 *                Orins), and the top of that range makes the refusal come before the OOM killer.
 *                Plus BUILDER_BASE_BYTES for the CUDA context and TensorRT's builder library, and, on
 *                a Jetson (the GPU shares the host's memory), the builder's workspace limit.
 *   CMA          on a Jetson only: the largest single weight tensor, which the GPU driver allocates
 *                contiguously (users report builds failing on CMA for large lm_heads); for the LLM
 *                stage its lm_head (vocab x hidden), for the others no CMA bound is claimed.
 *   disk         the plan, about the weights at the graph's precision plus kernels:
 *                PLAN_DISK_FACTOR (1.25) x weights + 16 MiB.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Architecture, StageName } from './contract.js';
import { freeBytes } from './durable.js';

export const BUILDER_PEAK_FACTOR = 4;
export const BUILDER_BASE_BYTES = 512 * 2 ** 20;
export const PLAN_DISK_FACTOR = 1.25;
export const PLAN_DISK_EXTRA_BYTES = 16 * 2 ** 20;

export interface BuildEstimate {
  /** Peak host memory of the build (on a Jetson, GPU memory is host memory). */
  hostBytes: number;
  /** Contiguous memory (CMA) the largest tensor needs on a Jetson; 0 when none is claimed. */
  cmaBytes: number;
  /** Disk the plan takes. */
  diskBytes: number;
}

export interface BuildEstimateInput {
  /** Bytes of the stage's weights: its ONNX file's size is a close upper bound. */
  weightBytes: number;
  /** The largest single weight tensor in bytes, when known (largestWeightBytes). */
  largestTensorBytes?: number;
  /** The builder's workspace limit (counted on an integrated GPU only). */
  workspaceBytes: number;
  /** A Jetson: the GPU allocates from host memory (and CMA). */
  integratedGpu: boolean;
}

/** The builder's peak needs for one stage engine (the rules above). */
export function builderPeakEstimate(i: BuildEstimateInput): BuildEstimate {
  const workspace = i.integratedGpu ? i.workspaceBytes : 0;
  return {
    hostBytes: Math.ceil(BUILDER_PEAK_FACTOR * i.weightBytes) + BUILDER_BASE_BYTES + workspace,
    cmaBytes: i.integratedGpu ? (i.largestTensorBytes ?? 0) : 0,
    diskBytes: Math.ceil(PLAN_DISK_FACTOR * i.weightBytes) + PLAN_DISK_EXTRA_BYTES,
  };
}

/**
 * The largest single weight tensor of a stage, where it is known from the architecture: the LLM's
 * lm_head (vocab x hidden), kept at fp16 by every quantised precision and fp32 in an fp32 graph.
 * Undefined for the other stages (no CMA bound is claimed for them).
 */
export function largestWeightBytes(stage: StageName, a: Architecture, precision: string): number | undefined {
  if (stage !== 'llm') return undefined;
  return a.llm.vocab * a.llm.hidden * (precision === 'fp32' ? 4 : 2);
}

/** What the device has free for a build right now. */
export interface HostResources {
  /** MemAvailable from /proc/meminfo (what can be allocated without swapping). */
  memAvailableBytes: number;
  /** CmaFree from /proc/meminfo; null where the kernel has no CMA (off Jetson). */
  cmaFreeBytes: number | null;
  /** Free bytes on the filesystem the engines are written to. */
  diskFreeBytes: number;
}

/** The `Name: N kB` fields of /proc/meminfo, in bytes. */
export function parseMeminfo(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(\w+):\s+(\d+)(?:\s*kB)?$/gm))
    out[m[1]!] = Number(m[2]) * (m[0].endsWith('kB') ? 1024 : 1);
  return out;
}

/**
 * Reads `<root>/proc/meminfo` (root `/` by default; a fake one in tests) and the free space of `dir`.
 * A meminfo without MemAvailable (kernels before 3.14) falls back to MemFree.
 */
export async function hostResources(dir: string, root = '/'): Promise<HostResources> {
  const mem = parseMeminfo(await readFile(join(root, 'proc', 'meminfo'), 'utf8'));
  return {
    memAvailableBytes: mem.MemAvailable ?? mem.MemFree ?? 0,
    cmaFreeBytes: mem.CmaFree ?? null,
    diskFreeBytes: await freeBytes(dir),
  };
}
