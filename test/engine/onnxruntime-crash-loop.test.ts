/**
 * The ONNX Runtime backend's crash-loop cap: real workers that really exit (the worker's test-only
 * 'crash' message, as in onnxruntime.test.ts), and real reopens counted by Node's process 'worker'
 * event (one per Worker thread started, i.e. one per model load).
 */
import t, { type Test } from 'tap';
import type { Worker } from 'node:worker_threads';
import { setTimeout as delay } from 'node:timers/promises';
import { tensor, type Session } from '../../src/engine/backend.js';
import type { SetokimError } from '../../src/errors.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { W_IN, addMatMul, tmpDir } from './fixtures.js';

const dir = tmpDir();
const x = new Float32Array(W_IN).map((_, i) => Math.sin(i));
const feeds = () => ({ x: tensor('float32', x, [1, 1, W_IN]), y: tensor('float32', x, [1, 1, W_IN]) });

const internals = (s: Session) => s as unknown as { worker: Worker; restarts: number };

/** Worker threads started in this process from now on. */
function countWorkers(t: Test): () => number {
  let n = 0;
  const onWorker = () => void n++;
  process.on('worker', onWorker);
  t.teardown(() => void process.off('worker', onWorker));
  return () => n;
}

/** The session's worker dies (process.exit(70)) on receiving the next run; that run's result. */
async function dieWithRun(s: Session): Promise<SetokimError> {
  internals(s).worker.postMessage({ type: 'crash', how: 'exit', atNextRun: true });
  const r = await Promise.allSettled([s.run(feeds())]);
  if (r[0]!.status !== 'rejected') throw new Error('the run should have failed');
  return r[0].reason as SetokimError;
}

/** Makes the idle session's worker exit and waits until it has. */
async function dieIdle(s: Session): Promise<void> {
  const worker = internals(s).worker;
  const gone = new Promise((resolve) => worker.once('exit', resolve));
  worker.ref();
  worker.postMessage({ type: 'crash', how: 'exit' });
  await gone;
}

t.test('options are checked', async (t) => {
  const file = addMatMul(dir);
  await t.rejects(new OrtBackend({ maxRestarts: -1 }).open(file), {
    code: 'BAD_ARGUMENT',
    message: /maxRestarts must be a whole number \(0 or more\), got -1/,
  });
  await t.rejects(new OrtBackend({ maxRestarts: 1.5 }).open(file), { code: 'BAD_ARGUMENT' });
  await t.rejects(new OrtBackend({ restartWindowMs: 0 }).open(file), {
    code: 'BAD_ARGUMENT',
    message: /restartWindowMs must be a positive number of milliseconds, got 0/,
  });
});

t.test('the death after maxRestarts within the window leaves the session failing fast, without a reopen', async (t) => {
  const started = countWorkers(t);
  const s = await new OrtBackend({ threads: 1, maxRestarts: 2 }).open(addMatMul(dir), { stage: 'loops' });
  t.teardown(() => s.dispose());
  const want = Array.from((await s.run(feeds())).z!.data as Float32Array);
  t.equal(started(), 1, 'the first worker');
  for (let i = 1; i <= 2; i++) {
    const err = await dieWithRun(s);
    t.equal(err.code, 'BACKEND_CRASHED');
    t.match(
      err.message,
      /died \(exit code 70\) during this run; send the query again/,
      `death ${i}: the usual message`,
    );
    t.same(Array.from((await s.run(feeds())).z!.data as Float32Array), want, `death ${i}: reopened and answers`);
    t.equal(started(), 1 + i, `death ${i}: one new worker`);
    t.equal(internals(s).restarts, i);
  }
  // The third death within the (default 60 s) window: the run in flight gets the crash-loop error.
  const loop = {
    code: 'BACKEND_CRASHED',
    message:
      /^stage 'loops': the ONNX Runtime worker keeps crashing: it died 3 times within 60 s \(last: exit code 70\), so this session no longer restarts it\. Check the model .* and the memory free on the device, then restart the agent\.$/,
  };
  t.match(await dieWithRun(s), loop);
  const results = await Promise.allSettled([s.run(feeds()), s.run(feeds()), s.run(feeds())]);
  for (const r of results) t.match(r.status === 'rejected' && r.reason, loop, 'later runs fail with it too');
  t.equal(started(), 3, 'no worker was started for them (no model load)');
  t.equal(internals(s).restarts, 2);
});

t.test('maxRestarts 0: the first death is final', async (t) => {
  const started = countWorkers(t);
  const s = await new OrtBackend({ threads: 1, maxRestarts: 0, restartWindowMs: 1500 }).open(addMatMul(dir), {
    stage: 'once',
  });
  t.teardown(() => s.dispose());
  await s.run(feeds());
  await dieIdle(s);
  await t.rejects(s.run(feeds()), {
    code: 'BACKEND_CRASHED',
    message: /keeps crashing: it died 1 time within 1500 ms \(last: exit code 70\)/,
  });
  t.equal(started(), 1);
});

t.test('a death once the window has passed since the earlier ones counts afresh: the session reopens', async (t) => {
  const windowMs = 200;
  const started = countWorkers(t);
  const s = await new OrtBackend({ threads: 1, maxRestarts: 1, restartWindowMs: windowMs }).open(addMatMul(dir), {
    stage: 'spaced',
  });
  t.teardown(() => s.dispose());
  const want = Array.from((await s.run(feeds())).z!.data as Float32Array);
  await dieIdle(s); // death 1: the session saw it before this returned
  const firstDeath = performance.now();
  t.same(Array.from((await s.run(feeds())).z!.data as Float32Array), want, 'reopened after death 1');
  // The only wait on the clock: the window itself has to pass (bounded: windowMs from death 1).
  const left = firstDeath + windowMs + 5 - performance.now();
  if (left > 0) await delay(left);
  await dieIdle(s); // death 2, more than windowMs after death 1: with maxRestarts 1 it would be final otherwise
  t.same(Array.from((await s.run(feeds())).z!.data as Float32Array), want, 'reopened after death 2');
  t.equal(started(), 3, 'a new worker for each death');
  t.equal(internals(s).restarts, 2);
});
