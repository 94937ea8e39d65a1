/**
 * merger: SeTok's token merger plus the input projector (docs/SETOK.md "Merger").
 *
 *   Block(x, mask) = for i < depth: x += attn_i(LN(x), mask)   (one LayerNorm shared by all)
 *                    x += MLP(LN2(x))                          (GELU)
 *   inner  = Block(features, same-cluster mask)    one masked attention computes every cluster
 *   pooled = assign @ inner / counts               mean over each cluster's patches
 *   inter  = Block(pooled)                         across the L cluster vectors
 *   tokens = Linear(inter)                         C -> D
 *   embeds = Linear(GELU(Linear(tokens)))          projector D -> H -> H
 *
 * The mask is derived in the graph from `assign` [1, L, N] (assign[l][n] = 1 iff label n = l):
 * same = assign^T assign is 1 where two patches share a cluster, so the additive mask is
 * (same - 1) * 30000.
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { attention, layerNorm, linear, MASK_NEG, mlp, Model, gelu } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

export function mergerBlock(m: Model, x: string, a: Architecture, name: string, mask?: string): string {
  const C = a.encoder.width;
  const { heads, depth, mlp: hidden } = a.merger;
  return m.scope(name, () => {
    // one LayerNorm (norm1) shared by the block's `depth` attention layers
    const [w, b] = m.scope('norm1', () => [m.param('weight', [C], { value: 1 }), m.param('bias', [C], { value: 0 })]);
    let h = x;
    for (let i = 0; i < depth; i++) {
      const normed = m.g.op('LayerNormalization', [h, w!, b!], { axis: -1, epsilon: { float: 1e-6 } });
      h = m.g.op('Add', [h, attention(m, normed, C, heads, `attn.${i}`, mask)]);
    }
    return m.g.op('Add', [h, mlp(m, layerNorm(m, h, C, 'norm2'), C, hidden, 'mlp')]);
  });
}

/** Additive [1, 1, N, N] mask from assign [1, L, N]: 0 where two patches share a cluster, -30000 elsewhere. */
export function sameClusterMask(m: Model, assign: string): string {
  const g = m.g;
  const same = g.op('MatMul', [g.op('Transpose', [assign], { perm: [0, 2, 1] }), assign]); // [1, N, N]
  return g.op('Unsqueeze', [g.op('Mul', [g.op('Sub', [same, g.scalar(1)]), g.scalar(-MASK_NEG)]), g.ints([1])]);
}

/** Mean of each cluster's rows: assign @ x / counts, [1, L, C]. */
export function meanPool(m: Model, assign: string, x: string): string {
  const g = m.g;
  const counts = g.op('ReduceSum', [assign, g.ints([2])], { keepdims: 1 }); // [1, L, 1]
  return g.op('Div', [g.op('MatMul', [assign, x]), counts]);
}

/** After pooling: the inter-cluster block, Linear to D, and the projector to H. */
export function mergerHead(m: Model, pooled: string, a: Architecture): { tokens: string; embeds: string } {
  const C = a.encoder.width;
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const inter = mergerBlock(m, pooled, a, 'inter');
  const tokens = linear(m, inter, C, D, 'to_token');
  const embeds = m.scope('projector', () => linear(m, gelu(m, linear(m, tokens, D, H, 'fc1')), H, H, 'fc2'));
  return { tokens, embeds };
}

export function buildMerger(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('merger', a, rng);
  const inner = mergerBlock(m, inputs.features!, a, 'inner', sameClusterMask(m, inputs.assign!));
  return finish(mergerHead(m, meanPool(m, inputs.assign!, inner), a));
}
