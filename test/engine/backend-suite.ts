/**
 * The one backend test suite: every backend available on the machine runs these same checks
 * (backends.test.ts lists them). A harness turns a test ONNX graph into what its backend opens.
 */
import type { Test } from 'tap';
import type { Backend, Session } from '../../src/engine/backend.js';
import { tensor } from '../../src/engine/backend.js';
import type { StageSignature } from '../../src/engine/contract.js';
import { ADD_MATMUL_SIGNATURE, W_IN, W_OUT, addMatMul, addMatMulRef, heavyGraph, int64Graph, tmpDir } from './fixtures.js';

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
    await t.rejects(session.run({ x: tensor('float32', x, [1, 2, W_IN]) }), { code: 'BAD_INPUT', message: /add_matmul.*missing input 'y'/ });
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
    const file = await h.prepare(heavyGraph(dir, n), { inputs: [{ name: 'a', dtype: 'float32', shape: [n, n] }], outputs: [] }, {});
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

  t.test('dispose ends the session; a second dispose is harmless', async (t) => {
    const file = await h.prepare(addMatMul(dir), ADD_MATMUL_SIGNATURE, { L: 64 });
    const s = await h.backend.open(file, { stage: 'short-lived' });
    await s.dispose();
    await s.dispose();
    const { x, y } = inputs(1, 0);
    await t.rejects(s.run({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', y, [1, 1, W_IN]) }), { message: /disposed/ });
  });
}
