/**
 * Every refusal answers with the code docs/MQTT.md documents for it (issue 15): one table of cases,
 * sent over a real mosquitto (MQTT 5) to agents serving the real pipeline on the synthesised `tiny`
 * set (without its diffusion stages, so `generate` has no model). The table must cover every code
 * in the docs' error table, and no reply may carry a code that table does not list.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import { connect, type IClientPublishOptions } from 'mqtt';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { decodeReply, encodeCancel, encodeQuery, type ReplyEvent, type WireQuery } from '../../src/agent/codec.js';
import type { AgentConfigInput } from '../../src/agent/config.js';
import { cancelTopic, queryTopic } from '../../src/mqtt/topics.js';
import { createPipeline } from '../../src/pipeline/pipeline.js';
import { loadTokenizer } from '../../src/pipeline/tokenizer.js';
import { synthesize } from '../../tools/export/synth.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { testConfig, type TestBroker } from './brokers.js';
import { samplePng } from './stub-pipeline.js';

const docs = readFileSync(new URL('../../docs/MQTT.md', import.meta.url), 'utf8');
// The queries' table: from its heading to the next heading (streams have a table of their own).
const section = docs.slice(docs.indexOf('### Error codes'), docs.indexOf('\n#', docs.indexOf('### Error codes') + 1));
const DOCUMENTED = [...section.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]!);
/** Documented, but no query is meant to produce them. */
const NOT_SENDABLE: Record<string, string> = { INTERNAL: 'a bug in the agent: no documented input produces it' };

/** One case: what is sent (to which agent), and the code its answer must carry. */
interface Case {
  what: string;
  code: string;
  device?: 'codes' | 'tokens' | 'busy';
  query?: Partial<WireQuery>;
  /** Raw bytes instead of an encoded query. */
  payload?: Buffer;
  properties?: IClientPublishOptions['properties'];
  /** Before the query is sent (a query that fills the queue, the workers' crash). */
  first?: () => Promise<void>;
  /** Right after it (a cancel). */
  then?: (q: WireQuery) => Promise<void>;
}

if (!mosquittoPath()) {
  t.plan(0, 'mosquitto is not installed (apt-get install -y mosquitto)');
} else {
  const dir = mkdtempSync(join(tmpdir(), 'setokim-codes-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await synthesize({ config: 'tiny', seed: 1, out: dir });
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  delete manifest.stages.diffusion;
  delete manifest.stages.detokenizer;
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));

  // The pipeline's ONNX Runtime workers, so one case can make them die as a crash would.
  const workers: Worker[] = [];
  const onWorker = (w: Worker) => void workers.push(w);
  process.on('worker', onWorker);
  const pipeline = await createPipeline({ modelsDir: dir, maxTokens: 8, threads: 1, verify: false });
  process.off('worker', onWorker);
  t.teardown(() => pipeline.close());
  const tok = await loadTokenizer(dir);

  const mosquitto = await startMosquitto();
  t.teardown(() => mosquitto.stop());
  const broker: TestBroker = {
    kind: 'mosquitto',
    url: mosquitto.url,
    protocolVersion: 5,
    shared: true,
    close: async () => {},
  };
  const agents: Record<NonNullable<Case['device']>, Partial<AgentConfigInput>> = {
    // Room for the 120,000-character prompt within the MQTT 5 Maximum Packet Size (image + prompt + 16 KiB).
    codes: { limits: { maxImageBytes: 256 * 1024 } },
    tokens: { limits: { maxImageBytes: 64 * 1024, maxPromptTokens: 2000 } },
    busy: { limits: { maxImageBytes: 64 * 1024, concurrency: 1, queueSize: 0 } },
  };
  const answered = new Set<string>();
  for (const [device, extra] of Object.entries(agents)) {
    const agent = new Agent({
      config: testConfig(broker, device, extra),
      pipeline,
      countTokens: (s) => tok.encode(s).length,
    });
    agent.on('answered', (a) => a.code && answered.add(a.code));
    await agent.start();
    t.teardown(() => agent.stop(0));
  }

  const client = connect(mosquitto.url, { protocolVersion: 5, clientId: `codes-${randomUUID()}` });
  await new Promise((resolve) => client.once('connect', resolve));
  t.teardown(() => client.endAsync(true));
  const replyTopic = 'setokim/v1/replies/codes';
  await client.subscribeAsync(replyTopic, { qos: 1 });
  // Each reply with the Correlation Data it came with (the query's id, so that refusals without an id are told apart).
  const replies: Array<ReplyEvent & { key?: string }> = [];
  let arrived = (): void => undefined;
  client.on('message', (_topic, payload, packet) => {
    replies.push({
      ...decodeReply(payload),
      ...(packet.properties?.correlationData ? { key: packet.properties.correlationData.toString() } : {}),
    });
    arrived();
  });
  const terminal = async (q: WireQuery): Promise<ReplyEvent | undefined> => {
    const until = Date.now() + 20_000;
    while (Date.now() < until) {
      const last = replies.find(
        (r) => (r.key === q.id || (q.id && r.id === q.id)) && (r.type === 'done' || r.type === 'error'),
      );
      if (last) return last;
      await new Promise<void>((resolve) => {
        arrived = resolve;
        setTimeout(resolve, 1000);
      });
    }
    return undefined;
  };

  const png = await samplePng(48, 40);
  const send = (device: string, q: WireQuery, payload?: Buffer, properties?: IClientPublishOptions['properties']) =>
    client.publishAsync(queryTopic({ fleet: 'test', device }), payload ?? Buffer.from(encodeQuery(q)), {
      qos: 1,
      properties: { responseTopic: replyTopic, correlationData: Buffer.from(q.id), ...properties },
    });
  const long = { generation: { maxTokens: 8 } };

  const cases: Case[] = [
    { what: 'bytes that are not a Query', code: 'BAD_MESSAGE', payload: Buffer.from('{"hello": "world"}') },
    { what: 'no id', code: 'BAD_MESSAGE', query: { id: '' } },
    { what: 'an id of 150 characters', code: 'BAD_MESSAGE', query: { id: 'i'.repeat(150) } },
    { what: 'a reply_topic outside the reply topics', code: 'BAD_MESSAGE', query: { replyTopic: 'home/door/unlock' } },
    {
      what: 'Correlation Data of 300 bytes',
      code: 'BAD_MESSAGE',
      properties: { correlationData: Buffer.alloc(300, 1) },
    },
    { what: 'top_p 0', code: 'BAD_MESSAGE', query: { generation: { topP: 0 } } },
    {
      what: 'a stop sequence of 100 characters',
      code: 'BAD_MESSAGE',
      query: { generation: { stop: ['s'.repeat(100)] } },
    },
    { what: 'task paint', code: 'UNKNOWN_TASK', query: { task: 'paint' } },
    { what: 'a task of 100 characters', code: 'UNKNOWN_TASK', query: { task: 't'.repeat(100) } },
    {
      what: 'an image over limits.maxImageBytes',
      code: 'PAYLOAD_TOO_LARGE',
      query: { image: Buffer.concat([png, Buffer.alloc(256 * 1024)]) },
    },
    { what: 'text sent as an image', code: 'BAD_IMAGE', query: { image: Buffer.from('hello, not a picture') } },
    { what: 'a truncated PNG', code: 'BAD_IMAGE', query: { image: png.subarray(0, 60) } },
    { what: 'ask without an image', code: 'BAD_INPUT', query: { image: new Uint8Array(0) } },
    { what: 'ask with a blank prompt', code: 'BAD_INPUT', query: { prompt: '   ' } },
    { what: 'generate with an image', code: 'BAD_INPUT', query: { task: 'generate' } },
    { what: '<image> twice in the prompt', code: 'BAD_INPUT', query: { prompt: '<image> and <image>' } },
    { what: 'a 120,000-character prompt (issue 15)', code: 'PROMPT_TOO_LONG', query: { prompt: 'p'.repeat(120_000) } },
    {
      what: 'a prompt over limits.maxPromptTokens',
      code: 'PROMPT_TOO_LONG',
      device: 'tokens',
      query: { prompt: 'word '.repeat(2500) },
    },
    {
      what: 'a prompt that does not fit the context',
      code: 'PROMPT_TOO_LONG',
      device: 'tokens',
      query: { prompt: 'word '.repeat(1000) },
    },
    {
      what: 'a full queue',
      code: 'BUSY',
      device: 'busy',
      first: async () => void (await send('busy', { id: randomUUID(), task: 'describe', image: png, ...long })),
    },
    { what: 'a deadline already past', code: 'EXPIRED', query: { deadlineUnixMs: Date.now() - 1000 } },
    {
      what: 'a follow-up in a conversation this device never started',
      code: 'CONVERSATION_UNKNOWN',
      query: { image: new Uint8Array(0), prompt: 'and the left one?', conversation: `never-${randomUUID()}` },
    },
    {
      what: 'a cancel while it runs',
      code: 'CANCELLED',
      query: long,
      then: async (q) =>
        void (await client.publishAsync(
          cancelTopic({ fleet: 'test', device: 'codes' }),
          Buffer.from(encodeCancel(q.id)),
          { qos: 1 },
        )),
    },
    {
      what: 'generate on a set without diffusion stages',
      code: 'MODEL_NOT_FOUND',
      query: { task: 'generate', image: new Uint8Array(0), prompt: 'a lighthouse' },
    },
    {
      what: "the stages' worker threads die",
      code: 'BACKEND_CRASHED',
      first: async () => workers.forEach((w) => w.postMessage({ type: 'crash', how: 'exit', atNextRun: true })),
    },
  ];

  t.test('the cases cover every documented code', async (t) => {
    t.ok(DOCUMENTED.length >= 10, `docs/MQTT.md lists ${DOCUMENTED.length} codes`);
    const covered = new Set([...cases.map((c) => c.code), ...Object.keys(NOT_SENDABLE)]);
    t.same(
      DOCUMENTED.filter((c) => !covered.has(c)),
      [],
      'documented codes without a case',
    );
    t.same(
      [...covered].filter((c) => !DOCUMENTED.includes(c)),
      [],
      'cases for codes the docs do not list',
    );
  });

  t.test('each documented case is answered with its code', async (t) => {
    for (const c of cases) {
      const q: WireQuery = { id: randomUUID(), task: 'ask', prompt: 'what is this', image: png, ...c.query };
      if (!q.image?.length) delete q.image;
      await c.first?.();
      await send(c.device ?? 'codes', q, c.payload, c.properties);
      await c.then?.(q);
      const last = await terminal(q);
      t.equal(
        last?.type === 'error' ? last.code : (last?.type ?? 'no reply'),
        c.code,
        `${c.what}: ${last?.type === 'error' ? last.message : ''}`,
      );
    }
  });

  t.test('no reply carried a code the docs do not list', async (t) => {
    const codes = new Set([...replies.flatMap((r) => (r.type === 'error' ? [r.code] : [])), ...answered]);
    t.same(
      [...codes].filter((c) => !DOCUMENTED.includes(c)),
      [],
    );
  });
}
