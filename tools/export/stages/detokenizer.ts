/**
 * detokenizer: vision tokens -> image. Learned query tokens (one per output patch) cross-attend to
 * the L vision tokens (Q-Former style), then ViT blocks, a linear pixel decoder and unpatchify:
 *
 *   kv = Linear(tokens)                     D -> W
 *   q  = queries + CrossAttn(LN(queries), LN(kv));  q += MLP(LN(q))
 *   q  = ViTBlocks(q);  pix = Linear(LN(q))     W -> 3 p p per query
 *   image = tanh(unpatchify(pix))           [1, 3, R, R] in [-1, 1]
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { SetokimError } from '../../../src/errors.js';
import { attention, layerNorm, linear, mlp, Model, vitBlock } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';
import { ErrorCodes } from '../../../src/errors.js';

export function buildDetokenizer(a: Architecture, rng: Rng): Model {
  const { queries: Q, width: W, layers, heads, imageSize: R, patch: p } = a.detokenizer;
  const side = R / p;
  if (!Number.isInteger(side) || side * side !== Q) {
    throw new SetokimError(
      ErrorCodes.BAD_CONFIG,
      `detokenizer: queries (${Q}) must equal (imageSize / patch)^2 = (${R} / ${p})^2`,
    );
  }
  const { model: m, inputs, finish } = stageGraph('detokenizer', a, rng);
  const g = m.g;
  const D = a.merger.tokenWidth;
  const kv = layerNorm(m, linear(m, inputs.tokens!, D, W, 'token_proj'), W, 'kv_norm');
  const queries = m.param('queries', [1, Q, W], { std: 1 });
  let q = m.scope('cross', () => {
    const c = g.op('Add', [queries, attention(m, layerNorm(m, queries, W, 'norm1'), W, heads, 'attn', undefined, kv)]);
    return g.op('Add', [c, mlp(m, layerNorm(m, c, W, 'norm2'), W, 4 * W, 'mlp')]);
  });
  for (let l = 0; l < layers; l++) q = vitBlock(m, q, W, heads, 4 * W, `layers.${l}`);
  const pix = linear(m, layerNorm(m, q, W, 'norm'), W, 3 * p * p, 'pixel_decoder'); // [1, Q, (p, p, 3)]
  const grid = g.op('Reshape', [pix, g.ints([1, side, side, p, p, 3])]);
  const chw = g.op('Transpose', [grid], { perm: [0, 5, 1, 3, 2, 4] }); // [1, 3, side, p, side, p]
  const image = g.op('Tanh', [g.op('Reshape', [chw, g.ints([1, 3, R, R])])]);
  return finish({ image });
}
