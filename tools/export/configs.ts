/**
 * Architecture constants: the two reference sets this tool synthesises (`tiny`, `small`) and the
 * real Setokim-7B dimensions (SigLIP-SO400M patch14-384 + Vicuna-7B v1.5) that `export plan` sizes.
 */
import type { Architecture } from '../../src/engine/contract.js';

/** LLaMA/Vicuna SentencePiece ids plus the three Setokim specials appended after the 32000 pieces. */
export const SPECIAL_TOKENS = { unk: 0, bos: 1, eos: 2, imStart: 32000, imEnd: 32001, target: 32002 } as const;
export const TEXT_VOCAB = 32000;
export const VOCAB_WITH_SPECIALS = TEXT_VOCAB + 3;

/** Rounds a vocabulary up to a multiple (64 keeps GEMM shapes aligned; the padding rows are unused). */
export const padVocab = (n: number, multiple = 64) => Math.ceil(n / multiple) * multiple;

/** SigLIP normalisation: mean = std = 0.5 per channel, pixels to [-1, 1]. */
const SIGLIP_IMAGE = {
  mean: [0.5, 0.5, 0.5] as [number, number, number],
  std: [0.5, 0.5, 0.5] as [number, number, number],
};

export const CONFIG_NAMES = ['tiny', 'small', 'setokim-7b'] as const;
export type ConfigName = (typeof CONFIG_NAMES)[number];
/** The configs `export synth` can write (7B weights would be 14 GB of noise: plan only). */
export const SYNTH_CONFIGS = ['tiny', 'small'] as const;
export type SynthConfigName = (typeof SYNTH_CONFIGS)[number];

/** Every stage of the pipeline runs on one CPU core in well under a second. */
const tiny: Architecture = {
  image: { size: 224, patch: 14, ...SIGLIP_IMAGE }, // 16 x 16 = 256 patches
  encoder: { width: 64, layers: 2, heads: 2, mlp: 128 },
  // Calibrated on this set's encoder (PATCH_EMBED_GAIN 2) plus the 2-D position encoding, seeds 1-3:
  // a flat image gives 1-2 tokens, 4 random shapes ~9, 20 shapes 13-18 (test/export/calibration).
  cluster: { k: 8, threshold: 0.5, fallback: 4, maxTokens: 64 },
  merger: { heads: 2, depth: 2, mlp: 128, tokenWidth: 64 },
  llm: {
    hidden: 64,
    layers: 2,
    heads: 4,
    kvHeads: 4,
    intermediate: 176,
    vocab: padVocab(VOCAB_WITH_SPECIALS),
    maxContext: 512,
    ropeTheta: 10000,
    rmsEps: 1e-5,
  },
  diffusion: { width: 64, layers: 2, steps: 8 },
  detokenizer: { queries: 64, width: 64, layers: 1, heads: 2, imageSize: 64, patch: 8 },
  maskDecoder: { width: 32 },
  tokens: { ...SPECIAL_TOKENS },
};

/** The real patch grid (729 patches), a ViT-S encoder and a ~60 M parameter LLaMA, for benchmarks. */
const small: Architecture = {
  image: { size: 384, patch: 14, ...SIGLIP_IMAGE }, // 27 x 27 = 729 patches
  encoder: { width: 384, layers: 12, heads: 6, mlp: 1536 },
  // Calibrated like tiny (seed 1): flat images 1 token, 4 shapes 6, 12 shapes 11, 20-40 shapes 14-18.
  // k 64 (the released value) merges these random-weight features too coarsely (busy images 5-9).
  cluster: { k: 16, threshold: 0.55, fallback: 8, maxTokens: 64 },
  merger: { heads: 2, depth: 2, mlp: 1536, tokenWidth: 512 },
  llm: {
    hidden: 512,
    layers: 8,
    heads: 8,
    kvHeads: 8,
    intermediate: 1408,
    vocab: padVocab(VOCAB_WITH_SPECIALS),
    maxContext: 2048,
    ropeTheta: 10000,
    rmsEps: 1e-5,
  },
  diffusion: { width: 512, layers: 3, steps: 100 },
  detokenizer: { queries: 256, width: 256, layers: 4, heads: 4, imageSize: 256, patch: 16 },
  maskDecoder: { width: 128 },
  tokens: { ...SPECIAL_TOKENS },
};

/**
 * Setokim-7B. Encoder and LLM are the published SigLIP-SO400M and Vicuna-7B v1.5 dimensions; the
 * merger follows the released code (2 heads, depth 2). The diffusion head, detokenizer and mask
 * decoder sizes are not published: these are MAR-B / ViT-L-decoder sized assumptions for planning.
 */
const setokim7b: Architecture = {
  image: { size: 384, patch: 14, ...SIGLIP_IMAGE },
  encoder: { width: 1152, layers: 27, heads: 16, mlp: 4304 },
  cluster: { k: 64, threshold: 0.55, fallback: 64, maxTokens: 64 },
  merger: { heads: 2, depth: 2, mlp: 4608, tokenWidth: 4096 },
  llm: {
    hidden: 4096,
    layers: 32,
    heads: 32,
    kvHeads: 32,
    intermediate: 11008,
    vocab: padVocab(VOCAB_WITH_SPECIALS),
    maxContext: 4096,
    ropeTheta: 10000,
    rmsEps: 1e-5,
  },
  diffusion: { width: 1024, layers: 3, steps: 100 },
  detokenizer: { queries: 256, width: 1024, layers: 24, heads: 16, imageSize: 256, patch: 16 },
  maskDecoder: { width: 256 },
  tokens: { ...SPECIAL_TOKENS },
};

export const CONFIGS: Record<ConfigName, Architecture> = { tiny, small, 'setokim-7b': setokim7b };
