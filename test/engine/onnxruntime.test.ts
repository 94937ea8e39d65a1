/** What only the ONNX Runtime backend does: load errors, thread options, the graph's own signature. */
import t from 'tap';
import path from 'node:path';
import { tensor } from '../../src/engine/backend.js';
import { OrtBackend, signatureFromMetadata } from '../../src/engine/onnxruntime.js';
import { W_IN, addMatMul, addMatMulRef, heavyGraph, notOnnx, tmpDir } from './fixtures.js';

const dir = tmpDir();
const ort = new OrtBackend();

t.test('a missing or broken file is refused naming the file', async (t) => {
  await t.rejects(ort.open(path.join(dir, 'absent.onnx'), { stage: 'encoder' }), { code: 'MODEL_NOT_FOUND', message: /stage 'encoder': .*absent\.onnx does not exist/ });
  await t.rejects(ort.open(notOnnx(dir), { stage: 'encoder' }), { code: 'MODEL_INVALID', message: /stage 'encoder': ONNX Runtime cannot load .*broken\.onnx/ });
});

t.test('threads must be a positive integer', async (t) => {
  await t.rejects(ort.open(addMatMul(dir), { threads: 0 }), { code: 'BAD_ARGUMENT', message: /threads must be a positive integer, got 0/ });
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
  await t.rejects(s.run({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', x.subarray(0, W_IN), [1, 1, W_IN]) }), {
    code: 'BAD_INPUT',
    message: /stage 'add_matmul\.onnx': input 'y' axis 1 is dim 'L' = 1, but 'x' set 'L' = 2/,
  });
  await t.rejects(s.run({ x: tensor('float32', x, [1, 2, W_IN]), y: tensor('float32', x, [1, 2, W_IN]), z: tensor('float32', x, [1, 2, W_IN]) }), {
    code: 'BAD_INPUT',
    message: /unknown input 'z'; this stage takes 'x', 'y'/,
  });
});

t.test('signatureFromMetadata keeps named dims and frees unnamed ones', async (t) => {
  const sig = signatureFromMetadata([
    { name: 'a', isTensor: true, type: 'float32', shape: [1, 'L', ''] },
    { name: 'strings', isTensor: true, type: 'string', shape: [1] },
    { name: 'seq', isTensor: false },
  ]);
  t.same(sig.inputs, [{ name: 'a', dtype: 'float32', shape: [1, 'L', '?2'] }]);
});

t.test('dispose during a run cancels it; a dead worker fails runs instead of hanging', async (t) => {
  const n = 384;
  const s = await ort.open(heavyGraph(dir, n), { stage: 'heavy', threads: 1 });
  const a = new Float32Array(n * n).fill(0.01);
  const pending = t.rejects(s.run({ a: tensor('float32', a, [n, n]) }), { code: 'CANCELLED', message: /stage 'heavy': session disposed during a run/ });
  await s.dispose();
  await pending;

  const s2 = await ort.open(addMatMul(dir), { stage: 'crashy' });
  // Simulate the worker dying (e.g. a native crash or an out-of-memory kill).
  await (s2 as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
  const x = new Float32Array(W_IN);
  await t.rejects(s2.run({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', x, [1, 1, W_IN]) }), {
    code: 'INTERNAL',
    message: /stage 'crashy': the ONNX Runtime worker exited .*reopen the stage/,
  });
  await s2.dispose(); // returns although the worker is gone
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
  const viaView = await s.run({ x: tensor('float32', view, [1, L, W_IN]), y: tensor('float32', y, [1, L, W_IN]) }, { transfer: ['x'] });
  t.equal(big.length, 2 * L * W_IN, 'the larger buffer is not detached');
  t.same(Array.from(viaView.z!.data as Float32Array), copied);

  const out = await s.run(feeds(), { transfer: ['x'] });
  t.same(Array.from(out.z!.data as Float32Array), copied, 'same answer as a copied run');
  t.equal(x.byteLength, 0, 'x was moved: detached here');
  t.equal(y.length, L * W_IN, 'y was copied');
  t.same(Array.from(y), yBefore);
});
