/**
 * The one backend test suite: every backend available on the machine runs these same checks
 * (backends.test.ts lists them). A harness turns a test ONNX graph into what its backend opens.
 */
import type { Test } from 'tap';
import type { Backend, Session } from '../../src/engine/backend.js';
import { tensor } from '../../src/engine/backend.js';
import type { StageSignature } from '../../src/engine/contract.js';
import {
  ADD_MATMUL_SIGNATURE,
  CACHE_SIGNATURE,
  W_IN,
  W_OUT,
  addMatMul,
  addMatMulRef,
  cacheGraph,
  heavyGraph,
  int64Graph,
  tmpDir,
} from './fixtures.js';

export interface Harness {
  backend: Backend;
  /** Makes the file the backend opens from an ONNX graph (ORT: the graph; TensorRT: a built plan). */
  prepare(onnx: string, signature: StageSignature, maxDims: Record<string, number>): Promise<string>;
  /** Largest allowed absolute error against the float32 reference (TensorRT may use TF32). */
  tolerance: number;
}

const IDS_SIGNATURE: StageSignature = {
  inputs: [{ name: 'input_ids', dtype: 'int64', shape: [1, 'T'] }],
  outputs: [
    { name: 'next_ids', dtype: 'int64', shape: [1, 'T'] },
    { name: 'as_float', dtype: 'float32', shape: [1, 'T'] },
  ],
};

/** Deterministic inputs: x[i] = sin(i + seed), so every L gives different numbers. */
function inputs(L: number, seed: number) {
  const x = new Float32Array(L * W_IN).map((_, i) => Math.sin(i + seed));
  const y = new Float32Array(L * W_IN).map((_, i) => Math.cos(i * 0.7 + seed));
  return { x, y };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function backendSuite(t: Test, h: Harness): void {
  const dir = tmpDir();
  let session: Session;

  t.before(async () => {
    const file = await h.prepare(addMatMul(dir), ADD_MATMUL_SIGNATURE, { L: 64 });
    session = await h.backend.open(file, { stage: 'add_matmul', signature: ADD_MATMUL_SIGNATURE, threads: 1 });
  });
  t.teardown(() => session?.dispose());

  t.test('names its inputs, outputs and backend', async (t) => {
    t.same([...session.inputNames].sort(), ['x', 'y']);
    t.same(session.outputNames, ['z']);
    t.equal(session.backend, h.backend.name);
  });

  t.test('computes (x + y) @ W for several dynamic L', async (t) => {
    for (const L of [1, 5, 64]) {
      const { x, y } = inputs(L, L);
      const out = await session.run({ x: tensor('float32', x, [1, L, W_IN]), y: tensor('float32', y, [1, L, W_IN]) });
      const z = out.z!;
      t.same(z.dims, [1, L, W_OUT], `dims for L=${L}`);
      t.equal(z.dtype, 'float32');
      t.equal(z.location, 'host');
      t.ok(z.data instanceof Float32Array);
      const err = maxAbsDiff(z.data as Float32Array, addMatMulRef(x, y, L));
      t.ok(err <= h.tolerance, `L=${L}: max abs error ${err} <= ${h.tolerance}`);
    }
  });

  t.test('concurrent runs each get their own answer', async (t) => {
    const Ls = [3, 1, 7, 2, 9, 4, 6, 5];
    const runs = Ls.map((L) => {
      const { x, y } = inputs(L, 100 + L);
      return session
        .run({ x: tensor('float32', x, [1, L, W_IN]), y: tensor('float32', y, [1, L, W_IN]) })
        .then((o) => ({ L, z: o.z!, ref: addMatMulRef(x, y, L) }));
    });
    for (const { L, z, ref } of await Promise.all(runs)) {
      t.same(z.dims, [1, L, W_OUT]);
      t.ok(maxAbsDiff(z.data as Float32Array, ref) <= h.tolerance, `L=${L} matches its own reference`);
    }
  });

  t.test("the caller's input arrays stay usable after a run", async (t) => {
    const { x, y } = inputs(2, 7);
    const before = Array.from(x);
    await session.run({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', y, [1, 2, W_IN]) });
    t.equal(x.length, 2 * W_IN, 'not detached');
    t.same(Array.from(x), before, 'not modified');
  });

  t.test('inputs are checked against the signature before the backend runs', async (t) => {
    const { x, y } = inputs(2, 1);
    await t.rejects(session.run({ x: tensor('float32', x, [1, 2, W_IN]) }), {
      code: 'BAD_INPUT',
      message: /add_matmul.*missing input 'y'/,
    });
    await t.rejects(
      session.run({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', y.subarray(0, W_IN), [1, 1, W_IN]) }),
      { code: 'BAD_INPUT', message: /'L'/ },
    );
    await t.rejects(
      session.run({ x: tensor('int32', new Int32Array(8), [1, 2, W_IN]), y: tensor('float32', y, [1, 2, W_IN]) }),
      { code: 'BAD_INPUT', message: /'x' must be float32, got int32/ },
    );
  });

  t.test('int64 tensors round-trip as BigInt64Array', async (t) => {
    const file = await h.prepare(int64Graph(dir), IDS_SIGNATURE, { T: 16 });
    const s = await h.backend.open(file, { stage: 'ids', signature: IDS_SIGNATURE });
    t.teardown(() => s.dispose());
    const ids = BigInt64Array.from([0n, 41n, 31999n, 2n ** 40n]);
    const out = await s.run({ input_ids: tensor('int64', ids, [1, 4]) });
    t.equal(out.next_ids!.dtype, 'int64');
    t.ok(out.next_ids!.data instanceof BigInt64Array);
    t.same(Array.from(out.next_ids!.data as BigInt64Array), [1n, 42n, 32000n, 2n ** 40n + 1n]);
    t.same(Array.from(out.as_float!.data as Float32Array), [0, 41, 31999, 2 ** 40]);
  });

  t.test('a run leaves the JS thread free', async (t) => {
    const n = 384;
    const file = await h.prepare(
      heavyGraph(dir, n),
      { inputs: [{ name: 'a', dtype: 'float32', shape: [n, n] }], outputs: [] },
      {},
    );
    const s = await h.backend.open(file, { stage: 'heavy', threads: 1 });
    t.teardown(() => s.dispose());
    const a = new Float32Array(n * n).fill(0.01);
    await s.run({ a: tensor('float32', a, [n, n]) }); // warm-up
    let ticks = 0;
    let done = false;
    const spin = () => {
      if (done) return;
      ticks++;
      setImmediate(spin);
    };
    const t0 = performance.now();
    setImmediate(spin);
    await s.run({ a: tensor('float32', a, [n, n]) });
    done = true;
    const ms = performance.now() - t0;
    // A synchronous native run would hold the loop for the whole run: at most a couple of ticks.
    t.ok(ticks >= 10, `${ticks} event-loop turns during a ${ms.toFixed(0)} ms run`);
  });

  residentSuite(t, h, dir);

  t.test('dispose ends the session; a second dispose is harmless', async (t) => {
    const file = await h.prepare(addMatMul(dir), ADD_MATMUL_SIGNATURE, { L: 64 });
    const s = await h.backend.open(file, { stage: 'short-lived' });
    await s.dispose();
    await s.dispose();
    const { x, y } = inputs(1, 0);
    await t.rejects(s.run({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', y, [1, 1, W_IN]) }), {
      message: /disposed/,
    });
  });
}

const sum = (x: Float32Array, width: number) =>
  Array.from({ length: width }, (_, j) => x.reduce((acc, v, i) => (i % width === j ? acc + v : acc), 0));

/** Resident tensors: state kept in the backend between runs, fed and written by handle. */
export function residentSuite(t: Test, h: Harness, dir: string): void {
  let s: Session;
  t.before(async () => {
    const file = await h.prepare(cacheGraph(dir), CACHE_SIGNATURE, { S: 16, T: 8 });
    s = await h.backend.open(file, { stage: 'cache', signature: CACHE_SIGNATURE, threads: 1 });
  });
  t.teardown(() => s?.dispose());
  const x = (T: number, seed: number) =>
    tensor(
      'float32',
      new Float32Array(T * W_IN).map((_, i) => Math.sin(i + seed)),
      [1, T, W_IN],
    );

  t.test('a resident cache is read in place and written at a row offset, run after run', async (t) => {
    const before = s.residentBytes;
    const [cache] = await s.allocate([{ dtype: 'float32', dims: [1, 8, W_IN] }]);
    t.equal(cache!.location, 'resident');
    t.equal(cache!.bytes, 8 * W_IN * 4);
    t.equal(s.residentBytes, before + 8 * W_IN * 4, 'counted while held');
    t.same(Array.from((await s.read(cache!)).data as Float32Array), new Array(8 * W_IN).fill(0), 'allocated as zeros');
    const x1 = x(3, 1);
    const r1 = await s.run({ cache: cache!, x: x1 }, { writeInto: { rows: { into: cache!, axis: 1, offset: 0 } } });
    t.same(Object.keys(r1), ['total'], 'a written output is not returned');
    t.ok(
      maxAbsDiff(r1.total!.data as Float32Array, sum(x1.data as Float32Array, W_IN)) <= h.tolerance,
      'an empty cache adds nothing',
    );
    const x2 = x(2, 5);
    const r2 = await s.run({ cache: cache!, x: x2 }, { writeInto: { rows: { into: cache!, axis: 1, offset: 3 } } });
    const want = sum(x1.data as Float32Array, W_IN).map((v, j) => 2 * v + sum(x2.data as Float32Array, W_IN)[j]!);
    t.ok(
      maxAbsDiff(r2.total!.data as Float32Array, want) <= h.tolerance,
      'the second run reads the rows the first wrote',
    );
    const held = (await s.read(cache!)).data as Float32Array;
    t.same(
      Array.from(held.subarray(3 * W_IN, 5 * W_IN)),
      Array.from(x2.data as Float32Array, (v) => 2 * v),
      'rows 3-4 hold the second write',
    );
    t.same(Array.from(held.subarray(5 * W_IN)), new Array(3 * W_IN).fill(0), 'rows past the writes are untouched');
    await s.release([cache!]);
    await s.release([cache!]);
    t.equal(s.residentBytes, before, 'released once, however often asked');
    await t.rejects(s.read(cache!), { code: 'BAD_ARGUMENT', message: /released/ });
  });

  t.test('rows copy between resident tensors of different sizes', async (t) => {
    const [small, big] = await s.allocate([
      { dtype: 'float32', dims: [1, 4, W_IN] },
      { dtype: 'float32', dims: [1, 10, W_IN] },
    ]);
    const x1 = x(4, 2);
    await s.run({ cache: small!, x: x1 }, { writeInto: { rows: { into: small!, axis: 1, offset: 0 } } });
    await s.copyRows([{ from: small!, to: big!, axis: 1, rows: 3, fromOffset: 1, toOffset: 6 }]);
    const got = (await s.read(big!)).data as Float32Array;
    t.same(
      Array.from(got.subarray(6 * W_IN, 9 * W_IN)),
      Array.from((x1.data as Float32Array).subarray(W_IN), (v) => 2 * v),
    );
    t.same(Array.from(got.subarray(0, 6 * W_IN)), new Array(6 * W_IN).fill(0));
    await s.release([small!, big!]);
  });

  t.test('concurrent runs on different resident tensors keep their own state', async (t) => {
    const caches = await s.allocate(
      Array.from({ length: 4 }, () => ({ dtype: 'float32' as const, dims: [1, 6, W_IN] })),
    );
    const inputs = caches.map((_, i) => x(2, 10 + i));
    await Promise.all(
      caches.map((c, i) =>
        s.run({ cache: c, x: inputs[i]! }, { writeInto: { rows: { into: c, axis: 1, offset: 0 } } }),
      ),
    );
    for (const [i, c] of caches.entries()) {
      const got = (await s.read(c)).data as Float32Array;
      t.same(
        Array.from(got.subarray(0, 2 * W_IN)),
        Array.from(inputs[i]!.data as Float32Array, (v) => 2 * v),
        `cache ${i}`,
      );
    }
    await s.release(caches);
  });

  t.test('bad handles, offsets and copies are refused before the backend runs', async (t) => {
    const [cache, other] = await s.allocate([
      { dtype: 'float32', dims: [1, 4, W_IN] },
      { dtype: 'float32', dims: [1, 4, W_OUT] },
    ]);
    t.teardown(() => s.release([cache!, other!]));
    await t.rejects(
      s.run({ cache: cache!, x: x(3, 0) }, { writeInto: { rows: { into: cache!, axis: 1, offset: 2 } } }),
      {
        code: 'BAD_ARGUMENT',
        message: /output 'rows': 3 rows at offset 2 overrun the 4 rows of axis 1/,
      },
    );
    await t.rejects(
      s.run({ cache: cache!, x: x(1, 0) }, { writeInto: { rows: { into: other!, axis: 1, offset: 0 } } }),
      {
        code: 'BAD_ARGUMENT',
        message: /do not fit \[1, 4, 3\] along axis 1/,
      },
    );
    await t.rejects(
      s.run({ cache: cache!, x: x(1, 0) }, { writeInto: { nope: { into: cache!, axis: 1, offset: 0 } } }),
      { code: 'BAD_ARGUMENT', message: /no such output/ },
    );
    await t.rejects(s.run({ cache: other!, x: x(1, 0) }), {
      code: 'BAD_INPUT',
      message: /'cache' axis 2 must be 4, got 3/,
    });
    await t.rejects(s.copyRows([{ from: cache!, to: other!, axis: 1, rows: 1 }]), {
      code: 'BAD_ARGUMENT',
      message: /copy 0/,
    });
    await t.rejects(s.copyRows([{ from: cache!, to: cache!, axis: 1, rows: 2, fromOffset: 3 }]), {
      code: 'BAD_ARGUMENT',
      message: /overrun/,
    });
    await t.rejects(s.allocate([{ dtype: 'float32', dims: [1, -1] }]), { code: 'BAD_ARGUMENT' });
    const file = await h.prepare(cacheGraph(dir), CACHE_SIGNATURE, { S: 16, T: 8 });
    const second = await h.backend.open(file, { stage: 'cache-2', signature: CACHE_SIGNATURE, threads: 1 });
    t.teardown(() => second.dispose());
    await t.rejects(second.run({ cache: cache!, x: x(1, 0) }), { code: 'BAD_ARGUMENT', message: /another session/ });
  });

  t.test('disposing a session loses its resident tensors', async (t) => {
    const file = await h.prepare(cacheGraph(dir), CACHE_SIGNATURE, { S: 16, T: 8 });
    const short = await h.backend.open(file, { stage: 'cache-short', signature: CACHE_SIGNATURE, threads: 1 });
    const [c] = await short.allocate([{ dtype: 'float32', dims: [1, 2, W_IN] }]);
    await short.dispose();
    t.equal(c!.alive, false);
    t.equal(short.residentBytes, 0);
    await short.release([c!]);
    await t.rejects(short.read(c!), { message: /disposed/ });
  });
}
