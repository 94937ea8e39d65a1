/**
 * The merger computes every cluster at once with one masked attention (docs/SETOK.md). Check that this
 * equals running each cluster's patches alone, block by block and for the whole stage.
 */
import t from 'tap';
import { CONFIGS } from '../../tools/export/configs.js';
import { Model } from '../../tools/export/onnx/layers.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildMerger, meanPool, mergerBlock, mergerHead, sameClusterMask } from '../../tools/export/stages/merger.js';
import { data, decodeModel, f32, gatherRows, maxAbsDiff, randn, run } from './helpers.js';

const a = CONFIGS.tiny;
const C = a.encoder.width;
const SEED = 11;

/** Labels in scattered order (not contiguous runs), every cluster non-empty. */
function labelsFor(n: number, L: number, seed: number): number[] {
  const r = new Rng(seed);
  const labels = Array.from({ length: n }, (_, i) => (i < L ? i : Math.floor(r.next() * L)));
  return labels;
}

function assignOf(labels: number[], L: number): Float32Array {
  const n = labels.length;
  const out = new Float32Array(L * n);
  labels.forEach((l, i) => (out[l * n + i] = 1));
  return out;
}

const members = (labels: number[], l: number) => labels.flatMap((x, i) => (x === l ? [i] : []));

t.test('one masked inner block over all patches = the block on each cluster alone', async (t) => {
  const masked = new Model('masked', new Rng(SEED));
  {
    const x = masked.g.input('x', 'float32', [1, 'N', C]);
    const assign = masked.g.input('assign', 'float32', [1, 'L', 'N']);
    masked.g.output('y', mergerBlock(masked, x, a, 'inner', sameClusterMask(masked, assign)), 'float32', [1, 'N', C]);
  }
  const alone = new Model('alone', new Rng(SEED)); // same seed and names: same weights
  {
    const x = alone.g.input('x', 'float32', [1, 'N', C]);
    alone.g.output('y', mergerBlock(alone, x, a, 'inner'), 'float32', [1, 'N', C]);
  }
  const n = 40;
  const L = 5;
  const labels = labelsFor(n, L, 3);
  const xs = randn(n * C, 4, 2);
  const all = data((await run(masked, { x: f32(xs, [1, n, C]), assign: f32(assignOf(labels, L), [1, L, n]) })).y);
  for (let l = 0; l < L; l++) {
    const rows = members(labels, l);
    const one = data((await run(alone, { x: f32(gatherRows(xs, C, rows), [1, rows.length, C]) })).y);
    t.ok(maxAbsDiff(gatherRows(all, C, rows), one) < 1e-4, `cluster ${l} (${rows.length} patches)`);
  }
  // and the mask matters: without it, outputs differ
  const unmasked = data((await run(alone, { x: f32(xs, [1, n, C]) })).y);
  t.ok(maxAbsDiff(all, unmasked) > 1e-2, 'masking changes the result');
});

t.test('merger stage = inner per cluster, mean pool, inter, Linear, projector', async (t) => {
  const G = a.image.size / a.image.patch;
  const N = G * G;
  const L = 7;
  const labels = labelsFor(N, L, 8);
  const feats = randn(N * C, 9, 2);
  const stage = await run(buildMerger(a, new Rng(SEED)), {
    features: f32(feats, [1, N, C]),
    assign: f32(assignOf(labels, L), [1, L, N]),
  });
  t.same(stage.tokens!.dims, [1, L, a.merger.tokenWidth]);
  t.same(stage.embeds!.dims, [1, L, a.llm.hidden]);

  // the same weights, composed by hand: the stage graph forks its generator with the stage name
  const rng = new Rng(SEED).fork('merger');
  const inner = new Model('inner', rng);
  const x = inner.g.input('x', 'float32', [1, 'N', C]);
  inner.g.output('y', mergerBlock(inner, x, a, 'inner'), 'float32', [1, 'N', C]);
  const pooled = new Float32Array(L * C);
  for (let l = 0; l < L; l++) {
    const rows = members(labels, l);
    const y = data((await run(inner, { x: f32(gatherRows(feats, C, rows), [1, rows.length, C]) })).y);
    for (let r = 0; r < rows.length; r++) for (let c = 0; c < C; c++) pooled[l * C + c] += y[r * C + c]! / rows.length;
  }
  const head = new Model('head', rng);
  const p = head.g.input('pooled', 'float32', [1, 'L', C]);
  const out = mergerHead(head, p, a);
  head.g.output('tokens', out.tokens, 'float32', [1, 'L', a.merger.tokenWidth]);
  head.g.output('embeds', out.embeds, 'float32', [1, 'L', a.llm.hidden]);
  const ref = await run(head, { pooled: f32(pooled, [1, L, C]) });
  t.ok(maxAbsDiff(data(stage.tokens), data(ref.tokens)) < 1e-4, 'tokens');
  t.ok(maxAbsDiff(data(stage.embeds), data(ref.embeds)) < 1e-4, 'embeds');
});

t.test('mean pool divides by each cluster size', async (t) => {
  const m = new Model('pool', new Rng(1));
  const assign = m.g.input('assign', 'float32', [1, 'L', 'N']);
  const x = m.g.input('x', 'float32', [1, 'N', 2]);
  m.g.output('y', meanPool(m, assign, x), 'float32', [1, 'L', 2]);
  const labels = [0, 1, 1, 0, 1];
  const xs = [1, 10, 2, 20, 3, 30, 4, 40, 6, 60];
  const y = data((await run(m, { assign: f32(assignOf(labels, 2), [1, 2, 5]), x: f32(xs, [1, 5, 2]) })).y);
  t.same(Array.from(y), [2.5, 25, 11 / 3, 110 / 3].map(Math.fround));
});

t.test('each merger block: depth attention layers share one LayerNorm, then one MLP', async (t) => {
  const graph = decodeModel(buildMerger(a, new Rng(1)).g.encode()).graph!;
  const inits = graph.initializer!.map((i) => i.name!);
  for (const block of ['inner', 'inter']) {
    t.same(inits.filter((n) => n.startsWith(`${block}/norm1/`)).sort(), [
      `${block}/norm1/bias`,
      `${block}/norm1/weight`,
    ]);
    const users = graph.node!.filter(
      (n) => n.opType === 'LayerNormalization' && n.input![1] === `${block}/norm1/weight`,
    );
    t.equal(users.length, a.merger.depth, `${block}: norm1 used by ${a.merger.depth} attention layers`);
    for (let i = 0; i < a.merger.depth; i++) t.ok(inits.includes(`${block}/attn.${i}/q_proj/weight`));
    t.notOk(inits.includes(`${block}/attn.${a.merger.depth}/q_proj/weight`));
    t.ok(inits.includes(`${block}/mlp/fc1/weight`) && !inits.some((n) => n.startsWith(`${block}/mlp.`)), 'one MLP');
  }
});
