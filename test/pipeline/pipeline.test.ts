import t from 'tap';
import sharp from 'sharp';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/pipeline.js';
import type { PipelineEvent, QueryRequest } from '../../src/pipeline/types.js';
import { busyImage, collect, flatImage, tinySet } from './fixtures.js';

type Ev<K extends PipelineEvent['type']> = Extract<PipelineEvent, { type: K }>;
const of = <K extends PipelineEvent['type']>(events: PipelineEvent[], type: K) =>
  events.filter((e): e is Ev<K> => e.type === type);
const textOf = (events: PipelineEvent[]) =>
  of(events, 'text')
    .map((e) => e.delta)
    .join('');
/** KV bytes held by requests (cache holds such as prompt prefixes aside). */
const requestKv = () => p.kv.used - p.kv.cached;

let p: LocalPipeline;
let busy: Uint8Array;
let flat: Uint8Array;
let setDir: string;
t.before(async () => {
  const set = await tinySet();
  setDir = set.dir;
  t.teardown(set.cleanup);
  p = await createPipeline({ modelsDir: set.dir, threads: 1, maxInFlight: 3 });
  t.teardown(() => p.close());
  busy = await busyImage();
  flat = await flatImage();
});

const run = (r: Partial<QueryRequest> & Pick<QueryRequest, 'task'>, signal?: AbortSignal) =>
  collect(p.run({ id: r.task, prompt: 'What is in the picture?', ...r } as QueryRequest, { signal }));

t.test('a precision the set has no build of is refused, not quietly run as fp32', async (t) => {
  await t.rejects(createPipeline({ modelsDir: setDir, threads: 1, precision: 'int8' }), {
    code: 'BAD_ARGUMENT',
    message: /has no int8 builds of any stage.*export quantize/,
  });
  const fp32 = await createPipeline({ modelsDir: setDir, threads: 1, precision: 'fp32' });
  await fp32.close();
});

t.test('ask streams text between accepted/clustered and done', async (t) => {
  const ev = await run({ task: 'ask', image: busy, generation: { maxTokens: 12 } });
  t.same(
    ev.map((e) => e.type).filter((x, i, a) => a[i - 1] !== x),
    ['accepted', 'clustered', 'text', 'done'],
  );
  const clustered = of(ev, 'clustered')[0]!;
  const done = of(ev, 'done')[0]!;
  t.equal(clustered.patches, 256, '16 x 16 patches');
  t.ok(clustered.visionTokens >= 1 && clustered.visionTokens <= 64);
  t.equal(done.visionTokens, clustered.visionTokens);
  t.equal(done.generatedTokens, 12);
  t.equal(done.finishReason, 'length');
  t.ok(textOf(ev).length > 0);
  const png = await sharp(clustered.maskPng).metadata();
  t.equal(png.format, 'png');
  t.equal(png.width, 448, 'token masks over the 224 px input, scaled x2');
  for (const s of ['preprocess', 'encoder', 'cluster', 'merger', 'prefill', 'decode'])
    t.ok(done.stages[s]! > 0, `stage ${s} timed`);
  t.ok(done.firstTokenMs! > 0 && done.firstTokenMs! <= done.totalMs);
  t.equal(p.kv.used, p.kv.cached, 'KV cache released after completion (cache holds aside)');
});

t.test('describe needs no prompt; its default is used', async (t) => {
  const ev = await collect(p.run({ id: 'd', task: 'describe', image: flat, generation: { maxTokens: 4 } }));
  const done = of(ev, 'done')[0]!;
  t.ok(done, JSON.stringify(of(ev, 'error')));
  const ask = await collect(p.run({ id: 'a', task: 'ask', image: flat, prompt: 'hi', generation: { maxTokens: 4 } }));
  t.not(done.promptTokens, of(ask, 'done')[0]!.promptTokens, 'the default prompt is not the short one');
});

t.test('segment gives the referring mask and one mask per vision token at the image size', async (t) => {
  const img = await busyImage(9, 60, 320, 240);
  const ev = await run({
    task: 'segment',
    image: img,
    prompt: 'Segment the red circle.',
    generation: { maxTokens: 6 },
  });
  const L = of(ev, 'clustered')[0]!.visionTokens;
  const masks = of(ev, 'mask');
  t.equal(masks.length, L + 1);
  t.equal(masks.filter((m) => m.referring).length, 1);
  t.same(
    masks.filter((m) => !m.referring).map((m) => m.index),
    Array.from({ length: L }, (_, i) => i),
  );
  for (const m of masks) {
    const meta = await sharp(m.png).metadata();
    t.same([meta.format, meta.width, meta.height, m.width, m.height], ['png', 320, 240, 320, 240]);
  }
  t.ok(of(ev, 'done')[0]);
});

t.test('generate and edit render an image from the <target> tokens', async (t) => {
  for (const task of ['generate', 'edit'] as const) {
    const ev = await run({
      task,
      image: task === 'edit' ? busy : undefined,
      prompt: 'A red boat on a lake.',
      generation: { maxTokens: 24 },
    });
    const img = of(ev, 'image');
    t.equal(img.length, 1, `${task}: one image ${JSON.stringify(of(ev, 'error'))}`);
    const meta = await sharp(img[0]!.png).metadata();
    t.same([meta.format, meta.width, meta.height], ['png', 64, 64], `${task}: the detokenizer's 64 px`);
    const stats = await sharp(img[0]!.png).stats();
    t.ok(
      stats.channels.some((c) => c.stdev > 1),
      `${task}: not a blank image`,
    );
    const done = of(ev, 'done')[0]!;
    t.ok(done.stages.diffusion! > 0 && done.stages.detokenizer! > 0);
    t.equal(done.visionTokens > 0, task === 'edit');
  }
});

t.test('the same seed gives the same text and pictures; another seed other text', async (t) => {
  const gen = { maxTokens: 16, temperature: 0.9, topK: 50, topP: 0.95 };
  const a = await run({ task: 'segment', image: busy, generation: { ...gen, seed: 7 } });
  const b = await run({ task: 'segment', image: busy, generation: { ...gen, seed: 7 } });
  const c = await run({ task: 'segment', image: busy, generation: { ...gen, seed: 8 } });
  t.equal(textOf(a), textOf(b));
  t.not(textOf(a), textOf(c));
  t.same(of(a, 'clustered')[0]!.maskPng, of(b, 'clustered')[0]!.maskPng);
  t.same(
    of(a, 'mask').map((m) => Buffer.from(m.png).toString('hex')),
    of(b, 'mask').map((m) => Buffer.from(m.png).toString('hex')),
  );
  const g1 = of(await run({ task: 'generate', prompt: 'a cat', generation: { ...gen, seed: 3 } }), 'image')[0]!;
  const g2 = of(await run({ task: 'generate', prompt: 'a cat', generation: { ...gen, seed: 3 } }), 'image')[0]!;
  t.same(Buffer.from(g1.png), Buffer.from(g2.png));
  const g3 = of(await run({ task: 'generate', prompt: 'a cat', generation: { ...gen, seed: 4 } }), 'image')[0]!;
  t.not(Buffer.from(g1.png).toString('hex'), Buffer.from(g3.png).toString('hex'), 'another seed, another image');
});

t.test('a flat image gives fewer vision tokens than a busy one', async (t) => {
  const count = async (image: Uint8Array) =>
    of(await run({ task: 'ask', image, generation: { maxTokens: 1 } }), 'clustered')[0]!.visionTokens;
  const flatCount = await count(flat);
  const busyCounts = [await count(busy), await count(await busyImage(11, 100))];
  for (const b of busyCounts) t.ok(flatCount < b, `flat ${flatCount} < busy ${b}`);
});

t.test('stop strings end the answer before the stop string', async (t) => {
  const full = textOf(await run({ task: 'ask', image: flat, generation: { maxTokens: 24 } }));
  t.ok(full.length > 12, full);
  const stop = full.slice(8, 12); // a piece of the greedy answer: the same prefix must come back, cut there
  const ev = await run({ task: 'ask', image: flat, generation: { maxTokens: 24, stop: [stop] } });
  t.equal(of(ev, 'done')[0]!.finishReason, 'stop');
  t.equal(textOf(ev), full.slice(0, full.indexOf(stop)));
});

t.test('broken and empty images, and bad requests, end with a clear error event', async (t) => {
  const cases: [Partial<QueryRequest>, string, RegExp][] = [
    [{ task: 'ask', image: new Uint8Array(0) }, 'BAD_IMAGE', /empty/],
    [{ task: 'ask', image: busy.subarray(0, busy.length / 3) }, 'BAD_IMAGE', /truncated|corrupt|read/],
    [{ task: 'ask', image: new TextEncoder().encode('GIF89a nonsense') }, 'BAD_IMAGE', /JPEG, PNG or WebP/],
    [{ task: 'ask' }, 'BAD_INPUT', /needs an image/],
    [{ task: 'fly' as never, image: busy }, 'UNKNOWN_TASK', /ask, describe/],
    [{ task: 'ask', image: busy, generation: { temperature: -1 } }, 'BAD_ARGUMENT', /temperature/],
  ];
  for (const [r, code, msg] of cases) {
    const ev = await run(r as QueryRequest);
    const last = ev.at(-1)!;
    t.equal(last.type, 'error', `${code}: ${JSON.stringify(last).slice(0, 200)}`);
    if (last.type === 'error') {
      t.equal(last.code, code);
      t.match(last.message, msg);
    }
    t.equal(of(ev, 'done').length, 0);
  }
  t.equal(requestKv(), 0);
});

t.test('a cancelled request stops and releases its KV cache', async (t) => {
  const ac = new AbortController();
  const events: PipelineEvent[] = [];
  let usedWhileRunning = 0;
  for await (const e of p.run(
    { id: 'c', task: 'ask', prompt: 'long answer please', image: busy, generation: { maxTokens: 400 } },
    { signal: ac.signal },
  )) {
    events.push(e);
    if (e.type === 'text' && !ac.signal.aborted) {
      usedWhileRunning = p.kv.used;
      ac.abort();
    }
  }
  t.ok(usedWhileRunning > 0, `the request held ${usedWhileRunning} bytes of KV cache`);
  const last = events.at(-1)!;
  t.equal(last.type, 'error');
  t.equal(last.type === 'error' && last.code, 'CANCELLED');
  t.ok(of(events, 'text').length < 20, 'decoding stopped soon after the abort');
  t.equal(requestKv(), 0, 'budget back to 0 (cache holds aside)');
  t.equal(p.inFlight, 0);

  // A consumer that stops reading cancels the request too.
  for await (const e of p.run({ id: 'r', task: 'ask', prompt: 'x', image: busy, generation: { maxTokens: 400 } }))
    if (e.type === 'text') break;
  await t.resolveMatch(
    waitFor(() => requestKv() === 0 && p.inFlight === 0),
    true,
  );
});

/** Polls the event loop (no timers) until cond holds; the pipeline finishes on its own promises. */
async function waitFor(cond: () => boolean, turns = 100000): Promise<boolean> {
  for (let i = 0; i < turns && !cond(); i++) await new Promise((r) => setImmediate(r));
  return cond();
}

t.test('requests in flight together all complete; one failing does not disturb the others', async (t) => {
  const solo = textOf(await run({ task: 'ask', image: busy, generation: { maxTokens: 40 } }));
  const order: string[] = [];
  const tag = (name: string, it: AsyncIterable<PipelineEvent>) =>
    collect(it).then((ev) => {
      order.push(name);
      return ev;
    });
  const [long, short, broken] = await Promise.all([
    tag(
      'long',
      p.run({ id: 'long', task: 'ask', prompt: 'What is in the picture?', image: busy, generation: { maxTokens: 40 } }),
    ),
    tag(
      'short',
      p.run({ id: 'short', task: 'segment', prompt: 'the circle', image: flat, generation: { maxTokens: 2 } }),
    ),
    tag(
      'broken',
      p.run({ id: 'broken', task: 'ask', prompt: 'x', image: new Uint8Array([0xff, 0xd8, 0xff, 0, 1, 2]) }),
    ),
  ]);
  t.equal(textOf(long), solo, 'the long answer is the same as when it runs alone');
  t.equal(of(long, 'done').length, 1);
  t.equal(of(short, 'done').length, 1);
  t.ok(long.every((e) => e.id === 'long') && short.every((e) => e.id === 'short'), 'events never cross streams');
  t.equal(of(broken, 'error')[0]?.code, 'BAD_IMAGE');
  t.ok(
    order.indexOf('short') < order.indexOf('long'),
    `the short request finished first (${order}): stages interleave`,
  );
  t.equal(requestKv(), 0);
});
