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

t.test(
  'cache holds use free bytes; a request evicts them, least recently used first, never a pinned one',
  async (t) => {
    const b = new KvBudget(100);
    const gone: string[] = [];
    const a = b.tryHold(30, () => gone.push('a'))!;
    const c = b.tryHold(30, () => gone.push('c'))!;
    const d = b.tryHold(30, () => gone.push('d'))!;
    t.equal(b.used, 90);
    t.equal(b.cached, 90);
    a.touch(); // a is now the most recently used: c goes first
    d.pin();
    const lease = await b.reserve(60);
    t.same(gone, ['c', 'a'], 'oldest unpinned first, only as many as needed');
    t.equal(b.evicted, 2);
    t.same([a.held, c.held, d.held], [false, false, true]);
    t.equal(b.used, 90, '60 leased + 30 pinned');
    t.equal(
      b.tryHold(20, () => gone.push('x')),
      undefined,
      'a hold never evicts a pinned one or a lease',
    );
    // A request that cannot fit even after every unpinned hold goes waits; a hold must not jump it.
    const waiting = b.reserve(50);
    t.equal(b.waiting, 1);
    t.equal(
      b.tryHold(1, () => undefined),
      undefined,
      'no hold while a request waits',
    );
    d.unpin();
    lease.release(); // 60 free: the waiter fits without evicting d? 30 + 50 <= 100
    const w = await waiting;
    t.equal(d.held, true, 'nothing evicted that was not needed');
    w.release();
    d.release();
    d.release();
    t.equal(b.used, 0);
    t.equal(b.cached, 0);
  },
);

t.test('a lease becomes a hold without its bytes going free in between; evictAll spares pinned holds', async (t) => {
  const b = new KvBudget(100);
  const lease = await b.reserve(70);
  let evicted = 0;
  const hold = lease.toHold(() => evicted++);
  t.equal(b.used, 70);
  t.equal(b.cached, 70);
  lease.release(); // already turned into the hold: a no-op
  t.equal(b.used, 70);
  t.throws(() => lease.toHold(() => undefined), { code: 'INTERNAL' });
  const other = b.tryHold(20, () => evicted++)!;
  other.pin();
  b.evictAll();
  t.equal(evicted, 1);
  t.same([hold.held, other.held], [false, true]);
  other.release();
  t.equal(b.used, 0);
});
