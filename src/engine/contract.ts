/**
 * The stage contract: one ONNX graph per Setokim stage, with fixed tensor names, dtypes and
 * dynamic dimensions. The reference model sets (tools/export) are written to it, the pipeline runs
 * it, and a real Setokim export must follow it. docs/CONTRACT.md explains each stage.
 *
 * Dimension names: batch (1 in the pipeline), N patches, C encoder width, L vision tokens
 * (1..maxTokens), D vision-token width, H LLM hidden width, T new tokens, S KV-cache rows (the
 * cache's capacity), V vocab, G patch grid side (N = G * G), R detokenizer image side, B diffusion
 * batch.
 */
import { z } from 'zod';

export const DTYPES = ['float32', 'float16', 'int64', 'int32', 'int8', 'uint8', 'bool'] as const;
export type DType = (typeof DTYPES)[number];

/** A dimension is a fixed size or a named dynamic size. */
export type Dim = number | string;

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: Dim[];
}

export interface StageSignature {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

/** A signature as manifests write it (the model set's and each engine's), checked with zod. */
const DimSchema = z.union([z.number().int().nonnegative(), z.string().min(1)]);
const TensorSpecSchema = z.object({ name: z.string().min(1), dtype: z.enum(DTYPES), shape: z.array(DimSchema) });
export const SignatureSchema = z.object({ inputs: z.array(TensorSpecSchema), outputs: z.array(TensorSpecSchema) });

export const STAGES = ['encoder', 'merger', 'embed', 'llm', 'diffusion', 'detokenizer', 'mask_decoder'] as const;
export type StageName = (typeof STAGES)[number];

/** Stages every model set needs to answer `ask`; the others add segmentation and generation. */
export const REQUIRED_STAGES: readonly StageName[] = ['encoder', 'merger', 'embed', 'llm'];

export const ArchitectureSchema = z.object({
  image: z.object({
    size: z.number().int().positive(), // square input side after resize (384 for SigLIP-384)
    patch: z.number().int().positive(), // 14
    mean: z.tuple([z.number(), z.number(), z.number()]),
    std: z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]),
  }),
  encoder: z.object({
    width: z.number().int().positive(), // C
    layers: z.number().int().positive(),
    heads: z.number().int().positive(),
    mlp: z.number().int().positive(),
  }),
  cluster: z.object({
    k: z.number().int().positive(),
    threshold: z.number(),
    fallback: z.number().int().positive(),
    maxTokens: z.number().int().positive(),
  }),
  merger: z.object({
    heads: z.number().int().positive(), // 2 in the released code
    depth: z.number().int().positive(), // attention layers sharing one LayerNorm, per block
    mlp: z.number().int().positive(),
    tokenWidth: z.number().int().positive(), // D (4096 in Setokim-7B)
  }),
  llm: z.object({
    hidden: z.number().int().positive(), // H
    layers: z.number().int().positive(),
    heads: z.number().int().positive(),
    kvHeads: z.number().int().positive(),
    intermediate: z.number().int().positive(),
    vocab: z.number().int().positive(), // V, the text vocabulary plus specials (padded)
    maxContext: z.number().int().positive(),
    ropeTheta: z.number().positive(),
    rmsEps: z.number().positive(),
  }),
  diffusion: z.object({
    width: z.number().int().positive(),
    layers: z.number().int().positive(),
    steps: z.number().int().positive(), // sampling steps (100 in the paper)
  }),
  detokenizer: z.object({
    queries: z.number().int().positive(),
    width: z.number().int().positive(),
    layers: z.number().int().positive(),
    heads: z.number().int().positive(),
    imageSize: z.number().int().positive(), // R
    patch: z.number().int().positive(),
  }),
  maskDecoder: z.object({
    width: z.number().int().positive(),
  }),
  tokens: z.object({
    unk: z.number().int().nonnegative(),
    bos: z.number().int().nonnegative(),
    eos: z.number().int().nonnegative(),
    imStart: z.number().int().nonnegative(),
    imEnd: z.number().int().nonnegative(),
    target: z.number().int().nonnegative(),
  }),
});
export type Architecture = z.infer<typeof ArchitectureSchema>;

/** Patches per side: a stride-`patch` convolution drops the remainder (384 / 14 -> 27, as SigLIP). */
export const patchGrid = (a: Architecture) => Math.floor(a.image.size / a.image.patch);
export const headDim = (a: Architecture) => a.llm.hidden / a.llm.heads;

/** The IO signature each stage must have. Shapes use the dimension names above. */
export function stageSignature(stage: StageName, a: Architecture): StageSignature {
  const f = (name: string, shape: Dim[]): TensorSpec => ({ name, dtype: 'float32', shape });
  const i64 = (name: string, shape: Dim[]): TensorSpec => ({ name, dtype: 'int64', shape });
  const S = a.image.size;
  const G = patchGrid(a);
  const N = G * G;
  const C = a.encoder.width;
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  switch (stage) {
    case 'encoder': // pixels normalised NCHW -> last hidden state before the post-LayerNorm, no CLS
      return { inputs: [f('pixels', ['batch', 3, S, S])], outputs: [f('features', ['batch', N, C])] };
    case 'merger': // features already carry the 2-D position encoding; assign[l][n] = 1 iff label[n] = l
      return {
        inputs: [f('features', [1, N, C]), f('assign', [1, 'L', N])],
        outputs: [f('tokens', [1, 'L', D]), f('embeds', [1, 'L', H])],
      };
    case 'embed':
      return { inputs: [i64('input_ids', [1, 'T'])], outputs: [f('embeds', [1, 'T', H])] };
    case 'llm': {
      // A fixed-capacity cache (S rows per layer, the first past_length of them filled): new tokens
      // sit at positions past_length .. past_length+T-1 and attend to the filled rows and causally
      // to each other. The graph returns their keys and values; the runtime writes them into the
      // cache at row past_length, so a decode step has one shape and never copies the cache.
      const perLayer = (name: string, rows: Dim) =>
        Array.from({ length: a.llm.layers }, (_, l) => f(`${name}.${l}`, [1, a.llm.kvHeads, rows, headDim(a)]));
      return {
        inputs: [
          f('inputs_embeds', [1, 'T', H]),
          i64('past_length', [1]),
          ...perLayer('past_keys', 'S'),
          ...perLayer('past_values', 'S'),
        ],
        outputs: [
          f('logits', [1, 1, a.llm.vocab]), // the last position only
          f('hidden', [1, 1, H]),
          ...perLayer('new_keys', 'T'),
          ...perLayer('new_values', 'T'),
        ],
      };
    }
    case 'diffusion': // predicts the noise in x at time t (0..1, cosine schedule), given LLM hidden cond
      return {
        inputs: [f('x', ['B', D]), f('t', ['B']), f('cond', ['B', H])],
        outputs: [f('eps', ['B', D])],
      };
    case 'detokenizer': // vision tokens -> RGB image in [-1, 1]
      return {
        inputs: [f('tokens', [1, 'L', D])],
        outputs: [f('image', [1, 3, a.detokenizer.imageSize, a.detokenizer.imageSize])],
      };
    case 'mask_decoder': // mask logits on the patch grid: one per vision token, one for the prompt
      return {
        inputs: [f('features', [1, N, C]), f('tokens', [1, 'L', D]), f('prompt', [1, 1, H])],
        outputs: [f('token_masks', [1, 'L', G, G]), f('referring_mask', [1, 1, G, G])],
      };
  }
}

/** Vicuna v1 conversation template; the image goes where IMAGE_PLACEHOLDER stands. */
export const VICUNA_V1_SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
export const IMAGE_PLACEHOLDER = '<image>';
