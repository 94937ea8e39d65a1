/**
 * Load: 500 queries from 5 clients, 50 of them malformed, against an agent serving the real
 * pipeline on the synthesised `tiny` model set (one new token, one thread per stage): 450 answers
 * and 50 error replies, none lost, none answered twice, and the agent still serves afterwards.
 * The full 500 run goes to the first broker (mosquitto when installed); the other broker gets
 * 100 queries (10 malformed), which keeps the file near a minute on 2 busy cores.
 */
import { tmpdir } from 'node:os';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { encodeQuery } from '../../src/agent/codec.js';
import { queryTopic } from '../../src/mqtt/topics.js';
import { createPipeline } from '../../src/pipeline/pipeline.js';
import type { QueryRequest } from '../../src/pipeline/types.js';
import { synthesize } from '../../tools/export/synth.js';
import { brokerKinds, startBroker, testConfig, type TestBroker } from './brokers.js';
import { samplePng } from './stub-pipeline.js';

const CLIENTS = 5;
const BAD_EVERY = 10; // one malformed message in ten
const OUTSTANDING = 4; // per client: 20 at most in the agent, under its queue of 24

const dir = mkdtempSync(join(tmpdir(), 'setokim-load-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
await synthesize({ config: 'tiny', seed: 7, out: dir });
const pipeline = await createPipeline({ modelsDir: dir, maxTokens: 1, threads: 1, verify: false });
t.teardown(() => pipeline.close());
const png = await samplePng(40, 30);

type Outcome = { id: string; expect: string; got: string; terminals: number };

/** The i-th malformed message of a client: each kind of bad input the agent must answer. */
function malformed(
  i: number,
  client: QueryClient,
  broker: TestBroker,
): { payload: Uint8Array; key: Buffer; expect: string } {
  const key = Buffer.from(`bad-${newQueryId()}`);
  const v4 = broker.protocolVersion === 4 ? { replyTopic: client.replyTopic, correlation: key } : {};
  const base = { id: newQueryId(), task: 'ask', prompt: 'what is this', image: png, ...v4 };
  const kinds: Array<[Record<string, unknown>, string]> = [
    [{ ...base, task: 'paint' }, 'UNKNOWN_TASK'],
    [{ ...base, image: Buffer.concat([png, Buffer.alloc(70 * 1024)]) }, 'PAYLOAD_TOO_LARGE'],
    [{ ...base, image: png.subarray(0, 50) }, 'BAD_IMAGE'],
    [{ ...base, prompt: 'word '.repeat(2000) }, 'PROMPT_TOO_LONG'],
    [{ ...base, id: '' }, 'BAD_MESSAGE'],
  ];
  if (broker.protocolVersion === 5 && i % 2 === 1)
    return { payload: Buffer.from('not a protobuf query at all'), key, expect: 'BAD_MESSAGE' };
  const [q, expect] = kinds[i % kinds.length]!;
  return { payload: encodeQuery(q as never), key, expect };
}

for (const [n, kind] of brokerKinds.entries()) {
  const total = n === 0 ? 500 : 100;
  const perClient = total / CLIENTS;
  const bad = total / BAD_EVERY;
  t.test(`${kind}: ${total} queries from ${CLIENTS} clients, ${bad} malformed`, async (t) => {
    const broker = await startBroker(kind);
    const agent = new Agent({
      config: testConfig(broker, 'load', { limits: { concurrency: 2, queueSize: 24, maxImageBytes: 64 * 1024 } }),
      pipeline,
    });
    await agent.start();
    const clients = await Promise.all(
      Array.from({ length: CLIENTS }, () =>
        QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion }),
      ),
    );
    t.teardown(async () => {
      await Promise.all(clients.map((c) => c.close()));
      await agent.stop(0);
      await broker.close();
    });
    const target = { fleet: 'test', device: 'load' };
    const started = Date.now();

    const outcomes = await Promise.all(
      clients.map(async (client, c) => {
        // Malformed messages spread through each client's sequence.
        const jobs = Array.from({ length: perClient }, (_, i) => i);
        const results: Outcome[] = [];
        const worker = async (): Promise<void> => {
          for (let i = jobs.shift(); i !== undefined; i = jobs.shift()) {
            const isBad = i % BAD_EVERY === 3;
            let stream;
            let id: string;
            let expect: string;
            if (isBad) {
              const m = malformed(i + c, client, broker);
              stream = client.sendRaw(queryTopic(target), m.payload, { key: m.key, timeoutMs: 30_000 });
              id = m.key.toString();
              expect = m.expect;
            } else {
              const request: QueryRequest = {
                id: newQueryId(),
                task: i % 3 === 0 ? 'describe' : 'ask',
                prompt: `query ${i} of client ${c}`,
                image: png,
                generation: { maxTokens: 1 },
              };
              stream = client.query(target, request, { timeoutMs: 30_000 });
              id = request.id;
              expect = 'done';
            }
            let got = 'nothing';
            let terminals = 0;
            for await (const e of stream) {
              if (e.type === 'done' || e.type === 'error') {
                terminals++;
                got = e.type === 'error' ? e.code : 'done';
              }
            }
            results.push({ id, expect, got, terminals });
          }
        };
        await Promise.all(Array.from({ length: OUTSTANDING }, worker));
        return results;
      }),
    );
    const all = outcomes.flat();
    const seconds = (Date.now() - started) / 1000;
    t.comment(
      `${kind}: ${all.length} queries in ${seconds.toFixed(1)} s (${(all.length / seconds).toFixed(1)}/s), real tiny pipeline, 1 new token`,
    );
    t.equal(all.length, total, 'every query got a final reply (none lost)');
    t.equal(all.filter((o) => o.got === 'done').length, total - bad, `${total - bad} answers`);
    t.equal(all.filter((o) => o.got !== 'done').length, bad, `${bad} error replies`);
    t.same(
      all.filter((o) => o.got !== o.expect).map((o) => `${o.expect} -> ${o.got}`),
      [],
      'each malformed query got its own code',
    );
    t.ok(
      all.every((o) => o.terminals === 1),
      'exactly one final reply each',
    );
    t.equal(new Set(all.map((o) => o.id)).size, total);
    const stats = clients.reduce(
      (s, c) => ({ strays: s.strays + c.stats.strays, duplicates: s.duplicates + c.stats.duplicates }),
      { strays: 0, duplicates: 0 },
    );
    t.same(stats, { strays: 0, duplicates: 0 }, 'no reply answered twice or arrived for a finished query');
    t.equal((await agent.metrics.answered.get()).values[0]?.value, total - bad);
    // Every query sends the same image: after the first, its tokens come from the vision cache.
    const scrape = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
    const metric = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(scrape)?.[1]);
    const [hits, misses] = [metric('setokim_vision_cache_hits_total'), metric('setokim_vision_cache_misses_total')];
    t.ok(
      hits >= total - bad - 2 * (n + 1) && misses >= 1,
      `vision cache ${hits} hits, ${misses} misses (one image, a second broker's run continues the counts)`,
    );
    t.ok(
      metric('setokim_vision_cache_bytes') > 0 && metric('setokim_prefix_cache_hits_total') > 0,
      'bytes held, prefixes reused',
    );

    let after = '';
    for await (const e of clients[0]!.query(target, {
      id: newQueryId(),
      task: 'describe',
      image: png,
      generation: { maxTokens: 1 },
    }))
      after = e.type;
    t.equal(after, 'done', 'the agent still serves after the load');
  });
}
