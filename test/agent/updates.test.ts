/**
 * The agent serves fleet updates. First the switch itself with the in-test stub pipeline (a query
 * held in flight shows the drain); then the whole thing with real tiny model sets on a real broker:
 * an agent serving release 1 refuses a tampered bundle and keeps serving, then takes release 2
 * while queries stream (each answered once, the running ones on release 1, the later ones on
 * release 2, the status naming it), and `setokim agent --store` serves release 2 after a restart.
 */
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';
import { Agent, type AgentEvents } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { decodeStatus, type AgentStatus, type ReplyEvent } from '../../src/agent/codec.js';
import { loadAgentConfig } from '../../src/agent/config.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { SetokimError } from '../../src/errors.js';
import { openServingSet, startingModels, startUpdates } from '../../src/agent/updates.js';
import { UpdateHandler, updateStateTopic, updateTopic, type UpdateEvent } from '../../src/fleet/index.js';
import { childEnv } from '../helpers/child-env.js';
import { bundleOf, bundleServer, fixture, flipByte, offsetOf, testDevice } from '../fleet/helpers.js';
import { brokerKinds, collect, startBroker, testConfig, type TestBroker } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';
import { sha256File } from '../../src/engine/manifest.js';
import { EngineBuilderTestDouble, tensorRtCanaryTestDouble, testEnvironment } from '../fleet/engine-doubles.js';

const kind = brokerKinds[0]!;
const broker: TestBroker = await startBroker(kind);
t.teardown(() => broker.close());

// Real model sets (made before any test starts: tap ends a file whose tests all ran).

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const r1 = await bundleOf(f, f.sets[1]!, 1);
const r2 = await bundleOf(f, f.sets[2]!, 2);
const tampered = await flipByte(r2, (await offsetOf(r2, 'llm.onnx')) + 1000, path.join(f.dir, 'r2-tampered.bundle'));
const store = path.join(f.dir, 'store');
// Where the bundles are published: devices fetch them over HTTP under their allow-list (never file: over MQTT).
const trickle = (_req: unknown, res: import('node:http').ServerResponse) => {
  res.writeHead(200); // one byte every 50 ms, forever
  const timer = setInterval(() => res.write('x'), 50);
  res.on('close', () => clearInterval(timer));
};
const r5 = await bundleOf(f, f.sets[2]!, 5);
const http = await bundleServer(
  { 'r1.bundle': r1, 'r2.bundle': r2, 'r5.bundle': r5, 'r2-tampered.bundle': tampered },
  { 'trickle.bundle': trickle },
);
t.teardown(http.close);
const allowUrls = [`${http.base}/`];
const bundleUrl = (bundle: string) => http.url(path.basename(bundle));
// The device was flashed with release 1 (the canary is what the update job below runs for real).
await new UpdateHandler({
  binding: { device: testDevice },
  store,
  pubkey: f.pub,
  health: async () => ({ ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' }),
}).run({ jobId: 'flash', url: pathToFileURL(r1).href, sha256: await sha256File(r1) }, () => {}, 'local');
const image = await samplePng(48, 40);
const SET1 = 'setokim-tiny-seed1';
const SET2 = 'setokim-tiny-seed2';
const textOf = (events: ReplyEvent[]) =>
  events
    .filter((e) => e.type === 'text')
    .map((e) => (e as { delta: string }).delta)
    .join('');
const logs: string[] = [];
const noCanary = async () => ({ ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' });
const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
let text2: string | undefined;

/** A stub with its own model set id that records when it is closed. */
class NamedStub extends StubPipeline {
  closed = false;
  constructor(id: string) {
    super({ holdable: true });
    Object.assign(this, { info: { ...this.info, modelSetId: id } });
  }
  override async close(): Promise<void> {
    this.closed = true;
  }
}

/** Resolves when a status of `device` naming set `id` arrives (the retained one, or the next). */
function statusNaming(client: QueryClient, device: string, id: string): Promise<AgentStatus> {
  const topic = `setokim/v1/test/${device}/status`;
  return new Promise((resolve) => {
    const on = (tp: string, payload: Buffer) => {
      if (tp !== topic) return;
      const s = decodeStatus(payload);
      if (s.modelSetId !== id) return;
      client.mqtt.off('message', on);
      void client.mqtt.unsubscribeAsync(topic).catch(() => undefined);
      resolve(s);
    };
    client.mqtt.on('message', on);
    void client.mqtt.subscribeAsync(topic, { qos: 1 });
  });
}

/** Resolves with the next event `name` of the agent that passes `pick`. */
function next<K extends keyof AgentEvents>(
  agent: Agent,
  name: K,
  pick: (...a: AgentEvents[K]) => boolean = () => true,
): Promise<AgentEvents[K]> {
  return new Promise((resolve) => {
    const on = (...a: AgentEvents[K]) => {
      if (!pick(...a)) return;
      agent.off(name, on as never);
      resolve(a);
    };
    agent.on(name, on as never);
  });
}

t.test(`${kind}: replacePipeline drains the old pipeline; a second replace while it drains is safe`, async (t) => {
  const a = new NamedStub('set-a');
  const b = new NamedStub('set-b');
  const c = new NamedStub('set-c');
  const agent = new Agent({ config: testConfig(broker, 'swap'), pipeline: a });
  await agent.start();
  t.teardown(() => agent.stop(0));
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(() => client.close());
  const answered = new Map<string, string[]>();
  agent.on('answered', (e) => answered.set(e.id, [...(answered.get(e.id) ?? []), e.modelSetId ?? 'refused']));
  const target = { fleet: 'test', device: 'swap' };
  const ask = (prompt: string) =>
    collect(client.query(target, { id: newQueryId(), task: 'ask', prompt, image: new Uint8Array(0) }));

  const held = ask('hold on set a');
  const heldId = await a.waitHeld();
  const order: string[] = [];
  const toB = agent.replacePipeline(b).then(() => order.push('a retired'));
  t.equal(agent.pipeline, b, 'new queries start on b at once');
  t.equal((await statusNaming(client, 'swap', 'set-b')).online, true, 'a status names the new set');
  t.equal((await client.status('test', 'swap'))?.modelSetId, 'set-b', 'the retained status names it');
  const onB = await ask('after the switch');
  t.equal(onB.at(-1)?.type, 'done');
  t.ok(b.seen.includes(onB[0]!.id) && !a.seen.includes(onB[0]!.id), 'a query after the switch ran on b only');
  t.equal(a.closed, false, 'a is not closed while its query runs');

  // Replace again while a still drains: b has nothing running and closes at once; a still waits.
  const toC = agent.replacePipeline(c).then(() => order.push('b retired'));
  await toC;
  t.equal(b.closed, true, 'b closed');
  t.equal(a.closed, false, 'a still draining');
  await statusNaming(client, 'swap', 'set-c');
  t.equal((await client.status('test', 'swap'))?.modelSetId, 'set-c');

  a.release(heldId);
  const heldEvents = await held;
  await toB;
  t.equal(heldEvents.at(-1)?.type, 'done', 'the query in flight across two switches finished');
  t.equal(
    heldEvents
      .filter((e) => e.type === 'text')
      .map((e) => (e as { delta: string }).delta)
      .join(''),
    'hold on set a',
    'whole answer, from a',
  );
  t.equal(a.closed, true, 'a closed after its last query');
  t.same(order, ['b retired', 'a retired']);
  t.same(answered.get(heldId), ['set-a'], 'answered once, on a');
  t.same(answered.get(onB[0]!.id), ['set-b'], 'answered once, on b');
});

t.test(`${kind}: a replace during stop closes the new pipeline unused`, async (t) => {
  const a = new NamedStub('set-a');
  const b = new NamedStub('set-b');
  const agent = new Agent({ config: testConfig(broker, 'stopping'), pipeline: a });
  await agent.start();
  const stopped = agent.stop(0);
  await agent.replacePipeline(b);
  await stopped;
  t.equal(b.closed, true, 'the new pipeline was closed');
  t.equal(agent.pipeline, a, 'the agent still holds the one it served (the caller closes it)');
});

t.test('config: updates come from flags, env or file; no models and no store is BAD_CONFIG', async (t) => {
  const base = { fleet: 'f', device: 'd', broker: { url: 'mqtt://b' } };
  const c = loadAgentConfig({ env: { SETOKIM_STORE: '/s', SETOKIM_UPDATE_PUBKEY: '/k.pem' }, overrides: base });
  t.same(
    c.updates,
    {
      store: '/s',
      pubkey: '/k.pem',
      allowUrls: [],
      allowHttp: false,
      signedJobs: false,
      jobTimeoutS: 3600,
      maxDownloadMib: 8192,
      buildTimeoutS: 7200,
      workspaceMib: 1024,
    },
    'no URL is allowed unless listed',
  );
  const listed = loadAgentConfig({
    env: {
      SETOKIM_STORE: '/s',
      SETOKIM_UPDATE_PUBKEY: '/k.pem',
      SETOKIM_UPDATE_ALLOW_URLS: 'https://a.example/b/, https://c.example/',
      SETOKIM_UPDATE_JOB_TIMEOUT: '60',
      SETOKIM_UPDATE_WORKSPACE_MIB: '512',
    },
    overrides: base,
  });
  t.same(listed.updates?.allowUrls, ['https://a.example/b/', 'https://c.example/']);
  t.equal(listed.updates?.jobTimeoutS, 60);
  t.equal(listed.updates?.workspaceMib, 512, 'the builder workspace from its variable');
  t.throws(
    () =>
      loadAgentConfig({
        env: { SETOKIM_STORE: '/s', SETOKIM_UPDATE_PUBKEY: '/k.pem', SETOKIM_UPDATE_ALLOW_URLS: 'http://a.example/' },
        overrides: base,
      }),
    {
      code: 'BAD_CONFIG',
      message:
        /updates\.allowUrls: http:\/\/a\.example\/ is http: set updates\.allowHttp \(--update-allow-http\) to allow it \(--update-allow-url, SETOKIM_UPDATE_ALLOW_URLS\)/,
    },
  );
  t.throws(
    () =>
      loadAgentConfig({
        env: { SETOKIM_STORE: '/s', SETOKIM_UPDATE_PUBKEY: '/k.pem', SETOKIM_UPDATE_ALLOW_URLS: 'file:///srv/' },
        overrides: base,
      }),
    { code: 'BAD_CONFIG', message: /only https:\/\// },
  );
  t.equal(c.models, undefined);
  t.equal(
    loadAgentConfig({ env: {}, overrides: { ...base, models: 'm' } }).updates,
    undefined,
    'updates are off unless configured',
  );
  t.throws(() => loadAgentConfig({ env: {}, overrides: base }), {
    code: 'BAD_CONFIG',
    message: /models: no model set: give models .*--store, --update-pubkey/,
  });
  t.throws(() => loadAgentConfig({ env: { SETOKIM_STORE: '/s' }, overrides: base }), {
    code: 'BAD_CONFIG',
    message: /updates\.pubkey/,
  });
});

t.test(`${kind}: release 1 -> tampered job fails, release 2 while queries stream`, async (t) => {
  const config = testConfig(broker, 'cam', {
    updates: { store, pubkey: f.pubPath, allowUrls, allowHttp: true },
    limits: { concurrency: 2, queueSize: 16 },
  });
  const log = (level: string, m: string) => logs.push(`${level} ${m}`);
  const models = await startingModels(config, log);
  t.equal(path.basename(models), SET1, 'serves the store’s active set, not `models`');
  const opened = await openServingSet(config, models);
  const agent = new Agent({ config, pipeline: opened.pipeline, log });
  await agent.start();
  const events: UpdateEvent[] = [];
  const updates = await startUpdates(agent, {
    open: (dir) => openServingSet(config, dir),
    log,
    onEvent: (e) => events.push(e),
  });
  t.teardown(async () => {
    await updates.stop();
    await agent.stop(0);
    await agent.pipeline.close();
  });
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(() => client.close());
  const target = { fleet: 'test', device: 'cam' };
  const ask = (id = newQueryId()) =>
    collect(client.query(target, { id, task: 'describe', image, generation: { maxTokens: 6, temperature: 0 } }));
  const job = async (jobId: string, bundle: string) => {
    const final = new Promise<UpdateEvent>((resolve) => {
      const on = (topic: string, payload: Buffer) => {
        if (topic !== updateStateTopic('test', 'cam')) return;
        const e = JSON.parse(payload.toString()) as UpdateEvent;
        if (e.jobId === jobId && (e.state === 'committed' || e.state === 'failed')) resolve(e);
      };
      client.mqtt.on('message', on);
    });
    await client.mqtt.subscribeAsync(updateStateTopic('test', 'cam'), { qos: 1 });
    await client.mqtt.publishAsync(
      updateTopic('test', 'cam'),
      JSON.stringify({ jobId, url: bundleUrl(bundle), sha256: await sha256File(bundle) }),
      { qos: 1 },
    );
    return final;
  };

  const first = await ask();
  t.equal(first.at(-1)?.type, 'done');
  const text1 = textOf(first);

  // A tampered bundle (its file's sha256 matches the job; one byte of llm.onnx is not what was signed).
  const bad = await job('tampered', tampered);
  t.equal(bad.state, 'failed');
  t.equal(bad.code, 'BUNDLE_TAMPERED');
  t.equal(bad.message, 'a file inside a signed bundle does not match its size or sha256', 'generic text on the wire');
  t.ok(
    logs.some(
      (l) => l.startsWith('warn update tampered failed while installing: [BUNDLE_TAMPERED]') && l.includes('llm.onnx'),
    ),
    'the detail is in the log',
  );
  t.same(
    events.filter((e) => e.jobId === 'tampered' && e.done === undefined).map((e) => e.state),
    ['downloading', 'verifying', 'installing', 'failed'],
  );
  t.equal(agent.pipeline.info.modelSetId, SET1, 'still serving release 1');
  t.equal((await client.status('test', 'cam'))?.modelSetId, SET1);
  t.equal(textOf(await ask()), text1, 'answered by release 1');

  // Release 2 while queries stream: always three outstanding, two running.
  const answered = new Map<string, string[]>();
  const timeline: Array<{
    at: 'query' | 'switched' | 'answered' | 'retired';
    id?: string;
    set?: string;
    draining?: number;
  }> = [];
  agent.on('query', (e) => timeline.push({ at: 'query', id: e.id }));
  agent.on('answered', (e) => {
    timeline.push({ at: 'answered', id: e.id, ...(e.modelSetId ? { set: e.modelSetId } : {}) });
    answered.set(e.id, [...(answered.get(e.id) ?? []), e.modelSetId ?? 'refused']);
  });
  agent.on('switched', (e) => timeline.push({ at: 'switched', set: e.to, draining: e.draining }));
  agent.on('retired', (e) => timeline.push({ at: 'retired', set: e.modelSetId }));
  const results = new Map<string, ReplyEvent[]>();
  let afterSwitch = 0;
  let streaming = true;
  const switched = next(agent, 'switched');
  const worker = async () => {
    while (streaming) {
      const id = newQueryId();
      const sawSwitch = timeline.some((e) => e.at === 'switched');
      results.set(id, await ask(id));
      if (sawSwitch && ++afterSwitch >= 4) streaming = false;
    }
  };
  const workers = [worker(), worker(), worker()];
  const good = await job('r2', r2);
  t.equal(good.state, 'committed');
  t.equal(good.modelSetId, SET2);
  t.same(
    events.filter((e) => e.jobId === 'r2' && e.done === undefined).map((e) => e.state),
    ['downloading', 'verifying', 'installing', 'activating', 'health', 'committed'],
  );
  const [sw] = await switched;
  await Promise.all(workers);
  await updates.idle(); // the old set has drained and closed

  const texts = new Map([...results].map(([id, ev]) => [id, textOf(ev)]));
  text2 = [...results].filter(([id]) => answered.get(id)?.[0] === SET2).map(([id]) => texts.get(id))[0];
  t.not(text2, undefined, 'some queries ran on release 2');
  t.not(text2, text1, 'the two releases answer the same image differently');
  // Every query: exactly one terminal reply, a done; answered once; its text is its set's.
  const wrong = [...results].flatMap(([id, ev]) => {
    const ends = ev.filter((e) => e.type === 'done' || e.type === 'error').map((e) => e.type);
    const sets = answered.get(id) ?? [];
    const want = sets[0] === SET1 ? text1 : text2;
    return ends.join() === 'done' && sets.length === 1 && texts.get(id) === want
      ? []
      : [{ id, ends, sets, text: texts.get(id) }];
  });
  t.same(wrong, [], `${results.size} queries, each answered exactly once by the set its text belongs to`);
  const at = (p: (e: (typeof timeline)[number]) => boolean) => timeline.findIndex(p);
  const switchAt = at((e) => e.at === 'switched');
  t.ok(sw.draining >= 1, `${sw.draining} queries were running at the switch`);
  const drained = timeline.slice(switchAt).filter((e) => e.at === 'answered' && e.set === SET1);
  t.equal(drained.length, sw.draining, 'the queries running at the switch finished on release 1, after it');
  t.ok(
    at((e) => e.at === 'retired' && e.set === SET1) > Math.max(...drained.map((d) => timeline.indexOf(d))),
    'release 1 closed after its last query',
  );
  const admittedLater = timeline
    .slice(switchAt)
    .filter((e) => e.at === 'query')
    .map((e) => e.id!);
  t.ok(admittedLater.length >= 4, `${admittedLater.length} queries arrived after the switch`);
  t.ok(
    admittedLater.every((id) => answered.get(id)?.[0] === SET2),
    'every query that arrived after the switch ran on release 2',
  );
  await statusNaming(client, 'cam', SET2);
  t.equal((await client.status('test', 'cam'))?.modelSetId, SET2, 'retained status names release 2');
});

t.test(
  `${kind}: setokim agent --store serves release 2 after a restart; SIGTERM while a job downloads from a server that never finishes exits 0`,
  async (t) => {
    const cli = fileURLToPath(new URL('./fixtures/cli.ts', import.meta.url));
    const args = [
      'agent',
      '--broker',
      broker.url,
      '--mqtt-version',
      String(broker.protocolVersion),
      '--fleet',
      'test',
      '--device',
      'cam2',
      '--store',
      store,
      '--update-pubkey',
      f.pubPath,
      '--metrics-port',
      '0',
      '--no-verify',
      '--fleet-subscription',
      broker.shared ? 'shared' : 'plain',
    ];
    args.push('--update-allow-url', `${http.base}/`, '--update-allow-http');
    const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], {
      env: childEnv(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    t.teardown(() => child.kill('SIGKILL'));
    let stderr = '';
    const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (c: Buffer) => {
        stderr += c.toString();
        if (/serving setokim\/v1\/test\/cam2\/query/.test(stderr)) resolve();
      });
      void exit.then(() => reject(new Error(`exited early:\n${stderr}`)));
    });
    t.match(stderr, /taking update jobs on setokim\/v1\/test\/cam2\/update/);
    t.match(stderr, new RegExp(`opening the model set .*${SET2}`));
    const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
    t.teardown(() => client.close());
    t.equal((await client.status('test', 'cam2'))?.modelSetId, SET2, 'status names release 2');
    const ev = await collect(
      client.query(
        { fleet: 'test', device: 'cam2' },
        { id: newQueryId(), task: 'describe', image, generation: { maxTokens: 6, temperature: 0 } },
      ),
    );
    t.equal(ev.at(-1)?.type, 'done');
    t.equal(textOf(ev), text2, 'the answer of release 2');

    // A job whose server trickles a byte every 50 ms forever: SIGTERM must not wait for it.
    const states: UpdateEvent[] = [];
    client.mqtt.on(
      'message',
      (topic, payload) =>
        void (topic === updateStateTopic('test', 'cam2') && states.push(JSON.parse(payload.toString()) as UpdateEvent)),
    );
    await client.mqtt.subscribeAsync(updateStateTopic('test', 'cam2'), { qos: 1 });
    await client.mqtt.publishAsync(
      updateTopic('test', 'cam2'),
      JSON.stringify({ jobId: 'endless', url: http.url('trickle.bundle'), sha256: 'a'.repeat(64), size: 1_000_000 }),
      { qos: 1 },
    );
    while (!states.some((e) => e.jobId === 'endless' && e.state === 'downloading'))
      await new Promise((r) => setTimeout(r, 20));
    const began = performance.now();
    child.kill('SIGTERM');
    if (!t.equal(await exit, 0, 'exit status 0')) t.comment(stderr);
    t.ok(performance.now() - began < 8_000, `exited ${Math.round(performance.now() - began)} ms after SIGTERM`);
    t.equal((await client.status('test', 'cam2'))?.online, false, 'offline after SIGTERM');
    while (!states.some((e) => e.jobId === 'endless' && e.state === 'failed'))
      await new Promise((r) => setTimeout(r, 20));
    t.match(states.at(-1), { jobId: 'endless', state: 'failed', code: 'CANCELLED' }, 'the job says it was cancelled');
  },
);

t.test(`${kind}: a message on the update topic goes to the update service only, never read as a query`, async (t) => {
  const config = testConfig(broker, 'route', {
    updates: { store: path.join(f.dir, 'route-store'), pubkey: f.pubPath },
  });
  const agent = new Agent({ config, pipeline: new NamedStub('set-a') });
  await agent.start();
  const updates = await startUpdates(agent, { open: () => Promise.reject(new Error('unused')), log: () => undefined });
  t.teardown(async () => {
    await updates.stop();
    await agent.stop(0);
  });
  const seen: string[] = [];
  agent.on('answered', (e) => void seen.push(`answered ${e.code}`));
  agent.on('unaddressable', (e) => void seen.push(`unaddressable ${e.reason}`));
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(() => client.close());
  const failed = new Promise<UpdateEvent>((resolve) =>
    client.mqtt.on(
      'message',
      (topic, payload) => topic === updateStateTopic('test', 'route') && resolve(JSON.parse(payload.toString())),
    ),
  );
  await client.mqtt.subscribeAsync(updateStateTopic('test', 'route'), { qos: 1 });
  const props = broker.protocolVersion === 5 ? { properties: { responseTopic: client.replyTopic } } : {};
  await client.mqtt.publishAsync(updateTopic('test', 'route'), Buffer.from([0xde, 0xad, 0xbe, 0xef]), {
    qos: 1,
    ...props,
  });
  t.match(await failed, { state: 'failed', code: 'BAD_MESSAGE' }, 'the update service answered');
  await new Promise((r) => setTimeout(r, 100));
  t.same(seen, [], 'the query path never saw it');
});

t.test('a store with no active set and no models is BAD_CONFIG', async (t) => {
  const config = loadAgentConfig({
    env: {},
    overrides: {
      fleet: 'f',
      device: 'd',
      broker: { url: 'mqtt://b' },
      updates: { store: path.join(f.dir, 'empty'), pubkey: f.pubPath },
    },
  });
  await t.rejects(
    startingModels(config, () => {}),
    { code: 'BAD_CONFIG', message: /has no active model set and no --models/ },
  );
});

t.test('setokim agent with a private key as --update-pubkey stops before opening anything', async (t) => {
  const cli = fileURLToPath(new URL('./fixtures/cli.ts', import.meta.url));
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      cli,
      'agent',
      '--broker',
      broker.url,
      '--fleet',
      'test',
      '--device',
      'badkey',
      '--store',
      store,
      '--update-pubkey',
      f.privPath,
      '--no-metrics',
    ],
    { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.not(code, 0);
  t.match(stderr, /BAD_ARGUMENT.*holds a private key/);
  t.notMatch(stderr, /opening the model set/);
});

/** An agent whose switch to a new pipeline fails before it swaps (as a broken status publish would). */
class FailingSwitch extends Agent {
  override replacePipeline(): Promise<void> {
    return Promise.reject(new SetokimError('BACKEND_CRASHED', 'the new set crashed while it was being switched to'));
  }
}

for (const failing of ['replacePipeline', 'open'] as const) {
  t.test(
    `${kind}: ${failing} failing after a commit: the job state is committed with UPDATE_HOOK_FAILED, release 1 keeps answering`,
    async (t) => {
      const device = `hook-${failing}`;
      const hookStore = path.join(f.dir, `store-${device}`);
      await new UpdateHandler({
        binding: { device: testDevice },
        store: hookStore,
        pubkey: f.pub,
        health: noCanary,
      }).run({ jobId: 'flash', url: pathToFileURL(r1).href, sha256: await sha256File(r1) }, () => {}, 'local');
      const config = testConfig(broker, device, {
        updates: { store: hookStore, pubkey: f.pubPath, allowUrls, allowHttp: true },
      });
      const log = (level: string, m: string) => logs.push(`${level} ${m}`);
      const opened = await openServingSet(config, await startingModels(config, log));
      const agent = new (failing === 'replacePipeline' ? FailingSwitch : Agent)({
        config,
        pipeline: opened.pipeline,
        log,
      });
      await agent.start();
      let newSetClosed = false;
      const open = async (dir: string) => {
        if (failing === 'open')
          throw new SetokimError('BACKEND_CRASHED', 'the session worker died while loading llm.onnx');
        const s = await openServingSet(config, dir);
        const close = s.pipeline.close.bind(s.pipeline);
        s.pipeline.close = async () => ((newSetClosed = true), close());
        return s;
      };
      const updates = await startUpdates(agent, { open, log, health: noCanary });
      t.teardown(async () => {
        await updates.stop();
        await agent.stop(0);
        await agent.pipeline.close();
      });
      const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
      t.teardown(() => client.close());
      const ask = () =>
        collect(
          client.query(
            { fleet: 'test', device },
            { id: newQueryId(), task: 'describe', image, generation: { maxTokens: 6, temperature: 0 } },
          ),
        );
      const before = await ask();
      t.equal(before.at(-1)?.type, 'done');

      const states = updateStateTopic('test', device);
      const warned = new Promise<UpdateEvent>((resolve) =>
        client.mqtt.on('message', (topic, payload) => {
          if (topic !== states) return; // the client's replies come in on this connection too
          const e = JSON.parse(payload.toString()) as UpdateEvent;
          if (e.jobId === 'r2' && e.warning) resolve(e);
        }),
      );
      await client.mqtt.subscribeAsync(states, { qos: 1 });
      await client.mqtt.publishAsync(
        updateTopic('test', device),
        JSON.stringify({ jobId: 'r2', url: bundleUrl(r2), sha256: await sha256File(r2) }),
        { qos: 1 },
      );
      const what =
        failing === 'open'
          ? 'could not be opened: the session worker died'
          : 'could not be switched to: the new set crashed';
      const warning = new RegExp(
        `^onCommitted failed after the release was committed: \\[BACKEND_CRASHED\\] release 2 \\(${SET2}\\) is committed but ${what}.*; still serving ${SET1}; restart the agent`,
      );
      t.match(await warned, {
        jobId: 'r2',
        state: 'committed',
        modelSetId: SET2,
        release: 2,
        warning: { code: 'UPDATE_HOOK_FAILED', message: warning },
      });
      await updates.idle();

      // What the fleet sees later: the retained job state carries the warning.
      const late = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
      t.teardown(() => late.close());
      const retained = new Promise<UpdateEvent>((resolve) =>
        late.mqtt.on('message', (topic, payload) => topic === states && resolve(JSON.parse(payload.toString()))),
      );
      await late.mqtt.subscribeAsync(states, { qos: 1 });
      t.match(await retained, {
        jobId: 'r2',
        state: 'committed',
        modelSetId: SET2,
        warning: { code: 'UPDATE_HOOK_FAILED', message: warning },
      });
      t.equal(await new ModelStore(hookStore).active(), SET2, 'release 2 stays committed and active in the store');

      // The agent still serves release 1 and answers as it did.
      t.equal(agent.pipeline, opened.pipeline, 'still on the pipeline it served');
      t.equal(
        newSetClosed,
        failing === 'replacePipeline',
        failing === 'replacePipeline' ? 'the opened set was closed, not leaked' : 'nothing was opened',
      );
      const answeredOn = next(agent, 'answered');
      const after = await ask();
      t.equal(after.at(-1)?.type, 'done', 'a query after the failed switch is answered');
      t.equal(textOf(after), textOf(before), 'by release 1');
      t.equal((await answeredOn)[0].modelSetId, SET1);
      t.equal((await client.status('test', device))?.modelSetId, SET1, 'the status still names release 1');
      t.ok(
        logs.some((l) => l.startsWith('error [BACKEND_CRASHED] release 2') && l.includes(`still serving ${SET1}`)),
        'the agent logged it',
      );
    },
  );
}

t.test(
  `${kind}: the agent's updates.workspaceMib and buildTimeoutS reach the engine builds of an update`,
  async (t) => {
    const device = 'nano';
    const nanoStore = path.join(f.dir, `store-${device}`);
    await new UpdateHandler({
      binding: { device: testDevice },
      store: nanoStore,
      pubkey: f.pub,
      health: noCanary,
      engines: false,
    }).run({ jobId: 'flash', url: pathToFileURL(r1).href, sha256: await sha256File(r1) }, () => {}, 'local');
    const config = testConfig(broker, device, {
      updates: { store: nanoStore, pubkey: f.pubPath, allowUrls, allowHttp: true, workspaceMib: 256, buildTimeoutS: 1 },
    });
    const log = () => undefined;
    const opened = await openServingSet(config, await startingModels(config, log));
    const agent = new Agent({ config, pipeline: opened.pipeline, log });
    await agent.start();
    // A build slower than updates.buildTimeoutS (1 s): the builder test double stands where TensorRT would build.
    const builder = new EngineBuilderTestDouble({ onStep: (stage) => (stage === 'llm' ? sleep(400) : undefined) });
    const events: UpdateEvent[] = [];
    const updates = await startUpdates(agent, {
      open: () => Promise.reject(new Error('unused')),
      log,
      health: tensorRtCanaryTestDouble(NANO),
      engineEnv: testEnvironment(NANO, builder),
      onEvent: (e) => events.push(e),
    });
    t.teardown(async () => {
      await updates.stop();
      await agent.stop(0);
      await agent.pipeline.close();
    });
    const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
    t.teardown(() => client.close());
    await client.mqtt.publishAsync(
      updateTopic('test', device),
      JSON.stringify({ jobId: 'e2', url: bundleUrl(r2), sha256: await sha256File(r2) }),
      { qos: 1 },
    );
    await new Promise<void>((resolve) => {
      const poll = setInterval(
        () => events.some((e) => e.state === 'failed' || e.state === 'committed') && (clearInterval(poll), resolve()),
        20,
      );
    });
    t.ok(builder.requests.length > 0, 'engines were built for the update');
    t.ok(
      builder.requests.every((r) => r.workspaceBytes === 256 * 2 ** 20),
      'every build got the 256 MiB workspace',
    );
    t.match(
      events.at(-1),
      { jobId: 'e2', state: 'failed', code: 'ENGINE_BUILD_TIMEOUT' },
      'the llm build ran past 1 s',
    );
    t.equal(await new ModelStore(nanoStore).active(), SET1, 'release 1 stays active');
  },
);

t.test(`${kind}: the agent's updates.maxReleaseJump refuses a release too far above the committed one`, async (t) => {
  const device = 'jumpy';
  const jumpStore = path.join(f.dir, `store-${device}`);
  const noCanary = async () => ({ ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' });
  await new UpdateHandler({ binding: { device: testDevice }, store: jumpStore, pubkey: f.pub, health: noCanary }).run(
    { jobId: 'flash', url: pathToFileURL(r1).href, sha256: await sha256File(r1) },
    () => {},
    'local',
  );
  const config = testConfig(broker, device, {
    updates: { store: jumpStore, pubkey: f.pubPath, allowUrls, allowHttp: true, maxReleaseJump: 2 },
  });
  const log = () => undefined;
  const opened = await openServingSet(config, await startingModels(config, log));
  const agent = new Agent({ config, pipeline: opened.pipeline, log });
  await agent.start();
  const events: UpdateEvent[] = [];
  const updates = await startUpdates(agent, {
    open: () => Promise.reject(new Error('unused')),
    log,
    health: noCanary,
    onEvent: (e) => events.push(e),
  });
  t.teardown(async () => {
    await updates.stop();
    await agent.stop(0);
    await agent.pipeline.close();
  });
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(() => client.close());
  await client.mqtt.publishAsync(
    updateTopic('test', device),
    JSON.stringify({ jobId: 'r5', url: bundleUrl(r5), sha256: await sha256File(r5) }),
    { qos: 1 },
  );
  await new Promise<void>((resolve) => {
    const poll = setInterval(() => events.some((e) => e.state === 'failed') && (clearInterval(poll), resolve()), 20);
  });
  t.match(events.at(-1), { jobId: 'r5', state: 'failed', code: 'RELEASE_JUMP_REFUSED' });
  t.equal(await new ModelStore(jumpStore).active(), SET1, 'release 1 stays active');
});
