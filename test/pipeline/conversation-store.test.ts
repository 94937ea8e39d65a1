/**
 * The conversation store on its own (the pipeline's use of it: conversations.test.ts): how a
 * conversation starts, resumes, ends by idle time, by count and for memory, and what a failed turn
 * leaves. Caches are real resident tensors of an ONNX Runtime session.
 */
import t from 'tap';
import type { Session } from '../../src/engine/backend.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { Conversations, type Turn } from '../../src/pipeline/conversations.js';
import { KvBudget, kvBytesPerToken } from '../../src/pipeline/kv-cache.js';
import { KvCache } from '../../src/pipeline/kv-tensors.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { addMatMul, tmpDir } from '../engine/fixtures.js';

const a = CONFIGS.tiny;
const perRow = kvBytesPerToken(a.llm.layers, a.llm.kvHeads, a.llm.hidden / a.llm.heads);
let session: Session;
t.before(async () => {
  session = await new OrtBackend({ threads: 1 }).open(addMatMul(tmpDir()), { stage: 'kv' });
});
t.teardown(() => session.dispose());

/** Commits a turn as the pipeline does: a cache of `rows` rows under a lease of its bytes. */
async function complete(store: Conversations, budget: KvBudget, turn: Turn, rows: number): Promise<KvCache> {
  const lease = await budget.reserve(rows * perRow);
  const cache = await KvCache.allocate(session, a, rows);
  t.equal(cache.bytes, rows * perRow, 'the lease counts exactly the cache');
  store.commit(turn, { transcript: [{ kind: 'text', ids: [1, 2, 3] }], length: rows, closing: [2], cache, lease });
  return cache;
}

t.test('start with an image, resume without; a failed turn leaves the last complete one', async (t) => {
  const budget = new KvBudget(100 * perRow);
  const store = new Conversations(budget, { idleMs: 60_000, maxCount: 8 });
  t.teardown(() => store.clear());
  t.throws(() => store.begin('c', false), { code: 'CONVERSATION_UNKNOWN', message: /'c' is not held here/ });
  const first = store.begin('c', true);
  t.throws(() => store.begin('c', false), { code: 'BUSY' }, 'one turn at a time');
  t.throws(() => store.begin('c', true), { code: 'BAD_INPUT', message: /already exists/ });
  const cache = await complete(store, budget, first, 10);
  t.equal(budget.cached, 10 * perRow, "the conversation's cache is a hold in the budget");
  t.throws(() => store.begin('c', true), { code: 'BAD_INPUT' });
  const second = store.begin('c', false);
  t.equal(second.conversation.liveCache, cache);
  store.abandon(second); // e.g. cancelled
  t.equal(store.begin('c', false).conversation.length, 10, 'still at its last complete turn');
  const lost = store.begin('lost', true);
  store.abandon(lost);
  t.throws(
    () => store.begin('lost', false),
    { code: 'CONVERSATION_UNKNOWN' },
    'a first turn that failed starts nothing',
  );
  t.match(store.stats, { active: 1, started: 1 });
});

t.test('ends after its idle time, or when more than maxCount are held', async (t) => {
  const budget = new KvBudget(100 * perRow);
  const store = new Conversations(budget, { idleMs: 30, maxCount: 2 });
  t.teardown(() => store.clear());
  const cache = await complete(store, budget, store.begin('idle', true), 5);
  t.equal(await store.ended('idle'), 'expired');
  t.equal(cache.alive, false, 'its cache was freed');
  t.equal(budget.used, 0, 'and its bytes went back');
  t.throws(() => store.begin('idle', false), { code: 'CONVERSATION_UNKNOWN' });

  const slow = new Conversations(budget, { idleMs: 60_000, maxCount: 2 });
  t.teardown(() => slow.clear());
  await complete(slow, budget, slow.begin('one', true), 5);
  await complete(slow, budget, slow.begin('two', true), 5);
  slow.abandon(slow.begin('one', false)); // 'one' is now the most recently used
  await complete(slow, budget, slow.begin('three', true), 5);
  t.throws(() => slow.begin('two', false), { code: 'CONVERSATION_UNKNOWN' }, 'the least recently used went');
  t.match(slow.stats, { active: 2, expired: 1 });
});

t.test(
  'a request that needs the memory evicts an idle conversation; a running turn only loses its cache',
  async (t) => {
    const budget = new KvBudget(20 * perRow);
    const store = new Conversations(budget, { idleMs: 60_000, maxCount: 8 });
    t.teardown(() => store.clear());
    await complete(store, budget, store.begin('idle', true), 8);
    const busyCache = await complete(store, budget, store.begin('busy', true), 8);
    const running = store.begin('busy', false);
    const ended = store.ended('idle');
    const lease = await budget.reserve(13 * perRow); // room only without both conversations
    t.equal(await ended, 'evicted');
    t.throws(() => store.begin('idle', false), { code: 'CONVERSATION_UNKNOWN' });
    t.equal(running.conversation.liveCache, undefined, 'the running turn lost its cache...');
    t.equal(busyCache.alive, false);
    t.equal(running.conversation.length, 8, '...but not its transcript: it prefills it again');
    t.match(store.stats, { active: 1, evicted: 1 });
    lease.release();
    store.abandon(running);
    t.ok(store.begin('busy', false), 'the conversation goes on');
  },
);
