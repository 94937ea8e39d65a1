/**
 * mask_decoder: mask logits on the G x G patch grid.
 *
 *   f = MLP(LN(features))                    [1, N, W]  projected patch features
 *   t = Linear(tokens); t += CrossAttn(LN(t), f); t = Linear(t)       [1, L, W]
 *   token_masks    = t f^T / sqrt(W)          reshaped to [1, L, G, G]
 *   referring_mask = Linear(prompt) f^T / sqrt(W)   (prompt: the LLM hidden state at <target>)
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { patchGrid } from '../../../src/engine/contract.js';
import { attention, layerNorm, linear, mlp, Model } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

export function buildMaskDecoder(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('mask_decoder', a, rng);
  const g = m.g;
  const W = a.maskDecoder.width;
  const C = a.encoder.width;
  const G = patchGrid(a);
  const heads = W % 64 === 0 ? W / 64 : 1;
  const f = mlp(m, layerNorm(m, inputs.features!, C, 'feature_norm'), C, W, 'feature_proj', W); // [1, N, W]
  const fT = g.op('Transpose', [f], { perm: [0, 2, 1] }); // [1, W, N]
  const scale = g.scalar(1 / Math.sqrt(W));
  let t = linear(m, inputs.tokens!, a.merger.tokenWidth, W, 'token_proj');
  t = g.op('Add', [t, attention(m, layerNorm(m, t, W, 'token_norm'), W, heads, 'token_to_patch', undefined, f)]);
  t = linear(m, t, W, W, 'token_out');
  const tokenMasks = g.op('Reshape', [g.op('Mul', [g.op('MatMul', [t, fT]), scale]), g.ints([1, -1, G, G])]);
  const p = linear(m, inputs.prompt!, a.llm.hidden, W, 'prompt_proj');
  const referring = g.op('Reshape', [g.op('Mul', [g.op('MatMul', [p, fT]), scale]), g.ints([1, 1, G, G])]);
  return finish({ token_masks: tokenMasks, referring_mask: referring });
}
