/**
 * The agent's protocol against a real mosquitto (MQTT 5) and the embedded aedes (MQTT 3.1.1):
 * streaming answers, error replies for bad input while others are served, BUSY, cancel, deadlines,
 * duplicates, presence (retained status and the Last Will) and graceful stop.
 */
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { decodeStatus, encodeQuery } from '../../src/agent/codec.js';
import { queryTopic } from '../../src/mqtt/topics.js';
import { brokerKinds, collect, outcome, startBroker, testConfig } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

for (const kind of brokerKinds) {
  t.test(kind, async (t) => {
    const broker = await startBroker(kind);
    const pipeline = new StubPipeline({ holdable: true, maxContext: 50 });
    const agent = new Agent({
      config: testConfig(broker, 'dev1', { limits: { concurrency: 1, queueSize: 1, maxImageBytes: 4096 } }),
      pipeline,
    });
    await agent.start();
    const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
    const target = { fleet: 'test', device: 'dev1' };
    const png = await samplePng();
    t.teardown(async () => {
      await client.close();
      await agent.stop(0);
      await broker.close();
    });

    t.test('a query streams accepted, text deltas and done, numbered in order', async (t) => {
      const id = newQueryId();
      const events = await collect(client.query(target, { id, task: 'ask', prompt: 'what is this', image: png }));
      t.same(
        events.map((e) => e.type),
        ['accepted', 'text', 'text', 'text', 'done'],
      );
      t.same(
        events.map((e) => e.seq),
        [0, 1, 2, 3, 4],
      );
      t.ok(events.every((e) => e.id === id && e.device === 'dev1'));
      t.equal(
        events
          .filter((e) => e.type === 'text')
          .map((e) => (e.type === 'text' ? e.delta : ''))
          .join(''),
        'what is this',
      );
      const done = events.at(-1)!;
      t.equal(done.type === 'done' && done.visionTokens, 4);
    });

    t.test('the fleet topic reaches the agent too', async (t) => {
      const events = await collect(client.query({ fleet: 'test' }, { id: newQueryId(), task: 'describe', image: png }));
      t.equal(events.at(-1)?.type, 'done');
    });

    t.test('bad input gets an error reply with its code, and the next query is served', async (t) => {
      const big = Buffer.concat([png, Buffer.alloc(5000)]);
      const cases: Array<[string, Parameters<QueryClient['query']>[1], string]> = [
        ['image over the limit', { id: newQueryId(), task: 'ask', prompt: 'x', image: big }, 'PAYLOAD_TOO_LARGE'],
        [
          'not an image at all',
          { id: newQueryId(), task: 'ask', prompt: 'x', image: Buffer.from('hello, not a picture') },
          'BAD_IMAGE',
        ],
        ['a truncated PNG', { id: newQueryId(), task: 'ask', prompt: 'x', image: png.subarray(0, 60) }, 'BAD_IMAGE'],
        ['an unknown task', { id: newQueryId(), task: 'paint' as 'ask', prompt: 'x', image: png }, 'UNKNOWN_TASK'],
        [
          'a prompt too long for the context',
          { id: newQueryId(), task: 'ask', prompt: 'word '.repeat(60), image: png },
          'PROMPT_TOO_LONG',
        ],
        ['no id', { id: '', task: 'ask', prompt: 'x', image: png }, 'BAD_MESSAGE'],
      ];
      for (const [what, request, code] of cases) {
        const events = await collect(client.query(target, request));
        const last = events.at(-1)!;
        t.equal(last.type === 'error' && last.code, code, what);
      }
      if (broker.protocolVersion === 5) {
        // Bytes that are not a query at all: answerable through the MQTT 5 Response Topic.
        const events = await collect(client.sendRaw(queryTopic(target), Buffer.from('{"hello": "world"}')));
        t.equal(events.length, 1);
        t.equal(events[0]!.type === 'error' && events[0]!.code, 'BAD_MESSAGE', 'garbage bytes');
      }
      const events = await collect(
        client.query(target, { id: newQueryId(), task: 'ask', prompt: 'still here', image: png }),
      );
      t.equal(events.at(-1)?.type, 'done');
      const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
      t.match(metrics, /setokim_errors_total\{code="BAD_IMAGE"\} 2\b/, 'errors by code on the metrics endpoint');
      t.match(metrics, /setokim_errors_total\{code="PAYLOAD_TOO_LARGE"\} 1\b/);
      t.match(metrics, /setokim_stage_seconds_count\{stage="decode"\} \d+/);
    });

    t.test('limits.maxPromptTokens refuses long prompts before they take a slot', async (t) => {
      const strict = new Agent({
        config: testConfig(broker, 'dev3', { limits: { maxPromptTokens: 5 } }),
        pipeline,
        countTokens: (text) => text.split(/\s+/).filter(Boolean).length,
      });
      await strict.start();
      const target3 = { fleet: 'test', device: 'dev3' };
      const id = newQueryId();
      const long = await collect(
        client.query(target3, { id, task: 'ask', prompt: 'one two three four five six', image: png }),
      );
      t.equal(outcome(long), 'PROMPT_TOO_LONG');
      t.notOk(pipeline.seen.includes(id), 'never reached the pipeline');
      const ok = await collect(
        client.query(target3, { id: newQueryId(), task: 'ask', prompt: 'one two three four five', image: png }),
      );
      t.equal(ok.at(-1)?.type, 'done');
      await strict.stop(0);
    });

    t.test('a message with no reply address is counted and logged, not answered', async (t) => {
      const before = (await agent.metrics.unaddressable.get()).values[0]?.value ?? 0;
      const seen = new Promise((resolve) => agent.once('unaddressable', resolve));
      await client.mqtt.publishAsync(queryTopic(target), Buffer.from([0xde, 0xad, 0xbe, 0xef]), { qos: 1 });
      await seen;
      t.equal((await agent.metrics.unaddressable.get()).values[0]?.value, before + 1);
      const events = await collect(client.query(target, { id: newQueryId(), task: 'describe', image: png }));
      t.equal(events.at(-1)?.type, 'done');
    });

    t.test('full: one runs, one waits, the next is BUSY; cancel works running and queued', async (t) => {
      const a = newQueryId();
      const b = newQueryId();
      const streamA = collect(client.query(target, { id: a, task: 'ask', prompt: 'hold a', image: png }));
      await pipeline.waitHeld(a);
      const streamB = collect(client.query(target, { id: b, task: 'ask', prompt: 'waiting b', image: png }));
      // B is queued once A holds the only slot; C finds the queue full.
      const c = await collect(client.query(target, { id: newQueryId(), task: 'ask', prompt: 'c', image: png }));
      t.equal(outcome(c), 'BUSY');
      await client.cancel(target, b);
      const eventsB = await streamB;
      t.same(
        eventsB.map((e) => (e.type === 'error' ? e.code : e.type)),
        ['CANCELLED'],
        'queued query cancelled before it ran',
      );
      await client.cancel({ fleet: 'test' }, a); // fleet-wide cancel reaches it too
      const eventsA = await streamA;
      t.same(
        eventsA.map((e) => (e.type === 'error' ? e.code : e.type)),
        ['accepted', 'text', 'CANCELLED'],
      );
      t.notOk(pipeline.seen.includes(b), 'the cancelled queued query never reached the pipeline');
    });

    t.test('a deadline that passes while queued or running answers EXPIRED', async (t) => {
      const a = newQueryId();
      const streamA = collect(
        client.query(target, { id: a, task: 'ask', prompt: 'hold a', image: png }, { timeoutMs: 10_000 }),
      );
      await pipeline.waitHeld(a);
      const wire = encodeQuery({
        id: newQueryId(),
        task: 'ask',
        prompt: 'late',
        image: png,
        deadlineUnixMs: Date.now() + 300,
        replyTopic: client.replyTopic,
        correlation: Buffer.from('k1'),
      });
      const late = await collect(client.sendRaw(queryTopic(target), wire, { key: Buffer.from('k1') }));
      t.equal(outcome(late), 'EXPIRED', 'expired in the queue');
      pipeline.release(a);
      t.equal((await streamA).at(-1)?.type, 'done');
      const past = encodeQuery({
        id: newQueryId(),
        task: 'ask',
        prompt: 'x',
        image: png,
        deadlineUnixMs: Date.now() - 1,
        replyTopic: client.replyTopic,
        correlation: Buffer.from('k2'),
      });
      const old = await collect(client.sendRaw(queryTopic(target), past, { key: Buffer.from('k2') }));
      t.equal(outcome(old), 'EXPIRED', 'arrived past its deadline');
    });

    if (broker.protocolVersion === 5) {
      t.test('MQTT 5 Message Expiry bounds the wait', async (t) => {
        const a = newQueryId();
        const streamA = collect(client.query(target, { id: a, task: 'ask', prompt: 'hold a', image: png }));
        await pipeline.waitHeld(a);
        const late = await collect(
          client.query(target, { id: newQueryId(), task: 'ask', prompt: 'x', image: png }, { expirySeconds: 1 }),
        );
        t.equal(outcome(late), 'EXPIRED');
        pipeline.release(a);
        t.equal((await streamA).at(-1)?.type, 'done');
      });
    }

    t.test('a redelivered query id is answered once', async (t) => {
      const id = newQueryId();
      const key = Buffer.from('dup-key');
      const wire = encodeQuery({
        id,
        task: 'ask',
        prompt: 'once only',
        image: png,
        replyTopic: client.replyTopic,
        correlation: key,
      });
      const props =
        broker.protocolVersion === 5 ? { properties: { responseTopic: client.replyTopic, correlationData: key } } : {};
      const stream = collect(client.sendRaw(queryTopic(target), wire, { key }));
      await client.mqtt.publishAsync(queryTopic(target), Buffer.from(wire), { qos: 1, ...props });
      // Messages from one publisher on one topic arrive in order: once this is answered, the copy was seen.
      const after = await collect(client.query(target, { id: newQueryId(), task: 'describe', image: png }));
      t.equal(after.at(-1)?.type, 'done');
      t.equal((await stream).at(-1)?.type, 'done');
      t.equal(pipeline.seen.filter((s) => s === id).length, 1, 'ran once');
      t.equal(client.stats.strays, 0, 'no reply arrived for a finished query');
      t.equal(client.stats.duplicates, 0);
      t.ok(((await agent.metrics.duplicates.get()).values[0]?.value ?? 0) >= 1, 'counted');
    });

    t.test('status is retained; the Last Will marks a lost agent offline', async (t) => {
      const status = await client.status('test', 'dev1');
      t.equal(status?.online, true);
      t.equal(status?.modelSetId, 'stub');
      t.equal(status?.queueSize, 1);
      const watcher = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
      const seen: boolean[] = [];
      const backOnline = new Promise<void>((resolve) => {
        watcher.mqtt.on('message', (topic, payload) => {
          if (topic !== agent.topics.status) return;
          seen.push(decodeStatus(payload).online);
          if (seen.includes(false) && seen.at(-1) === true) resolve();
        });
      });
      await watcher.mqtt.subscribeAsync(agent.topics.status, { qos: 1 });
      agent.mqtt!.stream.destroy(); // the network drops: no DISCONNECT, so the broker sends the will
      await backOnline;
      t.same(seen.slice(-2), [false, true], 'offline by the will, then online after reconnecting');
      await watcher.close();
      const events = await collect(client.query(target, { id: newQueryId(), task: 'describe', image: png }));
      t.equal(events.at(-1)?.type, 'done', 'serves after reconnecting');
    });

    t.test('stop() finishes in-flight work and publishes offline', async (t) => {
      const other = new Agent({ config: testConfig(broker, 'dev2'), pipeline });
      await other.start();
      const t2 = { fleet: 'test', device: 'dev2' };
      const a = newQueryId();
      const streamA = collect(client.query(t2, { id: a, task: 'ask', prompt: 'hold a', image: png }));
      await pipeline.waitHeld(a);
      const stopped = other.stop(10_000);
      pipeline.release(a);
      await stopped;
      t.equal((await streamA).at(-1)?.type, 'done', 'in-flight query finished');
      const status = await client.status('test', 'dev2');
      t.equal(status?.online, false);
    });

    t.test('a second stop() without grace cancels in-flight work at once', async (t) => {
      const other = new Agent({ config: testConfig(broker, 'dev3'), pipeline });
      await other.start();
      const a = newQueryId();
      const streamA = collect(
        client.query({ fleet: 'test', device: 'dev3' }, { id: a, task: 'ask', prompt: 'hold a', image: png }),
      );
      await pipeline.waitHeld(a);
      const stopped = other.stop(600_000); // the query is never released: only the second stop can end it
      await other.stop(0);
      await stopped;
      const last = (await streamA).at(-1);
      t.equal(last?.type === 'error' && last.code, 'CANCELLED', 'the held query was cancelled');
      t.equal(other.inFlight, 0);
    });
  });
}

t.test('a pipeline that throws on the call still answers the query with an error', async (t) => {
  const broker = await startBroker('aedes');
  const throwing = new StubPipeline();
  throwing.run = () => {
    throw new Error('boom before the first event');
  };
  const agent = new Agent({ config: testConfig(broker, 'dev9'), pipeline: throwing });
  await agent.start();
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(async () => {
    await client.close();
    await agent.stop(0);
    await broker.close();
  });
  const events = await collect(
    client.query(
      { fleet: 'test', device: 'dev9' },
      { id: newQueryId(), task: 'describe', image: await samplePng() },
      { timeoutMs: 5000 },
    ),
  );
  t.equal(outcome(events), 'INTERNAL');
  t.equal(agent.inFlight, 0, 'the slot is free again');
});
