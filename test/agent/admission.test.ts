import t from 'tap';
import { Admission, SeenIds } from '../../src/agent/admission.js';
import type { SetokimError } from '../../src/errors.js';

interface T {
  id: string;
  deadline?: number;
}

function harness(queueSize: number, concurrency: number) {
  const finish = new Map<string, () => void>();
  const started: string[] = [];
  const dropped: Array<[string, string]> = [];
  const aborted: Array<[string, string]> = [];
  const adm = new Admission<T>({
    queueSize,
    concurrency,
    run: (ticket, signal) =>
      new Promise<void>((resolve) => {
        started.push(ticket.id);
        finish.set(ticket.id, resolve);
        signal.addEventListener('abort', () => {
          aborted.push([ticket.id, (signal.reason as SetokimError).code]);
          resolve();
        });
      }),
    dropped: (ticket, reason) => dropped.push([ticket.id, reason.code]),
  });
  return { adm, finish, started, dropped, aborted };
}

t.test('concurrency, then the queue, then BUSY; slots are reused in order', async (t) => {
  const h = harness(2, 1);
  t.same(
    ['a', 'b', 'c', 'd'].map((id) => h.adm.admit({ id })),
    ['started', 'queued', 'queued', 'busy'],
  );
  t.same([h.adm.inFlight, h.adm.depth], [1, 2]);
  t.equal(h.adm.admit({ id: 'a' }), 'duplicate', 'a live id is not admitted twice');
  h.finish.get('a')!();
  await new Promise((r) => setImmediate(r));
  t.same(h.started, ['a', 'b']);
  t.same([h.adm.inFlight, h.adm.depth], [1, 1]);
});

t.test('cancel: a queued query is dropped, a running one aborted with CANCELLED', async (t) => {
  const h = harness(4, 1);
  h.adm.admit({ id: 'run' });
  h.adm.admit({ id: 'wait' });
  t.ok(h.adm.cancel('wait'));
  t.same(h.dropped, [['wait', 'CANCELLED']]);
  t.ok(h.adm.cancel('run'));
  t.same(h.aborted, [['run', 'CANCELLED']]);
  t.notOk(h.adm.cancel('nobody'));
  await h.adm.idle();
  t.same(h.started, ['run'], 'the cancelled queued query never ran');
});

t.test('deadlines: past on arrival, passing in the queue, passing while running', async (t) => {
  const h = harness(4, 1);
  const now = Date.now();
  t.equal(h.adm.admit({ id: 'old', deadline: now - 1 }, now), 'expired');
  h.adm.admit({ id: 'run', deadline: now + 20 });
  h.adm.admit({ id: 'wait', deadline: now + 10 });
  const keepAlive = setTimeout(() => undefined, 5000); // deadline timers are unref'd: they never hold a process open
  await h.adm.idle();
  clearTimeout(keepAlive);
  t.same(h.dropped, [['wait', 'EXPIRED']]);
  t.same(h.aborted, [['run', 'EXPIRED']]);
});

t.test('close stops admitting; abortAll ends what runs', async (t) => {
  const h = harness(4, 2);
  h.adm.admit({ id: 'x' });
  h.adm.close();
  t.equal(h.adm.admit({ id: 'y' }), 'closed');
  h.adm.abortAll(new (await import('../../src/errors.js')).SetokimError('CANCELLED', 'bye'));
  await h.adm.idle();
  t.same(h.aborted, [['x', 'CANCELLED']]);
});

t.test('SeenIds remembers a bounded window', async (t) => {
  const seen = new SeenIds(3);
  t.same(
    ['a', 'b', 'a', 'c', 'd', 'a'].map((k) => seen.check(k)),
    [false, false, true, false, false, false],
    'a falls out after three newer ids',
  );
});

t.test('SeenIds keeps exactly the last N distinct ids, however often its ring wraps', async (t) => {
  const n = 5;
  const seen = new SeenIds(n);
  const window: string[] = []; // the reference: the last n distinct ids, oldest first
  let x = 7;
  const answers: boolean[] = [];
  const expected: boolean[] = [];
  for (let i = 0; i < 2000; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const id = `q${x % 9}`;
    const known = window.includes(id);
    expected.push(known);
    answers.push(seen.check(id));
    if (!known) {
      window.push(id);
      if (window.length > n) window.shift();
    }
  }
  t.same(answers, expected, '2000 checks of 9 ids through a window of 5');
  t.ok(expected.filter(Boolean).length > 500 && expected.filter((k) => !k).length > 500, 'both answers occur often');
});
