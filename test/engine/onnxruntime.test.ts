/** What only the ONNX Runtime backend does: load errors, thread options, the graph's own signature, a dying worker. */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { tensor, type Session } from '../../src/engine/backend.js';
import type { SetokimError } from '../../src/errors.js';
import { OrtBackend, signatureFromMetadata } from '../../src/engine/onnxruntime.js';
import { CACHE_SIGNATURE, W_IN, addMatMul, addMatMulRef, cacheGraph, heavyGraph, notOnnx, tmpDir } from './fixtures.js';

const dir = tmpDir();
const ort = new OrtBackend();

t.test('a missing or broken file is refused naming the file', async (t) => {
  await t.rejects(ort.open(path.join(dir, 'absent.onnx'), { stage: 'encoder' }), {
    code: 'MODEL_NOT_FOUND',
    message: /stage 'encoder': .*absent\.onnx does not exist/,
  });
  await t.rejects(ort.open(notOnnx(dir), { stage: 'encoder' }), {
    code: 'MODEL_INVALID',
    message: /stage 'encoder': ONNX Runtime cannot load .*broken\.onnx/,
  });
});

t.test('threads must be a positive integer', async (t) => {
  await t.rejects(ort.open(addMatMul(dir), { threads: 0 }), {
    code: 'BAD_ARGUMENT',
    message: /threads must be a positive integer, got 0/,
  });
  await t.rejects(new OrtBackend({ threads: 1.5 }).open(addMatMul(dir)), { code: 'BAD_ARGUMENT' });
  const s = await new OrtBackend({ threads: 1 }).open(addMatMul(dir), { threads: 2 });
  t.teardown(() => s.dispose());
  const x = new Float32Array(W_IN).fill(1);
  const out = await s.run({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', x, [1, 1, W_IN]) });
  t.same(Array.from(out.z!.data as Float32Array), Array.from(addMatMulRef(x, x, 1)));
});

t.test("without a manifest signature, runs are checked against the graph's own", async (t) => {
  const s = await ort.open(addMatMul(dir)); // stage name defaults to the file name
  t.teardown(() => s.dispose());
  const x = new Float32Array(2 * W_IN);
  await t.rejects(
    s.run({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', x.subarray(0, W_IN), [1, 1, W_IN]) }),
    {
      code: 'BAD_INPUT',
      message: /stage 'add_matmul\.onnx': input 'y' axis 1 is dim 'L' = 1, but 'x' set 'L' = 2/,
    },
  );
  await t.rejects(
    s.run({
      x: tensor('float32', x, [1, 2, W_IN]),
      y: tensor('float32', x, [1, 2, W_IN]),
      z: tensor('float32', x, [1, 2, W_IN]),
    }),
    {
      code: 'BAD_INPUT',
      message: /unknown input 'z'; this stage takes 'x', 'y'/,
    },
  );
});

t.test('signatureFromMetadata keeps named dims and frees unnamed ones', async (t) => {
  const sig = signatureFromMetadata([
    { name: 'a', isTensor: true, type: 'float32', shape: [1, 'L', ''] },
    { name: 'strings', isTensor: true, type: 'string', shape: [1] },
    { name: 'seq', isTensor: false },
  ]);
  t.same(sig.inputs, [{ name: 'a', dtype: 'float32', shape: [1, 'L', '?2'] }]);
});

t.test('dispose during a run cancels it', async (t) => {
  const n = 384;
  const s = await ort.open(heavyGraph(dir, n), { stage: 'heavy', threads: 1 });
  const a = new Float32Array(n * n).fill(0.01);
  const pending = t.rejects(s.run({ a: tensor('float32', a, [n, n]) }), {
    code: 'CANCELLED',
    message: /stage 'heavy': session disposed during a run/,
  });
  await s.dispose();
  await pending;
});

/** The session's worker (replaced when it dies) and how often it was replaced. */
const internals = (s: Session) => s as unknown as { worker: Worker; restarts: number };

/** Makes the session's worker die the way a crash kills it, and waits until it has. */
async function crash(s: Session, how: 'exit' | 'throw'): Promise<void> {
  const worker = internals(s).worker;
  const gone = new Promise((resolve) => worker.once('exit', resolve)); // not events.once: it rejects on 'error'
  worker.ref(); // an idle session's worker is unreferenced: keep the test alive until it is gone
  worker.postMessage({ type: 'crash', how });
  await gone;
}

t.test('a worker that dies with runs in flight fails them with BACKEND_CRASHED; the next run reopens it', async (t) => {
  const s = await ort.open(addMatMul(dir), { stage: 'dies', threads: 1 });
  t.teardown(() => s.dispose());
  const x = new Float32Array(3 * W_IN).map((_, i) => Math.sin(i));
  const y = new Float32Array(3 * W_IN).map((_, i) => Math.cos(i));
  const feeds = () => ({ x: tensor('float32', x, [1, 3, W_IN]), y: tensor('float32', y, [1, 3, W_IN]) });
  // The first worker's answer (checked against the reference); a reopened one must give the same bits.
  const want = Array.from((await s.run(feeds())).z!.data as Float32Array);
  const ref = addMatMulRef(x, y, 3);
  t.ok(
    want.every((v, i) => Math.abs(v - ref[i]!) < 1e-5),
    'the first worker answers correctly',
  );
  const causes = { exit: /exit code 70/, throw: /an uncaught error: crash requested by a test/ };
  for (const [i, how] of (['exit', 'throw'] as const).entries()) {
    const first = internals(s).worker;
    first.postMessage({ type: 'crash', how, atNextRun: true }); // the worker dies on receiving the next run
    const results = await Promise.allSettled([s.run(feeds()), s.run(feeds())]);
    for (const r of results) {
      t.equal(
        r.status === 'rejected' && (r.reason as SetokimError).code,
        'BACKEND_CRASHED',
        `${how}: the run in flight failed`,
      );
      t.match(
        r.status === 'rejected' && (r.reason as Error).message,
        /^stage 'dies': the ONNX Runtime worker died \(.*\) during this run; send the query again \(the next run restarts the worker\)$/,
      );
      t.match(r.status === 'rejected' && (r.reason as Error).message, causes[how]);
    }
    const after = await s.run(feeds());
    t.not(internals(s).worker, first, `${how}: a new worker`);
    t.equal(internals(s).restarts, i + 1);
    t.same(Array.from(after.z!.data as Float32Array), want, `${how}: the reopened session answers correctly`);
  }
  // Killed from outside while idle (Worker.terminate; terminating a worker inside a native run
  // can abort the whole process in onnxruntime-node, so dispose() never does that).
  await internals(s).worker.terminate();
  t.same(Array.from((await s.run(feeds())).z!.data as Float32Array), want, 'terminated: reopened too');
  t.equal(internals(s).restarts, 3);
});

t.test('after process.exit or an uncaught error in the worker, concurrent runs share one reopen', async (t) => {
  const s = await ort.open(addMatMul(dir), { stage: 'exits', threads: 1 });
  t.teardown(() => s.dispose());
  const x = new Float32Array(2 * W_IN).map((_, i) => i / 3);
  const y = new Float32Array(2 * W_IN).map((_, i) => 1 - i / 5);
  const feeds = () => ({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', y, [1, 2, W_IN]) });
  const want = Array.from((await s.run(feeds())).z!.data as Float32Array); // the first worker's bits
  for (const [i, how] of (['exit', 'throw'] as const).entries()) {
    await crash(s, how);
    const outs = await Promise.all([s.run(feeds()), s.run(feeds()), s.run(feeds())]);
    for (const out of outs) t.same(Array.from(out.z!.data as Float32Array), want, `answers after ${how}`);
    t.equal(internals(s).restarts, i + 1, `one reopen for three runs after ${how}`);
  }
});

t.test(
  'resident tensors die with their worker: using one is BACKEND_CRASHED, new ones work in the reopened worker',
  async (t) => {
    const s = await ort.open(cacheGraph(dir), { stage: 'kept', signature: CACHE_SIGNATURE, threads: 1 });
    t.teardown(() => s.dispose());
    const [cache] = await s.allocate([{ dtype: 'float32', dims: [1, 4, W_IN] }]);
    t.ok(s.residentBytes > 0);
    await crash(s, 'exit');
    t.equal(cache!.alive, false, 'lost with the worker');
    t.equal(s.residentBytes, 0);
    const x = tensor('float32', new Float32Array(W_IN).fill(1), [1, 1, W_IN]);
    await t.rejects(s.run({ cache: cache!, x }), {
      code: 'BACKEND_CRASHED',
      message: /input 'cache' was lost with its backend \(the ONNX Runtime worker died: exit code 70\)/,
    });
    const [fresh] = await s.allocate([{ dtype: 'float32', dims: [1, 4, W_IN] }]);
    const out = await s.run({ cache: fresh!, x }, { writeInto: { rows: { into: fresh!, axis: 1, offset: 0 } } });
    t.same(Array.from(out.total!.data as Float32Array), [1, 1, 1, 1], 'the reopened worker holds the new one');
    t.same(Array.from(((await s.read(fresh!)).data as Float32Array).subarray(0, W_IN)), [2, 2, 2, 2]);
    await s.release([cache!]); // harmless
  },
);

t.test('a write to an output the signature declares but the graph lacks is MODEL_INVALID', async (t) => {
  const ghost = {
    ...CACHE_SIGNATURE,
    outputs: [...CACHE_SIGNATURE.outputs, { name: 'ghost', dtype: 'float32' as const, shape: [1] }],
  };
  const s = await ort.open(cacheGraph(dir), { stage: 'mixed-up', signature: ghost, threads: 1 });
  t.teardown(() => s.dispose());
  const [c] = await s.allocate([{ dtype: 'float32', dims: [4] }]);
  const x = tensor('float32', new Float32Array(W_IN), [1, 1, W_IN]);
  const feeds = { cache: tensor('float32', new Float32Array(W_IN), [1, 1, W_IN]), x };
  await t.rejects(s.run(feeds, { writeInto: { ghost: { into: c!, axis: 0, offset: 0 } } }), {
    code: 'MODEL_INVALID',
    message:
      "stage 'mixed-up': the graph has no output 'ghost' though its signature declares it; re-export the model set",
  });
});

t.test('if reopening fails, runs fail with BACKEND_CRASHED naming both causes, and keep failing', async (t) => {
  const own = tmpDir();
  const file = addMatMul(own);
  const s = await ort.open(file, { stage: 'fragile', threads: 1 });
  const x = new Float32Array(W_IN);
  const feeds = () => ({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', x, [1, 1, W_IN]) });
  await s.run(feeds());
  writeFileSync(file, 'no longer an ONNX graph');
  await crash(s, 'throw');
  const broken = {
    code: 'BACKEND_CRASHED',
    message:
      /^stage 'fragile': the ONNX Runtime worker died \(an uncaught error: crash requested by a test\) and reopening .*add_matmul\.onnx failed: .+\. Check the model set and restart the agent\.$/,
  };
  await t.rejects(s.run(feeds()), broken);
  await t.rejects(s.run(feeds()), broken, 'still broken: no reopen loop');
  t.equal(internals(s).restarts, 0);
  await s.dispose(); // returns although no worker is left
  await t.rejects(s.run(feeds()), { code: 'BAD_ARGUMENT', message: /session is disposed/ });
});

t.test('transfer moves the named feeds to the worker instead of copying them; the rest stay usable', async (t) => {
  const s = await ort.open(addMatMul(dir), { stage: 'moved', threads: 1 });
  t.teardown(() => s.dispose());
  const L = 3;
  const x = new Float32Array(L * W_IN).map((_, i) => Math.sin(i));
  const y = new Float32Array(L * W_IN).map((_, i) => Math.cos(i));
  const feeds = () => ({ x: tensor('float32', x, [1, L, W_IN]), y: tensor('float32', y, [1, L, W_IN]) });
  const copied = Array.from((await s.run(feeds())).z!.data as Float32Array);
  t.equal(x.length, L * W_IN, 'without transfer nothing is detached');
  const yBefore = Array.from(y);

  // A view into a larger buffer is not moved (that would detach data the caller did not name).
  const big = new Float32Array(2 * L * W_IN);
  big.set(x);
  const view = big.subarray(0, L * W_IN);
  const viaView = await s.run(
    { x: tensor('float32', view, [1, L, W_IN]), y: tensor('float32', y, [1, L, W_IN]) },
    { transfer: ['x'] },
  );
  t.equal(big.length, 2 * L * W_IN, 'the larger buffer is not detached');
  t.same(Array.from(viaView.z!.data as Float32Array), copied);

  const out = await s.run(feeds(), { transfer: ['x'] });
  t.same(Array.from(out.z!.data as Float32Array), copied, 'same answer as a copied run');
  t.equal(x.byteLength, 0, 'x was moved: detached here');
  t.equal(y.length, L * W_IN, 'y was copied');
  t.same(Array.from(y), yBefore);
});
