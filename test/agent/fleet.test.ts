/**
 * Fleet behaviour on a real mosquitto: agents on one shared subscription split the work, and a
 * broker restart in the middle of a stream is survived. aedes has no shared subscriptions (and its
 * restart would lose the in-memory broker itself), so this file runs on mosquitto only.
 */
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { mosquittoPath } from '../helpers/mosquitto.js';
import { collect, startBroker, testConfig } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

if (!mosquittoPath()) {
  t.plan(0, 'mosquitto is not installed (apt-get install -y mosquitto)');
} else {
  t.test('two agents on one shared subscription both take work', async (t) => {
    const broker = await startBroker('mosquitto');
    const pipeline = new StubPipeline();
    const agents = ['a', 'b'].map(
      (d) => new Agent({ config: testConfig(broker, d, { limits: { concurrency: 1, queueSize: 32 } }), pipeline }),
    );
    await Promise.all(agents.map((a) => a.start()));
    const client = await QueryClient.connect({ url: broker.url });
    t.teardown(async () => {
      await client.close();
      await Promise.all(agents.map((a) => a.stop(0)));
      await broker.close();
    });
    const png = await samplePng();
    const ids = Array.from({ length: 20 }, () => newQueryId());
    const streams = await Promise.all(
      ids.map((id) =>
        collect(client.query({ fleet: 'test' }, { id, task: 'ask', prompt: 'who takes this', image: png })),
      ),
    );
    const byDevice = new Map<string, number>();
    for (const events of streams) {
      const last = events.at(-1)!;
      t.equal(last.type, 'done');
      t.ok(
        events.every((e) => e.device === last.device),
        'one agent answers a whole query',
      );
      byDevice.set(last.device, (byDevice.get(last.device) ?? 0) + 1);
    }
    t.same([...byDevice.keys()].sort(), ['a', 'b'], 'both agents took work');
    t.equal((byDevice.get('a') ?? 0) + (byDevice.get('b') ?? 0), 20, 'each query went to exactly one agent');
    t.equal(pipeline.seen.length, 20);
    t.equal(client.stats.strays + client.stats.duplicates, 0);
  });

  t.test('a broker restart in the middle of a stream is survived', async (t) => {
    const broker = await startBroker('mosquitto');
    const pipeline = new StubPipeline({ holdable: true });
    const agent = new Agent({ config: testConfig(broker, 'r1'), pipeline });
    await agent.start();
    const client = await QueryClient.connect({ url: broker.url });
    t.teardown(async () => {
      await client.close();
      await agent.stop(0);
      await broker.close();
    });
    const png = await samplePng();
    const target = { fleet: 'test', device: 'r1' };
    const id = newQueryId();
    const events: string[] = [];
    let firstText!: () => void;
    const textSeen = new Promise<void>((resolve) => (firstText = resolve));
    const stream = (async () => {
      for await (const e of client.query(
        target,
        { id, task: 'ask', prompt: 'hold on through the restart', image: png },
        { timeoutMs: 20_000 },
      )) {
        events.push(e.type);
        if (e.type === 'text') firstText();
      }
    })();
    // Mid-stream: the first delta has reached the client and the pipeline is still working. (A
    // message inside a broker without persistence when it dies is lost: see docs/MQTT.md.)
    await pipeline.waitHeld(id);
    await textSeen;
    const agentBack = new Promise((resolve) => agent.once('ready', resolve));
    const clientBack = new Promise((resolve) => client.once('ready', resolve));
    await broker.restart!();
    t.same(await agentBack, { reconnect: true }, 'the agent reconnected');
    await clientBack;
    pipeline.release(id);
    await stream;
    t.same(events.slice(0, 2), ['accepted', 'text'], 'the start of the stream arrived before the restart');
    t.equal(events.at(-1), 'done', 'the stream finished after the restart');
    t.same(events, ['accepted', 'text', 'text', 'text', 'text', 'text', 'done'], 'no event lost or repeated');
    const device = await collect(client.query(target, { id: newQueryId(), task: 'describe', image: png }));
    t.equal(device.at(-1)?.type, 'done', 'device topic served after the restart (resubscribed)');
    const fleet = await collect(client.query({ fleet: 'test' }, { id: newQueryId(), task: 'describe', image: png }));
    t.equal(fleet.at(-1)?.type, 'done', 'shared fleet subscription restored too');
    t.equal((await client.status('test', 'r1'))?.online, true, 'retained status republished on the new broker');
  });
}
