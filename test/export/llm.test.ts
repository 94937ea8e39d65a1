/** The LLM graph's KV cache: decoding n tokens one by one gives what one prefill of all n gives. */
import t, { type Test } from 'tap';
import type ort from 'onnxruntime-node';
import type { Architecture } from '../../src/engine/contract.js';
import { headDim } from '../../src/engine/contract.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildLlm } from '../../tools/export/stages/llm.js';
import { data, f32, maxAbsDiff, randn, session } from './helpers.js';

async function check(t: Test, a: Architecture) {
  const s = await session(buildLlm(a, new Rng(5)));
  t.teardown(() => s.release());
  const { hidden: H, layers, kvHeads, vocab } = a.llm;
  const hd = headDim(a);
  const n = 7;
  const embeds = randn(n * H, 6, 1);
  const empty = () => f32([], [layers, 1, kvHeads, 0, hd]);
  const full = await s.run({ inputs_embeds: f32(embeds, [1, n, H]), past_keys: empty(), past_values: empty() });
  t.same(full.logits!.dims, [1, n, vocab]);
  t.same(full.present_keys!.dims, [layers, 1, kvHeads, n, hd]);

  // prefill 3, then decode the other 4 one at a time
  const first = 3;
  let out = await s.run({ inputs_embeds: f32(embeds.subarray(0, first * H), [1, first, H]), past_keys: empty(), past_values: empty() });
  const rowsOf = (x: ort.Tensor, from: number, count: number, width: number) => data(x).subarray(from * width, (from + count) * width);
  t.ok(maxAbsDiff(data(out.hidden), rowsOf(full.hidden!, 0, first, H)) < 1e-4, 'a shorter prefill equals the first rows (causal)');
  let maxHidden = 0;
  let maxLogit = 0;
  for (let i = first; i < n; i++) {
    out = await s.run({ inputs_embeds: f32(embeds.subarray(i * H, (i + 1) * H), [1, 1, H]), past_keys: out.present_keys!, past_values: out.present_values! });
    t.same(out.present_keys!.dims, [layers, 1, kvHeads, i + 1, hd]);
    maxHidden = Math.max(maxHidden, maxAbsDiff(data(out.hidden), rowsOf(full.hidden!, i, 1, H)));
    maxLogit = Math.max(maxLogit, maxAbsDiff(data(out.logits), rowsOf(full.logits!, i, 1, vocab)));
  }
  t.ok(maxHidden < 1e-4, `decode hidden = prefill hidden (max diff ${maxHidden.toExponential(2)})`);
  t.ok(maxLogit < 1e-4, `decode logits = prefill logits (max diff ${maxLogit.toExponential(2)})`);
  t.ok(maxAbsDiff(data(out.present_keys), data(full.present_keys)) < 1e-4, 'the cache built by decoding = the prefill cache');
  t.ok(maxAbsDiff(data(out.present_values), data(full.present_values)) < 1e-4);

  // position matters (RoPE): the same token decoded after a different past gives another answer
  const shifted = await s.run({ inputs_embeds: f32(embeds.subarray(0, H), [1, 1, H]), past_keys: full.present_keys!, past_values: full.present_values! });
  t.ok(maxAbsDiff(data(shifted.hidden), rowsOf(full.hidden!, 0, 1, H)) > 1e-3, 'past changes the output');
}

t.test('tiny (multi-head attention)', (t) => check(t, CONFIGS.tiny));
t.test('grouped-query attention (kvHeads < heads)', (t) => check(t, { ...CONFIGS.tiny, llm: { ...CONFIGS.tiny.llm, kvHeads: 2 } }));
