/**
 * The agent's own cost, measured side by side in one run (npx tsx bench/agent.ts [--n 400]):
 *  1. round trip of a query through an agent whose pipeline yields accepted + done at once,
 *     against a bare MQTT echo (subscribe, republish to the Response Topic) on the same broker;
 *  2. queries/s with 1, 2 and 4 agents on one shared subscription ($share, mosquitto), with the
 *     empty pipeline and with a fixed 20 ms service time per query (a stand-in for inference that
 *     does not load this machine's CPUs, so the broker's distribution shows).
 * Each agent has its own MQTT connection; all run in this one process.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from 'mqtt';
import { Agent, noDelay } from '../src/agent/agent.js';
import { startEmbeddedBroker } from '../src/agent/broker.js';
import { QueryClient, newQueryId } from '../src/agent/client.js';
import { parseAgentConfig } from '../src/agent/config.js';
import type { Pipeline, PipelineEvent, QueryRequest } from '../src/pipeline/types.js';
import { mosquittoPath, startMosquitto } from '../test/helpers/mosquitto.js';

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const N = arg('n', 400);

/** The agent's overhead only: no model, the answer is "accepted, done" (optionally after a wait). */
class EmptyPipeline implements Pipeline {
  readonly info = { modelSetId: 'empty', backend: 'none', maxTokens: 1, maxContext: 1 };
  constructor(private readonly serviceMs = 0) {}
  async *run(req: QueryRequest): AsyncIterable<PipelineEvent> {
    yield { type: 'accepted', id: req.id };
    if (this.serviceMs) await sleep(this.serviceMs);
    yield { type: 'done', id: req.id, visionTokens: 0, promptTokens: 0, generatedTokens: 0, finishReason: 'stop', stages: {}, totalMs: this.serviceMs };
  }
  async close(): Promise<void> {}
}

const image = Buffer.alloc(2048, 7); // a small payload, the same size for agent and echo
image.set([0x89, 0x50, 0x4e, 0x47], 0);

function stats(ms: number[]): { p50: number; mean: number; p99: number } {
  const s = [...ms].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)]!, mean: s.reduce((a, b) => a + b, 0) / s.length, p99: s[Math.floor(s.length * 0.99)]! };
}

function agentConfig(url: string, protocolVersion: 4 | 5, device: string, shared: boolean, concurrency: number) {
  return parseAgentConfig({
    fleet: 'bench',
    device,
    models: 'none',
    fleetSubscription: shared ? 'shared' : 'plain',
    broker: { url, protocolVersion },
    limits: { concurrency, queueSize: 256, maxImageBytes: 1 << 20 },
    metrics: { enabled: false },
  });
}

async function roundTrips(url: string, protocolVersion: 4 | 5): Promise<{ agent: number[]; echo: number[] }> {
  // Bare echo: one client answers every request on the topic the request names.
  const echo = connect(url, { protocolVersion, clientId: `echo-${process.pid}` });
  await new Promise((r) => echo.once('connect', r));
  noDelay(echo);
  await echo.subscribeAsync('bench/echo', { qos: 1 });
  echo.on('message', (_t, payload, packet) => {
    const replyTo = protocolVersion === 5 ? packet.properties?.responseTopic : 'bench/echo-reply';
    echo.publish(replyTo!, payload, { qos: 1, ...(protocolVersion === 5 ? { properties: { correlationData: packet.properties?.correlationData } } : {}) });
  });
  const requester = connect(url, { protocolVersion, clientId: `req-${process.pid}` });
  await new Promise((r) => requester.once('connect', r));
  noDelay(requester);
  await requester.subscribeAsync('bench/echo-reply', { qos: 1 });
  let waiting: (() => void) | undefined;
  requester.on('message', () => waiting?.());
  const echoOnce = async (): Promise<number> => {
    const t0 = performance.now();
    const got = new Promise<void>((r) => (waiting = r));
    requester.publish('bench/echo', image, { qos: 1, ...(protocolVersion === 5 ? { properties: { responseTopic: 'bench/echo-reply', correlationData: Buffer.from('k') } } : {}) });
    await got;
    return performance.now() - t0;
  };

  const agent = new Agent({ config: agentConfig(url, protocolVersion, 'rt', false, 1), pipeline: new EmptyPipeline() });
  await agent.start();
  const client = await QueryClient.connect({ url, protocolVersion });
  const agentOnce = async (): Promise<number> => {
    const t0 = performance.now();
    for await (const e of client.query({ fleet: 'bench', device: 'rt' }, { id: newQueryId(), task: 'describe', image })) if (e.type === 'error') throw new Error(e.message);
    return performance.now() - t0;
  };
  // Interleave the two so drifting machine load hits both alike; warm both up first.
  for (let i = 0; i < 50; i++) {
    await echoOnce();
    await agentOnce();
  }
  const result = { agent: [] as number[], echo: [] as number[] };
  for (let i = 0; i < N; i++) {
    result.echo.push(await echoOnce());
    result.agent.push(await agentOnce());
  }
  await client.close();
  await agent.stop(0);
  await Promise.all([echo.endAsync(), requester.endAsync()]);
  return result;
}

async function throughput(url: string, agents: number, serviceMs: number, total: number): Promise<{ qps: number; byAgent: number[]; busy: number }> {
  const pipeline = new EmptyPipeline(serviceMs);
  const list = Array.from({ length: agents }, (_, i) => new Agent({ config: agentConfig(url, 5, `a${i}`, true, serviceMs ? 1 : 4), pipeline }));
  await Promise.all(list.map((a) => a.start()));
  const client = await QueryClient.connect({ url });
  const window = 16;
  let next = 0;
  let busy = 0;
  const count = new Map<string, number>();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: window }, async () => {
      while (next++ < total) {
        for await (const e of client.query({ fleet: 'bench' }, { id: newQueryId(), task: 'describe', image })) {
          if (e.type === 'done') count.set(e.device, (count.get(e.device) ?? 0) + 1);
          if (e.type === 'error') busy++;
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  await client.close();
  await Promise.all(list.map((a) => a.stop(0)));
  return { qps: total / seconds, byAgent: list.map((a) => count.get(a.config.device) ?? 0), busy };
}

const f = (n: number, d = 2): string => n.toFixed(d);

async function main(): Promise<void> {
  const brokers: Array<{ name: string; url: string; protocolVersion: 4 | 5; close: () => Promise<void> }> = [];
  if (mosquittoPath()) {
    const m = await startMosquitto();
    brokers.push({ name: 'mosquitto (MQTT 5)', url: m.url, protocolVersion: 5, close: () => m.stop() });
  }
  const e = await startEmbeddedBroker();
  brokers.push({ name: 'aedes embedded (MQTT 3.1.1)', url: e.url, protocolVersion: 4, close: () => e.close() });

  console.log(`setokim agent bench: ${N} round trips per broker, QoS 1, ${image.length}-byte image payload, node ${process.version}\n`);
  console.log('Round trip (ms)                  agent p50  echo p50  ratio p50   agent mean  echo mean  ratio mean');
  for (const b of brokers) {
    const r = await roundTrips(b.url, b.protocolVersion);
    const a = stats(r.agent);
    const x = stats(r.echo);
    console.log(`${b.name.padEnd(32)} ${f(a.p50).padStart(9)} ${f(x.p50).padStart(9)} ${f(a.p50 / x.p50).padStart(10)} ${f(a.mean).padStart(12)} ${f(x.mean).padStart(10)} ${f(a.mean / x.mean).padStart(11)}`);
  }
  const mosquitto = brokers.find((b) => b.protocolVersion === 5);
  if (mosquitto) {
    console.log('\nShared subscription $share/bench/setokim/v1/bench/query on mosquitto, 16 queries outstanding');
    console.log('pipeline               agents   queries/s   speed-up   answers per agent   BUSY');
    for (const serviceMs of [0, 20]) {
      let base = 0;
      for (const n of [1, 2, 4]) {
        const total = serviceMs ? 400 : 2 * N;
        const r = await throughput(mosquitto.url, n, serviceMs, total);
        base ||= r.qps;
        const label = serviceMs ? `fixed ${serviceMs} ms/query` : 'empty';
        console.log(`${label.padEnd(22)} ${String(n).padStart(6)} ${f(r.qps, 1).padStart(11)} ${f(r.qps / base).padStart(10)}   ${r.byAgent.join('/').padEnd(17)} ${String(r.busy).padStart(5)}`);
      }
    }
  } else {
    console.log('\n(shared-subscription throughput needs mosquitto: apt-get install -y mosquitto; aedes has no $share)');
  }
  for (const b of brokers) await b.close();
}

await main();
