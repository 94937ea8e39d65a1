import t from 'tap';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/pipeline.js';
import { decode, LlmContext } from '../../src/pipeline/generate.js';
import { Sampler } from '../../src/pipeline/sampler.js';
import { buildVicunaPrompt, promptLength } from '../../src/pipeline/template.js';
import { GatedStage, type RequestContext } from '../../src/pipeline/scheduler.js';
import type { Feed, Session, SessionRunOptions } from '../../src/engine/backend.js';
import { busyImage, collect, tinySet } from './fixtures.js';
import { kvBytesPerToken } from '../../src/pipeline/kv-cache.js';
import { headDim } from '../../src/engine/contract.js';

let p: LocalPipeline;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  p = await createPipeline({ modelsDir: set.dir, threads: 1, kvBudgetBytes: 100_000, maxInFlight: 2 });
  t.teardown(() => p.close());
});

async function start(ids: number[], capacity = ids.length + 32) {
  const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
  const llm = new LlmContext(p.models.arch, p.models.stages.llm!, p.models.stages.embed!, ctx);
  await llm.open(capacity);
  t.teardown(() => llm.release());
  const first = await llm.step(await llm.embedIds(ids), 'prefill');
  return { ctx, llm, first };
}

t.test(
  'inside an image only <target> then <im_end> come out, at most maxTargets, each with its hidden state',
  async (t) => {
    const tok = p.models.tokenizer;
    const s = tok.specials;
    const { ctx, llm, first } = await start([s.bos, ...tok.encode('USER: draw a cat ASSISTANT:'), s.imStart]);
    const text: string[] = [];
    const r = await decode(
      llm,
      first,
      {
        tokenizer: tok,
        sampler: new Sampler({ temperature: 1, topK: 0, topP: 1, seed: 1 }),
        maxTokens: 12,
        stop: [],
        startInImage: true,
        maxTargets: 3,
        onText: (d) => text.push(d),
      },
      ctx,
    );
    const end = r.ids.indexOf(s.imEnd);
    t.ok(end >= 1 && end <= 3, `<im_end> at ${end}`);
    t.ok(
      r.ids.slice(0, end).every((id) => id === s.target),
      'only <target> before it',
    );
    t.equal(r.images.length, 1);
    t.equal(r.images[0]!.length, end, 'one hidden state per <target>');
    t.equal(r.images[0]![0]!.length, p.models.arch.llm.hidden);
    t.not(Array.from(r.images[0]![0]!).join(), Array.from(r.lastHidden).join(), 'hidden states differ by position');
  },
);

t.test('streamed deltas add up to the decoded ids, and the KV cache grows one position per fed token', async (t) => {
  const tok = p.models.tokenizer;
  const prompt = [tok.specials.bos, ...tok.encode('USER: hello ASSISTANT:')];
  const { ctx, llm, first } = await start(prompt);
  let text = '';
  const r = await decode(
    llm,
    first,
    {
      tokenizer: tok,
      sampler: new Sampler({ temperature: 0.8, topK: 40, topP: 0.9, seed: 5 }),
      maxTokens: 15,
      stop: [],
      startInImage: false,
      maxTargets: 64,
      onText: (d) => (text += d),
    },
    ctx,
  );
  t.equal(text, tok.decode(r.ids.filter((id) => !tok.isSpecial(id))));
  const fed = r.finishReason === 'length' ? r.ids.length - 1 : r.ids.length;
  t.equal(llm.position, prompt.length + fed);
  t.ok(ctx.times.prefill! > 0 && ctx.times.decode! > 0);
});

t.test(
  'the KV cache stays in the LLM session: a step sends one embedding and the write position, and gets the last logits back',
  async (t) => {
    const tok = p.models.tokenizer;
    const a = p.models.arch;
    const prompt = [tok.specials.bos, ...tok.encode('USER: hello ASSISTANT:')];
    const real = p.models.stages.llm!.session;
    const sent: { host: Record<string, readonly number[]>; resident: string[]; writes: string[]; outputs: string[] }[] =
      [];
    // The real session behind a recorder of what crosses to the backend.
    const session: Session = Object.assign(Object.create(real) as Session, {
      run: async (feeds: Record<string, Feed>, options?: SessionRunOptions) => {
        const out = await real.run(feeds, options);
        sent.push({
          host: Object.fromEntries(
            Object.entries(feeds)
              .filter(([, f]) => f.location === 'host')
              .map(([k, f]) => [k, f.dims]),
          ),
          resident: Object.keys(feeds).filter((k) => feeds[k]!.location === 'resident'),
          writes: Object.keys(options?.writeInto ?? {}),
          outputs: Object.keys(out),
        });
        return out;
      },
    });
    const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
    const llm = new LlmContext(a, new GatedStage('llm', session), p.models.stages.embed!, ctx);
    const capacity = prompt.length + 8;
    const before = real.residentBytes;
    await llm.open(capacity);
    t.equal(
      real.residentBytes - before,
      capacity * kvBytesPerToken(a.llm.layers, a.llm.kvHeads, headDim(a)),
      'the cache is allocated once, in the session',
    );
    const first = await llm.step(await llm.embedIds(prompt), 'prefill');
    const o = {
      tokenizer: tok,
      sampler: new Sampler({ temperature: 0, topK: 0, topP: 1, seed: 0 }),
      maxTokens: 6,
      stop: [],
      startInImage: false,
      maxTargets: 64,
      onText: () => {},
    };
    const r = await decode(llm, first, o, ctx);
    const layers = a.llm.layers;
    t.same(sent[0]!.resident, [], 'the prefill from position 0 attends to no cache rows');
    for (const step of sent.slice(1)) {
      t.same(
        step.host,
        { inputs_embeds: [1, 1, a.llm.hidden], past_length: [1] },
        'a decode step sends one embedding and the position',
      );
      t.equal(step.resident.length, 2 * layers, 'the cache goes by handle');
    }
    t.ok(
      sent.every((s) => s.writes.length === 2 * layers && s.outputs.join() === 'logits,hidden'),
      'new rows stay in the backend; logits and hidden come back',
    );
    t.ok(sent.length >= 2, `${sent.length - 1} decode steps`);
    llm.release();
    t.equal(real.residentBytes, before, 'released with the context');

    // The cached decode = prefilling the whole sequence again before each token (no cache at all).
    for (let k = 1; k < r.ids.length; k++) {
      const again = await start([...prompt, ...r.ids.slice(0, k)]);
      let best = 0;
      for (let i = 1; i < tok.vocabSize; i++) if (again.first.logits[i]! > again.first.logits[best]!) best = i;
      t.equal(best, r.ids[k], `token ${k} is the argmax of a fresh prefill`);
      again.llm.release();
    }
  },
);

t.test(
  'prompt embeddings: each text segment through the embed stage, the vision rows spliced in between',
  async (t) => {
    const tok = p.models.tokenizer;
    const H = p.models.arch.llm.hidden;
    const { llm } = await start([tok.specials.bos]);
    const layout = buildVicunaPrompt(tok, { prompt: 'What is this?', image: true });
    const [before, , after] = layout.segments as [
      { kind: 'text'; ids: number[] },
      unknown,
      { kind: 'text'; ids: number[] },
    ];
    const vision = Float32Array.from({ length: 3 * H }, (_, i) => i + 0.5);
    const got = await llm.promptEmbeds(layout.segments, vision);
    t.equal(got.length, promptLength(layout, 3) * H);
    const want = [...(await llm.embedIds(before.ids)), ...vision, ...(await llm.embedIds(after.ids))];
    t.same(Array.from(got), want);
    await t.rejects(llm.promptEmbeds(layout.segments), { code: 'INTERNAL' });
  },
);

t.test('a context that would overflow the model is PROMPT_TOO_LONG', async (t) => {
  const { llm } = await start([1]);
  const H = p.models.arch.llm.hidden;
  await t.rejects(llm.step(new Float32Array(p.models.arch.llm.maxContext * H), 'prefill'), { code: 'PROMPT_TOO_LONG' });
});

t.test(
  'the KV budget bounds memory: requests that do not fit together wait, one larger than it is refused',
  async (t) => {
    const a = p.models.arch;
    const perToken = kvBytesPerToken(a.llm.layers, a.llm.kvHeads, headDim(a));
    t.equal(perToken, 1024, 'tiny: 2 layers x 4 heads x 16 dims x 2 x 4 bytes');
    const image = await busyImage();
    // ~50 prompt + 30 new tokens = ~80 KB each: two do not fit in 100 KB at once.
    let peak = 0;
    const watch = async (id: string) => {
      const ev = [];
      for await (const e of p.run({ id, task: 'ask', prompt: 'What is it?', image, generation: { maxTokens: 30 } })) {
        peak = Math.max(peak, p.kv.used);
        ev.push(e);
      }
      return ev;
    };
    const [x, y] = await Promise.all([watch('x'), watch('y')]);
    t.equal(x.at(-1)!.type, 'done');
    t.equal(y.at(-1)!.type, 'done');
    t.ok(peak > 0 && peak <= 100_000, `peak ${peak} bytes within the budget`);
    t.equal(p.kv.used, p.kv.cached, 'only cache holds remain');
    const big = await collect(
      p.run({ id: 'big', task: 'ask', prompt: 'What is it?', image, generation: { maxTokens: 200 } }),
    );
    const last = big.at(-1)!;
    t.equal(last.type === 'error' && last.code, 'PROMPT_TOO_LONG');
    t.match(last.type === 'error' ? last.message : '', /KV cache/);
  },
);
