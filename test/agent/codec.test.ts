import t from 'tap';
import {
  decodeCancel,
  decodeQuery,
  decodeReply,
  decodeStatus,
  encodeCancel,
  encodeQuery,
  encodeReply,
  encodeStatus,
} from '../../src/agent/codec.js';
import {
  DEFAULT_QUERY_RULES,
  maxQueryPacketBytes,
  plainlyValid,
  QUERY_OVERHEAD_BYTES,
  querySchema,
} from '../../src/agent/codec.js';
import { ReplyTopics } from '../../src/agent/replies.js';
import type { PipelineEvent } from '../../src/pipeline/types.js';

t.test('a query survives the round trip, generation parameters included', async (t) => {
  const image = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]);
  const deadline = Date.now() + 5000;
  const r = decodeQuery(
    encodeQuery({
      id: 'q1',
      task: 'ask',
      prompt: 'hi',
      image,
      deadlineUnixMs: deadline,
      replyTopic: 'setokim/v1/replies/r',
      correlation: new Uint8Array([9]),
      generation: { maxTokens: 5, temperature: 0.5, seed: 3, stop: ['\n'] },
    }),
  );
  t.ok(r.ok);
  if (!r.ok) return;
  t.same(Buffer.from(r.query.image!), Buffer.from(image));
  t.equal(r.query.deadlineUnixMs, deadline, 'uint64 milliseconds come back as a number');
  t.same(r.query.generation, { maxTokens: 5, temperature: 0.5, seed: 3, stop: ['\n'] });
  t.same([r.query.id, r.query.task, r.query.prompt, r.query.replyTopic], ['q1', 'ask', 'hi', 'setokim/v1/replies/r']);
  t.equal(r.query.conversation, undefined, 'no conversation unless named');
});

t.test('a conversation id travels in the query; an over-long one is BAD_MESSAGE', async (t) => {
  const r = decodeQuery(encodeQuery({ id: 'q2', task: 'ask', prompt: 'and then?', conversation: 'kitchen-cam/7' }));
  t.equal(r.ok && r.query.conversation, 'kitchen-cam/7');
  t.equal(r.ok && r.query.image, undefined, 'a follow-up carries no image');
  const replyTopic = 'setokim/v1/replies/r';
  const long = decodeQuery(encodeQuery({ id: 'q3', task: 'ask', conversation: 'c'.repeat(129), replyTopic }));
  t.equal(!long.ok && long.error.code, 'BAD_MESSAGE');
  t.match(!long.ok && long.error.message, /conversation: the conversation id is longer than 128 characters/);
  t.equal(!long.ok && long.salvage.replyTopic, replyTopic, 'and answered at its reply address');
});

t.test('bytes that are not a query, and queries that break the rules, are BAD_MESSAGE', async (t) => {
  for (const junk of ['{"id": "x"}', 'hello world', '\u0000\u0001']) {
    const r = decodeQuery(Buffer.from(junk));
    t.equal(!r.ok && r.error.code, 'BAD_MESSAGE', JSON.stringify(junk));
  }
  const noId = decodeQuery(
    encodeQuery({ id: '', task: 'ask', replyTopic: 'setokim/v1/replies/back', correlation: new Uint8Array([7]) }),
  );
  t.notOk(noId.ok);
  if (!noId.ok) {
    t.match(noId.error.message, /no id/);
    t.equal(
      noId.salvage.replyTopic,
      'setokim/v1/replies/back',
      'the reply address is salvaged so the error can be answered',
    );
    t.same(Buffer.from(noId.salvage.correlation!), Buffer.from([7]));
  }
  for (const topic of ['a/#', 'a/+/b', '$SYS/x', 'setokim/v1/f/d/status', 'setokim/v1/f/query', 'home/door/unlock']) {
    const r = decodeQuery(encodeQuery({ id: 'x', task: 'ask', replyTopic: topic }));
    t.equal(!r.ok && r.error.code, 'BAD_MESSAGE', `reply topic ${topic} is refused`);
    t.equal(!r.ok && r.salvage.replyTopic, undefined, 'and never used as a reply address');
  }
  t.ok(
    decodeQuery(encodeQuery({ id: 'x', task: 'ask', replyTopic: 'setokim/v1/replies/me' })).ok,
    'the client reply area is fine',
  );
  const home = { ...DEFAULT_QUERY_RULES, replyTopic: (t: string) => new ReplyTopics(['home/replies/#']).allows(t) };
  const to = (replyTopic: string) => decodeQuery(encodeQuery({ id: 'x', task: 'ask', replyTopic }), home);
  t.ok(to('home/replies/cam').ok, 'a configured filter');
  t.notOk(to('home/door/unlock').ok, 'beside it, still refused');
});

t.test('prompt and image sizes are refused on the wire, with the reply address salvaged', async (t) => {
  const rules = { ...DEFAULT_QUERY_RULES, maxPromptBytes: 100, maxImageBytes: 50 };
  const address = { id: 'q1', replyTopic: 'setokim/v1/replies/me', correlation: new Uint8Array([3]) };
  const long = decodeQuery(encodeQuery({ ...address, task: 'ask', prompt: 'é'.repeat(50) + 'x' }), rules);
  t.equal(!long.ok && long.error.code, 'PROMPT_TOO_LONG');
  t.match(!long.ok && long.error.message, /101 bytes; this device takes at most 100 \(limits\.maxPromptBytes\)/);
  const salvaged = !long.ok && { ...long.salvage, correlation: [...long.salvage.correlation!] };
  t.same(salvaged, { ...address, correlation: [3] });
  t.ok(decodeQuery(encodeQuery({ ...address, task: 'ask', prompt: 'é'.repeat(50) }), rules).ok, '100 bytes pass');
  const big = decodeQuery(encodeQuery({ ...address, task: 'ask', image: new Uint8Array(51) }), rules);
  t.equal(!big.ok && big.error.code, 'PAYLOAD_TOO_LARGE');
  t.equal(!big.ok && big.salvage.id, 'q1');
});

t.test('maximum packet size: image + prompt + overhead, within what MQTT can say', async (t) => {
  t.equal(maxQueryPacketBytes({ maxImageBytes: 1000, maxPromptBytes: 100 }), 1100 + QUERY_OVERHEAD_BYTES);
  t.equal(maxQueryPacketBytes({ maxImageBytes: 2 ** 30, maxPromptBytes: 100 }), 268_435_455);
});

/** Bytes as plain arrays, so Buffer and Uint8Array compare equal. */
const plain = (o: object): Record<string, unknown> =>
  Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v instanceof Uint8Array ? [...v] : v]));

t.test('every pipeline event maps to a reply and back', async (t) => {
  const png = new Uint8Array([1, 2, 3]);
  const events: PipelineEvent[] = [
    { type: 'accepted', id: 'a' },
    { type: 'clustered', id: 'a', visionTokens: 7, patches: 256, maskPng: png },
    { type: 'text', id: 'a', delta: 'héllo' },
    { type: 'mask', id: 'a', index: 2, referring: true, png, width: 8, height: 6 },
    { type: 'image', id: 'a', png, width: 64, height: 64 },
    {
      type: 'done',
      id: 'a',
      visionTokens: 7,
      promptTokens: 20,
      generatedTokens: 3,
      finishReason: 'length',
      stages: { encoder: 1.5, decode: 2.25 },
      totalMs: 9.5,
      firstTokenMs: 4,
    },
    { type: 'error', id: 'a', code: 'BUSY', message: 'full' },
  ];
  for (const [seq, e] of events.entries()) {
    const back = decodeReply(encodeReply(e, { seq, device: 'd1', correlation: new Uint8Array([5]) }));
    const { seq: s, device, correlation, ...event } = back;
    t.equal(s, seq);
    t.equal(device, 'd1');
    t.same(Buffer.from(correlation!), Buffer.from([5]));
    t.same(plain(event), plain(e), e.type);
  }
  const noFirst = decodeReply(
    encodeReply(
      {
        type: 'done',
        id: 'b',
        visionTokens: 0,
        promptTokens: 1,
        generatedTokens: 1,
        finishReason: 'stop',
        stages: {},
        totalMs: 1,
      },
      { seq: 0, device: 'd' },
    ),
  );
  t.notOk('firstTokenMs' in noFirst, 'an unset optional stays unset');
  t.throws(() => decodeReply(Buffer.from('garbage!')), { code: 'BAD_MESSAGE' });
});

t.test('cancel and status', async (t) => {
  t.equal(decodeCancel(encodeCancel('q9')), 'q9');
  t.throws(() => decodeCancel(encodeCancel('')), { code: 'BAD_MESSAGE' });
  const s = {
    fleet: 'f',
    device: 'd',
    online: true,
    modelSetId: 'm',
    backend: 'b',
    tasks: ['ask'],
    queueDepth: 1,
    inFlight: 2,
    queueSize: 3,
    concurrency: 4,
    maxImageBytes: 5,
    maxTokens: 6,
    maxContext: 7,
    updatedUnixMs: Date.now(),
    version: '0.1.0',
    streams: 1,
    maxStreams: 2,
  };
  t.same(decodeStatus(encodeStatus(s)), s, 'no target: an agent from before targets; the field stays absent');
  const withTarget = { ...s, target: 'orin-nano-8gb/jp6.2/trt10.3' };
  t.same(decodeStatus(encodeStatus(withTarget)), withTarget, 'the target travels in the retained status');
});

t.test(
  "the decoder's quick check never accepts what the query schema refuses, and takes the common query",
  async (t) => {
    const rules = { ...DEFAULT_QUERY_RULES, replyTopic: (x: string) => new ReplyTopics(['home/replies/#']).allows(x) };
    const schema = querySchema(rules);
    const base = {
      id: 'q1',
      task: 'ask',
      prompt: 'hi',
      image: new Uint8Array([0x89, 0x50, 0x4e, 0x47]),
      generation: null as unknown,
      deadlineUnixMs: 0,
      replyTopic: '',
      correlation: new Uint8Array(0),
      conversation: '',
    };
    const values: Record<keyof typeof base, unknown[]> = {
      id: ['', 'x', 'i'.repeat(128), 'i'.repeat(129), '😀'.repeat(64), '😀'.repeat(65), 7, undefined],
      task: ['ask', 'no-such-task', '', 3],
      prompt: ['', 'p'.repeat(20000), null],
      image: [new Uint8Array(0), Buffer.from([1]), [1, 2], 'img'],
      generation: [null, {}, { maxTokens: 5 }, { maxTokens: -1 }, { temperature: 'hot' }, undefined],
      deadlineUnixMs: [0, 1, Date.now(), -1, 1.5, 2 ** 53, 2 ** 53 - 1, NaN, Infinity, '5'],
      replyTopic: [
        '',
        'setokim/v1/replies/me',
        'home/replies/cam',
        'home/door',
        'a/#',
        '$SYS/x',
        'setokim/v1/f/query',
        5,
      ],
      correlation: [new Uint8Array(0), new Uint8Array(256), new Uint8Array(257), 'c'],
      conversation: ['', 'c'.repeat(128), 'c'.repeat(129), '😀'.repeat(64), '😀'.repeat(65), null],
    };
    let quick = 0;
    let cases = 0;
    for (const [field, list] of Object.entries(values)) {
      for (const v of list) {
        const raw = { ...base, [field]: v };
        cases++;
        const accepted = schema.safeParse(raw).success;
        if (plainlyValid(raw, rules)) {
          quick++;
          t.ok(accepted, `${field} = ${String(v).slice(0, 40)}: the schema accepts what the quick check accepts`);
        }
      }
    }
    t.ok(plainlyValid(base, rules), 'the common query is checked quickly');
    t.ok(quick >= 20 && quick < cases - 20, `${quick} of ${cases} cases checked quickly, the rest by the schema`);
    // Both paths give the same query.
    const wire = { id: 'q9', task: 'ask', prompt: 'p', image: base.image, replyTopic: 'setokim/v1/replies/me' };
    const quickly = decodeQuery(encodeQuery(wire));
    const withGeneration = decodeQuery(encodeQuery({ ...wire, generation: { seed: 1 } }));
    t.ok(quickly.ok && withGeneration.ok);
    if (quickly.ok && withGeneration.ok) {
      const { generation, ...rest } = withGeneration.query;
      t.same(generation, { seed: 1 });
      t.same(plain(quickly.query), plain(rest), 'the quick path and the schema make the same query');
    }
  },
);

t.test('ReplyTopics answers the same from its memory of recent topics, past its size', async (t) => {
  const topics = new ReplyTopics(['home/replies/#']);
  const list = Array.from({ length: 600 }, (_, i) =>
    i % 3 === 0 ? `setokim/v1/replies/c${i}` : i % 3 === 1 ? `home/replies/c${i}` : `home/door/c${i}`,
  );
  const first = list.map((x) => topics.allows(x));
  const again = [...list]
    .reverse()
    .map((x) => topics.allows(x))
    .reverse();
  const fresh = list.map((x) => new ReplyTopics(['home/replies/#']).allows(x));
  t.same(first, fresh);
  t.same(again, fresh);
  t.equal(fresh.filter(Boolean).length, 400, 'two of three topics are reply topics');
});
