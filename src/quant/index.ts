/** Quantisation: INT8 weights and explicit Q/DQ graphs, calibrated on the fp32 pipeline (docs/QUANT.md). */
export { INT8_MAX, REDUCED_MAX, columnScale, quantizeColumns, dequantizeColumns, worstErrorRatio, activationScale, type QuantizedWeights } from './weights.js';
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
export { calibrationQueries, collectFeeds, splitSamples, activationRanges, withSession, MAX_RANGE_SPREAD, type ActivationRanges, type CollectOptions } from './calibrate.js';
export { tensorError, accumulate, worstOutput, type OutputError } from './compare.js';
export { quantizeModelSet, checkPrecision, DEFAULT_TOLERANCE, type QuantizeSetOptions, type QuantizeProgress, type StageResult } from './quantize-set.js';
