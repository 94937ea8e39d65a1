/**
 * Video streams over MQTT with the real `tiny` pipeline and videos made by the Debian ffmpeg, on a
 * real mosquitto (MQTT 5) and the embedded aedes (MQTT 3.1.1): a stream's events (token ids stable
 * on still frames, changing where the object moves; answers), streams in the retained status and
 * against streams.max, the allow-list (a client cannot name a file), leases, a vanished client's
 * Last Will, a source that does not open, and queries served all along.
 */
import { connect } from 'mqtt';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { decodeStatus, type AgentStatus } from '../../src/agent/codec.js';
import { StreamClient } from '../../src/agent/stream-client.js';
import { decodeStreamEvent, encodeStreamStart, type StreamReply } from '../../src/agent/stream-codec.js';
import { startStreams, type StreamService } from '../../src/agent/streams.js';
import { ErrorCodes } from '../../src/errors.js';
import { deviceTopics, streamTopics } from '../../src/mqtt/topics.js';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/index.js';
import { MOVING, makeTestVideos, type TestVideos } from '../helpers/videos.js';
import { busyImage, tinySet } from '../pipeline/fixtures.js';
import { brokerKinds, collect, startBroker, testConfig, type TestBroker } from './brokers.js';

type Of<K extends StreamReply['type']> = Extract<StreamReply, { type: K }>;
const of = <K extends StreamReply['type']>(events: StreamReply[], type: K) =>
  events.filter((e): e is Of<K> => e.type === type);

let pipeline: LocalPipeline;
let videos: TestVideos;
let image: Uint8Array;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  pipeline = await createPipeline({ modelsDir: set.dir, threads: 1, maxInFlight: 2 });
  t.teardown(() => pipeline.close());
  videos = await makeTestVideos({ seconds: 1 });
  t.teardown(videos.cleanup);
  image = await busyImage();
});

async function serve(
  broker: TestBroker,
  device: string,
  streams: Record<string, unknown>,
): Promise<{ agent: Agent; service: StreamService }> {
  const agent = new Agent({ config: testConfig(broker, device, { streams } as never), pipeline });
  await agent.start();
  const service = await startStreams(agent, { log: () => undefined });
  return { agent, service };
}

/** The retained status, as the broker holds it now. */
async function statusOf(broker: TestBroker, device: string): Promise<AgentStatus> {
  const c = connect(broker.url, { protocolVersion: broker.protocolVersion });
  try {
    return await new Promise<AgentStatus>((resolve) => {
      c.on('message', (_t, payload) => resolve(decodeStatus(payload)));
      c.subscribe(deviceTopics('test', device).status);
    });
  } finally {
    await c.endAsync();
  }
}

async function until(check: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const mosquitto = brokerKinds.includes('mosquitto');

t.test('mosquitto (MQTT 5): streams end to end', { skip: !mosquitto && 'no mosquitto' }, async (t) => {
  const broker = await startBroker('mosquitto');
  const { agent, service } = await serve(broker, 'cam1', {
    sources: [`moving=${videos.moving}`, 'ball=test://ball', `gone=${videos.dir}/missing.mkv`],
    max: 2,
    fps: 10,
    leaseMs: 5000,
  });
  const client = await StreamClient.connect({ url: broker.url, protocolVersion: 5, fleet: 'test' });
  const queries = await QueryClient.connect({ url: broker.url, protocolVersion: 5 });
  t.teardown(async () => {
    await client.close().catch(() => undefined);
    await queries.close();
    await service.stop();
    await agent.stop(0);
    await broker.close();
  });

  t.test('a stream of a moving object: token events where it moves, answers, the end', async (t) => {
    const handle = await client.start('cam1', {
      id: 's1',
      source: 'moving',
      prompt: 'What moves?',
      generation: { maxTokens: 3 },
      maskEveryS: 0.5,
    });
    await until(() => service.running === 1, 'the stream to run');
    t.match(await statusOf(broker, 'cam1'), { streams: 1, maxStreams: 2 }, 'counted in the retained status');
    // A query while the stream runs is answered.
    const answer = await collect(
      queries.query(
        { fleet: 'test', device: 'cam1' },
        { id: newQueryId(), task: 'ask', prompt: 'hi', image, generation: { maxTokens: 2 } },
      ),
    );
    t.equal(answer.at(-1)?.type, 'done', 'queries are served during a stream');
    const events = await collect(handle.events);
    t.match(events[0], {
      type: 'started',
      id: 's1',
      source: 'moving',
      width: 224,
      height: 224,
      tool: 'ffmpeg',
      leaseMs: 5000,
      seq: 0,
      device: 'cam1',
    });
    t.same(
      events.map((e) => e.seq),
      [...events.keys()],
      'numbered in order',
    );
    const tokens = of(events, 'tokens');
    t.equal(tokens[0]!.frame, 0);
    t.same(tokens[0]!.added, tokens[0]!.ids);
    // The file plays in real time here: under load frames are dropped, and the first frame taken
    // after the motion may catch up with it (the frame-exact checks: test/pipeline/stream-session).
    const end = (MOVING.stillS + MOVING.moveS) * MOVING.fps;
    t.same(
      tokens.filter((e) => e.frame > 0 && e.frame <= MOVING.stillS * MOVING.fps),
      [],
      'no token event while everything is still',
    );
    t.ok(tokens.filter((e) => e.frame > end).length <= 1, 'at most one catching up after the motion');
    const rows = [Math.floor(MOVING.y / 14), Math.floor((MOVING.y + MOVING.object - 1) / 14)];
    t.ok(tokens.length >= 2, `${tokens.length} token events`);
    t.ok(
      tokens.slice(1).every((e) => e.region && e.region.row0 <= rows[1]! && e.region.row1 >= rows[0]!),
      'each change covers the rows the object crosses',
    );
    const background = tokens[0]!.ids.filter((id) => tokens.slice(1).every((e) => e.kept.includes(id)));
    t.ok(background.length >= 2, `background token ids ${background} kept throughout`);
    t.ok(
      tokens.some((e) => e.maskPng && e.maskPng.length > 100),
      'token-mask pictures at a lower rate',
    );
    const answers = of(events, 'answer');
    t.ok(answers.length >= 1 && answers[0]!.trigger === 'first');
    t.match(events.at(-1), { type: 'ended', reason: 'source-ended', stats: { failed: 0 } });
    await until(() => service.running === 0, 'the stream to be gone');
    await until(async () => (await statusOf(broker, 'cam1')).streams === 0, 'the status to say 0');
  });

  t.test('refusals: one fatal error each, and the agent serves on', async (t) => {
    const refused = async (start: Parameters<StreamClient['start']>[1]) =>
      collect((await client.start('cam1', start)).events);
    t.match(
      await refused({ id: 'r1', source: videos.moving }),
      [
        {
          type: 'error',
          code: ErrorCodes.STREAM_REFUSED,
          fatal: true,
          message: /not on device cam1's allow-list; use one of: moving, ball, gone/,
        },
      ],
      'a path a client names is refused',
    );
    t.match(await refused({ id: 'r2', source: 'door' }), [{ type: 'error', code: ErrorCodes.STREAM_REFUSED }]);
    const a = await client.start('cam1', { id: 'b1', source: 'ball' });
    const b = await client.start('cam1', { id: 'b2', source: 'ball' });
    await until(() => service.running === 2, 'two streams');
    t.match(
      await refused({ id: 'b3', source: 'ball' }),
      [{ type: 'error', code: ErrorCodes.BUSY, message: /runs 2 of its 2 streams/ }],
      'streams.max',
    );
    const dup = await collect(
      (
        await StreamClient.connect({ url: broker.url, fleet: 'test' }).then(
          (c2) => (t.teardown(() => c2.close()), c2.start('cam1', { id: 'b1', source: 'ball' })),
        )
      ).events,
    );
    t.match(dup, [{ type: 'error', code: ErrorCodes.DUPLICATE }], 'a running stream id');
    await a.stop();
    await b.stop();
    const [ea, eb] = await Promise.all([collect(a.events), collect(b.events)]);
    t.match(ea.at(-1), { type: 'ended', reason: 'stopped' });
    t.match(eb.at(-1), { type: 'ended', reason: 'stopped' });
    // Not protobuf at all, with a Response Topic: BAD_MESSAGE on it.
    const raw = connect(broker.url, { protocolVersion: 5 });
    t.teardown(() => raw.endAsync());
    const got = new Promise<StreamReply>((resolve) => raw.on('message', (_t, p) => resolve(decodeStreamEvent(p))));
    await raw.subscribeAsync('setokim/v1/replies/raw');
    await raw.publishAsync(streamTopics('test', 'cam1').start, Buffer.from([0xff, 0xff, 0xff]), {
      qos: 1,
      properties: { responseTopic: 'setokim/v1/replies/raw' },
    });
    t.match(await got, { type: 'error', code: ErrorCodes.BAD_MESSAGE, fatal: true });
    const q = await collect(
      queries.query(
        { fleet: 'test', device: 'cam1' },
        { id: newQueryId(), task: 'ask', prompt: 'hi', image, generation: { maxTokens: 1 } },
      ),
    );
    t.equal(q.at(-1)?.type, 'done', 'queries still served');
  });

  t.test('a source that does not open: SOURCE_UNAVAILABLE, the stream ends, queries go on', async (t) => {
    const events = await collect((await client.start('cam1', { id: 'g1', source: 'gone' })).events);
    t.match(of(events, 'error'), [{ code: ErrorCodes.SOURCE_UNAVAILABLE, fatal: true, message: /missing\.mkv/ }]);
    t.match(events.at(-1), { type: 'ended', reason: 'failed' });
  });

  t.test('a lease nobody renews stops the stream with EXPIRED', async (t) => {
    const raw = connect(broker.url, { protocolVersion: 5 });
    t.teardown(() => raw.endAsync());
    const events: StreamReply[] = [];
    const ended = new Promise<void>((resolve) =>
      raw.on('message', (_t, p) => {
        const e = decodeStreamEvent(p);
        events.push(e);
        if (e.type === 'ended') resolve();
      }),
    );
    await raw.subscribeAsync('setokim/v1/replies/lease');
    const t0 = Date.now();
    await raw.publishAsync(
      streamTopics('test', 'cam1').start,
      Buffer.from(encodeStreamStart({ id: 'l1', source: 'ball', leaseMs: 1000 })),
      { qos: 1, properties: { responseTopic: 'setokim/v1/replies/lease' } },
    );
    await ended;
    const ms = Date.now() - t0;
    t.match(events[0], { type: 'started', leaseMs: 1000 });
    t.match(of(events, 'error'), [{ code: ErrorCodes.EXPIRED, fatal: true, message: /not renewed within 1000 ms/ }]);
    t.match(events.at(-1), { type: 'ended', reason: 'stopped' });
    t.ok(ms >= 1000 && ms < 4000, `stopped ${ms} ms after the start`);
  });

  t.test('a client that renews keeps its stream past the lease', async (t) => {
    const handle = await client.start('cam1', { id: 'k1', source: 'ball', leaseMs: 1000 });
    await sleep(2500);
    t.equal(service.running, 1, 'still running after 2.5 leases');
    await handle.stop();
    t.match((await collect(handle.events)).at(-1), { type: 'ended', reason: 'stopped' });
  });

  t.test('a client that vanishes: its Last Will stops its streams', async (t) => {
    const gone = await StreamClient.connect({ url: broker.url, fleet: 'test', willDelayS: 1 });
    await gone.start('cam1', { id: 'w1', source: 'ball', leaseMs: 60_000 });
    await until(() => service.running === 1, 'the stream to run');
    const t0 = Date.now();
    gone.mqtt.stream.destroy(); // no DISCONNECT: the broker keeps the session for 1 s, then publishes the will
    gone.mqtt.options.reconnectPeriod = 0;
    await until(() => service.running === 0, 'the will to stop the stream');
    const ms = Date.now() - t0;
    t.ok(ms >= 700 && ms < 8000, `stopped ${ms} ms after the client vanished (will delay 1 s, not the 60 s lease)`);
    await gone.mqtt.endAsync(true);
  });
});

t.test('aedes (MQTT 3.1.1): reply_topic in the start, streams off without sources', async (t) => {
  const broker = await startBroker('aedes');
  const on = await serve(broker, 'cam2', { sources: ['ball=test://ball'], max: 1, fps: 5 });
  const off = await serve(broker, 'cam3', {});
  const client = await StreamClient.connect({ url: broker.url, protocolVersion: 4, fleet: 'test' });
  t.teardown(async () => {
    await client.close().catch(() => undefined);
    for (const s of [on, off]) {
      await s.service.stop();
      await s.agent.stop(0);
    }
    await broker.close();
  });
  const handle = await client.start('cam2', { id: 'a1', source: 'ball' });
  const seen: StreamReply[] = [];
  for await (const e of handle.events) {
    seen.push(e);
    if (e.type === 'tokens') await handle.stop();
  }
  t.match(seen[0], { type: 'started', source: 'ball', tool: 'ffmpeg' });
  t.ok(of(seen, 'tokens').length >= 1);
  t.match(seen.at(-1), { type: 'ended', reason: 'stopped' });
  t.match(await collect((await client.start('cam3', { id: 'a2', source: 'ball' })).events), [
    { type: 'error', code: ErrorCodes.STREAM_REFUSED, message: /takes no streams/ },
  ]);
  t.match(await statusOf(broker, 'cam3'), { streams: 0, maxStreams: 0 });
});
