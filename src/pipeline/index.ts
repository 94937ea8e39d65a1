/** The pipeline area's public face: one query from image and prompt to a stream of events. */
export * from './types.js';
export { createPipeline, type LocalPipeline, type PipelineOptions } from './pipeline.js';
export { DESCRIBE_PROMPT } from './request.js';
export {
  preprocess,
  probeImage,
  DEFAULT_IMAGE_LIMITS,
  type ImageLimits,
  type ImageSpec,
  type Geometry,
} from './preprocess.js';
export { Sampler, Prng, StopMatcher, type SamplerParams } from './sampler.js';
export { KvBudget, kvBytesPerToken, type KvLease } from './kv-cache.js';
export { tokenMaskPng, maskPng, imagePng, tokenColour } from './visualize.js';
export { loadTokenizer, type Tokenizer } from './tokenizer.js';
export { buildVicunaPrompt, assertPromptFits, countPromptTokens } from './template.js';
