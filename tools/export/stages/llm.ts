/**
 * llm: a LLaMA decoder (RMSNorm, RoPE, SwiGLU, causal attention) over a fixed-capacity KV cache,
 * one graph for prefill and decode (docs/CONTRACT.md, "llm").
 *
 *   P = past_length (a value, not a shape), S = past_keys.l.shape[2] (the cache's rows, P <= S),
 *   T = inputs_embeds.shape[1]; new tokens sit at positions P .. P+T-1.
 *   Per layer: scores against the cache (rows j < P count, the rest are masked) and against the
 *   new keys (causal) go through one softmax; the output is probs_cache @ V_cache + probs_new @ V_new.
 *   new_{keys,values}.l = the new tokens' (rotated) keys and values; the runtime writes them into
 *   the cache at row P. Nothing here copies the cache: it is only read, by the two MatMuls.
 *   hidden = final RMSNorm of the last position; logits = hidden @ lm_head.
 */
import type { Architecture } from '../../../src/engine/contract.js';
import { headDim } from '../../../src/engine/contract.js';
import {
  dim,
  linear,
  MASK_NEG,
  mergeHeads,
  Model,
  rmsNorm,
  rope,
  ropeTables,
  splitHeads,
  swiglu,
} from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';
import { stageGraph } from './io.js';

/** Values shared by every layer: positions, masks and the indices that split the probabilities. */
interface Shared {
  cos: string;
  sin: string;
  /** [S] additive: 0 for filled cache rows (j < P), MASK_NEG for the rest. */
  cacheMask: string;
  /** [T, T] additive causal mask among the new tokens. */
  newMask: string;
  cacheCols: string;
  newCols: string;
}

function shared(m: Model, pastLength: string, S: string, T: string, hd: number, theta: number): Shared {
  const g = m.g;
  const zero = g.ints([0], []);
  const one = g.ints([1], []);
  const { cos, sin } = ropeTables(m, pastLength, T, hd, theta);
  return m.scope('masks', () => {
    const rows = g.op('Range', [zero, S, one]); // [S]
    const steps = g.op('Range', [zero, T, one]); // [T]
    const filled = g.op('Greater', [pastLength, rows]); // j < P
    const future = g.op('Greater', [g.op('Unsqueeze', [steps, g.ints([0])]), g.op('Unsqueeze', [steps, g.ints([1])])]);
    return {
      cos,
      sin,
      cacheMask: g.op('Where', [filled, g.scalar(0), g.scalar(MASK_NEG)]),
      newMask: g.op('Where', [future, g.scalar(MASK_NEG), g.scalar(0)]),
      cacheCols: rows,
      newCols: g.op('Range', [S, g.op('Add', [S, T]), one]),
    };
  });
}

export function buildLlm(a: Architecture, rng: Rng): Model {
  const { model: m, inputs, finish } = stageGraph('llm', a, rng);
  const g = m.g;
  const { hidden: H, layers, heads, kvHeads, intermediate, vocab, ropeTheta, rmsEps } = a.llm;
  const hd = headDim(a);
  const rep = heads / kvHeads;
  const pastLength = inputs.past_length!;
  const T = dim(m, inputs.inputs_embeds!, 1);
  const S = dim(m, inputs['past_keys.0']!, 2);
  const sh = shared(m, pastLength, S, T, hd, ropeTheta);
  const scale = g.scalar(1 / Math.sqrt(hd));
  const transposeLast = (x: string) => g.op('Transpose', [x], { perm: [0, 1, 3, 2] });
  const outputs: Record<string, string> = {};
  let x = inputs.inputs_embeds!;
  for (let l = 0; l < layers; l++) {
    x = m.scope(`layers.${l}`, () => {
      const h = rmsNorm(m, x, H, 'input_layernorm', rmsEps);
      const attn = m.scope('self_attn', () => {
        const q = rope(
          m,
          splitHeads(m, linear(m, h, H, heads * hd, 'q_proj', { bias: false }), heads, hd),
          sh.cos,
          sh.sin,
          hd,
        );
        const kNew = rope(
          m,
          splitHeads(m, linear(m, h, H, kvHeads * hd, 'k_proj', { bias: false }), kvHeads, hd),
          sh.cos,
          sh.sin,
          hd,
        );
        const vNew = splitHeads(m, linear(m, h, H, kvHeads * hd, 'v_proj', { bias: false }), kvHeads, hd);
        outputs[`new_keys.${l}`] = kNew;
        outputs[`new_values.${l}`] = vNew;
        const kCache = repeatKv(m, inputs[`past_keys.${l}`]!, kvHeads, rep, hd);
        const vCache = repeatKv(m, inputs[`past_values.${l}`]!, kvHeads, rep, hd);
        const qs = g.op('Mul', [q, scale]);
        const sCache = g.op('Add', [g.op('MatMul', [qs, transposeLast(kCache)]), sh.cacheMask]); // [1, heads, T, S]
        const sNew = g.op('Add', [
          g.op('MatMul', [qs, transposeLast(repeatKv(m, kNew, kvHeads, rep, hd))]),
          sh.newMask,
        ]); // [1, heads, T, T]
        const p = g.op('Softmax', [g.op('Concat', [sCache, sNew], { axis: -1 })], { axis: -1 });
        const o = g.op('Add', [
          g.op('MatMul', [g.op('Gather', [p, sh.cacheCols], { axis: 3 }), vCache]),
          g.op('MatMul', [g.op('Gather', [p, sh.newCols], { axis: 3 }), repeatKv(m, vNew, kvHeads, rep, hd)]),
        ]);
        return linear(m, mergeHeads(m, o, heads, hd), heads * hd, H, 'o_proj', { bias: false });
      });
      const r = g.op('Add', [x, attn]);
      return g.op('Add', [r, swiglu(m, rmsNorm(m, r, H, 'post_attention_layernorm', rmsEps), H, intermediate, 'mlp')]);
    });
  }
  // Only the last position goes through the final norm and lm_head: it is all the runtime reads.
  const lastIndex = g.op('Unsqueeze', [g.op('Sub', [T, g.ints([1], [])]), g.ints([0])]); // [1]
  const hidden = rmsNorm(m, g.op('Gather', [x, lastIndex], { axis: 1 }), H, 'norm', rmsEps); // [1, 1, H]
  const logits = linear(m, hidden, H, vocab, 'lm_head', { bias: false });
  return finish({ logits, hidden, ...outputs });
}

/** Grouped-query attention: repeat each KV head `rep` times ([1, kvH, S, hd] -> [1, kvH*rep, S, hd]). */
function repeatKv(m: Model, x: string, kvHeads: number, rep: number, hd: number): string {
  if (rep === 1) return x;
  const g = m.g;
  const e = g.op('Expand', [g.op('Unsqueeze', [x, g.ints([2])]), g.ints([1, 1, rep, 1, 1])]);
  return g.op('Reshape', [e, g.ints([1, kvHeads * rep, -1, hd])]);
}
