/** One builder per contract stage. */
import type { Architecture, StageName } from '../../../src/engine/contract.js';
import type { Model } from '../onnx/layers.js';
import type { Rng } from '../onnx/random.js';
import { buildDetokenizer } from './detokenizer.js';
import { buildDiffusion } from './diffusion.js';
import { buildEmbed } from './embed.js';
import { buildEncoder } from './encoder.js';
import { buildLlm } from './llm.js';
import { buildMaskDecoder } from './maskDecoder.js';
import { buildMerger } from './merger.js';

export const STAGE_BUILDERS: Record<StageName, (a: Architecture, rng: Rng) => Model> = {
  encoder: buildEncoder,
  merger: buildMerger,
  embed: buildEmbed,
  llm: buildLlm,
  diffusion: buildDiffusion,
  detokenizer: buildDetokenizer,
  mask_decoder: buildMaskDecoder,
};
