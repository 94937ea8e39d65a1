/** The architecture configs: valid against the contract schema, sized as the issue asks. */
import t from 'tap';
import { ArchitectureSchema, headDim, patchGrid } from '../../src/engine/contract.js';
import { CONFIGS, CONFIG_NAMES, padVocab, SPECIAL_TOKENS, VOCAB_WITH_SPECIALS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildEmbed } from '../../tools/export/stages/embed.js';
import { buildEncoder } from '../../tools/export/stages/encoder.js';
import { buildLlm } from '../../tools/export/stages/llm.js';
import { data, f32, maxAbsDiff, randn, run } from './helpers.js';

t.test('every config parses and is internally consistent', async (t) => {
  for (const name of CONFIG_NAMES) {
    const a = ArchitectureSchema.parse(CONFIGS[name]);
    t.ok(Number.isInteger(patchGrid(a)), `${name}: patch divides the image`);
    t.ok(Number.isInteger(headDim(a)) && headDim(a) % 2 === 0, `${name}: even head dim for RoPE`);
    t.equal(a.llm.heads % a.llm.kvHeads, 0);
    t.ok(
      a.llm.vocab >= VOCAB_WITH_SPECIALS && a.llm.vocab % 64 === 0,
      `${name}: vocab ${a.llm.vocab} holds the specials, padded to 64`,
    );
    t.same(a.tokens, SPECIAL_TOKENS);
    t.equal(a.detokenizer.queries, (a.detokenizer.imageSize / a.detokenizer.patch) ** 2);
    t.ok(a.cluster.fallback <= a.cluster.maxTokens && a.cluster.k <= patchGrid(a) ** 2);
  }
  t.equal(padVocab(32003), 32064);
  t.equal(patchGrid(CONFIGS.tiny) ** 2, 256);
  t.equal(patchGrid(CONFIGS.small) ** 2, 729);
});

t.test('small: ViT-S encoder and a 50-100 M parameter LLM', async (t) => {
  const a = CONFIGS.small;
  const enc = buildEncoder(a, new Rng(1)).g.parameterCount();
  const llm = buildLlm(a, new Rng(1)).g.parameterCount() + buildEmbed(a, new Rng(1)).g.parameterCount();
  t.ok(enc > 20e6 && enc < 23e6, `encoder ${(enc / 1e6).toFixed(1)} M (ViT-S ~22 M)`);
  t.ok(llm > 50e6 && llm < 100e6, `LLM with embeddings ${(llm / 1e6).toFixed(1)} M`);
});

t.test('encoder: a batch of two = two single images', async (t) => {
  const a = CONFIGS.tiny;
  const S = a.image.size;
  const bytes = buildEncoder(a, new Rng(2)).g.encode();
  const [x1, x2] = [randn(3 * S * S, 1), randn(3 * S * S, 2)];
  const both = new Float32Array(2 * 3 * S * S);
  both.set(x1);
  both.set(x2, x1.length);
  const y = data((await run(bytes, { pixels: f32(both, [2, 3, S, S]) })).features);
  const y1 = data((await run(bytes, { pixels: f32(x1, [1, 3, S, S]) })).features);
  const y2 = data((await run(bytes, { pixels: f32(x2, [1, 3, S, S]) })).features);
  t.ok(maxAbsDiff(y.subarray(0, y1.length), y1) < 1e-5);
  t.ok(maxAbsDiff(y.subarray(y1.length), y2) < 1e-5);
});
