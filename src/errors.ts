/**
 * Every error the runtime reports carries a stable `code`: it is what MQTT error replies carry and
 * what the CLI turns into an exit status. Messages say what happened and what to do.
 */
export const ErrorCodes = {
  // configuration and input validation
  BAD_CONFIG: 'BAD_CONFIG',
  BAD_ARGUMENT: 'BAD_ARGUMENT',
  BAD_INPUT: 'BAD_INPUT',
  BAD_IMAGE: 'BAD_IMAGE',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  PROMPT_TOO_LONG: 'PROMPT_TOO_LONG',
  UNKNOWN_TASK: 'UNKNOWN_TASK',
  BAD_MESSAGE: 'BAD_MESSAGE',
  /** The broker refused what the agent needs (e.g. a subscription its ACL denies). */
  BROKER_REFUSED: 'BROKER_REFUSED',
  // models and engines
  MODEL_NOT_FOUND: 'MODEL_NOT_FOUND',
  MODEL_INVALID: 'MODEL_INVALID',
  MODEL_HASH_MISMATCH: 'MODEL_HASH_MISMATCH',
  MODEL_VERSION: 'MODEL_VERSION',
  BACKEND_UNAVAILABLE: 'BACKEND_UNAVAILABLE',
  ENGINE_INCOMPATIBLE: 'ENGINE_INCOMPATIBLE',
  NATIVE_MISSING: 'NATIVE_MISSING',
  /** A backend's worker died (crash, exit, out of memory) while it held a session. */
  BACKEND_CRASHED: 'BACKEND_CRASHED',
  /** A quantised stage's outputs are further from fp32 than the export's tolerance. */
  QUANT_TOLERANCE: 'QUANT_TOLERANCE',
  // fleet bundles (docs/FLEET.md)
  /** A bundle is not in the bundle format (bad magic, header, layout, or an unsafe path). */
  BUNDLE_INVALID: 'BUNDLE_INVALID',
  /** A bundle's signature does not verify with the trusted public key (or was made by another key). */
  BUNDLE_SIGNATURE: 'BUNDLE_SIGNATURE',
  /** A file inside a signed bundle does not match its size or sha256 in the bundle manifest. */
  BUNDLE_TAMPERED: 'BUNDLE_TAMPERED',
  /** A bundle's release is not newer than the release the store has committed (anti-rollback). */
  ROLLBACK_REFUSED: 'ROLLBACK_REFUSED',
  /** Not enough free disk space in the store for the bundle plus the reserve. */
  NO_SPACE: 'NO_SPACE',
  /** The newly activated set failed its canary query; the previous set was activated again. */
  HEALTH_CHECK_FAILED: 'HEALTH_CHECK_FAILED',
  /** Another install holds the store, or the bundle's set id is the one serving. */
  UPDATE_CONFLICT: 'UPDATE_CONFLICT',
  /** A staged rollout stopped: a canary failed, or failures passed the threshold. */
  ROLLOUT_ABORTED: 'ROLLOUT_ABORTED',
  /** A hook run after an update committed failed (a warning on `committed`: the release stays active). */
  UPDATE_HOOK_FAILED: 'UPDATE_HOOK_FAILED',
  /** A bundle download received no bytes (or no response headers) for the stall timeout; the partial file is kept. */
  DOWNLOAD_STALLED: 'DOWNLOAD_STALLED',
  /** A bundle download is larger than the job's size or the download cap; the partial file is removed. */
  BUNDLE_TOO_LARGE: 'BUNDLE_TOO_LARGE',
  // serving
  BUSY: 'BUSY',
  EXPIRED: 'EXPIRED',
  CANCELLED: 'CANCELLED',
  DUPLICATE: 'DUPLICATE',
  INTERNAL: 'INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

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

/** CLI exit statuses by code family: 2 for bad usage or input, 3 for models, 4 for serving, 1 otherwise. */
export function exitStatus(code: ErrorCode): number {
  switch (code) {
    case 'BAD_CONFIG':
    case 'BAD_ARGUMENT':
    case 'BAD_INPUT':
    case 'BAD_IMAGE':
    case 'PAYLOAD_TOO_LARGE':
    case 'PROMPT_TOO_LONG':
    case 'UNKNOWN_TASK':
    case 'BAD_MESSAGE':
    case 'BROKER_REFUSED':
      return 2;
    case 'MODEL_NOT_FOUND':
    case 'MODEL_INVALID':
    case 'MODEL_HASH_MISMATCH':
    case 'MODEL_VERSION':
    case 'BACKEND_UNAVAILABLE':
    case 'ENGINE_INCOMPATIBLE':
    case 'NATIVE_MISSING':
    case 'BACKEND_CRASHED':
    case 'QUANT_TOLERANCE':
    case 'BUNDLE_INVALID':
    case 'BUNDLE_SIGNATURE':
    case 'BUNDLE_TAMPERED':
    case 'ROLLBACK_REFUSED':
    case 'NO_SPACE':
    case 'HEALTH_CHECK_FAILED':
    case 'UPDATE_CONFLICT':
    case 'ROLLOUT_ABORTED':
    case 'DOWNLOAD_STALLED':
    case 'BUNDLE_TOO_LARGE':
      return 3;
    case 'BUSY':
    case 'EXPIRED':
    case 'CANCELLED':
    case 'DUPLICATE':
      return 4;
    default:
      return 1;
  }
}
