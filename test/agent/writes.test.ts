/**
 * An answer that is ready at once leaves in one write (one TCP segment): the agent's PUBACK of the
 * query and every reply, and then the client's PUBACKs of those replies, instead of one write per
 * packet (WriteCoalescer, src/agent/connection.ts). Counted on the sockets, on a real mosquitto.
 */
import t, { type Test } from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { mosquittoPath } from '../helpers/mosquitto.js';
import { collect, startBroker, testConfig } from './brokers.js';
import { StubPipeline } from './stub-pipeline.js';

/** The MQTT packet types of every write on a socket from now on, one array per write. */
function writesOf(socket: unknown): string[][] {
  const names: Record<number, string> = { 3: 'PUBLISH', 4: 'PUBACK' };
  const writes: string[][] = [];
  const packets = (buffers: Uint8Array[]): string[] => {
    const b = Buffer.concat(buffers);
    const out: string[] = [];
    for (let i = 0; i < b.length;) {
      let length = 0;
      let j = i + 1;
      for (let shift = 0; ; shift += 7) {
        const c = b[j++]!;
        length += (c & 127) << shift;
        if (!(c & 128)) break;
      }
      out.push(names[b[i]! >> 4] ?? `type ${b[i]! >> 4}`);
      i = j + length;
    }
    return out;
  };
  const s = socket as {
    _writev: (chunks: Array<{ chunk: Uint8Array | string }>, cb: unknown) => void;
    _write: (data: Uint8Array | string, enc: unknown, cb: unknown) => void;
  };
  const bytes = (c: Uint8Array | string) => (typeof c === 'string' ? Buffer.from(c) : c);
  const writev = s._writev.bind(s);
  const write = s._write.bind(s);
  s._writev = (chunks, cb) => (writes.push(packets(chunks.map((c) => bytes(c.chunk)))), writev(chunks, cb));
  s._write = (data, enc, cb) => (writes.push(packets([bytes(data)])), write(data, enc, cb));
  return writes;
}

/**
 * An agent with the stub pipeline on a fresh mosquitto and a client that has had one query answered
 * (connections and code warm). `generate` with no image: the stub answers accepted, two deltas and
 * done without waiting on anything.
 */
async function warmAgent(t: Test, device: string) {
  const broker = await startBroker('mosquitto');
  t.teardown(() => broker.close());
  const agent = new Agent({ config: testConfig(broker, device), pipeline: new StubPipeline() });
  await agent.start();
  t.teardown(() => agent.stop(0));
  const client = await QueryClient.connect({ url: broker.url });
  t.teardown(() => client.close());
  const target = { fleet: 'test', device };
  await collect(client.query(target, { id: newQueryId(), task: 'generate', prompt: 'warm up' }));
  await new Promise((resolve) => setImmediate(resolve));
  return { agent, client, target };
}

if (!mosquittoPath()) {
  t.plan(0, 'mosquitto is not installed (apt-get install -y mosquitto)');
} else {
  t.test('an immediate answer: one write from the agent, one from the client for the PUBACKs', async (t) => {
    const { agent, client, target } = await warmAgent(t, 'writes');

    const agentWrites = writesOf(agent.mqtt!.stream);
    const clientWrites = writesOf(client.mqtt.stream);
    const events = await collect(client.query(target, { id: newQueryId(), task: 'generate', prompt: 'a lighthouse' }));
    await new Promise((resolve) => setTimeout(resolve, 50)); // anything still held would be written by now
    t.same(
      events.map((e) => e.type),
      ['accepted', 'text', 'text', 'done'],
    );
    t.same(
      agentWrites,
      [['PUBACK', 'PUBLISH', 'PUBLISH', 'PUBLISH', 'PUBLISH']],
      "the query's PUBACK and the four replies in one write",
    );
    t.same(
      clientWrites,
      [['PUBLISH'], ['PUBACK', 'PUBACK', 'PUBACK', 'PUBACK']],
      'the query, then the four PUBACKs in one write',
    );
  });

  t.test("the last reply is written before the query's bookkeeping, not after it", async (t) => {
    const { agent, client, target } = await warmAgent(t, 'first');

    const agentWrites = writesOf(agent.mqtt!.stream);
    // `answered` is emitted in the query's bookkeeping, after its last reply was handed to mqtt.js.
    const writtenByThen: number[] = [];
    agent.on('answered', () => writtenByThen.push(agentWrites.length));
    await collect(client.query(target, { id: newQueryId(), task: 'generate', prompt: 'a lighthouse' }));
    // Before: the write waited for the next tick, which Node runs after every microtask queued (0 here).
    t.same(writtenByThen, [1], 'the PUBACK and the replies were on the socket when the query was answered');
    t.same(agentWrites, [['PUBACK', 'PUBLISH', 'PUBLISH', 'PUBLISH', 'PUBLISH']], 'still in one write');
  });
}
