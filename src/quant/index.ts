/**
 * Quantisation: INT8 Q/DQ, FP16 and INT4 weight-only builds of the stage graphs, calibrated on the
 * fp32 pipeline (docs/QUANT.md).
 */
export {
  INT8_MAX,
  REDUCED_MAX,
  columnScale,
  quantizeColumns,
  dequantizeColumns,
  worstErrorRatio,
  activationScale,
  type QuantizedWeights,
} from './weights.js';
export {
  DEFAULT_MIN_ELEMENTS,
  MIN_OPSET,
  findTargets,
  activationNames,
  withOutputs,
  quantizeModel,
  decodeModel,
  encodeModel,
  floatValues,
  opCounts,
  type QuantTarget,
  type QuantizeReport,
  type WeightReport,
} from './graph.js';
export { FeedRecorder, RecordingSession, recordStages, type Feeds } from './record.js';
export {
  calibrationQueries,
  collectFeeds,
  splitSamples,
  activationRanges,
  activationStats,
  ActivationStats,
  withSession,
  MAX_RANGE_SPREAD,
  type ActivationRanges,
  type CollectOptions,
} from './calibrate.js';
export { tensorError, accumulate, worstOutput, type OutputError } from './compare.js';
export { toFloat16, FP32_OPS, type Fp16Report } from './fp16.js';
export {
  BLOCK_SIZES,
  DEFAULT_BLOCK_SIZE,
  INT4_MAX,
  int4Block,
  int4Bytes,
  quantizeInt4,
  dequantizeInt4,
  type BlockSize,
  type Int4Weights,
} from './int4.js';
export {
  selectInt4,
  Int4Rewrite,
  readInt4Weight,
  INT4_OPSET,
  type Int4Form,
  type Int4Plan,
  type Int4Selection,
} from './int4-graph.js';
export { planInt4, searchAwq, awqMultipliers, AWQ_ALPHAS, type AwqResult } from './awq.js';
export { BUILD_PRECISIONS, INT4_STAGES, ORT_INT4_FORM, type BuildPrecision } from './recipes.js';
export {
  DEFAULT_FP16_MAX_MIB,
  DEFAULT_FP16_SHARE,
  FP16_EXTRA_BYTES,
  fp16Budget,
  SensitivityPass,
  pick,
  type KeptGroup,
} from './sensitivity.js';
export {
  quantizeModelSet,
  checkPrecision,
  DEFAULT_TOLERANCE,
  DEFAULT_TOLERANCES,
  type QuantizeSetOptions,
  type QuantizeProgress,
  type StageResult,
  type BuildResult,
} from './quantize-set.js';
