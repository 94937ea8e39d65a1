/** Behaviour of the generation and segmentation stages that the pipeline relies on. */
import t from 'tap';
import { patchGrid } from '../../src/engine/contract.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildDetokenizer } from '../../tools/export/stages/detokenizer.js';
import { buildDiffusion } from '../../tools/export/stages/diffusion.js';
import { buildMaskDecoder } from '../../tools/export/stages/maskDecoder.js';
import { data, f32, gatherRows, maxAbsDiff, randn, session } from './helpers.js';

const a = CONFIGS.tiny;
const D = a.merger.tokenWidth;
const H = a.llm.hidden;
const C = a.encoder.width;
const G = patchGrid(a);
const N = G * G;

t.test('diffusion: per-token, and eps depends on x, t and cond', async (t) => {
  const s = await session(buildDiffusion(a, new Rng(1)));
  t.teardown(() => s.release());
  const B = 3;
  const x = randn(B * D, 2);
  const tt = Float32Array.from([0.1, 0.5, 0.9]);
  const cond = randn(B * H, 3);
  const eps = async (xv: Float32Array, tv: Float32Array, cv: Float32Array) =>
    data((await s.run({ x: f32(xv, [B, D]), t: f32(tv, [B]), cond: f32(cv, [B, H]) })).eps);
  const base = await eps(x, tt, cond);
  t.equal(base.length, B * D);
  // change only token 2's inputs: tokens 0 and 1 must not move
  const x2 = Float32Array.from(x).fill(0.3, 2 * D);
  const moved = await eps(x2, Float32Array.from([0.1, 0.5, 0.2]), cond);
  t.ok(maxAbsDiff(base.subarray(0, 2 * D), moved.subarray(0, 2 * D)) < 1e-6, 'rows are independent');
  t.ok(maxAbsDiff(base.subarray(2 * D), moved.subarray(2 * D)) > 1e-3, 'the changed row moves');
  t.ok(maxAbsDiff(base, await eps(x, Float32Array.from([0.2, 0.6, 0.95]), cond)) > 1e-3, 't matters');
  t.ok(maxAbsDiff(base, await eps(x, tt, randn(B * H, 4))) > 1e-3, 'cond matters');
});

t.test('detokenizer: image in [-1, 1], independent of token order, any L', async (t) => {
  const s = await session(buildDetokenizer(a, new Rng(1)));
  t.teardown(() => s.release());
  const R = a.detokenizer.imageSize;
  const L = 6;
  const tokens = randn(L * D, 5, 2);
  const img = data((await s.run({ tokens: f32(tokens, [1, L, D]) })).image);
  t.equal(img.length, 3 * R * R);
  t.ok(
    img.every((v) => v >= -1 && v <= 1),
    'tanh range',
  );
  const perm = [3, 0, 5, 1, 4, 2];
  const shuffled = data((await s.run({ tokens: f32(gatherRows(tokens, D, perm), [1, L, D]) })).image);
  t.ok(maxAbsDiff(img, shuffled) < 1e-5, 'the queries see a set of tokens');
  for (const l of [1, a.cluster.maxTokens]) {
    const out = await s.run({ tokens: f32(randn(l * D, 6), [1, l, D]) });
    t.same(out.image!.dims, [1, 3, R, R], `L = ${l}`);
  }
});

t.test(
  'mask decoder: one mask per token, permuted with the tokens; the referring mask follows the prompt',
  async (t) => {
    const s = await session(buildMaskDecoder(a, new Rng(1)));
    t.teardown(() => s.release());
    const L = 4;
    const features = f32(randn(N * C, 7, 2), [1, N, C]);
    const tokens = randn(L * D, 8);
    const run = async (tk: Float32Array, prompt: Float32Array) =>
      s.run({ features, tokens: f32(tk, [1, L, D]), prompt: f32(prompt, [1, 1, H]) });
    const p1 = randn(H, 9);
    const base = await run(tokens, p1);
    t.same(base.token_masks!.dims, [1, L, G, G]);
    const perm = [2, 0, 3, 1];
    const shuffled = await run(gatherRows(tokens, D, perm), p1);
    t.ok(
      maxAbsDiff(data(shuffled.token_masks), gatherRows(data(base.token_masks), N, perm)) < 1e-5,
      'mask l belongs to token l',
    );
    const other = await run(tokens, randn(H, 10));
    t.ok(maxAbsDiff(data(other.token_masks), data(base.token_masks)) < 1e-6, 'token masks ignore the prompt');
    t.ok(maxAbsDiff(data(other.referring_mask), data(base.referring_mask)) > 1e-3, 'referring mask follows the prompt');
  },
);
