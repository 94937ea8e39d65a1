/**
 * encoder: a SigLIP-like ViT. Conv patch embedding (kernel = stride = patch), learned position
 * embedding, pre-LN blocks with GELU MLPs. The output is the last hidden state *before* the
 * post-LayerNorm, with no CLS token: [batch, N, C].
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { patchGrid } from '../../../src/engine/contract.js';
import { Model, vitBlock } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

/**
 * Patch-embedding weight std. Pixels are in [-1, 1]; this scale sets how far apart the features of
 * different image content are, against the unit-scale 2-D position encoding that is added before
 * clustering, and so (with the absolute threshold) how many vision tokens an image gives.
 */
export const PATCH_EMBED_GAIN = 2;

export function buildEncoder(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('encoder', a, rng);
  const g = m.g;
  const { width: C, layers, heads, mlp } = a.encoder;
  const p = a.image.patch;
  const N = patchGrid(a) ** 2;
  let x = m.scope('patch_embed', () => {
    const w = m.param('weight', [C, 3, p, p], { std: PATCH_EMBED_GAIN / Math.sqrt(3 * p * p) });
    const b = m.param('bias', [C], { std: 0.02 });
    const conv = g.op('Conv', [inputs.pixels!, w, b], { kernel_shape: [p, p], strides: [p, p] }); // [b, C, G, G]
    return g.op('Transpose', [g.op('Reshape', [conv, g.ints([0, C, N])])], { perm: [0, 2, 1] }); // [b, N, C]
  });
  x = g.op('Add', [x, m.param('position_embedding', [1, N, C], { std: 0.02 })]);
  for (let l = 0; l < layers; l++) x = vitBlock(m, x, C, heads, mlp, `layers.${l}`);
  return finish({ features: x });
}
