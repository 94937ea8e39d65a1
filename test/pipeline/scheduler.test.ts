import t from 'tap';
import { Semaphore } from '../../src/pipeline/scheduler.js';
import { EventChannel } from '../../src/pipeline/channel.js';
import { assignMatrix } from '../../src/pipeline/vision.js';
import { alphaBar } from '../../src/pipeline/tasks/diffusion.js';
import { checkRequest } from '../../src/pipeline/request.js';
import type { QueryRequest } from '../../src/pipeline/types.js';

t.test('a semaphore admits up to its capacity and hands slots on in FIFO order', async (t) => {
  const s = new Semaphore(2);
  const r1 = await s.acquire();
  const r2 = await s.acquire();
  t.equal(s.inUse, 2);
  const order: number[] = [];
  const w3 = s.acquire().then((r) => (order.push(3), r));
  const w4 = s.acquire().then((r) => (order.push(4), r));
  t.equal(s.waiting, 2);
  r1();
  r1(); // idempotent: frees one slot only
  const r3 = await w3;
  t.equal(s.waiting, 1);
  r2();
  const r4 = await w4;
  t.same(order, [3, 4]);
  r3();
  r4();
  t.equal(s.inUse, 0);
  t.throws(() => new Semaphore(0), { code: 'BAD_CONFIG' });
});

t.test('a waiter that aborts leaves the queue and never takes a slot', async (t) => {
  const s = new Semaphore(1);
  const held = await s.acquire();
  const ac = new AbortController();
  const waiting = s.acquire(ac.signal);
  const next = s.acquire();
  ac.abort();
  await t.rejects(waiting, { code: 'CANCELLED' });
  held();
  (await next)();
  t.equal(s.inUse, 0);
  t.equal(s.waiting, 0);
  await t.rejects(s.acquire(AbortSignal.abort()), { code: 'CANCELLED' });
});

t.test('an event channel delivers pushed items in order, then ends; an early return calls onReturn', async (t) => {
  const ch = new EventChannel<number>();
  ch.push(1);
  const got: number[] = [];
  const reading = (async () => {
    for await (const x of ch) got.push(x);
  })();
  ch.push(2);
  ch.end();
  ch.push(3); // after the end: dropped
  await reading;
  t.same(got, [1, 2]);
  t.throws(() => ch[Symbol.asyncIterator](), TypeError, 'one consumer only');

  const ch2 = new EventChannel<number>();
  let returned = 0;
  ch2.onReturn = () => returned++;
  ch2.push(1);
  ch2.push(2);
  for await (const x of ch2) if (x === 1) break;
  t.equal(returned, 1);
});

t.test('the assign matrix is one-hot per patch, [L, N]', async (t) => {
  const m = assignMatrix(Int32Array.from([0, 1, 1, 0, 2]), 3);
  t.same(Array.from(m), [1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1]);
});

t.test('the cosine schedule runs from 1 at t = 0 down to its floor at t = 1, monotonically', async (t) => {
  t.equal(alphaBar(0), 1);
  t.ok(alphaBar(1) <= 1e-4 + 1e-12);
  let prev = 1;
  for (let i = 1; i <= 100; i++) {
    const a = alphaBar(i / 100);
    t.ok(a <= prev, `step ${i}`);
    prev = a;
  }
  t.ok(Math.abs(alphaBar(0.5) - 0.5) < 0.03, `about half the signal at t = 0.5 (${alphaBar(0.5)})`);
});

t.test('requests are checked at the edge with task defaults', async (t) => {
  const d = { maxTokens: 100 };
  const img = new Uint8Array([1]);
  const ok = checkRequest({ id: 'a', task: 'describe', image: img }, d);
  t.match(ok.prompt, /Describe/);
  t.same([ok.maxTokens, ok.temperature, ok.topK, ok.topP, ok.seed], [100, 0, 0, 1, 0]);
  t.equal(
    checkRequest({ id: 'a', task: 'generate', prompt: 'x', generation: { maxTokens: 500 } }, d).maxTokens,
    100,
    'capped',
  );
  t.equal(checkRequest({ id: 'a', task: 'generate', prompt: 'x', generation: { maxTokens: 7 } }, d).maxTokens, 7);
  const bad: [unknown, string][] = [
    [{ id: '', task: 'ask', prompt: 'x', image: img }, 'BAD_ARGUMENT'],
    [{ id: 'a', task: 'paint', prompt: 'x', image: img }, 'UNKNOWN_TASK'],
    [{ id: 'a', task: 'ask', prompt: '  ', image: img }, 'BAD_INPUT'],
    [{ id: 'a', task: 'segment', prompt: 'x' }, 'BAD_INPUT'],
    [{ id: 'a', task: 'generate', prompt: 'x', image: img }, 'BAD_INPUT'],
    [{ id: 'a', task: 'ask', prompt: 'x', image: img, generation: { topP: 0 } }, 'BAD_ARGUMENT'],
    [{ id: 'a', task: 'ask', prompt: 'x', image: img, generation: { maxTokens: 2.5 } }, 'BAD_ARGUMENT'],
    [{ id: 'a', task: 'ask', prompt: 'x', image: img, generation: { bogus: 1 } }, 'BAD_ARGUMENT'],
    [{ id: 'a', task: 'ask', prompt: 'x'.repeat(16385), image: img }, 'PROMPT_TOO_LONG'],
  ];
  for (const [r, code] of bad)
    t.throws(() => checkRequest(r as QueryRequest, d), { code }, JSON.stringify(r).slice(0, 80));
});
