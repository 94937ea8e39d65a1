/**
 * diffusion: a MAR-style per-token denoiser (SimpleMLPAdaLN). Predicts eps for x [B, D] at time
 * t [B] (0..1, cosine schedule), conditioned on the LLM hidden state cond [B, H].
 *
 *   c = MLP(sincos(1000 t)) + Linear(cond)
 *   h = Linear(x); per layer: shift, scale, gate = Linear(SiLU(c));
 *                             h += gate * MLP(LN(h) * (1 + scale) + shift)
 *   eps = Linear(LN(h) * (1 + scale') + shift')          (final AdaLN layer)
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { layerNorm, linear, Model, silu } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

/** Sinusoidal embedding of t * 1000 ([B] -> [B, W]), frequencies 10000^(-j / (W/2)) built in-graph. */
function timestepEmbedding(m: Model, t: string, width: number): string {
  const g = m.g;
  const half = width / 2;
  const freqs = g.op('Pow', [g.scalar(10000), g.floats(Array.from({ length: half }, (_, j) => -j / half))]);
  const args = g.op('Mul', [
    g.op('Unsqueeze', [g.op('Mul', [t, g.scalar(1000)]), g.ints([1])]),
    g.op('Unsqueeze', [freqs, g.ints([0])]),
  ]);
  return g.op('Concat', [g.op('Cos', [args]), g.op('Sin', [args])], { axis: -1 });
}

/** LN(h) * (1 + scale) + shift, with LN without learned affine (the modulation replaces it). */
function modulate(m: Model, h: string, shift: string, scale: string, width: number, name: string): string {
  const g = m.g;
  return g.op('Add', [
    g.op('Mul', [layerNorm(m, h, width, name, 1e-6, false), g.op('Add', [scale, g.scalar(1)])]),
    shift,
  ]);
}

export function buildDiffusion(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('diffusion', a, rng);
  const g = m.g;
  const W = a.diffusion.width;
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const temb = m.scope('time_embed', () =>
    linear(m, silu(m, linear(m, timestepEmbedding(m, inputs.t!, W), W, W, 'fc1')), W, W, 'fc2'),
  );
  const c = g.op('Add', [temb, linear(m, inputs.cond!, H, W, 'cond_embed')]);
  const cAct = silu(m, c);
  let h = linear(m, inputs.x!, D, W, 'input_proj');
  for (let l = 0; l < a.diffusion.layers; l++) {
    h = m.scope(`res_blocks.${l}`, () => {
      const [shift, scale, gate] = g.opN('Split', [linear(m, cAct, W, 3 * W, 'adaLN'), g.ints([W, W, W])], 3, {
        axis: -1,
      });
      const y = modulate(m, h, shift!, scale!, W, 'norm');
      const f = m.scope('mlp', () => linear(m, silu(m, linear(m, y, W, W, 'fc1')), W, W, 'fc2'));
      return g.op('Add', [h, g.op('Mul', [gate!, f])]);
    });
  }
  const eps = m.scope('final_layer', () => {
    const [shift, scale] = g.opN('Split', [linear(m, cAct, W, 2 * W, 'adaLN'), g.ints([W, W])], 2, { axis: -1 });
    return linear(m, modulate(m, h, shift!, scale!, W, 'norm'), W, D, 'linear');
  });
  return finish({ eps });
}
