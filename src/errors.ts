/**
 * Every error the runtime reports carries a stable `code`: it is what MQTT error replies carry and
 * what the CLI turns into an exit status. Messages say what happened and what to do.
 */
/**
 * The CLI's exit status per code family: 2 bad usage or input, 3 models, engines and updates,
 * 4 serving refusals (busy, expired, cancelled, duplicate), 1 anything unexpected (INTERNAL).
 */
export type ExitStatus = 1 | 2 | 3 | 4;

/**
 * Every code, its exit status and what it means: one table, so a new code cannot be added without
 * saying how the CLI ends on it (the compiler checks every entry has both). `ErrorCode`,
 * `ErrorCodes` and `exitStatus` are derived from it.
 */
export const ERRORS = {
  // configuration and input validation
  BAD_CONFIG: { exit: 2, meaning: 'the configuration (file, environment or flags) is invalid' },
  BAD_ARGUMENT: { exit: 2, meaning: 'a command-line flag or API argument is invalid' },
  BAD_INPUT: { exit: 2, meaning: 'an input value is invalid' },
  BAD_IMAGE: { exit: 2, meaning: 'the image is not a JPEG, PNG or WebP that decodes' },
  PAYLOAD_TOO_LARGE: { exit: 2, meaning: 'the payload is over the configured limit' },
  PROMPT_TOO_LONG: { exit: 2, meaning: 'the prompt is over the limit (bytes or tokens) or does not fit the context' },
  UNKNOWN_TASK: { exit: 2, meaning: 'the task is not one of ask, describe, segment, generate, edit' },
  BAD_MESSAGE: { exit: 2, meaning: 'a message is not in the documented wire format' },
  BROKER_REFUSED: { exit: 2, meaning: 'the broker refused what the agent needs (e.g. a subscription its ACL denies)' },
  // frame sources and streams (docs/STREAMS.md)
  SOURCE_UNAVAILABLE: {
    exit: 2,
    meaning: 'a video source cannot be opened (no such file or camera, an unreachable URL)',
  },
  SOURCE_NOT_VIDEO: { exit: 2, meaning: 'a video source holds no video stream the media tool can decode' },
  SOURCE_LOST: {
    exit: 2,
    meaning: 'a video source stopped (a camera unplugged, a stream gone) and did not come back after restarts',
  },
  FRAME_SIZE: {
    exit: 2,
    meaning: 'a frame size the encoder cannot take (smaller than a patch, over the size limit, a short frame)',
  },
  // models and engines
  MODEL_NOT_FOUND: { exit: 3, meaning: 'a model set or stage file is missing' },
  MODEL_INVALID: { exit: 3, meaning: 'a model set or stage file is not what the contract (docs/CONTRACT.md) requires' },
  MODEL_HASH_MISMATCH: { exit: 3, meaning: "a stage file's sha256 differs from its manifest" },
  MODEL_VERSION: { exit: 3, meaning: "a manifest's format version is not one this runtime reads" },
  BACKEND_UNAVAILABLE: { exit: 3, meaning: 'no backend can run the stage on this machine' },
  ENGINE_INCOMPATIBLE: { exit: 3, meaning: 'a TensorRT engine was built for another TensorRT, GPU or profile' },
  NATIVE_MISSING: { exit: 3, meaning: 'the native addon is not built or lacks the feature' },
  MEDIA_TOOL_MISSING: {
    exit: 3,
    meaning: 'ffmpeg, gst-launch-1.0 or a GStreamer element a source needs is not installed',
  },
  BACKEND_CRASHED: { exit: 3, meaning: "a backend's worker died (crash, exit, out of memory) while it held a session" },
  ENGINE_BUILD_FAILED: { exit: 3, meaning: 'TensorRT could not build an engine from a stage graph on this device' },
  ENGINE_BUILD_TIMEOUT: { exit: 3, meaning: 'an engine build ran past its time limit and was cancelled' },
  ENGINE_BUILD_RESOURCES: {
    exit: 3,
    meaning: 'an engine build needs more free host memory, CMA or disk than the device has',
  },
  ENGINE_MISSING: {
    exit: 3,
    meaning: "a stage has no engine for this device's target and no ONNX graph to build one from",
  },
  QUANT_TOLERANCE: {
    exit: 3,
    meaning: "a quantised stage's outputs are further from fp32 than the export's tolerance",
  },
  QUANT_UNSUPPORTED: {
    exit: 3,
    meaning: 'a stage cannot be built at the requested precision (the message says which and why)',
  },
  QUANT_SCALE_INVALID: {
    exit: 3,
    meaning: 'quantisation produced a NaN, infinite or out-of-range scale; nothing was written',
  },
  // fleet bundles (docs/FLEET.md)
  BUNDLE_INVALID: { exit: 3, meaning: 'a bundle is not in the bundle format (magic, header, layout, an unsafe path)' },
  BUNDLE_SIGNATURE: { exit: 3, meaning: "a bundle's signature does not verify with the trusted key" },
  BUNDLE_TAMPERED: { exit: 3, meaning: 'a file inside a signed bundle does not match its size or sha256' },
  ROLLBACK_REFUSED: { exit: 3, meaning: "a bundle's release is not above the store's committed release" },
  NO_SPACE: { exit: 3, meaning: 'not enough free disk space' },
  HEALTH_CHECK_FAILED: {
    exit: 3,
    meaning: 'the newly activated set failed its canary query; the previous set is active again',
  },
  UPDATE_CONFLICT: { exit: 3, meaning: "another install holds the store, or the bundle's set id is the one serving" },
  ROLLOUT_ABORTED: { exit: 3, meaning: 'a staged rollout stopped: a canary failed, or failures passed the threshold' },
  UPDATE_HOOK_FAILED: {
    exit: 3,
    meaning: 'a hook run after an update committed failed (a warning: the release stays active)',
  },
  // flashing kits (docs/FLASHING.md)
  BAD_DEVICE_LIST: {
    exit: 2,
    meaning: 'a flash-kit devices.csv is invalid (a duplicate or unsafe id, a bad URL, a missing or mismatched key)',
  },
  KIT_BUILD_FAILED: {
    exit: 3,
    meaning: 'building a flashing kit failed (a packaging tool or cross compiler missing or failing); no kit is left',
  },
  DOWNLOAD_STALLED: {
    exit: 3,
    meaning: 'a bundle download received nothing for the stall timeout; the partial file is kept',
  },
  BUNDLE_TOO_LARGE: { exit: 3, meaning: "a bundle download is larger than the job's size or the download cap" },
  URL_NOT_ALLOWED: { exit: 3, meaning: 'an update job names a URL this device may not fetch (updates.allowUrls)' },
  JOB_SIGNATURE: { exit: 3, meaning: "an update job's signature is missing or does not hold for this device" },
  UPDATE_TIMED_OUT: { exit: 3, meaning: 'an update job ran past its time limit (updates.jobTimeoutS) and was stopped' },
  BUNDLE_UNBOUND: {
    exit: 3,
    meaning: 'a format-1 bundle binds no fleet, target or expiry (taken with --allow-unbound)',
  },
  BUNDLE_WRONG_FLEET: {
    exit: 3,
    meaning: "a bundle is signed for other fleets than this device's, or names a fleet and none was given",
  },
  BUNDLE_WRONG_TARGET: {
    exit: 3,
    meaning: "a bundle is signed for other targets than this device's (module, JetPack, TensorRT)",
  },
  BUNDLE_EXPIRED: { exit: 3, meaning: "a bundle's signed expiry (notAfter) has passed by this device's clock" },
  AGENT_TOO_OLD: { exit: 3, meaning: 'a bundle needs a newer setokim-edge than this one (its minAgentVersion)' },
  RELEASE_JUMP_REFUSED: { exit: 3, meaning: "a bundle's release is more than maxReleaseJump above the committed one" },
  // serving
  BUSY: { exit: 4, meaning: 'the device is busy or shutting down; retry later or elsewhere' },
  EXPIRED: { exit: 4, meaning: 'the query arrived after its deadline or message expiry' },
  CANCELLED: { exit: 4, meaning: 'the query was cancelled' },
  DUPLICATE: { exit: 4, meaning: 'a query with this id was already taken' },
  CONVERSATION_UNKNOWN: {
    exit: 4,
    meaning:
      'the query continues a conversation this device does not hold (never started here, idle too long, ' +
      'or its memory was needed); start it again with the image',
  },
  STREAM_REFUSED: {
    exit: 4,
    meaning: 'a stream request the agent does not take: a source not on its allow-list, or streams off',
  },
  INTERNAL: { exit: 1, meaning: 'an unexpected error (a bug): please report it' },
} as const satisfies Record<string, { exit: ExitStatus; meaning: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** `ErrorCodes.BUSY === 'BUSY'`: name codes through this, never as string literals. */
export const ErrorCodes = Object.fromEntries(Object.keys(ERRORS).map((c) => [c, c])) as {
  readonly [C in ErrorCode]: C;
};

export class SetokimError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SetokimError';
    this.code = code;
  }
}

/** The code of any thrown value: its own when it has one, INTERNAL otherwise. */
export function errorCode(err: unknown): ErrorCode {
  return err instanceof SetokimError ? err.code : ErrorCodes.INTERNAL;
}

/** Whether a string off the wire (a reply from another agent version) is a code of this table. */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERRORS, code);
}

/** The CLI's exit status for a code (its row in ERRORS); 1 for a code this version does not know. */
export function exitStatus(code: string): ExitStatus {
  return isErrorCode(code) ? ERRORS[code].exit : 1;
}
