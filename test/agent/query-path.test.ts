/**
 * The query path against an outside audit's findings (issue 16), on a real mosquitto: where an agent
 * agrees to publish replies, the size of what it takes (prompt bytes, MQTT 5 packets, correlation
 * data) and how long it is blocked by a maximal prompt, deadlines far ahead, which topics are
 * queries, and broker credentials in its logs.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { connect, type IClientPublishOptions, type MqttClient } from 'mqtt';
import t, { type Test } from 'tap';
import { Agent, type AgentEvents } from '../../src/agent/agent.js';
import { decodeReply, encodeQuery, type ReplyEvent, type WireQuery } from '../../src/agent/codec.js';
import { startUpdates } from '../../src/agent/updates.js';
import { queryTopic, updateTopic } from '../../src/mqtt/topics.js';
import { loadTokenizer } from '../../src/pipeline/tokenizer.js';
import { mosquittoPath, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { testConfig, type TestBroker, type TestConfigExtra } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

if (!mosquittoPath()) {
  t.plan(0, 'mosquitto is not installed (apt-get install -y mosquitto)');
} else {
  const mosquitto: Mosquitto = await startMosquitto();
  t.teardown(() => mosquitto.stop());
  const broker: TestBroker = {
    kind: 'mosquitto',
    url: mosquitto.url,
    protocolVersion: 5,
    shared: true,
    close: async () => {},
  };
  const png = await samplePng();

  /** A started agent on the test mosquitto (stopped at the end of the test), with its log lines. */
  const startAgent = async (
    t: Test,
    device: string,
    extra: TestConfigExtra = {},
    countTokens?: (s: string) => number,
  ) => {
    const logs: string[] = [];
    const pipeline = new StubPipeline({ holdable: true });
    const agent = new Agent({
      config: testConfig(broker, device, extra),
      pipeline,
      log: (level, m) => logs.push(`${level} ${m}`),
      ...(countTokens ? { countTokens } : {}),
    });
    await agent.start();
    t.teardown(() => agent.stop(0));
    return { agent, pipeline, logs };
  };

  /** A raw MQTT client (5 unless asked) that collects what arrives, by topic. */
  const rawClient = async (t: Test, protocolVersion: 4 | 5 = 5) => {
    const client = connect(mosquitto.url, { protocolVersion, clientId: `raw-${randomUUID()}` });
    await new Promise((resolve) => client.once('connect', resolve));
    t.teardown(() => client.endAsync(true));
    const got: Array<{ topic: string; reply?: ReplyEvent; correlationData?: Buffer; bytes: number }> = [];
    const waiters: Array<() => void> = [];
    client.on('message', (topic, payload, packet) => {
      let reply: ReplyEvent | undefined;
      try {
        reply = decodeReply(payload);
      } catch {
        reply = undefined;
      }
      got.push({
        topic,
        ...(reply ? { reply } : {}),
        ...(packet.properties?.correlationData ? { correlationData: packet.properties.correlationData } : {}),
        bytes: payload.length,
      });
      for (const w of waiters.splice(0)) w();
    });
    /** Resolves when a message passing `pick` has arrived. */
    const until = async (pick: (m: (typeof got)[number]) => boolean) => {
      while (!got.some(pick)) await new Promise<void>((resolve) => waiters.push(resolve));
      return got.find(pick)!;
    };
    return { client, got, until };
  };

  const query = (over: Partial<WireQuery> = {}): WireQuery => ({
    id: randomUUID(),
    task: 'ask',
    prompt: 'what is this',
    image: png,
    ...over,
  });
  const send = (client: MqttClient, device: string, q: WireQuery, opts: IClientPublishOptions = {}) =>
    client.publishAsync(queryTopic({ fleet: 'test', device }), Buffer.from(encodeQuery(q)), { qos: 1, ...opts });
  /** The next agent event of `name`, as a promise. */
  const next = <K extends keyof AgentEvents>(agent: Agent, name: K) =>
    new Promise<AgentEvents[K]>((resolve) =>
      (agent as EventEmitter).once(name, (...a: unknown[]) => resolve(a as AgentEvents[K])),
    );
  const ended = (r: { reply?: ReplyEvent }) => r.reply?.type === 'done' || r.reply?.type === 'error';

  t.test('reply topics: setokim/v1/replies/# and the configured filters only', { timeout: 20_000 }, async (t) => {
    const { agent } = await startAgent(t, 'replies');
    const { client, got, until } = await rawClient(t);
    await client.subscribeAsync(['home/#', 'setokim/v1/replies/#'], { qos: 1 });
    for (const how of ['Response Topic', 'reply_topic'] as const) {
      const q = query(how === 'reply_topic' ? { replyTopic: 'home/door/unlock' } : {});
      const dropped = next(agent, 'unaddressable');
      await send(
        client,
        'replies',
        q,
        how === 'Response Topic' ? { properties: { responseTopic: 'home/door/unlock' } } : {},
      );
      t.match(
        (await dropped)[0],
        { reason: /reply topic|reply address/ },
        `${how} home/door/unlock: not a reply address`,
      );
    }
    const ok = query();
    await send(client, 'replies', ok, { properties: { responseTopic: 'setokim/v1/replies/me' } });
    await until((m) => m.reply?.id === ok.id && ended(m));
    t.same(
      got.filter((m) => m.topic.startsWith('home/')),
      [],
      'nothing was published under home/',
    );

    const allowing = await startAgent(t, 'replies-allow', { replyTopics: ['home/replies/#'] });
    const mine = query({ replyTopic: 'home/replies/cam' });
    await send(client, 'replies-allow', mine);
    t.equal(
      (await until((m) => m.reply?.id === mine.id && ended(m))).topic,
      'home/replies/cam',
      'a configured filter is a reply address',
    );
    const door = next(allowing.agent, 'unaddressable');
    await send(client, 'replies-allow', query({ replyTopic: 'home/door/unlock' }));
    await door;
    const status = next(allowing.agent, 'unaddressable');
    await send(client, 'replies-allow', query(), { properties: { responseTopic: 'setokim/v1/test/replies/status' } });
    await status;
    t.same(
      got.filter((m) => m.topic.startsWith('home/door') || m.topic.startsWith('setokim/v1/test/')),
      [],
      'outside the filters: nothing published',
    );
  });

  t.test(
    'prompt bytes are capped before decoding; a maximal prompt does not hold the event loop',
    { timeout: 20_000 },
    async (t) => {
      const tok = await loadTokenizer({ kind: 'llama' });
      const count = (s: string) => tok.encode(s).length;
      // 3.1.1 has no packet size limit: a 1 MB prompt reaches the agent, which must refuse it cheaply.
      const { agent } = await startAgent(
        t,
        'prompt',
        { broker: { protocolVersion: 4 }, limits: { maxPromptTokens: 2048 } },
        count,
      );
      const { client, until } = await rawClient(t, 4);
      const replies = 'setokim/v1/replies/prompt';
      await client.subscribeAsync(replies, { qos: 1 });
      const cap = agent.config.limits.maxPromptBytes;
      t.equal(cap, 16384, 'the default cap');
      const run = 'ab'.repeat(cap / 2);
      const words = 'the quick brown fox '.repeat(cap / 20).padEnd(cap, '.');
      t.ok(
        count(run) > 2048 && count(words) > 2048 && Buffer.byteLength(words) === cap,
        'the prompts at the cap are over the tokens',
      );
      const cases: Array<[string, string, string, RegExp]> = [
        ['1 MB', 'x'.repeat(1 << 20), 'PROMPT_TOO_LONG', /1048576 bytes.*limits\.maxPromptBytes/],
        ['one byte over the cap', 'x'.repeat(cap + 1), 'PROMPT_TOO_LONG', /limits\.maxPromptBytes/],
        ['at the cap, one run without spaces', run, 'PROMPT_TOO_LONG', /tokens.*limits\.maxPromptTokens/],
        ['at the cap, words', words, 'PROMPT_TOO_LONG', /tokens.*limits\.maxPromptTokens/],
        ['a short one', 'what is this', 'done', /^$/],
      ];
      for (const [what, prompt, want, message] of cases) {
        const q = query({ prompt, replyTopic: replies });
        const delay = monitorEventLoopDelay({ resolution: 5 });
        delay.enable();
        await send(client, 'prompt', q);
        const last = await until((m) => m.reply?.id === q.id && ended(m));
        delay.disable();
        t.equal(last.reply?.type === 'error' ? last.reply.code : last.reply?.type, want, `${what}: ${want}`);
        t.match(last.reply?.type === 'error' ? last.reply.message : '', message);
        // Before the cap the 1 MB prompt held the loop for seconds; the bound leaves room for a loaded machine.
        t.ok(
          delay.max / 1e6 < 250,
          `${what}: the event loop was never blocked long (longest delay ${(delay.max / 1e6).toFixed(1)} ms)`,
        );
      }
    },
  );

  t.test(
    'MQTT 5: the broker drops a message larger than image + prompt + overhead; the agent keeps serving',
    { timeout: 20_000 },
    async (t) => {
      const { agent } = await startAgent(t, 'packets');
      const { client, got, until } = await rawClient(t);
      const replies = 'setokim/v1/replies/packets';
      await client.subscribeAsync(replies, { qos: 1 });
      const huge = query({
        image: Buffer.concat([
          png,
          Buffer.alloc(agent.config.limits.maxImageBytes + agent.config.limits.maxPromptBytes + 64 * 1024),
        ]),
      });
      await send(client, 'packets', huge, { properties: { responseTopic: replies } });
      const after = query();
      await send(client, 'packets', after, { properties: { responseTopic: replies } });
      t.equal(
        (await until((m) => m.reply?.id === after.id && ended(m))).reply?.type,
        'done',
        'the next query is served',
      );
      // In order from one publisher: had the agent seen it, its PAYLOAD_TOO_LARGE would have come first.
      t.same(
        got.filter((m) => m.reply?.id === huge.id),
        [],
        'the oversized message never reached the agent',
      );
      t.equal(agent.mqtt?.connected, true, 'still connected');
    },
  );

  t.test('deadlines and message expiry beyond 24.8 days do not expire at once', { timeout: 20_000 }, async (t) => {
    const { pipeline } = await startAgent(t, 'far');
    const { client, until } = await rawClient(t);
    const replies = 'setokim/v1/replies/far';
    await client.subscribeAsync(replies, { qos: 1 });
    const days = 30 * 24 * 3600;
    for (const [what, q, opts] of [
      ['deadline_unix_ms in 30 days', query({ prompt: 'hold on', deadlineUnixMs: Date.now() + days * 1000 }), {}],
      [
        'Message Expiry Interval of 30 days',
        query({ prompt: 'hold on' }),
        { properties: { messageExpiryInterval: days } },
      ],
    ] as const) {
      await send(client, 'far', q, {
        ...opts,
        properties: { responseTopic: replies, ...('properties' in opts ? opts.properties : {}) },
      });
      const finished = until((m) => m.reply?.id === q.id && ended(m));
      // An overflowed timer fires after 1 ms: EXPIRED before (or soon after) the query is held.
      await Promise.race([pipeline.waitHeld(q.id), finished]);
      await new Promise((resolve) => setTimeout(resolve, 50));
      pipeline.release(q.id);
      const last = await finished;
      t.equal(last.reply?.type, 'done', `${what}: answered`);
    }
  });

  t.test(
    'only the query topics are queries: a Query on the update topic is not answered',
    { timeout: 20_000 },
    async (t) => {
      const dir = mkdtempSync(path.join(tmpdir(), 'setokim-route-'));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      const pub = path.join(dir, 'pub.pem');
      writeFileSync(pub, generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));
      const { agent, logs } = await startAgent(t, 'route', {
        updates: { store: path.join(dir, 'store'), pubkey: pub },
      });
      const log = (level: string, m: string) => logs.push(`${level} ${m}`);
      const updates = await startUpdates(agent, { open: () => Promise.reject(new Error('not in this test')), log });
      t.teardown(() => updates.stop());
      const { client, got, until } = await rawClient(t);
      const replies = 'setokim/v1/replies/route';
      await client.subscribeAsync(replies, { qos: 1 });
      const onUpdate = query({ task: 'paint' }); // refused at once if taken for a query (UNKNOWN_TASK)
      await client.publishAsync(updateTopic('test', 'route'), Buffer.from(encodeQuery(onUpdate)), {
        qos: 1,
        properties: { responseTopic: replies },
      });
      const after = query();
      await send(client, 'route', after, { properties: { responseTopic: replies } });
      await until((m) => m.reply?.id === after.id && ended(m));
      t.same(
        got.filter((m) => m.reply?.id === onUpdate.id),
        [],
        'no reply to the message on the update topic',
      );
    },
  );

  t.test(
    'MQTT 5 Correlation Data is capped like the 3.1.1 field, never echoed when too long',
    { timeout: 20_000 },
    async (t) => {
      await startAgent(t, 'corr');
      const { client, got, until } = await rawClient(t);
      const replies = 'setokim/v1/replies/corr';
      await client.subscribeAsync(replies, { qos: 1 });
      const long = query();
      await send(client, 'corr', long, {
        properties: { responseTopic: replies, correlationData: Buffer.alloc(65_000, 1) },
      });
      const last = await until((m) => m.reply?.id === long.id && ended(m));
      const mine = got.filter((m) => m.reply?.id === long.id);
      t.equal(mine.length, 1, 'one reply');
      t.equal(last.reply?.type === 'error' && last.reply.code, 'BAD_MESSAGE');
      t.equal(last.correlationData, undefined, 'without the 65,000 bytes');
      const fits = query();
      await send(client, 'corr', fits, {
        properties: { responseTopic: replies, correlationData: Buffer.alloc(256, 2) },
      });
      const ok = await until((m) => m.reply?.id === fits.id && ended(m));
      t.equal(ok.reply?.type, 'done');
      t.equal(ok.correlationData?.length, 256, '256 bytes are echoed');
    },
  );

  t.test('broker credentials in the URL never reach the logs', { timeout: 20_000 }, async (t) => {
    const secured = await startMosquitto({ users: { cam: 's3cret-pw' } });
    t.teardown(() => secured.stop());
    const url = secured.url.replace('mqtt://', 'mqtt://cam:s3cret-pw@');
    const securedBroker: TestBroker = { ...broker, url };
    const logs: string[] = [];
    const agent = new Agent({
      config: testConfig(securedBroker, 'creds'),
      pipeline: new StubPipeline(),
      log: (level, m) => logs.push(`${level} ${m}`),
    });
    await agent.start();
    t.teardown(() => agent.stop(0));
    const back = next(agent, 'ready');
    await secured.restart(); // 'lost the broker ...', then 'reconnected to ...'
    await back;
    const wrong = new Agent({
      config: testConfig({ ...broker, url: url.replace('s3cret-pw', 'wr0ng-pw') }, 'creds-wrong'),
      pipeline: new StubPipeline(),
    });
    const refused = await wrong.start().then(
      () => undefined,
      (err: Error) => err.message,
    );
    await wrong.stop(0);
    t.match(refused, /refused the credentials/);
    t.ok(
      logs.some((l) => /connected to mqtt:\/\/\*\*\*@127\.0\.0\.1/.test(l)),
      'the broker is named, its user redacted',
    );
    t.ok(logs.some((l) => l.includes('lost the broker')));
    t.notOk(
      [...logs, refused].some((l) => /s3cret|wr0ng|cam:/.test(l ?? '')),
      'no password (nor user name) in any log line or error',
    );
  });
}
