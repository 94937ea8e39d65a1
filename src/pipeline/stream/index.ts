/** Video streams through the pipeline (docs/STREAMS.md): frames -> vision tokens -> events, standing prompt. */
export {
  StreamSession,
  type StreamEvent,
  type StreamEnd,
  type StreamSessionOptions,
  type StreamStats,
} from './session.js';
export { FrameVision, DEFAULT_GATE, tokenChange, type FrameTokens, type TokenChange } from './frame-vision.js';
export { AnswerPolicy, type AnswerTrigger, type AnswerPolicyOptions } from './answer-policy.js';
export { checkFrameSize, meanColour, modelRgb } from './model-frame.js';
