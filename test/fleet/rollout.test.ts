/**
 * Staged rollout over a real broker (mosquitto, or the embedded aedes where mosquitto is not
 * installed): simulated devices, each an MQTT client serving update jobs into its own model store
 * with the real handler and installer, fetching the bundle from a real HTTP server on port 0.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { connectAsync, type MqttClient } from 'mqtt';
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { startEmbeddedBroker } from '../../src/agent/broker.js';
import { ModelStore } from '../../src/engine/modelset.js';
import {
  rollout,
  serveUpdates,
  UpdateHandler,
  updateTopic,
  type ServeUpdatesOptions,
  type UpdateEvent,
  type UpdateHandlerOptions,
  type UpdateJob,
} from '../../src/fleet/index.js';
import { topicLink } from '../../src/mqtt/subscriptions.js';
import { runCli } from '../helpers/cli.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { bundleOf, bundleServer, fixture, noCanary, testDevice } from './helpers.js';
import { sha256File } from '../../src/engine/manifest.js';

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const broker = mosquittoPath() ? await startMosquitto() : await startEmbeddedBroker();
t.teardown(() => ('stop' in broker ? broker.stop() : broker.close()) as Promise<void>);
const mqttVersion = 'stop' in broker ? 5 : 4;
/** Requests for `/held.bundle`, answered when a test says so. */
const held: ServerResponse[] = [];
const http = await bundleServer(
  { 'r1.bundle': b1, 'r2.bundle': b2 },
  { 'held.bundle': (_req, res) => void held.push(res) },
);
t.teardown(http.close);
const r2Url = http.url('r2.bundle');
const urls = { allowUrls: [`${http.base}/`], allowHttp: true };

const clients: MqttClient[] = [];
t.teardown(() => Promise.all(clients.map((c) => c.endAsync())));

/** A device: its store (with release 1 preinstalled), its MQTT client serving updates (with the agent's hooks in `hooks`). */
async function device(
  fleet: string,
  name: string,
  events: Array<[string, UpdateEvent]>,
  hooks: Pick<UpdateHandlerOptions, 'onInstallStep' | 'signedJobs'> & Pick<ServeUpdatesOptions, 'onCommitted'> = {},
) {
  const store = path.join(f.dir, `${fleet}-${name}`);
  await new UpdateHandler({ binding: { device: testDevice }, store, pubkey: f.pub, health: noCanary }).run(
    { jobId: 'preinstall', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
    () => {},
    'local',
  );
  const handler = new UpdateHandler({
    binding: { device: testDevice },
    store,
    pubkey: f.pub,
    health: noCanary,
    urls,
    progressIntervalMs: 60_000,
    ...(hooks.onInstallStep ? { onInstallStep: hooks.onInstallStep } : {}),
    ...(hooks.signedJobs ? { signedJobs: true, jobsFor: { fleet, device: name } } : {}),
  });
  const c = await connectAsync(broker.url, { clientId: `${fleet}-${name}`, protocolVersion: mqttVersion });
  clients.push(c);
  await serveUpdates(topicLink(c), handler, {
    fleet,
    device: name,
    onEvent: (e) => events.push([name, e]),
    ...(hooks.onCommitted ? { onCommitted: hooks.onCommitted } : {}),
  });
  return { store, active: () => new ModelStore(store).active() };
}

async function operator() {
  const c = await connectAsync(broker.url, { clientId: `op-${clients.length}`, protocolVersion: mqttVersion });
  clients.push(c);
  return c;
}

t.test('all devices commit; the canary finishes before any other device starts', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  const devs = {
    a: await device('f1', 'a', events),
    b: await device('f1', 'b', events),
    c: await device('f1', 'c', events),
  };
  const r = await rollout(await operator(), {
    fleet: 'f1',
    devices: ['a', 'b', 'c'],
    canary: ['a'],
    job: { url: r2Url, sha256: await sha256File(b2), release: 2 },
    concurrency: 2,
    timeoutMs: 30_000,
  });
  t.equal(r.aborted, false);
  t.same(r.outcomes.map((o) => [o.device, o.result]).sort(), [
    ['a', 'committed'],
    ['b', 'committed'],
    ['c', 'committed'],
  ]);
  t.same(
    r.outcomes.filter((o) => o.warning),
    [],
    'no warnings',
  );
  const aDone = events.findIndex(([d, e]) => d === 'a' && e.state === 'committed');
  const othersStart = events.findIndex(([d]) => d !== 'a');
  t.ok(aDone >= 0 && aDone < othersStart, `canary committed at event ${aDone}, others began at ${othersStart}`);
  for (const d of Object.values(devs)) t.equal(await d.active(), 'setokim-tiny-seed2');
});

t.test('a failing canary aborts: no other device is sent the job', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  const devs = { a: await device('f2', 'a', events), b: await device('f2', 'b', events) };
  const r = await rollout(await operator(), {
    fleet: 'f2',
    devices: ['a', 'b'],
    job: { url: r2Url, sha256: 'e'.repeat(64) },
    timeoutMs: 30_000,
  });
  t.equal(r.aborted, true);
  t.match(r.outcomes, [
    { device: 'a', result: 'failed', code: 'BUNDLE_TAMPERED' },
    { device: 'b', result: 'skipped' },
  ]);
  t.notOk(
    events.some(([d]) => d === 'b'),
    'b heard nothing',
  );
  t.equal(await devs.b.active(), 'setokim-tiny-seed1');
});

t.test('failures past the threshold stop the rollout; a silent device times out', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  const a = await device('f3', 'a', events);
  const b = await device('f3', 'b', events);
  // c already committed release 2: it refuses the job (ROLLBACK_REFUSED), a real device-side failure.
  const c = await device('f3', 'c', events);
  await new UpdateHandler({ binding: { device: testDevice }, store: c.store, pubkey: f.pub, health: noCanary }).run(
    { jobId: 'pre2', url: r2Url, sha256: await sha256File(b2) },
    () => {},
    'local',
  );
  const d = await device('f3', 'd', events);
  const r = await rollout(await operator(), {
    fleet: 'f3',
    devices: ['a', 'c', 'ghost', 'b', 'd'],
    canary: ['a'],
    job: { url: r2Url, sha256: await sha256File(b2) },
    maxFailures: 1,
    concurrency: 1,
    timeoutMs: 6_000, // the ghost waits this long; the others need well under it, also on a loaded machine
  });
  t.equal(r.aborted, true);
  t.match(r.outcomes, [
    { device: 'a', result: 'committed' },
    { device: 'c', result: 'failed', code: 'ROLLBACK_REFUSED' },
    { device: 'ghost', result: 'timeout' },
    { device: 'b', result: 'skipped' },
    { device: 'd', result: 'skipped' },
  ]);
  t.equal(await b.active(), 'setokim-tiny-seed1');
  t.equal(await a.active(), 'setokim-tiny-seed2');
  void d;
});

t.test('a device named twice (and a canary twice) gets one job and counts once', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  const a = await device('f9', 'a', events);
  const b = await device('f9', 'b', events);
  const r = await rollout(await operator(), {
    fleet: 'f9',
    devices: ['a', 'b', 'a', 'b'],
    canary: ['a', 'a'],
    job: { url: r2Url, sha256: await sha256File(b2) },
    timeoutMs: 30_000,
  });
  t.equal(r.aborted, false);
  t.same(
    r.outcomes.map((o) => [o.device, o.result]),
    [
      ['a', 'committed'],
      ['b', 'committed'],
    ],
  );
  t.equal(await a.active(), 'setokim-tiny-seed2');
  t.equal(await b.active(), 'setokim-tiny-seed2');
});

t.test(
  'job ids are random, each job has its own nonce, and only states sealed with it count: a forged canary commit is ignored',
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    const a = await device('f15', 'a', events);
    const b = await device('f15', 'b', events);
    // Whoever can read the job topics (here: to see what was sent) and publish on the state topics.
    const spy = await operator();
    const sent: UpdateJob[] = [];
    const forger = await operator();
    let forged = 0;
    spy.on('message', (topic, payload) => {
      if (topic.endsWith('/update')) return void sent.push(JSON.parse(payload.toString()) as UpdateJob);
      const e = JSON.parse(payload.toString()) as UpdateEvent;
      // As soon as the canary says it is downloading, claim it committed (with and without a made-up MAC).
      if (e.state !== 'downloading' || forged++) return;
      const fake = {
        jobId: e.jobId,
        state: 'committed',
        modelSetId: 'setokim-tiny-seed2',
        release: 2,
        at: new Date().toISOString(),
      };
      void forger
        .publishAsync(topic, JSON.stringify(fake), { qos: 1 })
        .then(() => forger.publishAsync(topic, JSON.stringify({ ...fake, mac: e.mac ?? 'x'.repeat(43) }), { qos: 1 }));
    });
    await spy.subscribeAsync(['setokim/v1/f15/+/update', 'setokim/v1/f15/+/update/state'], { qos: 1 });
    let ignored = 0;
    const rolling = rollout(await operator(), {
      fleet: 'f15',
      devices: ['a', 'b'],
      job: { url: http.url('held.bundle'), sha256: await sha256File(b2) },
      timeoutMs: 30_000,
      onForged: () => void ignored++,
    });
    // The canary's download is held until both forgeries reached the broker and the rollout had time to hear them.
    while (held.length === 0 || forged === 0) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    held.shift()!.writeHead(404).end();
    const r = await rolling;
    t.match(
      r.outcomes,
      [
        { device: 'a', result: 'failed', code: 'BUNDLE_INVALID' },
        { device: 'b', result: 'skipped' },
      ],
      'the real outcome decides',
    );
    t.equal(r.aborted, true);
    t.equal(ignored, 2, 'both forged states were reported and ignored');
    t.equal(await a.active(), 'setokim-tiny-seed1');
    t.equal(await b.active(), 'setokim-tiny-seed1', 'b was never sent the job');
    t.equal(sent.length, 1);
    t.match(sent[0], { jobId: /^job-[A-Za-z0-9_-]{22}$/, nonce: /^[A-Za-z0-9_-]{43}$/ });

    // Another rollout: fresh id and nonce per device.
    sent.length = 0;
    await rollout(await operator(), {
      fleet: 'f15',
      devices: ['a', 'b'],
      canary: [],
      job: { url: r2Url, sha256: await sha256File(b2) },
      concurrency: 2,
      timeoutMs: 30_000,
    });
    t.equal(sent.length, 2);
    const ids = new Set(sent.map((j) => j.jobId));
    const nonces = new Set(sent.map((j) => j.nonce));
    t.equal(ids.size, 2, 'one id per device');
    t.equal(nonces.size, 2, 'one nonce per device');
    t.notOk(
      sent.some((j) => /^rollout-\d+-/.test(j.jobId)),
      'ids do not name the time and the device',
    );
  },
);

t.test(
  'CLI fleet rollout --sign-key: a device that requires signed jobs runs the signed one and refuses the rest',
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    const a = await device('f17', 'a', events, { signedJobs: true });
    const args = ['fleet', 'rollout', '--broker', broker.url, '--mqtt-version', String(mqttVersion), '--fleet', 'f17'];
    args.push('--devices', 'a', '--url', r2Url, '--sha256', await sha256File(b2), '--timeout', '30', '--settle', '0');
    const unsigned = await runCli(args);
    t.equal(unsigned.status, 3, unsigned.err);
    t.match(
      unsigned.out,
      /^a: failed JOB_SIGNATURE: an update job's signature is missing or does not hold for this device\n/,
    );
    const signed = await runCli([...args, '--sign-key', f.privPath]);
    t.equal(signed.status, 0, signed.err);
    t.equal(signed.out, 'a: committed\n');
    t.equal(await a.active(), 'setokim-tiny-seed2');
    const job = events.find(([, e]) => e.state === 'committed')![1];
    t.match(job.jobId, /^job-/);
  },
);

t.test('emergency stop: after the canary commits, the signal stops the rollout and the rest are skipped', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  await device('f6', 'a', events);
  const b = await device('f6', 'b', events);
  const stop = new AbortController();
  const r = await rollout(await operator(), {
    fleet: 'f6',
    devices: ['a', 'b'],
    job: { url: r2Url, sha256: await sha256File(b2) },
    timeoutMs: 30_000,
    signal: stop.signal,
    onEvent: (d, e) => void (d === 'a' && e.state === 'committed' && stop.abort()),
  });
  t.equal(r.aborted, true);
  t.match(r.outcomes, [
    { device: 'a', result: 'committed' },
    { device: 'b', result: 'skipped' },
  ]);
  t.equal(await b.active(), 'setokim-tiny-seed1');
});

t.test('a device that lost its connection subscribes again and takes the job', async (t) => {
  const store = path.join(f.dir, 'f7-a');
  const handler = new UpdateHandler({ binding: { device: testDevice }, store, pubkey: f.pub, health: noCanary, urls });
  await handler.run(
    { jobId: 'preinstall', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
    () => {},
    'local',
  );
  const c = await connectAsync(broker.url, { clientId: 'f7-a', reconnectPeriod: 50, protocolVersion: mqttVersion });
  clients.push(c);
  let subscriptions = 0;
  let resubscribed!: () => void;
  const again = new Promise<void>((r) => (resubscribed = r));
  await serveUpdates(topicLink(c), handler, {
    fleet: 'f7',
    device: 'a',
    onSubscribed: () => void (++subscriptions === 2 && resubscribed()),
  });
  c.stream.destroy(); // the connection drops; mqtt.js reconnects with a clean session (no subscriptions)
  await again;
  const r = await rollout(await operator(), {
    fleet: 'f7',
    devices: ['a'],
    job: { url: r2Url, sha256: await sha256File(b2) },
    timeoutMs: 30_000,
  });
  t.match(r.outcomes, [{ device: 'a', result: 'committed' }]);
  t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed2');
});

t.test('a malformed job on the wire: the device answers failed BAD_MESSAGE', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  await device('f4', 'a', events);
  const op = await operator();
  const got = new Promise<UpdateEvent>((resolve) => {
    op.on('message', (_topic, payload) => resolve(JSON.parse(payload.toString())));
  });
  await op.subscribeAsync('setokim/v1/f4/a/update/state', { qos: 1 });
  await op.publishAsync(updateTopic('f4', 'a'), '{"jobId":"j","url":5}', { qos: 1 });
  t.match(await got, { jobId: 'j', state: 'failed', code: 'BAD_MESSAGE' });
});

t.test(
  'serveUpdates: a redelivered committed job calls onCommitted once; its rejection is no unhandled rejection',
  async (t) => {
    const unhandled: unknown[] = [];
    const onUnhandled = (why: unknown) => void unhandled.push(why);
    process.on('unhandledRejection', onUnhandled);
    t.teardown(() => void process.off('unhandledRejection', onUnhandled));
    const store = path.join(f.dir, 'f8-a');
    const handler = new UpdateHandler({
      binding: { device: testDevice },
      store,
      pubkey: f.pub,
      health: noCanary,
      urls,
    });
    const c = await connectAsync(broker.url, { clientId: 'f8-a', protocolVersion: mqttVersion });
    clients.push(c);
    let commits = 0;
    let committed!: () => void;
    const first = new Promise<void>((r) => (committed = r));
    let marked!: () => void;
    const marker = new Promise<void>((r) => (marked = r));
    await serveUpdates(topicLink(c), handler, {
      fleet: 'f8',
      device: 'a',
      onEvent: (e) => void (e.jobId === 'marker' && marked()),
      onCommitted: async () => {
        commits++;
        committed();
        throw new Error('the agent failed to reopen its pipeline');
      },
    });
    const op = await operator();
    const job = JSON.stringify({ jobId: 'j1', url: http.url('r1.bundle'), sha256: await sha256File(b1) });
    await op.publishAsync(updateTopic('f8', 'a'), job, { qos: 1 });
    await first;
    await op.publishAsync(updateTopic('f8', 'a'), job, { qos: 1 }); // QoS 1 redelivery
    // Messages arrive in order: once the marker's answer is out, the redelivery was handled.
    await op.publishAsync(updateTopic('f8', 'a'), '{"jobId":"marker"}', { qos: 1 });
    await marker;
    t.equal(commits, 1, 'onCommitted ran once for job j1');
    t.same(unhandled, [], 'no unhandled rejection');
  },
);

t.test('CLI fleet rollout: prints each device and exits 0 when all committed', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  await device('f5', 'a', events);
  await device('f5', 'b', events);
  const r = await runCli([
    'fleet',
    'rollout',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(mqttVersion),
    '--fleet',
    'f5',
    '--devices',
    'a,b',
    '--url',
    r2Url,
    '--sha256',
    await sha256File(b2),
    '--timeout',
    '30',
    '--settle',
    '0',
  ]);
  t.equal(r.status, 0, r.err);
  t.equal(r.out, 'a: committed\nb: committed\n');
  t.notMatch(r.err, /warning/);
  const bad = await runCli([
    'fleet',
    'rollout',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(mqttVersion),
    '--fleet',
    'f5',
    '--devices',
    'a,b',
    '--url',
    r2Url,
    '--sha256',
    await sha256File(b2),
    '--timeout',
    '30',
  ]);
  t.equal(bad.status, 3, 'release 2 again: the canary refuses it, the rollout aborts');
  t.match(bad.out, /a: failed ROLLBACK_REFUSED[\s\S]*b: skipped/);
  t.match(bad.err, /\[ROLLOUT_ABORTED\]/);
});

t.test('CLI fleet rollout: a file: URL is refused before anything is sent (devices refuse it over MQTT)', async (t) => {
  const r = await runCli([
    'fleet',
    'rollout',
    '--broker',
    broker.url,
    '--fleet',
    'f16',
    '--devices',
    'a',
    '--url',
    pathToFileURL(b2).href,
    '--sha256',
    await sha256File(b2),
  ]);
  t.equal(r.status, 2);
  t.match(r.err, /\[BAD_ARGUMENT\].*--url: https:\/\/ \(or http:\/\/\): devices refuse file:/);
});

/**
 * Two devices whose hooks fail after the commit: `a` at once (onInstallStep), `b` after a while
 * (onCommitted, an agent slow to open the new set); and `c`, a device without a warning, to be
 * their canary (a canary's warning stops the rollout).
 */
async function warningDevices(fleet: string, events: Array<[string, UpdateEvent]>) {
  await device(fleet, 'c', events);
  await device(fleet, 'a', events, {
    onInstallStep: (s) => {
      if (s === 'committed') throw new Error('could not drain the serving pipeline');
    },
  });
  await device(fleet, 'b', events, {
    onCommitted: () =>
      new Promise((_, reject) => setTimeout(() => reject(new Error('the agent could not open the new set')), 300)),
  });
}

t.test(
  'devices after the canary that commit with a warning: committed, and the outcome carries the warning, also one that comes after the commit',
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    await warningDevices('f10', events);
    const r = await rollout(await operator(), {
      fleet: 'f10',
      devices: ['c', 'a', 'b'],
      canary: ['c'],
      job: { url: r2Url, sha256: await sha256File(b2) },
      timeoutMs: 30_000,
      settleMs: 2_000,
    });
    t.equal(r.aborted, false);
    t.same(r.failures, [], 'warnings after the canary are no failures');
    t.match(r.outcomes, [
      { device: 'c', result: 'committed', warning: undefined },
      {
        device: 'a',
        result: 'committed',
        warning: {
          code: 'UPDATE_HOOK_FAILED',
          message: /^onInstallStep\(committed\) failed after the release was committed: \[INTERNAL\] could not drain/,
        },
      },
      {
        device: 'b',
        result: 'committed',
        warning: {
          code: 'UPDATE_HOOK_FAILED',
          message:
            /^onCommitted failed after the release was committed: \[INTERNAL\] the agent could not open the new set/,
        },
      },
    ]);
    // b's warning came in a second `committed` state, after the one that ended its wait.
    t.same(
      events.filter(([d, e]) => d === 'b' && e.state === 'committed').map(([, e]) => e.warning?.code ?? null),
      [null, 'UPDATE_HOOK_FAILED'],
    );
  },
);

t.test('CLI fleet rollout: a device that committed with a warning is named in the summary; exit 0', async (t) => {
  const events: Array<[string, UpdateEvent]> = [];
  await warningDevices('f11', events);
  const r = await runCli([
    'fleet',
    'rollout',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(mqttVersion),
    '--fleet',
    'f11',
    '--devices',
    'c,a,b',
    '--canary',
    'c',
    '--url',
    r2Url,
    '--sha256',
    await sha256File(b2),
    '--timeout',
    '30',
    '--settle',
    '2',
  ]);
  t.equal(r.status, 0, r.err);
  t.match(
    r.out,
    /^c: committed\na: committed with warning UPDATE_HOOK_FAILED: onInstallStep\(committed\) failed after the release was committed: \[INTERNAL\] could not drain the serving pipeline; the new set stays committed and active\n/,
  );
  t.match(
    r.out,
    /\nb: committed with warning UPDATE_HOOK_FAILED: onCommitted failed after the release was committed: \[INTERNAL\] the agent could not open the new set; the new set stays committed and active\n$/,
  );
  t.match(
    r.err,
    /b: committed warning \[UPDATE_HOOK_FAILED\] onCommitted failed/,
    'the late warning is shown as it arrives',
  );
  t.match(r.err, /warning: a, b committed the release but reported a failure after the commit/);
});

t.test(
  'CLI fleet rollout: a canary that commits with a warning is a canary failure: the rest are skipped; exit 3',
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    await device('f12', 'a', events, {
      onInstallStep: (s) => {
        if (s === 'committed') throw new Error('could not drain the serving pipeline');
      },
    });
    const b = await device('f12', 'b', events);
    const r = await runCli([
      'fleet',
      'rollout',
      '--broker',
      broker.url,
      '--mqtt-version',
      String(mqttVersion),
      '--fleet',
      'f12',
      '--devices',
      'a,b',
      '--url',
      r2Url,
      '--sha256',
      await sha256File(b2),
      '--timeout',
      '30',
      '--settle',
      '0',
    ]);
    t.equal(r.status, 3, r.err);
    t.match(
      r.out,
      /^a: committed with warning UPDATE_HOOK_FAILED: onInstallStep\(committed\) failed after the release was committed: \[INTERNAL\] could not drain the serving pipeline; the new set stays committed and active\nb: skipped\n$/,
    );
    t.match(r.err, /\[ROLLOUT_ABORTED\]: rollout stopped after failures on a; 1 devices were not sent the job/);
    t.notOk(
      events.some(([d]) => d === 'b'),
      'b heard nothing',
    );
    t.equal(await b.active(), 'setokim-tiny-seed1');
  },
);

t.test(
  "the canary gate waits settleMs for a canary's late warning and aborts on it, without waiting out the rest of settleMs",
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    await device('f13', 'a', events, {
      onCommitted: () =>
        new Promise((_, reject) => setTimeout(() => reject(new Error('the agent could not open the new set')), 300)),
    });
    const b = await device('f13', 'b', events);
    const settleMs = 30_000;
    const began = performance.now();
    const r = await rollout(await operator(), {
      fleet: 'f13',
      devices: ['a', 'b'],
      job: { url: r2Url, sha256: await sha256File(b2) },
      timeoutMs: 30_000,
      settleMs,
    });
    const took = performance.now() - began;
    t.equal(r.aborted, true);
    t.same(r.failures, ['a']);
    t.match(r.outcomes, [
      {
        device: 'a',
        result: 'committed',
        warning: { code: 'UPDATE_HOOK_FAILED', message: /^onCommitted failed after the release was committed/ },
      },
      { device: 'b', result: 'skipped' },
    ]);
    t.notOk(
      events.some(([d]) => d === 'b'),
      'b heard nothing',
    );
    t.equal(await b.active(), 'setokim-tiny-seed1');
    t.ok(took < settleMs, `ended on the warning, ${Math.round(took)} ms after it began`);
  },
);

t.test(
  "a canary without a warning: the rest are sent the job only once the canary's settleMs has passed",
  async (t) => {
    const events: Array<[string, UpdateEvent]> = [];
    await device('f14', 'a', events);
    await device('f14', 'b', events);
    const settleMs = 400;
    const seen: Array<[string, UpdateEvent['state'], number]> = [];
    const r = await rollout(await operator(), {
      fleet: 'f14',
      devices: ['a', 'b'],
      job: { url: r2Url, sha256: await sha256File(b2) },
      timeoutMs: 30_000,
      settleMs,
      onEvent: (d, e) => void seen.push([d, e.state, performance.now()]),
    });
    t.equal(r.aborted, false);
    t.same(r.failures, []);
    t.same(
      r.outcomes.map((o) => [o.device, o.result]),
      [
        ['a', 'committed'],
        ['b', 'committed'],
      ],
    );
    const aCommitted = seen.find(([d, s]) => d === 'a' && s === 'committed')![2];
    const bFirst = seen.find(([d]) => d === 'b')![2];
    // The job goes to b no sooner than settleMs after the rollout saw a's commit (1 ms: timer rounding).
    t.ok(bFirst - aCommitted >= settleMs - 1, `b's first state ${Math.round(bFirst - aCommitted)} ms after a's commit`);
  },
);
