import t from 'tap';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/pipeline.js';
import { decode, LlmContext } from '../../src/pipeline/generate.js';
import { Sampler } from '../../src/pipeline/sampler.js';
import type { RequestContext } from '../../src/pipeline/scheduler.js';
import { tinySet } from './fixtures.js';

let p: LocalPipeline;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  p = await createPipeline({ modelsDir: set.dir, threads: 1 });
  t.teardown(() => p.close());
});

async function start(ids: number[]) {
  const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
  const llm = new LlmContext(p.models.arch, p.models.stages.llm!, p.models.stages.embed!, ctx);
  const first = await llm.step(await llm.embedIds(ids), 'prefill');
  return { ctx, llm, first };
}

t.test('inside an image only <target> then <im_end> come out, at most maxTargets, each with its hidden state', async (t) => {
  const tok = p.models.tokenizer;
  const s = tok.specials;
  const { ctx, llm, first } = await start([s.bos, ...tok.encode('USER: draw a cat ASSISTANT:'), s.imStart]);
  const text: string[] = [];
  const r = await decode(
    llm,
    first,
    { tokenizer: tok, sampler: new Sampler({ temperature: 1, topK: 0, topP: 1, seed: 1 }), maxTokens: 12, stop: [], startInImage: true, maxTargets: 3, onText: (d) => text.push(d) },
    ctx,
  );
  const end = r.ids.indexOf(s.imEnd);
  t.ok(end >= 1 && end <= 3, `<im_end> at ${end}`);
  t.ok(r.ids.slice(0, end).every((id) => id === s.target), 'only <target> before it');
  t.equal(r.images.length, 1);
  t.equal(r.images[0]!.length, end, 'one hidden state per <target>');
  t.equal(r.images[0]![0]!.length, p.models.arch.llm.hidden);
  t.not(Array.from(r.images[0]![0]!).join(), Array.from(r.lastHidden).join(), 'hidden states differ by position');
});

t.test('streamed deltas add up to the decoded ids, and the KV cache grows one position per fed token', async (t) => {
  const tok = p.models.tokenizer;
  const prompt = [tok.specials.bos, ...tok.encode('USER: hello ASSISTANT:')];
  const { ctx, llm, first } = await start(prompt);
  let text = '';
  const r = await decode(
    llm,
    first,
    { tokenizer: tok, sampler: new Sampler({ temperature: 0.8, topK: 40, topP: 0.9, seed: 5 }), maxTokens: 15, stop: [], startInImage: false, maxTargets: 64, onText: (d) => (text += d) },
    ctx,
  );
  t.equal(text, tok.decode(r.ids.filter((id) => !tok.isSpecial(id))));
  const fed = r.finishReason === 'length' ? r.ids.length - 1 : r.ids.length;
  t.equal(llm.position, prompt.length + fed);
  t.ok(ctx.times.prefill! > 0 && ctx.times.decode! > 0);
});

t.test('a context that would overflow the model is PROMPT_TOO_LONG', async (t) => {
  const { llm } = await start([1]);
  const H = p.models.arch.llm.hidden;
  await t.rejects(llm.step(new Float32Array(p.models.arch.llm.maxContext * H), 'prefill'), { code: 'PROMPT_TOO_LONG' });
});
