import t from 'tap';
import { KvBudget, kvBytesPerToken } from '../../src/pipeline/kv-cache.js';
import { SetokimError } from '../../src/errors.js';

t.test('bytes per token count keys and values of every layer', async (t) => {
  t.equal(kvBytesPerToken(32, 32, 128), 2 * 32 * 32 * 128 * 4);
  t.equal(kvBytesPerToken(2, 1, 8, 2), 64);
});

t.test('leases add up, release once, and waiters are served in order', async (t) => {
  const b = new KvBudget(100);
  const a = await b.reserve(60);
  t.equal(b.used, 60);
  const order: string[] = [];
  const p1 = b.reserve(50).then((l) => (order.push('p1'), l));
  const p2 = b.reserve(10).then((l) => (order.push('p2'), l)); // fits, but waits behind p1 (FIFO)
  t.equal(b.waiting, 2);
  a.release();
  a.release();
  const [l1, l2] = await Promise.all([p1, p2]);
  t.same(order, ['p1', 'p2']);
  t.equal(b.used, 60);
  l1.release();
  l2.release();
  t.equal(b.used, 0);
});

t.test('a request larger than the budget is refused; an aborted waiter leaves nothing behind', async (t) => {
  const b = new KvBudget(100);
  await t.rejects(b.reserve(101), { code: 'PROMPT_TOO_LONG' });
  const hold = await b.reserve(90);
  const ac = new AbortController();
  const waiting = b.reserve(20, ac.signal);
  const behind = b.reserve(5);
  ac.abort();
  await t.rejects(waiting, { code: 'CANCELLED' });
  const l = await behind; // the head was removed, so the 5-byte request fits now
  t.equal(b.used, 95);
  l.release();
  hold.release();
  t.equal(b.used, 0);
  t.equal(b.waiting, 0);
  await t.rejects(b.reserve(1, AbortSignal.abort()), SetokimError);
  t.throws(() => new KvBudget(0), { code: 'BAD_CONFIG' });
});
