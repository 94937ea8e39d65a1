/**
 * The caches kept between queries change no answer. Vision tokens per image and prompt prefixes'
 * KV rows: the same greedy queries give the same events with every cache on as with every cache
 * off, and the second query on an image skips the vision path and most of the prefill.
 * Conversations: a follow-up prefills only its own tokens, and five turns give the answers the same
 * turns give replayed without any cache (every turn prefilling the whole transcript); a cancelled
 * turn leaves the conversation at its last complete turn; an unknown one is CONVERSATION_UNKNOWN;
 * under memory pressure conversations and prefixes are evicted so that a new query runs.
 * (The stores on their own: kv-cache, vision-cache and conversation-store tests.)
 */
import t from 'tap';
import type { Worker } from 'node:worker_threads';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/pipeline.js';
import type { PipelineEvent, QueryRequest } from '../../src/pipeline/types.js';
import { busyImage, collect, tinySet } from './fixtures.js';

type Done = Extract<PipelineEvent, { type: 'done' }>;

let cached: LocalPipeline;
let plain: LocalPipeline;
let images: Uint8Array[];
let image: Uint8Array;
let setDir: string;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  setDir = set.dir;
  cached = await createPipeline({ modelsDir: set.dir, threads: 1, maxInFlight: 1, verify: false });
  plain = await createPipeline({
    modelsDir: set.dir,
    threads: 1,
    maxInFlight: 1,
    verify: false,
    visionCacheBytes: 0,
    reuseKv: false,
  });
  t.teardown(() => Promise.all([cached.close(), plain.close()]));
  images = [await busyImage(3, 20), await busyImage(7, 12)];
  image = await busyImage(5, 16);
});

/** Everything a query answers, with the timings and cache counts left out. */
function answer(events: PipelineEvent[]) {
  return events.map((e) => {
    if (e.type === 'done')
      return {
        type: 'done',
        visionTokens: e.visionTokens,
        promptTokens: e.promptTokens,
        generatedTokens: e.generatedTokens,
        finishReason: e.finishReason,
      };
    return e;
  });
}

const doneOf = (events: PipelineEvent[]): Done => {
  const d = events.find((e): e is Done => e.type === 'done');
  if (!d) throw new Error(`no done: ${JSON.stringify(events.at(-1)).slice(0, 300)}`);
  return d;
};

t.test('the same answers with every cache on and off, query after query on the same images', async (t) => {
  const queries: QueryRequest[] = [
    { id: 'q1', task: 'ask', prompt: 'What is in the picture?', image: images[0]!, generation: { maxTokens: 12 } },
    { id: 'q2', task: 'ask', prompt: 'How many shapes are red?', image: images[0]!, generation: { maxTokens: 12 } },
    { id: 'q3', task: 'describe', image: images[0]!, generation: { maxTokens: 10 } },
    { id: 'q4', task: 'ask', prompt: 'What is in the picture?', image: images[1]!, generation: { maxTokens: 12 } },
    { id: 'q5', task: 'segment', prompt: 'the largest shape', image: images[1]!, generation: { maxTokens: 4 } },
    {
      id: 'q6',
      task: 'ask',
      prompt: 'And the colours?',
      image: images[0]!,
      generation: { maxTokens: 12, temperature: 0.8, topK: 20, seed: 7 },
    },
    { id: 'q7', task: 'edit', prompt: 'Make it blue.', image: images[1]!, generation: { maxTokens: 8 } },
  ];
  const dones: Done[] = [];
  for (const q of queries) {
    const withCaches = await collect(cached.run(q));
    const without = await collect(plain.run(q));
    t.same(
      answer(withCaches),
      answer(without),
      `${q.id}: same events (${withCaches.filter((e) => e.type === 'text').length} text deltas)`,
    );
    dones.push(doneOf(withCaches));
    t.equal(doneOf(without).cachedTokens, 0, `${q.id}: nothing cached without caches`);
  }
  const [q1, q2, , q4] = dones;
  t.equal(q1!.cachedTokens, 0, 'the first query on an image prefills everything');
  t.ok(
    q2!.cachedTokens! > q1!.visionTokens,
    `the second query on it copies the system prompt and image rows (${q2!.cachedTokens} of ${q2!.promptTokens})`,
  );
  t.equal(q2!.stages.encoder, undefined, 'and runs no encoder');
  t.equal(q2!.stages.merger, undefined, 'nor merger');
  t.equal(q2!.stages.cluster, undefined, 'nor clustering');
  t.equal(q4!.cachedTokens, 0, 'another image: a miss');
  const s = cached.cacheStats();
  t.match(s.vision, { hits: 5, misses: 2, entries: 2 });
  t.ok(s.vision.bytes > 0 && s.vision.bytes <= s.vision.capacityBytes);
  t.ok(s.prefix.hits >= 4 && s.prefix.entries === 2, `prefix cache ${JSON.stringify(s.prefix)}`);
  t.equal(s.kv.cachedBytes, s.prefix.bytes, 'the prefix entries hold their bytes in the KV budget');
  t.same(plain.cacheStats().vision, { hits: 0, misses: 7, bytes: 0, entries: 0, evictions: 0, capacityBytes: 0 });
});

const QUESTIONS = [
  'What is in the picture?',
  'Which shape is the largest?',
  'What colour is it?',
  'Is anything touching the edge?',
  'Describe the background.',
];

const turn = (conversation: string, i: number, extra: Partial<QueryRequest> = {}): QueryRequest => ({
  id: `${conversation}-${i}`,
  task: 'ask',
  prompt: QUESTIONS[i % QUESTIONS.length],
  ...(i === 0 ? { image } : {}),
  conversation,
  generation: { maxTokens: 8 },
  ...extra,
});

const textOf = (ev: PipelineEvent[]) =>
  ev
    .filter((e) => e.type === 'text')
    .map((e) => (e as { delta: string }).delta)
    .join('');
const errorOf = (ev: PipelineEvent[]) =>
  ev.find((e): e is Extract<PipelineEvent, { type: 'error' }> => e.type === 'error');

t.test('five turns with the KV cache kept = the same turns replayed without any cache', async (t) => {
  let previous = 0;
  for (let i = 0; i < 5; i++) {
    const a = await collect(cached.run(turn('five', i)));
    const b = await collect(plain.run(turn('five', i)));
    const [da, db] = [doneOf(a), doneOf(b)];
    t.equal(textOf(a), textOf(b), `turn ${i + 1}: same answer ("${textOf(a).slice(0, 40)}")`);
    t.same(
      [da.promptTokens, da.generatedTokens, da.finishReason],
      [db.promptTokens, db.generatedTokens, db.finishReason],
    );
    t.equal(db.cachedTokens, 0, `turn ${i + 1} replayed: prefills all ${db.promptTokens} tokens`);
    if (i > 0) {
      t.ok(da.promptTokens > previous, 'the context grows turn by turn');
      t.ok(
        da.cachedTokens! >= previous,
        `turn ${i + 1} with the cache: ${da.cachedTokens} of ${da.promptTokens} tokens kept, ${da.promptTokens - da.cachedTokens!} prefilled`,
      );
      t.equal(da.stages.encoder, undefined, 'a follow-up runs no vision stage');
    }
    previous = da.promptTokens;
  }
  t.match(cached.cacheStats().conversations, { active: 1, started: 1, resumed: 4, replayed: 0 });
  t.match(plain.cacheStats().conversations, { active: 1, started: 1, resumed: 0, replayed: 4 });
  t.ok(cached.cacheStats().conversations.bytes > 0, 'the kept cache is counted in the KV budget');
  t.equal(plain.cacheStats().conversations.bytes, 0, 'without KV reuse only the transcript is kept');
});

t.test('a cancelled turn leaves the conversation at its last complete turn', async (t) => {
  for (const p of [cached, plain]) {
    t.ok(doneOf(await collect(p.run(turn('cancel', 0)))));
    t.ok(doneOf(await collect(p.run(turn('cancel', 1)))));
  }
  // Turn 3 on the cached pipeline is cancelled after its first words...
  const ac = new AbortController();
  const cut: PipelineEvent[] = [];
  for await (const e of cached.run(turn('cancel', 2, { generation: { maxTokens: 200 } }), { signal: ac.signal })) {
    cut.push(e);
    if (e.type === 'text') ac.abort();
  }
  t.equal(errorOf(cut)?.code, 'CANCELLED');
  // ...so its next turn continues from turn 2, as on the pipeline where turn 3 never ran.
  const a = await collect(cached.run(turn('cancel', 3)));
  const b = await collect(plain.run(turn('cancel', 3)));
  t.equal(textOf(a), textOf(b));
  t.equal(doneOf(a).promptTokens, doneOf(b).promptTokens, 'the cancelled turn left nothing in the context');
  t.ok(doneOf(a).cachedTokens! > 0, 'and the kept cache was still used');
});

t.test('an unknown conversation is refused with a clear code, never started', async (t) => {
  const before = cached.cacheStats().conversations.active;
  const unknown = await collect(cached.run(turn('never-started', 1)));
  t.same(
    unknown.map((e) => e.type),
    ['error'],
    'refused before it was accepted',
  );
  t.equal(errorOf(unknown)?.code, 'CONVERSATION_UNKNOWN');
  t.match(errorOf(unknown)?.message, /never-started.*not held here.*send the image with the first question/);
  t.equal(cached.cacheStats().conversations.active, before, 'no conversation was created by it');

  // Ending by idle time, count and memory: conversation-store.test.ts.
});

t.test('conversation rules: one image, one turn at a time, text tasks only', async (t) => {
  t.ok(doneOf(await collect(cached.run(turn('rules', 0)))));
  const again = await collect(cached.run(turn('rules', 0, { id: 'rules-again' })));
  t.equal(errorOf(again)?.code, 'BAD_INPUT');
  t.match(errorOf(again)?.message, /already exists; its follow-ups carry no image/);
  const [x, y] = await Promise.all([collect(cached.run(turn('rules', 1))), collect(cached.run(turn('rules', 2)))]);
  t.same(
    [errorOf(x)?.code, errorOf(y)?.code].sort(),
    ['BUSY', undefined].sort(),
    'a second turn while one runs is BUSY',
  );
  t.match(errorOf(x) ?? errorOf(y), { message: /has a turn running/ });
  const seg = await collect(cached.run(turn('rules', 3, { task: 'segment' })));
  t.equal(errorOf(seg)?.code, 'BAD_INPUT');
  const img = await collect(cached.run(turn('rules', 3, { prompt: 'and <image>?' })));
  t.equal(errorOf(img)?.code, 'BAD_INPUT');
  t.ok(doneOf(await collect(cached.run(turn('rules', 4)))), 'refused turns changed nothing');
});

t.test('under memory pressure caches are evicted before a query waits', async (t) => {
  // Room for a query's KV cache (prompt ~70 rows + 40 new: ~110 KiB) and a prefix (~60 KiB), not
  // for a second query beside a kept conversation.
  const p = await createPipeline({
    modelsDir: setDir,
    threads: 1,
    maxInFlight: 1,
    verify: false,
    kvBudgetBytes: 200 * 1024,
  });
  t.teardown(() => p.close());
  const other = await busyImage(11, 9);
  t.ok(doneOf(await collect(p.run({ ...turn('pressed', 0), generation: { maxTokens: 40 } }))));
  t.ok(
    p.cacheStats().conversations.bytes > 0 && p.cacheStats().prefix.entries === 1,
    'the conversation and the prefix hold memory',
  );
  const q = await collect(
    p.run({ id: 'big', task: 'ask', prompt: 'What is in the picture?', image: other, generation: { maxTokens: 40 } }),
  );
  t.ok(doneOf(q), 'the new query ran at once');
  const s = p.cacheStats();
  t.ok(s.kv.evictions >= 2, `${s.kv.evictions} cache holds taken back`);
  t.match(s.conversations, { active: 0, evicted: 1 });
  t.ok(s.kv.usedBytes <= s.kv.budgetBytes);
  const late = await collect(p.run(turn('pressed', 1)));
  t.equal(errorOf(late)?.code, 'CONVERSATION_UNKNOWN', 'the evicted conversation is not started over');
});

t.test(
  'a crashed LLM worker takes the kept KV rows with it: the next turn prefills the transcript again, same answer',
  async (t) => {
    for (const p of [cached, plain]) t.ok(doneOf(await collect(p.run(turn('crash', 0)))));
    const session = cached.models.stages.llm!.session as unknown as { worker: Worker };
    const gone = new Promise((resolve) => session.worker.once('exit', resolve));
    session.worker.ref();
    session.worker.postMessage({ type: 'crash', how: 'exit' });
    await gone;
    const replayedBefore = cached.cacheStats().conversations.replayed;
    const a = await collect(cached.run(turn('crash', 1)));
    const b = await collect(plain.run(turn('crash', 1)));
    t.equal(textOf(a), textOf(b), 'the same answer as without any cache');
    t.equal(doneOf(a).cachedTokens, 0, 'nothing came from the lost cache');
    t.equal(cached.cacheStats().conversations.replayed, replayedBefore + 1);
    const next = await collect(cached.run(turn('crash', 2)));
    t.ok(doneOf(next).cachedTokens! > 0, 'and the turn after resumes from the new cache');
  },
);
