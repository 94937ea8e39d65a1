/**
 * The weights of each stage as tools/export/stages builds them, and their bytes at each precision
 * as `export quantize` writes them (the TensorRT dialect: what `export engine` builds from):
 *
 * - fp32: every tensor 4 bytes;
 * - fp16: every tensor 2 bytes, except LayerNorm scale and bias, which stay float32 (they feed the
 *   float32 LayerNormalization, src/quant/fp16.ts);
 * - int8: a linear matrix of >= DEFAULT_MIN_ELEMENTS values as int8 plus a float32 scale and an int8
 *   zero point per column; every other tensor stays float32 (the int8 graphs compute in float32);
 *   the embed stage (a Gather) has no int8 build: its fp32 file;
 * - int4w: the INT4 stages' linear matrices 4 bits with a float16 scale per block (int4Block of the
 *   requested size), the output head (lm_head) float16, plus the most the float16 share of the INT4
 *   weights (--fp16-share and --fp16-max-mib: the MatMuls measured most sensitive) can add; everything
 *   else, and every other stage, the fp16 build.
 *
 * Parameter counts mirror the built graphs (test/export/plan.test.ts checks them against `tiny`,
 * and the bytes against the builds of `tiny`; bench/quant.ts against the files written for `small`).
 */
import { headDim, type Architecture, type StageName } from '../../src/engine/contract.js';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_FP16_MAX_MIB,
  DEFAULT_FP16_SHARE,
  FP16_EXTRA_BYTES,
  fp16Budget,
  DEFAULT_MIN_ELEMENTS,
  INT4_STAGES,
  int4Block,
  int4Bytes,
} from '../../src/quant/index.js';
import { TEXT_VOCAB } from './configs.js';

export const PRECISIONS = ['fp32', 'fp16', 'int8', 'int4w'] as const;
export type Precision = (typeof PRECISIONS)[number];

/**
 * A weight tensor: a linear layer's matrix plus its bias (`head`: the output projection, lm_head), a
 * LayerNorm's parameters, or any other tensor.
 */
export type Weight =
  | { kind: 'linear'; in: number; out: number; bias: boolean; count: number; head: boolean }
  | { kind: 'norm'; n: number; count: number }
  | { kind: 'other'; n: number; count: number };

export const lin = (inF: number, outF: number, count = 1, bias = true, head = false): Weight => ({
  kind: 'linear',
  in: inF,
  out: outF,
  bias,
  count,
  head,
});
export const other = (n: number, count = 1): Weight => ({ kind: 'other', n, count });
export const ln = (w: number, count = 1): Weight => ({ kind: 'norm', n: 2 * w, count }); // LayerNorm scale + bias
export const attn = (w: number, count = 1, kvW = w): Weight[] => [
  lin(w, w, count),
  lin(kvW, w, 2 * count),
  lin(w, w, count),
];
export const gmlp = (w: number, h: number, count = 1, out = w): Weight[] => [lin(w, h, count), lin(h, out, count)];
const times = (ws: Weight[], k: number) => ws.map((w) => ({ ...w, count: w.count * k }));

export const paramsOf = (ws: Weight[]) =>
  ws.reduce((n, w) => n + w.count * (w.kind === 'linear' ? w.in * w.out + (w.bias ? w.out : 0) : w.n), 0);

/** Patches per image: the stride-`patch` convolution drops the remainder (384 / 14 -> 27 x 27 = 729). */
export const patches = (a: Architecture) => Math.floor(a.image.size / a.image.patch) ** 2;

/** The INT4 block a linear matrix is stored with at int4w, or undefined when it stays float16. */
function int4BlockOf(w: Extract<Weight, { kind: 'linear' }>, int4Stage: boolean, block: number): number | undefined {
  const eligible = int4Stage && !w.head && w.in * w.out >= DEFAULT_MIN_ELEMENTS && w.out % 2 === 0;
  return eligible ? int4Block(w.in, block) : undefined;
}

/** Bytes of one linear matrix (no bias) at a precision; `int4Stage`: the stage takes INT4 weights at int4w. */
function matrixBytes(
  w: Extract<Weight, { kind: 'linear' }>,
  precision: Precision,
  int4Stage: boolean,
  block: number,
): number {
  const m = w.in * w.out;
  if (precision === 'fp32') return 4 * m;
  // int8 + fp32 scale + int8 zero point per column
  if (precision === 'int8') return m >= DEFAULT_MIN_ELEMENTS ? m + 5 * w.out : 4 * m;
  const b = precision === 'int4w' ? int4BlockOf(w, int4Stage, block) : undefined;
  return b !== undefined ? int4Bytes(w.in, w.out, b) : 2 * m;
}

/** Bytes of a stage's weights at a precision, as `export quantize` writes them (header). */
export function bytesOf(
  stage: StageName,
  ws: Weight[],
  precision: Precision,
  block: number = DEFAULT_BLOCK_SIZE,
  fp16Share = DEFAULT_FP16_SHARE,
  fp16MaxMib = DEFAULT_FP16_MAX_MIB,
): number {
  if (precision === 'int8' && stage === 'embed') precision = 'fp32'; // a Gather: no int8 build
  const int4Stage = INT4_STAGES.includes(stage);
  const el = precision === 'fp32' || precision === 'int8' ? 4 : 2; // everything that is not a quantised matrix
  let bytes = 0;
  let int4Weights = 0; // the float16 share of them adds at most fp16Budget * 1.5 bytes (src/quant/sensitivity.ts)
  for (const w of ws) {
    if (w.kind === 'other') bytes += el * w.n * w.count;
    else if (w.kind === 'norm')
      bytes += 4 * w.n * w.count; // LayerNorm parameters: float32 in every build
    else {
      bytes += w.count * (matrixBytes(w, precision, int4Stage, block) + (w.bias ? el * w.out : 0));
      if (precision === 'int4w' && int4BlockOf(w, int4Stage, block) !== undefined)
        int4Weights += w.count * w.in * w.out;
    }
  }
  return bytes + FP16_EXTRA_BYTES * fp16Budget(int4Weights, fp16Share, fp16MaxMib);
}

/** How a stage is stored at a precision, in words. */
export function stagePrecision(stage: StageName, p: Precision, block: number = DEFAULT_BLOCK_SIZE): string {
  if (p === 'int8') return stage === 'embed' ? 'fp32 (a Gather)' : 'int8 (rest fp32)';
  if (p === 'int4w') return INT4_STAGES.includes(stage) ? `int4w/${block} (lm_head fp16)` : 'fp16';
  return p;
}

/** The weights of every stage, as tools/export/stages builds them. */
export function stageWeights(a: Architecture, stage: StageName, opts: { text?: boolean } = {}): Weight[] {
  const C = a.encoder.width;
  const N = patches(a);
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const V = opts.text ? TEXT_VOCAB : a.llm.vocab;
  switch (stage) {
    case 'encoder': {
      const { layers, mlp } = a.encoder;
      const p = a.image.patch;
      return [other(C * 3 * p * p + C), other(N * C), ln(C, 2 * layers), ...attn(C, layers), ...gmlp(C, mlp, layers)];
    }
    case 'merger': {
      const { depth, mlp } = a.merger;
      const block = [ln(C, 2), ...attn(C, depth), ...gmlp(C, mlp)]; // one shared LN for the attentions, one for the MLP
      return [...times(block, 2), lin(C, D), lin(D, H), lin(H, H)]; // inner + inter, to_token, projector
    }
    case 'embed':
      return [other(V * H)];
    case 'llm': {
      const { layers, heads, kvHeads, intermediate: I } = a.llm;
      const hd = headDim(a);
      const q = (i: number, o: number) => lin(i, o, layers, false);
      return [
        q(H, heads * hd),
        q(H, kvHeads * hd),
        q(H, kvHeads * hd),
        q(heads * hd, H), // attention
        q(H, I),
        q(H, I),
        q(I, H), // SwiGLU gate, up, down
        other(H, 2 * layers + 1), // RMSNorm weights (a Mul: float16 in fp16 builds)
        lin(H, V, 1, false, true), // lm_head: it sets the logits
      ];
    }
    case 'diffusion': {
      const { width: W, layers } = a.diffusion;
      return [
        ...gmlp(W, W),
        lin(H, W),
        lin(D, W),
        lin(W, 3 * W, layers),
        ...gmlp(W, W, layers),
        lin(W, 2 * W),
        lin(W, D),
      ];
    }
    case 'detokenizer': {
      const { queries: Q, width: W, layers, patch: p } = a.detokenizer;
      const vit = [ln(W, 2), ...attn(W), ...gmlp(W, 4 * W)];
      return [lin(D, W), ln(W), other(Q * W), ...vit, ...times(vit, layers), ln(W), lin(W, 3 * p * p)];
    }
    case 'mask_decoder': {
      const W = a.maskDecoder.width;
      return [ln(C), ...gmlp(C, W, 1, W), lin(D, W), ln(W), ...attn(W), lin(W, W), lin(H, W)];
    }
  }
}

/** SigLIP-SO400M as published (HF SiglipVisionModel: adds the post-LayerNorm and the MAP pooling head). */
export function siglipPublishedParams(a: Architecture): number {
  const C = a.encoder.width;
  const head = [other(C), lin(C, 3 * C), lin(C, C), ln(C), ...gmlp(C, a.encoder.mlp)]; // probe, MHA, LN, MLP
  return paramsOf(stageWeights(a, 'encoder')) + 2 * C + paramsOf(head);
}

/** Vicuna-7B as published (LlamaForCausalLM with the 32000-piece vocabulary). */
export function llamaPublishedParams(a: Architecture): number {
  return paramsOf(stageWeights(a, 'embed', { text: true })) + paramsOf(stageWeights(a, 'llm', { text: true }));
}
