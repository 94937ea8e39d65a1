/**
 * The agent's own cost, measured side by side in one run (npx tsx bench/agent.ts [--n 400] [--round-trips]):
 *  1. round trip of a query through an agent whose pipeline yields accepted + done at once,
 *     against a bare MQTT echo (subscribe, republish to the Response Topic) on the same broker,
 *     an echo that answers with two messages as the agent does (the floor of the protocol), and that
 *     echo with the wire format at both ends (the query encoded by the client and decoded and
 *     checked by the echo, the replies encoded by the echo and decoded by the client: the floor of
 *     the protocol and its format).
 *     Twice: with the agent (or echo) in a process of its own, as on a device, and with agent,
 *     echo and client on this one event loop (where the ratio is one of CPU time per query);
 *  2. tokenising a maximal prompt (limits.maxPromptBytes, 16 KiB) with the agent's tokenizer
 *     against llama-tokenizer-js's encoder;
 *  3. the dedupe window's check (SeenIds) with its window full, at the default 4,096 ids and at
 *     100,000: the cost per query must not grow with the window;
 *  4. queries/s with 1, 2 and 4 agents on one shared subscription ($share, mosquitto), with the
 *     empty pipeline and with a fixed 20 ms service time per query (a stand-in for inference that
 *     does not load this machine's CPUs, so the broker's distribution shows).
 * Each agent has its own MQTT connection. --round-trips: only 1 (profiling, quick repeats).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { connect, type MqttClient } from 'mqtt';
import llama from 'llama-tokenizer-js';
import { SeenIds } from '../src/agent/admission.js';
import { Agent, noDelay } from '../src/agent/agent.js';
import { startEmbeddedBroker } from '../src/agent/broker.js';
import { QueryClient, newQueryId } from '../src/agent/client.js';
import { decodeReply, encodeQuery } from '../src/agent/codec.js';
import { loadTokenizer } from '../src/pipeline/tokenizer.js';
import { mosquittoPath, startMosquitto } from '../test/helpers/mosquitto.js';
import {
  agentConfig,
  CODEC_TOPIC,
  ECHO2_TOPIC,
  ECHO_REPLY_TOPIC,
  ECHO_TOPIC,
  EmptyPipeline,
  startEcho,
} from './responder.js';

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const N = arg('n', 400);

const image = Buffer.alloc(2048, 7); // a small payload, the same size for agent and echo
image.set([0x89, 0x50, 0x4e, 0x47], 0);

function stats(ms: number[]): { p50: number; mean: number; p99: number } {
  const s = [...ms].sort((a, b) => a - b);
  return {
    p50: s[Math.floor(s.length / 2)]!,
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    p99: s[Math.floor(s.length * 0.99)]!,
  };
}

/** bench/responder.ts in a process of its own, ready to answer. */
async function responder(
  what: 'agent' | 'echo',
  url: string,
  protocolVersion: 4 | 5,
  device: string,
): Promise<{ stop: () => Promise<void> }> {
  const child: ChildProcess = fork(
    fileURLToPath(new URL('./responder.ts', import.meta.url)),
    [what, url, String(protocolVersion), device],
    { execArgv: ['--import', 'tsx'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`bench/responder.ts ${what} exited with ${code}`)));
  });
  return {
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.send('stop');
      await exited;
    },
  };
}

type Where = 'separate processes' | 'one process';

async function roundTrips(
  url: string,
  protocolVersion: 4 | 5,
  where: Where,
): Promise<{ agent: number[]; echo: number[]; echo2: number[]; codec: number[] }> {
  const device = `rt-${where === 'one process' ? 'here' : 'apart'}`;
  let stopResponders: () => Promise<void>;
  if (where === 'one process') {
    const echo = await startEcho(url, protocolVersion);
    const agent = new Agent({
      config: agentConfig(url, protocolVersion, device, false, 1),
      pipeline: new EmptyPipeline(),
    });
    await agent.start();
    stopResponders = async () => void (await Promise.all([agent.stop(0), echo.endAsync()]));
  } else {
    const both = await Promise.all([
      responder('echo', url, protocolVersion, device),
      responder('agent', url, protocolVersion, device),
    ]);
    stopResponders = async () => void (await Promise.all(both.map((r) => r.stop())));
  }
  const requester: MqttClient = connect(url, { protocolVersion, clientId: `req-${process.pid}` });
  await new Promise((r) => requester.once('connect', r));
  noDelay(requester);
  await requester.subscribeAsync(ECHO_REPLY_TOPIC, { qos: 1 });
  let waiting: (() => void) | undefined;
  let left = 0;
  let decoding = false;
  requester.on('message', (_topic, payload) => {
    if (decoding && decodeReply(payload).type === 'error') throw new Error('the codec echo answered an error');
    if (--left === 0) waiting?.();
  });
  const echoOnce = async (topic: string, messages: number): Promise<number> => {
    const t0 = performance.now();
    left = messages;
    decoding = topic === CODEC_TOPIC;
    const got = new Promise<void>((r) => (waiting = r));
    const payload = decoding ? encodeQuery({ id: newQueryId(), task: 'describe', image }) : image;
    requester.publish(topic, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), {
      qos: 1,
      ...(protocolVersion === 5
        ? { properties: { responseTopic: ECHO_REPLY_TOPIC, correlationData: Buffer.from('k') } }
        : {}),
    });
    await got;
    return performance.now() - t0;
  };
  const client = await QueryClient.connect({ url, protocolVersion });
  const agentOnce = async (): Promise<number> => {
    const t0 = performance.now();
    for await (const e of client.query({ fleet: 'bench', device }, { id: newQueryId(), task: 'describe', image }))
      if (e.type === 'error') throw new Error(e.message);
    return performance.now() - t0;
  };
  // Interleave them so drifting machine load hits all alike; warm all up first.
  const result = { agent: [] as number[], echo: [] as number[], echo2: [] as number[], codec: [] as number[] };
  for (let i = -50; i < N; i++) {
    const e = await echoOnce(ECHO_TOPIC, 1);
    const a = await agentOnce();
    const e2 = await echoOnce(ECHO2_TOPIC, 2);
    const c = await echoOnce(CODEC_TOPIC, 2);
    if (i < 0) continue;
    result.echo.push(e);
    result.agent.push(a);
    result.echo2.push(e2);
    result.codec.push(c);
  }
  await client.close();
  await requester.endAsync();
  await stopResponders();
  return result;
}

/** Tokenising a prompt at limits.maxPromptBytes: best of a few, in ms. */
async function tokenising(): Promise<Array<{ prompt: string; ours: number; reference: number }>> {
  const tok = await loadTokenizer({ kind: 'llama' });
  const bytes = 16 * 1024;
  const prompts: Record<string, string> = {
    'English words': 'the quick brown fox jumps over the lazy dog '.repeat(400).slice(0, bytes),
    'one run without spaces': 'ab'.repeat(bytes / 2),
    'CJK (3 bytes a character)': '漢字テキスト'.repeat(bytes / 18),
  };
  const best = (f: () => unknown): number => {
    let ms = Infinity;
    f(); // warm-up: the first call compiles
    for (let i = 0; i < 7; i++) {
      const t0 = performance.now();
      f();
      ms = Math.min(ms, performance.now() - t0);
    }
    return ms;
  };
  return Object.entries(prompts).map(([prompt, text]) => ({
    prompt,
    ours: best(() => tok.encode(text)),
    reference: best(() => llama.encode(text, false, true)),
  }));
}

/** µs per SeenIds check of a new id with the window full (each check evicts the oldest), best of 3. */
function dedupeChecks(): Array<{ window: number; us: number }> {
  const ids = Array.from({ length: 200_000 }, () => randomUUID());
  return [4096, 100_000].map((window) => {
    let best = Infinity;
    for (let run = 0; run < 3; run++) {
      const seen = new SeenIds(window);
      for (let i = 0; i < window; i++) seen.check(`fill-${i}`);
      const t0 = performance.now();
      for (const id of ids) seen.check(id);
      best = Math.min(best, ((performance.now() - t0) * 1000) / ids.length);
    }
    return { window, us: best };
  });
}

async function throughput(
  url: string,
  agents: number,
  serviceMs: number,
  total: number,
): Promise<{ qps: number; byAgent: number[]; busy: number }> {
  const pipeline = new EmptyPipeline(serviceMs);
  const list = Array.from(
    { length: agents },
    (_, i) => new Agent({ config: agentConfig(url, 5, `a${i}`, true, serviceMs ? 1 : 4), pipeline }),
  );
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

  const payload = `${image.length}-byte image payload`;
  console.log(
    `setokim agent bench: ${N} round trips per broker and setup, QoS 1, ${payload}, node ${process.version}\n`,
  );
  const columns = [
    'agent p50',
    'echo p50',
    'ratio p50',
    '2-message echo p50 (ratio)',
    'codec echo p50 (ratio)',
    'agent mean',
    'echo mean',
    'ratio mean',
  ];
  console.log(`${'Round trip (ms)'.padEnd(52)} ${columns.join('  ')}`);
  for (const where of ['separate processes', 'one process'] as const) {
    for (const b of brokers) {
      const r = await roundTrips(b.url, b.protocolVersion, where);
      const [a, x, x2, c] = [stats(r.agent), stats(r.echo), stats(r.echo2), stats(r.codec)];
      const name = `${b.name}, ${where}`;
      const cells = [f(a.p50), f(x.p50), f(a.p50 / x.p50), `${f(x2.p50)} (${f(x2.p50 / x.p50)})`];
      cells.push(`${f(c.p50)} (${f(c.p50 / x.p50)})`);
      cells.push(f(a.mean), f(x.mean), f(a.mean / x.mean));
      console.log(`${name.padEnd(52)} ${cells.map((c, i) => c.padStart(columns[i]!.length)).join('  ')}`);
    }
  }
  if (!process.argv.includes('--round-trips')) {
    console.log('\nTokenising a prompt of 16 KiB (limits.maxPromptBytes), best of 7 after a warm-up (ms)');
    console.log('prompt                         setokim BPE   llama-tokenizer-js   speed-up');
    for (const r of await tokenising()) {
      const speedUp = `${f(r.reference / r.ours, 1)}x`;
      console.log(
        `${r.prompt.padEnd(30)} ${f(r.ours).padStart(11)} ${f(r.reference).padStart(20)} ${speedUp.padStart(10)}`,
      );
    }
  }
  if (!process.argv.includes('--round-trips')) {
    const [small, large] = dedupeChecks();
    console.log(
      `\nDedupe check (SeenIds), window full: ${f(small!.us, 3)} us at ${small!.window} ids, ` +
        `${f(large!.us, 3)} us at ${large!.window} ids (${f(large!.us / small!.us)}x)`,
    );
  }
  const mosquitto = brokers.find((b) => b.protocolVersion === 5);
  if (process.argv.includes('--round-trips')) {
    // only the round trips (profiling, quick repeats)
  } else if (mosquitto) {
    console.log('\nShared subscription $share/bench/setokim/v1/bench/query on mosquitto, 16 queries outstanding');
    console.log('pipeline               agents   queries/s   speed-up   answers per agent   BUSY');
    for (const serviceMs of [0, 20]) {
      let base = 0;
      for (const n of [1, 2, 4]) {
        const total = serviceMs ? 400 : 2 * N;
        const r = await throughput(mosquitto.url, n, serviceMs, total);
        base ||= r.qps;
        const label = serviceMs ? `fixed ${serviceMs} ms/query` : 'empty';
        const cells = [String(n).padStart(6), f(r.qps, 1).padStart(11), f(r.qps / base).padStart(10)];
        console.log(
          `${label.padEnd(22)} ${cells.join(' ')}   ${r.byAgent.join('/').padEnd(17)} ${String(r.busy).padStart(5)}`,
        );
      }
    }
  } else {
    console.log(
      '\n(shared-subscription throughput needs mosquitto: apt-get install -y mosquitto; aedes has no $share)',
    );
  }
  for (const b of brokers) await b.close();
}

await main();
