/**
 * The whole LLM graph against a plain TypeScript LLaMA forward pass that reads the same weights
 * back out of the ONNX file; and the encoder's patch embedding against raster-order patches.
 */
import t from 'tap';
import { headDim } from '../../src/engine/contract.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildEncoder } from '../../tools/export/stages/encoder.js';
import { buildLlm } from '../../tools/export/stages/llm.js';
import { data, decodeModel, f32, i64, maxAbsDiff, randn, run } from './helpers.js';

function weights(bytes: Uint8Array): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const w of decodeModel(bytes).graph!.initializer!) {
    const raw = w.rawData!;
    if (w.dataType !== 1) continue;
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    out.set(
      w.name!,
      Float32Array.from({ length: raw.byteLength / 4 }, (_, i) => view.getFloat32(i * 4, true)),
    );
  }
  return out;
}

/** x [rows, inF] @ w [inF, outF] */
function matmul(x: Float64Array, rows: number, inF: number, w: Float32Array, outF: number): Float64Array {
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < inF; i++) {
      const xv = x[r * inF + i]!;
      for (let o = 0; o < outF; o++) y[r * outF + o] += xv * w[i * outF + o]!;
    }
  return y;
}

function rms(x: Float64Array, rows: number, width: number, w: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let ms = 0;
    for (let c = 0; c < width; c++) ms += x[r * width + c]! ** 2;
    const inv = 1 / Math.sqrt(ms / width + eps);
    for (let c = 0; c < width; c++) y[r * width + c] = x[r * width + c]! * inv * w[c]!;
  }
  return y;
}

t.test('llm graph = TypeScript LLaMA forward (RMSNorm, RoPE, causal attention, SwiGLU)', async (t) => {
  const a = CONFIGS.tiny;
  const { hidden: H, layers, heads, intermediate: I, vocab: V, rmsEps, ropeTheta } = a.llm;
  const hd = headDim(a);
  const bytes = buildLlm(a, new Rng(9)).g.encode();
  const W = weights(bytes);
  const w = (n: string) => {
    const v = W.get(n);
    if (!v) throw new Error(`no weight ${n}`);
    return v;
  };
  const T = 5;
  const emb = randn(T * H, 3);
  let x = Float64Array.from(emb);
  for (let l = 0; l < layers; l++) {
    const p = `layers.${l}`;
    const h = rms(x, T, H, w(`${p}/input_layernorm/weight`), rmsEps);
    const q = matmul(h, T, H, w(`${p}/self_attn/q_proj/weight`), H);
    const k = matmul(h, T, H, w(`${p}/self_attn/k_proj/weight`), H);
    const v = matmul(h, T, H, w(`${p}/self_attn/v_proj/weight`), H);
    for (const m of [q, k]) {
      for (let pos = 0; pos < T; pos++)
        for (let hh = 0; hh < heads; hh++) {
          const base = pos * H + hh * hd;
          for (let i = 0; i < hd / 2; i++) {
            const ang = pos * ropeTheta ** ((-2 * i) / hd);
            const [x1, x2] = [m[base + i]!, m[base + i + hd / 2]!];
            m[base + i] = x1 * Math.cos(ang) - x2 * Math.sin(ang);
            m[base + i + hd / 2] = x2 * Math.cos(ang) + x1 * Math.sin(ang);
          }
        }
    }
    const o = new Float64Array(T * H);
    for (let hh = 0; hh < heads; hh++)
      for (let i = 0; i < T; i++) {
        const s = Array.from({ length: i + 1 }, (_, j) => {
          let dot = 0;
          for (let d = 0; d < hd; d++) dot += q[i * H + hh * hd + d]! * k[j * H + hh * hd + d]!;
          return dot / Math.sqrt(hd);
        });
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const sum = e.reduce((z, y) => z + y, 0);
        for (let j = 0; j <= i; j++)
          for (let d = 0; d < hd; d++) o[i * H + hh * hd + d] += (e[j]! / sum) * v[j * H + hh * hd + d]!;
      }
    const attn = matmul(o, T, H, w(`${p}/self_attn/o_proj/weight`), H);
    x = x.map((z, i) => z + attn[i]!);
    const h2 = rms(x, T, H, w(`${p}/post_attention_layernorm/weight`), rmsEps);
    const g = matmul(h2, T, H, w(`${p}/mlp/gate_proj/weight`), I);
    const u = matmul(h2, T, H, w(`${p}/mlp/up_proj/weight`), I);
    const act = g.map((z, i) => (z / (1 + Math.exp(-z))) * u[i]!);
    const down = matmul(act, T, I, w(`${p}/mlp/down_proj/weight`), H);
    x = x.map((z, i) => z + down[i]!);
  }
  const hidden = rms(x, T, H, w('norm/weight'), rmsEps);
  const logits = matmul(hidden, T, H, w('lm_head/weight'), V);

  const empty = f32([], [1, a.llm.kvHeads, 0, hd]);
  const cache = Object.fromEntries(
    ['past_keys', 'past_values'].flatMap((n) => Array.from({ length: layers }, (_, l) => [`${n}.${l}`, empty])),
  );
  const out = await run(bytes, { inputs_embeds: f32(emb, [1, T, H]), past_length: i64([0], [1]), ...cache });
  // The graph returns the last position only.
  const lastHidden = hidden.subarray((T - 1) * H);
  const lastLogits = logits.subarray((T - 1) * V);
  t.ok(
    maxAbsDiff(data(out.hidden), lastHidden) < 1e-4,
    `hidden (max diff ${maxAbsDiff(data(out.hidden), lastHidden).toExponential(2)})`,
  );
  t.ok(
    maxAbsDiff(data(out.logits), lastLogits) < 1e-3,
    `logits (max diff ${maxAbsDiff(data(out.logits), lastLogits).toExponential(2)})`,
  );
  // The new keys are the rotated keys of every position: layer 0's at the last position, head 0.
  t.same(out['new_keys.0']!.dims, [1, a.llm.kvHeads, T, hd]);
});

t.test('encoder patches are taken in raster order: patch n = (row n / G, column n % G)', async (t) => {
  const a = { ...CONFIGS.tiny, encoder: { ...CONFIGS.tiny.encoder, layers: 0 } }; // embedding only
  const bytes = buildEncoder(a, new Rng(4)).g.encode();
  const W = weights(bytes);
  const conv = W.get('patch_embed/weight')!; // [C, 3, p, p]
  const bias = W.get('patch_embed/bias')!;
  const pos = W.get('position_embedding')!;
  const { size: S, patch: p } = a.image;
  const G = S / p;
  const C = a.encoder.width;
  const px = randn(3 * S * S, 5);
  const feats = data((await run(bytes, { pixels: f32(px, [1, 3, S, S]) })).features);
  let worst = 0;
  for (const n of [0, 1, G - 1, G, 5 * G + 7, G * G - 1]) {
    const [r, c] = [Math.floor(n / G), n % G];
    for (let o = 0; o < C; o++) {
      let z = bias[o]! + pos[n * C + o]!;
      for (let ch = 0; ch < 3; ch++)
        for (let y = 0; y < p; y++)
          for (let xx = 0; xx < p; xx++) {
            z += conv[((o * 3 + ch) * p + y) * p + xx]! * px[ch * S * S + (r * p + y) * S + (c * p + xx)]!;
          }
      worst = Math.max(worst, Math.abs(z - feats[n * C + o]!));
    }
  }
  t.ok(worst < 1e-4, `max diff ${worst.toExponential(2)}`);
});
