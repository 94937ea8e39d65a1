/** The export tool's public face: reference model sets and the architecture configs. */
export {
  CONFIGS,
  CONFIG_NAMES,
  SYNTH_CONFIGS,
  SPECIAL_TOKENS,
  TEXT_VOCAB,
  VOCAB_WITH_SPECIALS,
  padVocab,
} from './configs.js';
export type { ConfigName, SynthConfigName } from './configs.js';
export { synthesize, modelSetId, type SynthOptions, type SynthProgress } from './synth.js';
export { STAGE_BUILDERS } from './stages/index.js';
export { GraphBuilder, OPSET, IR_VERSION } from './onnx/builder.js';
export { Model } from './onnx/layers.js';
export { Rng } from './onnx/random.js';
export { TENSORRT_OPS } from './onnx/ops.js';
