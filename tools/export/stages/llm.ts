/**
 * llm: a LLaMA decoder (RMSNorm, RoPE, SwiGLU, causal attention) with an explicit KV cache, one
 * graph for prefill (P = 0) and decode (T = 1).
 *
 *   P = past_keys.shape[3], T = inputs_embeds.shape[1]; new tokens sit at positions P .. P+T-1.
 *   mask[i][j] = 0 if j <= P + i else -30000, over the P + T keys (past first, then new).
 *   present_{keys,values}[l] = concat(past[l], new[l]) along the sequence axis.
 *   hidden = final RMSNorm output; logits = hidden @ lm_head.
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { headDim } from '../../../src/engine/contract.js';
import { dim, linear, MASK_NEG, mergeHeads, Model, rmsNorm, rope, ropeTables, sdpa, splitHeads, swiglu } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

export function buildLlm(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('llm', a, rng);
  const g = m.g;
  const { hidden: H, layers, heads, kvHeads, intermediate, vocab, ropeTheta, rmsEps } = a.llm;
  const hd = headDim(a);
  const pastK = inputs.past_keys!;
  const pastV = inputs.past_values!;
  const P = dim(m, pastK, 3);
  const T = dim(m, inputs.inputs_embeds!, 1);
  const { cos, sin } = ropeTables(m, P, T, hd, ropeTheta);
  const mask = m.scope('causal_mask', () => {
    const one = g.ints([1], []);
    const qpos = g.op('Range', [P, g.op('Add', [P, T]), one]); // [T]
    const kpos = g.op('Range', [g.ints([0], []), g.op('Add', [P, T]), one]); // [P+T]
    const future = g.op('Greater', [g.op('Unsqueeze', [kpos, g.ints([0])]), g.op('Unsqueeze', [qpos, g.ints([1])])]);
    return g.op('Where', [future, g.scalar(MASK_NEG), g.scalar(0)]); // [T, P+T]
  });
  const presentK: string[] = [];
  const presentV: string[] = [];
  let x = inputs.inputs_embeds!;
  for (let l = 0; l < layers; l++) {
    x = m.scope(`layers.${l}`, () => {
      const h = rmsNorm(m, x, H, 'input_layernorm', rmsEps);
      const attn = m.scope('self_attn', () => {
        const q = rope(m, splitHeads(m, linear(m, h, H, heads * hd, 'q_proj', { bias: false }), heads, hd), cos, sin, hd);
        const kNew = rope(m, splitHeads(m, linear(m, h, H, kvHeads * hd, 'k_proj', { bias: false }), kvHeads, hd), cos, sin, hd);
        const vNew = splitHeads(m, linear(m, h, H, kvHeads * hd, 'v_proj', { bias: false }), kvHeads, hd);
        const layer = g.ints([l], []);
        const k = g.op('Concat', [g.op('Gather', [pastK, layer], { axis: 0 }), kNew], { axis: 2 }); // [1, kvH, P+T, hd]
        const v = g.op('Concat', [g.op('Gather', [pastV, layer], { axis: 0 }), vNew], { axis: 2 });
        presentK.push(g.op('Unsqueeze', [k, g.ints([0])]));
        presentV.push(g.op('Unsqueeze', [v, g.ints([0])]));
        const o = sdpa(m, q, repeatKv(m, k, kvHeads, heads / kvHeads, hd), repeatKv(m, v, kvHeads, heads / kvHeads, hd), hd, mask);
        return linear(m, mergeHeads(m, o, heads, hd), heads * hd, H, 'o_proj', { bias: false });
      });
      const r = g.op('Add', [x, attn]);
      return g.op('Add', [r, swiglu(m, rmsNorm(m, r, H, 'post_attention_layernorm', rmsEps), H, intermediate, 'mlp')]);
    });
  }
  const hidden = rmsNorm(m, x, H, 'norm', rmsEps);
  const logits = linear(m, hidden, H, vocab, 'lm_head', { bias: false });
  return finish({
    logits,
    hidden,
    present_keys: g.op('Concat', presentK, { axis: 0 }),
    present_values: g.op('Concat', presentV, { axis: 0 }),
  });
}

/** Grouped-query attention: repeat each KV head `rep` times ([1, kvH, S, hd] -> [1, kvH*rep, S, hd]). */
function repeatKv(m: Model, x: string, kvHeads: number, rep: number, hd: number): string {
  if (rep === 1) return x;
  const g = m.g;
  const e = g.op('Expand', [g.op('Unsqueeze', [x, g.ints([2])]), g.ints([1, 1, rep, 1, 1])]);
  return g.op('Reshape', [e, g.ints([1, kvHeads * rep, -1, hd])]);
}
