/**
 * The TensorRT backend's TypeScript side: why it is unavailable, and that a plan is refused on its
 * manifest before the addon ever sees it. Where the real addon has no TensorRT, a stand-in addon
 * reports a Jetson's capabilities; its trtLoadEngine must never be reached by a refused engine.
 */
import t from 'tap';
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ENGINE_MANIFEST_FORMAT, engineManifestPath } from '../../src/engine/engine-manifest.js';
import { sha256File } from '../../src/engine/manifest.js';
import { buildEngine, profileFromSignature, stageDimProfiles } from '../../src/engine/engine-builder.js';
import { type Capabilities, type NativeAddon, type NativeTrtTensor, capabilities } from '../../src/engine/native.js';
import { tensor } from '../../src/engine/backend.js';
import { TensorRtBackend, tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { ADD_MATMUL_SIGNATURE, W_IN, addMatMulRef, tmpDir } from './fixtures.js';
import { residentSuite } from './backend-suite.js';
import { TensorRtEngineTestDouble } from './tensorrt-double.js';
import type { Architecture } from '../../src/engine/contract.js';

const dir = tmpDir();

function jetson(
  over: { tensorrt?: boolean; gpus?: number; trtVersion?: string } = {},
): NativeAddon & { loads: string[] } {
  const loads: string[] = [];
  const caps: Capabilities = {
    compiled: {
      cuda: true,
      cudaVersion: '12.6',
      cudaArchitectures: '87',
      tensorrt: over.tensorrt ?? true,
      tensorrtVersion: '10.3.0',
      simd: 'neon',
    },
    present: {
      gpus: Array.from({ length: over.gpus ?? 1 }, (_, i) => ({
        index: i,
        name: 'Orin',
        computeCapability: '8.7',
        totalMemoryBytes: 8e9,
      })),
      cudaDriverVersion: 12060,
      gpuProbeError: (over.gpus ?? 1) === 0 ? 'no CUDA-capable device is detected' : null,
      tensorrtLibraryVersion: over.trtVersion ?? '10.3.0',
    },
  };
  return {
    loads,
    capabilities: () => caps,
    trtLoadEngine: async (plan: string) => {
      loads.push(plan);
      throw new Error('stand-in addon: no real TensorRT here');
    },
  };
}

t.test('unavailable reasons: no TensorRT in the build, no GPU', async (t) => {
  t.match(
    tensorrtUnavailableReason(() => jetson({ tensorrt: false })),
    /built without TensorRT.*TENSORRT_ROOT/,
  );
  t.match(
    tensorrtUnavailableReason(() => jetson({ gpus: 0 })),
    /no GPU is present \(no CUDA-capable device is detected\)/,
  );
  t.equal(
    tensorrtUnavailableReason(() => jetson()),
    undefined,
  );
  const real = capabilities();
  const reason = tensorrtUnavailableReason();
  t.equal(
    reason === undefined,
    real.compiled.tensorrt && real.present.gpus.length > 0,
    'the real addon agrees with capabilities()',
  );
  const backend = new TensorRtBackend();
  t.equal(await backend.available(), reason === undefined);
  if (reason)
    await t.rejects(backend.open(path.join(dir, 'x.plan')), {
      code: 'BACKEND_UNAVAILABLE',
      message: reason.slice(0, 30),
    });
});

t.test('a plan is refused on its manifest before the addon loads it', async (t) => {
  const plan = path.join(dir, 'add_matmul.fp32.plan');
  writeFileSync(plan, 'plan bytes');
  const addon = jetson();
  const backend = new TensorRtBackend({ load: () => addon });
  t.equal(await backend.available(), true);
  await t.rejects(backend.open(plan, { stage: 'add_matmul' }), { code: 'MODEL_NOT_FOUND', message: /has no manifest/ });

  const m = {
    format: ENGINE_MANIFEST_FORMAT,
    stage: 'add_matmul',
    plan: path.basename(plan),
    sha256: await sha256File(plan),
    bytes: 10,
    source: { file: 'add_matmul.onnx', sha256: 'c'.repeat(64) },
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.7',
    gpu: 'Orin',
    jetpack: '6.1',
    l4t: null,
    precision: 'fp32',
    stronglyTyped: true,
    profiles: [profileFromSignature(ADD_MATMUL_SIGNATURE, { L: { min: 1, opt: 8, max: 16 } })],
    io: ADD_MATMUL_SIGNATURE,
    builder: { workspaceBytes: 1 << 20, timingCache: false, seconds: 1 },
    builtAt: '2026-11-27T00:00:00Z',
  };
  writeFileSync(engineManifestPath(plan), JSON.stringify({ ...m, tensorrt: '10.7.0' }));
  await t.rejects(backend.open(plan, { stage: 'add_matmul' }), {
    code: 'ENGINE_INCOMPATIBLE',
    message: /TensorRT 10\.7\.0, this machine has TensorRT 10\.3\.0/,
  });
  writeFileSync(engineManifestPath(plan), JSON.stringify({ ...m, sha256: 'd'.repeat(64) }));
  await t.rejects(backend.open(plan, { stage: 'add_matmul' }), { code: 'MODEL_HASH_MISMATCH' });
  t.same(addon.loads, [], 'the addon never saw a refused plan');

  writeFileSync(engineManifestPath(plan), JSON.stringify(m));
  const newer = {
    ...ADD_MATMUL_SIGNATURE,
    inputs: [ADD_MATMUL_SIGNATURE.inputs[0]!, { name: 'y', dtype: 'float16' as const, shape: [1, 'L', 4] }],
  };
  await t.rejects(backend.open(plan, { stage: 'add_matmul', signature: newer }), {
    code: 'ENGINE_INCOMPATIBLE',
    message: /built for another signature \(y: expected dtype float16, got float32\)/,
  });
  t.same(addon.loads, [], 'the addon never saw a refused plan');
  await t.rejects(backend.open(plan, { stage: 'add_matmul', signature: ADD_MATMUL_SIGNATURE }), {
    code: 'ENGINE_INCOMPATIBLE',
    message: /TensorRT refused .*stand-in addon/,
  });
  t.same(addon.loads, [plan], 'a compatible, intact plan reaches the addon');
});

t.test('a loaded plan must pass a canary run; sessions check the profile limits', async (t) => {
  const plan = path.join(dir, 'canary.fp32.plan');
  writeFileSync(plan, 'plan bytes for the canary');
  const m = {
    format: ENGINE_MANIFEST_FORMAT,
    stage: 'add_matmul',
    plan: path.basename(plan),
    sha256: await sha256File(plan),
    bytes: 25,
    source: { file: 'add_matmul.onnx', sha256: 'c'.repeat(64) },
    tensorrt: '10.3.0',
    cuda: '12.6',
    sm: '8.7',
    gpu: 'Orin',
    jetpack: null,
    l4t: null,
    precision: 'fp32',
    stronglyTyped: true,
    profiles: [profileFromSignature(ADD_MATMUL_SIGNATURE, { L: { min: 1, opt: 8, max: 16 } })],
    io: ADD_MATMUL_SIGNATURE,
    builder: { workspaceBytes: 1 << 20, timingCache: false, seconds: 1 },
    builtAt: '2026-11-27T00:00:00Z',
  };
  writeFileSync(engineManifestPath(plan), JSON.stringify(m));
  const runs: Record<string, NativeTrtTensor>[] = [];
  let failCanary = true;
  /** What the addon rejects a run with: its message and the code tensorrt_binding.cc gives it. */
  let nativeFailure: Error | undefined;
  // The engine computes the graph in TypeScript, so the session's own logic runs.
  const engine = new TensorRtEngineTestDouble(
    [
      { name: 'x', mode: 'input', dtype: 'float32', shape: [1, -1, 4] },
      { name: 'y', mode: 'input', dtype: 'float32', shape: [1, -1, 4] },
      { name: 'z', mode: 'output', dtype: 'float32', shape: [1, -1, 3] },
    ],
    (feeds) => {
      runs.push(feeds);
      if (failCanary) throw new Error('enqueueV3 failed: illegal memory access');
      if (nativeFailure) throw nativeFailure;
      const L = feeds.x!.dims[1]!;
      return {
        z: {
          dtype: 'float32',
          dims: [1, L, 3],
          data: addMatMulRef(feeds.x!.data as Float32Array, feeds.y!.data as Float32Array, L),
        },
      };
    },
  );
  const disposedCount = () => engine.disposed;
  const addon = { ...jetson(), trtLoadEngine: async () => engine };
  const backend = new TensorRtBackend({ load: () => addon });

  await t.rejects(backend.open(plan, { stage: 'add_matmul' }), {
    code: 'ENGINE_INCOMPATIBLE',
    message: /canary inference of .*canary\.fp32\.plan failed: enqueueV3 failed/,
  });
  t.equal(disposedCount(), 1, 'a failed engine is released');
  t.same(runs[0]!.x!.dims, [1, 8, 4], 'the canary runs at the opt shape');
  t.ok(runs[0]!.x!.data instanceof Float32Array);

  failCanary = false;
  const s = await backend.open(plan, { stage: 'add_matmul' });
  t.same(s.inputNames, ['x', 'y']);
  t.same(s.outputNames, ['z']);
  const x = new Float32Array(3 * 4).map((_, i) => i / 7);
  const out = await s.run({ x: tensor('float32', x, [1, 3, 4]), y: tensor('float32', x, [1, 3, 4]) });
  t.same(Array.from(out.z!.data as Float32Array), Array.from(addMatMulRef(x, x, 3)));
  t.equal(out.z!.location, 'host');
  const big = new Float32Array(17 * 4);
  const before = runs.length;
  await t.rejects(s.run({ x: tensor('float32', big, [1, 17, 4]), y: tensor('float32', big, [1, 17, 4]) }), {
    code: 'BAD_INPUT',
    message: "stage 'add_matmul': input 'x' dim 'L' = 17 is outside 1..16",
  });
  t.equal(runs.length, before, 'an input beyond the profile never reaches the engine');
  // The session's own refusals (std::invalid_argument) keep their code; a failure of TensorRT itself is INTERNAL.
  const ok = () => s.run({ x: tensor('float32', x, [1, 3, 4]), y: tensor('float32', x, [1, 3, 4]) });
  nativeFailure = Object.assign(new Error("input 'x': 3 rows written past the cache's 2"), { code: 'BAD_ARGUMENT' });
  await t.rejects(ok(), { code: 'BAD_ARGUMENT', message: /TensorRT failed to run: input 'x': 3 rows written/ });
  nativeFailure = Object.assign(new Error('enqueueV3 failed'), { code: 'INTERNAL' });
  await t.rejects(ok(), { code: 'INTERNAL', message: /TensorRT failed to run: enqueueV3 failed/ });
  nativeFailure = undefined;
  await s.dispose();
  await s.dispose();
  t.equal(disposedCount(), 2);
  await t.rejects(s.run({ x: tensor('float32', x, [1, 3, 4]), y: tensor('float32', x, [1, 3, 4]) }), {
    message: /disposed/,
  });
});

t.test('engine builds need TensorRT and give every dynamic dim a range', async (t) => {
  await t.rejects(
    buildEngine({
      stage: 'x',
      onnx: 'x.onnx',
      plan: path.join(dir, 'x.plan'),
      signature: ADD_MATMUL_SIGNATURE,
      maxDims: { L: 4 },
      precision: 'fp32',
      load: () => jetson({ gpus: 0 }),
    }),
    { code: 'BACKEND_UNAVAILABLE', message: /no GPU is present.*built on the Jetson/ },
  );
  t.same(profileFromSignature(ADD_MATMUL_SIGNATURE, { L: { min: 1, opt: 8, max: 16 } }), {
    x: { min: [1, 1, 4], opt: [1, 8, 4], max: [1, 16, 4] },
    y: { min: [1, 1, 4], opt: [1, 8, 4], max: [1, 16, 4] },
  });
  t.throws(() => profileFromSignature(ADD_MATMUL_SIGNATURE, {}), { code: 'BAD_ARGUMENT', message: /dynamic dim 'L'/ });
  t.throws(() => profileFromSignature(ADD_MATMUL_SIGNATURE, { L: { min: 4, opt: 2, max: 8 } }), {
    code: 'BAD_ARGUMENT',
  });
});

t.test('default stage profiles: vision tokens up to maxTokens, LLM prefill and decode', async (t) => {
  const a = { cluster: { maxTokens: 64 }, llm: { maxContext: 2048 } } as Architecture;
  const [merger] = stageDimProfiles('merger', a);
  t.same(merger!.L, { min: 1, opt: 32, max: 64 });
  const llm = stageDimProfiles('llm', a, { maxContext: 1024 });
  t.equal(llm.length, 2);
  t.same(llm[0]!.T, { min: 1, opt: 512, max: 1024 }, 'prefill');
  t.same(llm[0]!.S, { min: 0, opt: 0, max: 1024 }, 'prefill over an empty cache, or a cached prefix');
  t.same(llm[1]!.T, { min: 1, opt: 1, max: 1 }, 'decode');
  t.same(
    llm[1]!.S,
    { min: 1, opt: 512, max: 1024 },
    'one fixed cache size per query: each decode step has the same shape',
  );
  // Every <target> of an image (up to maxTokens) goes through the diffusion head in one batch.
  t.same(stageDimProfiles('diffusion', a)[0]!.B, { min: 1, opt: 2, max: 64 });
  t.same(stageDimProfiles('diffusion', a, { maxTokens: 16 })[0]!.B, { min: 1, opt: 2, max: 16 });
});

/** The cache fixture graph (fixtures.ts cacheGraph) in TypeScript: total = row sums of cache and x, rows = 2 x. */
function cacheGraphRef(feeds: Record<string, NativeTrtTensor>): Record<string, NativeTrtTensor> {
  const sumRows = (t: NativeTrtTensor) => {
    const out = new Float32Array(W_IN);
    (t.data as Float32Array).forEach((v, i) => (out[i % W_IN] += v));
    return out;
  };
  const [a, b] = [sumRows(feeds.cache!), sumRows(feeds.x!)];
  return {
    total: { dtype: 'float32', dims: [1, 1, W_IN], data: a.map((v, i) => v + b[i]!) },
    rows: { dtype: 'float32', dims: [...feeds.x!.dims], data: (feeds.x!.data as Float32Array).map((v) => 2 * v) },
  };
}

t.test('resident tensors through the TensorRT session (TensorRtEngineTestDouble in place of TensorRT)', async (t) => {
  const engines: TensorRtEngineTestDouble[] = [];
  const io = [
    { name: 'cache', mode: 'input' as const, dtype: 'float32', shape: [1, -1, W_IN] },
    { name: 'x', mode: 'input' as const, dtype: 'float32', shape: [1, -1, W_IN] },
    { name: 'total', mode: 'output' as const, dtype: 'float32', shape: [1, 1, W_IN] },
    { name: 'rows', mode: 'output' as const, dtype: 'float32', shape: [1, -1, W_IN] },
  ];
  const addon = {
    ...jetson(),
    trtLoadEngine: async () => {
      const e = new TensorRtEngineTestDouble(io, cacheGraphRef);
      engines.push(e);
      return e;
    },
  };
  // The same resident checks every backend passes (backend-suite.ts), on the TensorRT session.
  residentSuite(
    t,
    {
      backend: new TensorRtBackend({ load: () => addon }),
      prepare: async (onnx, signature, maxDims) => {
        const plan = onnx.replace(/\.onnx$/, `.${engines.length}.plan`);
        writeFileSync(plan, `plan of ${path.basename(onnx)}`);
        const ranges = Object.fromEntries(Object.entries(maxDims).map(([k, v]) => [k, { min: 0, opt: 1, max: v }]));
        const manifest = {
          format: ENGINE_MANIFEST_FORMAT,
          stage: 'cache',
          plan: path.basename(plan),
          sha256: await sha256File(plan),
          bytes: statSync(plan).size,
          source: { file: path.basename(onnx), sha256: 'c'.repeat(64) },
          ...{ tensorrt: '10.3.0', cuda: '12.6', sm: '8.7', gpu: 'Orin', jetpack: null, l4t: null },
          ...{
            precision: 'fp32',
            stronglyTyped: true,
            profiles: [profileFromSignature(signature, ranges)],
            io: signature,
          },
          builder: { workspaceBytes: 1 << 20, timingCache: false, seconds: 1 },
          builtAt: '2026-11-27T00:00:00Z',
        };
        writeFileSync(engineManifestPath(plan), JSON.stringify(manifest));
        return plan;
      },
      tolerance: 1e-6,
    },
    tmpDir(),
  );
  t.test('what reached the engine', async (t) => {
    const [first] = engines;
    const [canary, ...runs] = first!.runs;
    t.ok('cache' in canary!.feeds, 'the canary feeds zeros from the host');
    const byHandle = runs.every((r) => !('cache' in r.feeds) && typeof r.resident.cache === 'number');
    t.ok(runs.length > 0 && byHandle, 'then the cache goes by handle only');
    t.ok(
      runs.some((r) => r.writes.rows?.axis === 1),
      'row writes reach it as (handle, axis, offset)',
    );
    t.ok(first!.released.length > 0, 'released handles reach it');
  });
});

t.test(
  'TensorRtEngineBuilder: the manifest names the target; an aborted build is cancelled in the addon; a failure is ENGINE_BUILD_FAILED',
  async (t) => {
    const { TensorRtEngineBuilder } = await import('../../src/engine/engine-builder.js');
    const { readEngineManifest } = await import('../../src/engine/engine-manifest.js');
    const { SetokimError, ErrorCodes } = await import('../../src/errors.js');
    const { addMatMul } = await import('./fixtures.js');
    const onnx = addMatMul(dir);
    let cancels = 0;
    const behave: { mode: 'ok' | 'hang' | 'fail' } = { mode: 'ok' };
    // Stands in for the native builder where TensorRT would run: writes a plan, hangs until cancelled, or fails.
    const addon = {
      ...jetson(),
      trtBuildEngine: (
        o: { plan: string },
        onProgress?: (p: string, s: number, n: number) => void,
        registerCancel?: (c: () => void) => void,
      ) =>
        new Promise<{ bytes: number; seconds: number; warnings: string[] }>((resolve, reject) => {
          onProgress?.('Building engine', 1, 2);
          registerCancel?.(() => {
            cancels++;
            reject(new Error('the engine build (cancelled)'));
          });
          if (behave.mode === 'ok') {
            writeFileSync(o.plan, 'plan from the stand-in');
            resolve({ bytes: 22, seconds: 3, warnings: [] });
          } else if (behave.mode === 'fail') reject(new Error('the ONNX parser rejected x.onnx: Unsupported op'));
        }),
    };
    const builder = new TensorRtEngineBuilder(() => addon);
    const request = {
      stage: 'add_matmul',
      onnx,
      plan: path.join(dir, 'b', 'add_matmul.fp32.plan'),
      signature: ADD_MATMUL_SIGNATURE,
      profiles: [{ L: { min: 1, opt: 8, max: 16 } }],
      precision: 'fp32' as const,
      target: 'orin-nano-8gb/jp6.2/trt10.3',
      jetpack: '6.2',
    };
    const m = await builder.build(request);
    t.match(m, {
      target: 'orin-nano-8gb/jp6.2/trt10.3',
      tensorrt: '10.3.0',
      sm: '8.7',
      jetpack: '6.2',
      bytes: 22,
      builder: { seconds: 3, workspaceBytes: 1 << 30 },
    });
    t.same(readEngineManifest(request.plan), m, 'written beside the plan');
    behave.mode = 'hang';
    const ac = new AbortController();
    const hung = builder.build({ ...request, signal: ac.signal });
    ac.abort(new SetokimError(ErrorCodes.ENGINE_BUILD_TIMEOUT, 'past its limit'));
    await t.rejects(hung, { code: 'ENGINE_BUILD_TIMEOUT', message: 'past its limit' });
    t.equal(cancels, 1, "the addon's cancel was called");
    behave.mode = 'fail';
    await t.rejects(builder.build(request), {
      code: 'ENGINE_BUILD_FAILED',
      message: /TensorRT could not build stage 'add_matmul' from .*Unsupported op/,
    });
  },
);
