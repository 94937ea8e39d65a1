/**
 * The agent's life around the broker: the retained status follows the load every statusIntervalMs
 * (and beats while idle), a subscription the broker refuses fails start() and leaves nothing
 * running, and stop() with the broker unreachable ends promptly while the Last Will says offline.
 */
import { createHook } from 'node:async_hooks';
import { createServer, connect as tcpConnect, type AddressInfo, type Socket } from 'node:net';
import t from 'tap';
import { Agent, BROKER_STOP_WAIT_MS, STATUS_HEARTBEAT_INTERVALS } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { decodeStatus, type AgentStatus } from '../../src/agent/codec.js';
import { SetokimError } from '../../src/errors.js';
import { dynsecPluginPath, mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { brokerKinds, collect, startBroker, testConfig, type TestBroker } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

/** Timers the agent itself created (agent.ts) that have neither fired nor been cleared. */
function agentTimers(): { pending(): Promise<number>; stop(): void } {
  const live = new Set<number>();
  const hook = createHook({
    init(id, type) {
      if (type === 'Timeout' && /src[\\/]agent[\\/]agent\.ts/.test(new Error().stack ?? '')) live.add(id);
    },
    destroy(id) {
      live.delete(id);
    },
  }).enable();
  return {
    async pending() {
      // destroy hooks of cleared timers run from the immediate queue
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
      return live.size;
    },
    stop: () => void hook.disable(),
  };
}

/** The agent's MQTT client ended: socket gone, no reconnect timer (mqtt.js leaves `reconnecting` set). */
function closedForGood(agent: Agent): boolean {
  const m = agent.mqtt as unknown as
    { disconnected: boolean; stream: { destroyed: boolean }; reconnectTimer: unknown } | undefined;
  return !!m && m.disconnected && m.stream.destroyed && !m.reconnectTimer;
}

/** Every status message on one device's status topic, with a way to wait for one that matches. */
async function watchStatus(
  broker: TestBroker,
  topic: string,
): Promise<{
  seen: AgentStatus[];
  next(match: (s: AgentStatus) => boolean, what: string): Promise<AgentStatus>;
  close(): Promise<void>;
}> {
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  const seen: AgentStatus[] = [];
  let cursor = 0; // next() reads the messages in order: each match consumes those up to it
  let waiter: (() => void) | undefined;
  client.mqtt.on('message', (tp, payload) => {
    if (tp !== topic) return;
    seen.push(decodeStatus(payload));
    waiter?.();
  });
  await client.mqtt.subscribeAsync(topic, { qos: 1 });
  return {
    seen,
    next: (match, what) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(
                `no status ${what} within 10 s; saw ${JSON.stringify(seen.map((s) => [s.online, s.queueDepth, s.inFlight]))}`,
              ),
            ),
          10_000,
        );
        const check = (): void => {
          while (cursor < seen.length) {
            const s = seen[cursor++]!;
            if (match(s)) {
              waiter = undefined;
              clearTimeout(timer);
              return resolve(s);
            }
          }
        };
        waiter = check;
        check();
      }),
    close: () => client.close(),
  };
}

for (const kind of brokerKinds) {
  t.test(
    `${kind}: the status follows the load every statusIntervalMs, beats while idle, stops with the agent`,
    async (t) => {
      const broker = await startBroker(kind);
      const timers = agentTimers();
      const pipeline = new StubPipeline({ holdable: true });
      const agent = new Agent({
        config: testConfig(broker, 'load', { statusIntervalMs: 100, limits: { concurrency: 1, queueSize: 4 } }),
        pipeline,
      });
      const watch = await watchStatus(broker, agent.topics.status);
      const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
      t.teardown(async () => {
        timers.stop();
        await client.close();
        await watch.close();
        await agent.stop(0);
        await broker.close();
      });
      await agent.start();
      await watch.next((s) => s.online && s.inFlight === 0, 'online and idle');
      const target = { fleet: 'test', device: 'load' };
      const png = await samplePng();
      const a = newQueryId();
      const b = newQueryId();
      const streamA = collect(client.query(target, { id: a, task: 'ask', prompt: 'hold a', image: png }));
      await pipeline.waitHeld(a);
      const streamB = collect(client.query(target, { id: b, task: 'ask', prompt: 'queued b', image: png }));
      const busy = await watch.next((s) => s.inFlight === 1 && s.queueDepth === 1, 'with one running and one queued');
      t.ok(busy.online, 'published while the load changed, no reconnect needed');
      pipeline.release(a);
      t.equal((await streamA).at(-1)?.type, 'done');
      t.equal((await streamB).at(-1)?.type, 'done');
      const idle = await watch.next((s) => s.inFlight === 0 && s.queueDepth === 0, 'idle again');
      const beat = await watch.next(
        (s) => s.updatedUnixMs > idle.updatedUnixMs,
        'as a heartbeat with the load unchanged',
      );
      t.same([beat.online, beat.inFlight, beat.queueDepth], [true, 0, 0]);
      t.ok(
        beat.updatedUnixMs - idle.updatedUnixMs >= 100 * STATUS_HEARTBEAT_INTERVALS - 50,
        `heartbeat after ${beat.updatedUnixMs - idle.updatedUnixMs} ms`,
      );
      t.ok((await timers.pending()) > 0, 'the status ticker runs while serving');
      await agent.stop(0);
      t.equal(watch.seen.at(-1)?.online, false, 'offline is the last status');
      t.equal(await timers.pending(), 0, 'no timer of the agent left after stop()');
    },
  );
}

/** A TCP relay to the broker that can go silent, as a network that drops (no FIN, no RST). */
async function startRelay(target: URL): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const pairs = new Set<[Socket, Socket]>();
  let silent = false;
  const server = createServer((down) => {
    if (silent) return void down.destroy();
    const up = tcpConnect(Number(target.port), target.hostname);
    for (const s of [down, up]) s.on('error', () => undefined);
    down.pipe(up);
    up.pipe(down);
    down.on('close', () => silent || up.destroy());
    up.on('close', () => silent || down.destroy());
    pairs.add([down, up]);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut() {
      silent = true;
      for (const [down, up] of pairs) {
        down.unpipe(up);
        up.unpipe(down);
        down.pause();
        up.pause();
      }
    },
    async close() {
      for (const [down, up] of pairs) {
        down.destroy();
        up.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

for (const kind of brokerKinds) {
  t.test(`${kind}: stop() with the broker unreachable ends within its bound; the Last Will says offline`, async (t) => {
    const broker = await startBroker(kind);
    const relay = await startRelay(new URL(broker.url));
    const pipeline = new StubPipeline({ holdable: true });
    const agent = new Agent({
      config: testConfig(broker, 'cut', { broker: { url: relay.url, keepaliveS: 1 } }),
      pipeline,
    });
    const watch = await watchStatus(broker, agent.topics.status);
    const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
    t.teardown(async () => {
      await client.close();
      await watch.close();
      await relay.close();
      await broker.close();
    });
    await agent.start();
    await watch.next((s) => s.online, 'online');
    const id = newQueryId();
    void collect(
      client.query(
        { fleet: 'test', device: 'cut' },
        { id, task: 'ask', prompt: 'hold on', image: await samplePng() },
        { timeoutMs: 30_000 },
      ),
    ).catch(() => undefined);
    await pipeline.waitHeld(id);
    relay.cut(); // from here nothing the agent sends reaches the broker, nor any answer the agent
    const started = Date.now();
    let bound: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      agent.stop(0).then(() => 'stopped'),
      new Promise((resolve) => (bound = setTimeout(() => resolve('still waiting'), 4 * BROKER_STOP_WAIT_MS))),
    ]);
    clearTimeout(bound);
    t.equal(
      outcome,
      'stopped',
      `stop() returned after ${Date.now() - started} ms (it cancelled the query; its error reply could not go out)`,
    );
    t.ok(closedForGood(agent), 'the MQTT client is closed, no reconnect scheduled');
    const will = await watch.next((s) => !s.online, 'offline (the Last Will, once the broker notices)');
    t.equal(will.device, 'cut');
    t.equal(agent.inFlight, 0);
  });
}

const acl = (allow: string[]) => ({
  defaultACLAccess: { publishClientSend: true, publishClientReceive: true, subscribe: false, unsubscribe: true },
  clients: [],
  groups: [{ groupname: 'anonymous', roles: [{ rolename: 'agent' }], clients: [] }],
  roles: [
    {
      rolename: 'agent',
      acls: allow.map((topic) => ({ acltype: 'subscribePattern', topic, priority: 0, allow: true })),
    },
  ],
  anonymousGroup: 'anonymous',
});

if (!mosquittoPath() || !dynsecPluginPath()) {
  t.test(
    'a refused subscription',
    { skip: 'needs mosquitto and its dynamic-security plugin (apt-get install -y mosquitto)' },
    async () => undefined,
  );
} else {
  t.test(
    'mosquitto: a subscription its ACL refuses fails start() with BROKER_REFUSED and leaves nothing running',
    async (t) => {
      // Device topics allowed, fleet topics (the shared query and the fleet cancel) not.
      const mosquitto = await startMosquitto({ dynsec: acl(['setokim/v1/acl/cam-1/#']) });
      t.teardown(() => mosquitto.stop());
      const broker: TestBroker = {
        kind: 'mosquitto',
        url: mosquitto.url,
        protocolVersion: 5,
        shared: true,
        close: () => mosquitto.stop(),
      };
      const timers = agentTimers();
      t.teardown(() => timers.stop());
      const agent = new Agent({ config: testConfig(broker, 'cam-1', { fleet: 'acl' }), pipeline: new StubPipeline() });
      let bound: NodeJS.Timeout | undefined;
      const err = await Promise.race([
        agent.start().then(
          () => new Error('start() resolved'),
          (e: unknown) => e,
        ),
        new Promise(
          (resolve) => (bound = setTimeout(() => resolve(new Error('start() still waiting after 10 s')), 10_000)),
        ),
      ]);
      clearTimeout(bound);
      t.ok(err instanceof SetokimError, `a SetokimError: ${String(err)}`);
      const e = err as SetokimError;
      t.equal(e.code, 'BROKER_REFUSED');
      t.match(
        e.message,
        /refused the subscription to .*\$share\/acl\/setokim\/v1\/acl\/query \(Not authorized, reason code 0x87\)/,
      );
      t.match(e.message, /setokim\/v1\/acl\/cancel \(Not authorized/);
      t.notMatch(e.message, /setokim\/v1\/acl\/cam-1\/query/, 'the granted topics are not named');
      t.match(e.message, /broker's ACL, or set fleetSubscription to plain/);
      t.ok(closedForGood(agent), 'the MQTT client is closed, no reconnect scheduled');
      t.ok(agent.metricsPort, 'metrics had been listening');
      const refused = await new Promise<string | undefined>((resolve) => {
        const socket = tcpConnect(agent.metricsPort!, '127.0.0.1');
        socket.once('connect', () => (socket.destroy(), resolve(undefined)));
        socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
      });
      t.equal(refused, 'ECONNREFUSED', 'the metrics port is closed');
      t.equal(await timers.pending(), 0, 'no timer of the agent left');

      // The same agent where the ACL grants its topics starts: the refusal above was the ACL's.
      const open = await startMosquitto({ dynsec: acl(['setokim/v1/acl/#', '$share/acl/setokim/v1/acl/#']) });
      t.teardown(() => open.stop());
      const allowed = new Agent({
        config: testConfig({ ...broker, url: open.url }, 'cam-1', { fleet: 'acl' }),
        pipeline: new StubPipeline(),
      });
      await allowed.start();
      await allowed.stop(0);
    },
  );
}

t.test(`${brokerKinds[0]}: a reconnect while stop() drains subscribes to nothing and publishes offline`, async (t) => {
  const broker = await startBroker(brokerKinds[0]!);
  const pipeline = new StubPipeline({ holdable: true });
  const agent = new Agent({ config: testConfig(broker, 'drain'), pipeline });
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(async () => {
    await client.close();
    await agent.stop(0);
    await broker.close();
  });
  await agent.start();
  const id = newQueryId();
  const answer = collect(
    client.query({ fleet: 'test', device: 'drain' }, { id, task: 'ask', prompt: 'hold on', image: await samplePng() }),
  );
  await pipeline.waitHeld(id);
  const mqtt = agent.mqtt!;
  const unsubscribed = new Promise<void>((resolve) =>
    mqtt.on('packetreceive', (p) => p.cmd === 'unsuback' && resolve()),
  );
  const stopped = agent.stop(30_000);
  await unsubscribed;
  const sent: string[] = [];
  const statusAfterReconnect = new Promise<AgentStatus>((resolve) =>
    mqtt.on('packetsend', (p) => {
      sent.push(p.cmd);
      if (p.cmd === 'publish' && p.topic === agent.topics.status) resolve(decodeStatus(p.payload as Buffer));
    }),
  );
  mqtt.stream.destroy(); // the connection drops while the held query still runs; mqtt.js reconnects
  const status = await statusAfterReconnect;
  t.ok(sent.includes('connect'), 'it reconnected');
  t.notOk(sent.includes('subscribe'), `no subscription after the reconnect (sent ${sent.join(', ')})`);
  t.equal(status.online, false, 'the status it publishes says offline');
  pipeline.release(id);
  t.equal((await answer).at(-1)?.type, 'done', 'the running query still finishes');
  await stopped;
});
