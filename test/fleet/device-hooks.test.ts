/**
 * A hook that throws after an update committed (the agent's onInstallStep at `committed`, or
 * serveUpdates' onCommitted, where the agent reopens its pipeline): the job stays committed, its
 * state says so with warning UPDATE_HOOK_FAILED, nothing is rolled back and the store is clean.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { connectAsync } from 'mqtt';
import t from 'tap';
import { startEmbeddedBroker } from '../../src/agent/broker.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { readJournal, readRelease } from '../../src/fleet/journal.js';
import { rollout, serveUpdates, UpdateHandler, updateStateTopic, type UpdateEvent } from '../../src/fleet/index.js';
import { topicLink } from '../../src/mqtt/subscriptions.js';
import { bundleOf, bundleServer, fixture, noCanary, testDevice } from './helpers.js';
import { sha256File } from '../../src/engine/manifest.js';

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const statesOf = (events: UpdateEvent[]) => events.map((e) => e.state).filter((x, i, a) => x !== a[i - 1]);

t.test(
  'onInstallStep throwing at committed: the job resolves committed with a warning, not rolled-back + failed',
  async (t) => {
    const store = path.join(f.dir, 'store-step');
    const h = new UpdateHandler({
      binding: { device: testDevice },
      store,
      pubkey: f.pub,
      health: noCanary,
      onInstallStep: (s) => {
        if (s === 'committed') throw new Error('replacePipeline could not open the new set');
      },
    });
    const events: UpdateEvent[] = [];
    const r = await h.run(
      { jobId: 'j1', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
      (e) => events.push(e),
      'local',
    );
    t.match(r, { modelSetId: 'setokim-tiny-seed1', release: 1 });
    t.same(statesOf(events), ['downloading', 'verifying', 'installing', 'activating', 'health', 'committed']);
    const last = events.at(-1)!;
    t.match(last, { jobId: 'j1', state: 'committed', modelSetId: 'setokim-tiny-seed1', release: 1 });
    t.equal(last.code, undefined, 'no error code on the state itself');
    t.match(last.warning, {
      code: 'UPDATE_HOOK_FAILED',
      message:
        /onInstallStep\(committed\) failed after the release was committed: \[INTERNAL\] replacePipeline could not open the new set; the new set stays committed and active/,
    });
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed1', 'the new set is active');
    t.match(await readRelease(store), { release: 1, modelSetId: 'setokim-tiny-seed1' });
    t.equal(await readJournal(store), null, 'the install finished: no journal left for recovery');

    // The store takes the next release normally, and the same job id again runs nothing (it committed).
    const n = events.length;
    t.equal(
      await h.run(
        { jobId: 'j1', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
        (e) => events.push(e),
        'local',
      ),
      r,
    );
    t.equal(events.length, n);
    const next: UpdateEvent[] = [];
    await h.run(
      { jobId: 'j2', url: pathToFileURL(b2).href, sha256: await sha256File(b2) },
      (e) => next.push(e),
      'local',
    );
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed2');
    t.match(next.at(-1), { state: 'committed', release: 2 });
  },
);

t.test(
  'serveUpdates: onCommitted rejecting publishes committed again with the warning; a rollout counts the device committed',
  async (t) => {
    const broker = await startEmbeddedBroker();
    t.teardown(() => broker.close());
    const store = path.join(f.dir, 'store-serve');
    const dev = await connectAsync(broker.url, { clientId: 'dev' });
    const op = await connectAsync(broker.url, { clientId: 'op' });
    t.teardown(() => Promise.all([dev.endAsync(), op.endAsync()]));
    const events: UpdateEvent[] = [];
    // Seen through the broker: once it forwards the warning, it has also kept it as the retained state.
    const watch = await connectAsync(broker.url, { clientId: 'watch' });
    t.teardown(() => watch.endAsync());
    const warning = new Promise<UpdateEvent>((resolve) =>
      watch.on('message', (_topic, payload) => {
        const e = JSON.parse(payload.toString()) as UpdateEvent;
        if (e.warning) resolve(e);
      }),
    );
    await watch.subscribeAsync(updateStateTopic('h', 'a'), { qos: 1 });
    let called!: () => void;
    const onCommittedCalled = new Promise<void>((r) => (called = r));
    const http = await bundleServer({ 'r1.bundle': b1 });
    t.teardown(http.close);
    const handler = new UpdateHandler({
      binding: { device: testDevice },
      store,
      pubkey: f.pub,
      health: noCanary,
      urls: { allowUrls: [`${http.base}/`], allowHttp: true },
    });
    const served = await serveUpdates(topicLink(dev), handler, {
      fleet: 'h',
      device: 'a',
      onEvent: (e) => void events.push(e),
      onCommitted: async () => {
        called();
        throw new Error('the agent failed to reopen its pipeline');
      },
    });
    t.teardown(served.stop);
    // No canary: a canary's warning would be a canary failure (aborted), and this is about the device's report.
    const r = await rollout(op, {
      fleet: 'h',
      devices: ['a'],
      canary: [],
      job: { url: http.url('r1.bundle'), sha256: await sha256File(b1) },
      timeoutMs: 30_000,
    });
    t.match(r, { aborted: false, outcomes: [{ device: 'a', result: 'committed' }] });
    await onCommittedCalled;
    await new Promise(setImmediate); // its rejection is handled in the microtasks that run before this
    const reported = events.find((e) => e.warning);
    t.ok(reported, 'the rejection was reported as a state event');
    if (!reported) return;
    const w = await warning; // and reached the broker
    t.same(w, reported);
    t.match(w, {
      jobId: /^job-[A-Za-z0-9_-]{22}$/,
      state: 'committed',
      modelSetId: 'setokim-tiny-seed1',
      release: 1,
      warning: {
        code: 'UPDATE_HOOK_FAILED',
        message:
          /onCommitted failed after the release was committed: \[INTERNAL\] the agent failed to reopen its pipeline/,
      },
    });
    t.notOk(
      events.some((e) => e.state === 'failed' || e.state === 'rolled-back'),
      'never failed nor rolled back',
    );
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed1');

    // What an operator subscribing later sees: the retained state carries the warning.
    const late = await connectAsync(broker.url, { clientId: 'late' });
    t.teardown(() => late.endAsync());
    const retained = new Promise<UpdateEvent>((resolve) =>
      late.on('message', (_topic, payload) => resolve(JSON.parse(payload.toString()))),
    );
    await late.subscribeAsync(updateStateTopic('h', 'a'), { qos: 1 });
    t.match(await retained, { jobId: w.jobId, state: 'committed', warning: { code: 'UPDATE_HOOK_FAILED' } });
  },
);
