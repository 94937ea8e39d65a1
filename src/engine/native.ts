/**
 * The one place that loads the native addon (build/Release/setokim.node) and declares its types.
 * Binding modules add their functions to NativeAddon as they land.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { WireRowCopy, WireRowWrite } from './resident.js';

export interface GpuInfo {
  index: number;
  name: string;
  computeCapability: string;
  totalMemoryBytes: number;
}

export interface Capabilities {
  /** What this build of the addon was compiled with. */
  compiled: {
    cuda: boolean;
    cudaVersion: string | null;
    cudaArchitectures: string;
    tensorrt: boolean;
    tensorrtVersion: string | null;
    simd: string;
  };
  /** What the machine has now. */
  present: {
    gpus: GpuInfo[];
    cudaDriverVersion: number;
    gpuProbeError: string | null;
    tensorrtLibraryVersion: string | null;
  };
}

/** TensorRT binding (native/trt/addon/tensorrt_binding.cc): present only in builds with TensorRT. */
export interface NativeTrtTensor {
  dtype: string;
  dims: number[];
  data: ArrayBufferView;
}
/** Row writes and copies reach the addon in the form both backends take (src/engine/resident.ts). */
export type NativeTrtWrite = WireRowWrite;
export type NativeTrtCopy = WireRowCopy;
export interface NativeTrtEngine {
  /** IO tensors in engine order; -1 marks a dynamic dim. */
  readonly io: { name: string; mode: 'input' | 'output'; dtype: string; shape: number[] }[];
  /** Whether host IO goes through mapped pinned memory (an integrated GPU: Jetson) instead of copies. */
  readonly mappedIo: boolean;
  /**
   * Host feeds are copied to the device (or into mapped memory); `resident` feeds name device
   * buffers by handle; outputs in `writes` go into resident buffers on the device, the rest come back.
   */
  run(
    feeds: Record<string, NativeTrtTensor>,
    resident?: Record<string, number>,
    writes?: Record<string, NativeTrtWrite>,
  ): Promise<Record<string, NativeTrtTensor>>;
  /** Zero-filled device buffers under the given handles. */
  allocate(tensors: { handle: number; dtype: string; dims: number[] }[]): Promise<void>;
  copyRows(copies: NativeTrtCopy[]): Promise<void>;
  read(handle: number): Promise<NativeTrtTensor>;
  /** Frees device buffers (off the JS thread: a run may hold the session). */
  release(handles: number[]): Promise<void>;
  dispose(): void;
}
export interface NativeTrtBuildOptions {
  onnx: string;
  plan: string;
  workspaceBytes: number;
  timingCache?: string;
  profiles: Record<string, { min: number[]; opt: number[]; max: number[] }>[];
  device?: number;
}
export interface NativeTrtBuildResult {
  bytes: number;
  seconds: number;
  warnings: string[];
}

/** What a native clustering call returns (src/setok's ClusterResult has this shape). */
export interface NativeClusterResult {
  centers: Int32Array;
  labels: Int32Array;
  scores: Float32Array;
}

/** The clustering parameters both bindings take, positionally, after any features. */
export type NativeClusterParams = [
  n: number,
  dim: number,
  k: number,
  threshold: number,
  fallback: number,
  maxTokens: number,
];

/** setokCluster(features, n, dim, k, threshold, fallback, maxTokens): runs in a worker thread. */
export type NativeClusterFn = (features: Float32Array, ...params: NativeClusterParams) => Promise<NativeClusterResult>;

/** A native stream: keeps the previous frame and its Gram matrix (on the C++ side). */
export interface NativeStreamHandle {
  push(features: Float32Array): Promise<NativeClusterResult & { changedPatches: number }>;
  close(): void;
}

/** setokClusterStream(n, dim, k, threshold, fallback, maxTokens). */
export type NativeStreamFactory = (...params: NativeClusterParams) => NativeStreamHandle;

export interface NativeAddon {
  capabilities(): Capabilities;
  /** SeTok clustering (native/trt/addon/cluster_binding.cc; wrapped by src/setok). */
  setokCluster?: NativeClusterFn;
  setokClusterStream?: NativeStreamFactory;
  setokGramBench?: (
    n: number,
    dim: number,
    reps: number,
  ) => {
    gramMs: number;
    gemmMs: number;
    distanceMs: number;
    peakGflops: number;
    isa: string;
    threads: number;
  };
  /** flock(2) without waiting on a descriptor (native/trt/addon/file_lock_binding.cc; src/engine/file-lock.ts). */
  flock?: (fd: number, op: 'exclusive' | 'unlock') => boolean;
  trtLoadEngine?(plan: string, device: number): Promise<NativeTrtEngine>;
  /**
   * `registerCancel` is called at once with a function that asks the build to stop at TensorRT's next
   * progress step (IProgressMonitor::stepComplete returns false); the promise then rejects.
   */
  trtBuildEngine?(
    options: NativeTrtBuildOptions,
    onProgress?: (phase: string, step: number, steps: number) => void,
    registerCancel?: (cancel: () => void) => void,
  ): Promise<NativeTrtBuildResult>;
  /** One sd_notify(3) datagram to a $NOTIFY_SOCKET address (native/trt/addon/notify_binding.cc). */
  sdNotify?(socket: string, state: string): void;
  [binding: string]: unknown;
}

/** The package root, found from this file whether it runs from src/ (tests) or dist/src/ (CLI). */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('setokim-edge: cannot find package.json above ' + import.meta.url);
    dir = up;
  }
  return dir;
}

let version: string | undefined;

/** This package's version (package.json), e.g. what a bundle's minAgentVersion is checked against. */
export function packageVersion(): string {
  if (version === undefined) {
    const pkg = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: unknown };
    version = String(pkg.version);
  }
  return version;
}

let cached: NativeAddon | undefined;

/** Loads the addon once. Throws NATIVE_MISSING with the command that builds it when it is absent. */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const root = packageRoot();
  const candidates = [
    process.env.SETOKIM_ADDON,
    path.join(root, 'build', 'Release', 'setokim.node'),
    path.join(root, 'build', 'Debug', 'setokim.node'),
  ].filter((p): p is string => !!p);
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    throw new SetokimError(
      ErrorCodes.NATIVE_MISSING,
      `The native addon is not built (looked for ${candidates.join(', ')}). ` +
        'Run `npm run build:native` in ' +
        root +
        ' (needs cmake and a C++17 compiler; ' +
        'set SETOKIM_CUDA=OFF to build without CUDA).',
    );
  }
  try {
    cached = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.NATIVE_MISSING,
      `The native addon at ${file} failed to load: ${(err as Error).message}. ` +
        'Rebuild it with `npm run build:native` (it must match this Node.js version and machine).',
      { cause: err },
    );
  }
  return cached;
}

export function capabilities(): Capabilities {
  return loadNative().capabilities();
}
