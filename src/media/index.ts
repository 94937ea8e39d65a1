/** Video sources as raw RGB frames through ffmpeg or GStreamer (docs/STREAMS.md). */
export * from './spec.js';
export {
  ffmpegCommand,
  gstCommand,
  gstFrameSize,
  fitInside,
  type CommandOptions,
  type MediaCommand,
} from './commands.js';
export { FrameAssembler, FramePool, type Frame } from './frames.js';
export {
  FrameSource,
  classifyFailure,
  isJetson,
  DEFAULT_RESTART,
  type FrameSourceOptions,
  type RestartPolicy,
  type SourceEvent,
  type SourceStats,
} from './source.js';
