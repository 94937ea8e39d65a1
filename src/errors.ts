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
