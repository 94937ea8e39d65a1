import t from 'tap';
import { tensor } from '../../src/engine/backend.js';
import { type Architecture, stageSignature } from '../../src/engine/contract.js';
import { checkFeeds, evalDim } from '../../src/engine/signature.js';
import type { StageSignature } from '../../src/engine/contract.js';

const MERGER: StageSignature = {
  inputs: [
    { name: 'features', dtype: 'float32', shape: [1, 256, 8] },
    { name: 'assign', dtype: 'float32', shape: [1, 'L', 256] },
  ],
  outputs: [],
};
const f32 = (dims: number[]) => tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);

t.test('a good feed binds its named dims', async (t) => {
  t.same(checkFeeds('merger', MERGER, { features: f32([1, 256, 8]), assign: f32([1, 12, 256]) }), { L: 12 });
});

t.test('missing and unknown inputs name the stage, the tensor and what is expected', async (t) => {
  t.throws(() => checkFeeds('merger', MERGER, { features: f32([1, 256, 8]) }), {
    code: 'BAD_INPUT',
    message: "stage 'merger': missing input 'assign' (expected float32 [1, L, 256])",
  });
  t.throws(
    () => checkFeeds('merger', MERGER, { features: f32([1, 256, 8]), assign: f32([1, 2, 256]), extra: f32([1]) }),
    {
      code: 'BAD_INPUT',
      message: "stage 'merger': unknown input 'extra'; this stage takes 'features', 'assign'",
    },
  );
});

t.test('wrong dtype, rank and fixed dims say expected vs got', async (t) => {
  t.throws(
    () =>
      checkFeeds('merger', MERGER, {
        features: tensor('float16', new Uint16Array(2048), [1, 256, 8]),
        assign: f32([1, 2, 256]),
      }),
    { code: 'BAD_INPUT', message: /'features' must be float32, got float16/ },
  );
  t.throws(() => checkFeeds('merger', MERGER, { features: f32([256, 8]), assign: f32([1, 2, 256]) }), {
    message: "stage 'merger': input 'features' must have rank 3 [1, 256, 8], got rank 2 [256, 8]",
  });
  t.throws(() => checkFeeds('merger', MERGER, { features: f32([1, 255, 8]), assign: f32([1, 2, 256]) }), {
    message: /input 'features' axis 1 must be 256, got 255/,
  });
});

t.test('data must match the dtype and the element count', async (t) => {
  t.throws(
    () =>
      checkFeeds('merger', MERGER, {
        features: tensor('float32', new Float64Array(2048) as unknown as Float32Array, [1, 256, 8]),
        assign: f32([1, 2, 256]),
      }),
    { message: /'features' is float32, whose data must be a Float32Array, got Float64Array/ },
  );
  t.throws(
    () =>
      checkFeeds('merger', MERGER, {
        features: tensor('float32', new Float32Array(10), [1, 256, 8]),
        assign: f32([1, 2, 256]),
      }),
    { message: /'features' has 10 elements but dims \[1, 256, 8\] need 2048/ },
  );
  t.throws(
    () =>
      checkFeeds('merger', MERGER, {
        features: f32([1, 256, 8]),
        assign: tensor('float32', new Float32Array(0), [1, -1, 256]),
      }),
    {
      message: /invalid dims/,
    },
  );
});

t.test('a named dim must agree across inputs, and sums follow', async (t) => {
  const sig: StageSignature = {
    inputs: [
      { name: 'a', dtype: 'float32', shape: [1, 'T', 4] },
      { name: 'b', dtype: 'float32', shape: [1, 'T'] },
      { name: 'mask', dtype: 'float32', shape: ['P+T'] },
      { name: 'past', dtype: 'float32', shape: ['P'] },
    ],
    outputs: [],
  };
  t.same(checkFeeds('llm', sig, { a: f32([1, 3, 4]), b: f32([1, 3]), mask: f32([5]), past: f32([2]) }), { T: 3, P: 2 });
  t.throws(() => checkFeeds('llm', sig, { a: f32([1, 3, 4]), b: f32([1, 4]), mask: f32([5]), past: f32([2]) }), {
    message: "stage 'llm': input 'b' axis 1 is dim 'T' = 4, but 'a' set 'T' = 3; inputs must agree on 'T'",
  });
  t.throws(() => checkFeeds('llm', sig, { a: f32([1, 3, 4]), b: f32([1, 3]), mask: f32([6]), past: f32([2]) }), {
    message: "stage 'llm': input 'mask' axis 0 is 'P+T' = 5, got 6",
  });
  t.equal(evalDim('P+T+1', { P: 2, T: 3 }), 6);
  t.equal(evalDim('P+T', { P: 2 }), undefined);
});

t.test('limits bound named dims (e.g. an engine profile)', async (t) => {
  t.throws(
    () =>
      checkFeeds(
        'merger',
        MERGER,
        { features: f32([1, 256, 8]), assign: f32([1, 300, 256]) },
        { L: { min: 1, max: 256 } },
      ),
    {
      message: "stage 'merger': input 'assign' dim 'L' = 300 is outside 1..256",
    },
  );
});

t.test("the contract's LLM signature accepts a decode step with a KV cache", async (t) => {
  const a = {
    image: { size: 224, patch: 14, mean: [0, 0, 0], std: [1, 1, 1] },
    encoder: { width: 8, layers: 1, heads: 1, mlp: 8 },
    cluster: { k: 4, threshold: 0.1, fallback: 4, maxTokens: 16 },
    merger: { heads: 2, depth: 1, mlp: 8, tokenWidth: 8 },
    llm: {
      hidden: 8,
      layers: 2,
      heads: 2,
      kvHeads: 1,
      intermediate: 16,
      vocab: 32,
      maxContext: 64,
      ropeTheta: 10000,
      rmsEps: 1e-5,
    },
    diffusion: { width: 8, layers: 1, steps: 2 },
    detokenizer: { queries: 4, width: 8, layers: 1, heads: 1, imageSize: 32, patch: 8 },
    maskDecoder: { width: 8 },
    tokens: { unk: 0, bos: 1, eos: 2, imStart: 3, imEnd: 4, target: 5 },
  } as Architecture;
  const sig = stageSignature('llm', a);
  const kv = [1, 1, 7, 4];
  const cache = (rows: number[][]) =>
    Object.fromEntries(rows.map((dims, i) => [`${i < 2 ? 'past_keys' : 'past_values'}.${i % 2}`, f32(dims)]));
  const past_length = { dtype: 'int64' as const, dims: [1], data: BigInt64Array.from([3n]), location: 'host' as const };
  t.same(checkFeeds('llm', sig, { inputs_embeds: f32([1, 1, 8]), past_length, ...cache([kv, kv, kv, kv]) }), {
    T: 1,
    S: 7,
  });
  t.throws(
    () => checkFeeds('llm', sig, { inputs_embeds: f32([1, 1, 8]), past_length, ...cache([kv, kv, kv, [1, 1, 6, 4]]) }),
    {
      message: /'past_values.1' axis 2 is dim 'S' = 6, but 'past_keys.0' set 'S' = 7/,
    },
  );
});
