/** Fleet bundles: signed model-set bundles, installing them into a ModelStore, recovery (docs/FLEET.md). */
export * from './format.js';
export { generateKeys, keyIdOf, loadPrivateKey, loadPublicKey, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE } from './keys.js';
export {
  createBundle,
  openBundle,
  streamBundle,
  verifyBundle,
  type ByteProgress,
  type CreateOptions,
  type OpenedBundle,
} from './bundle.js';
export {
  checkBinding,
  checkReleaseJump,
  compareVersions,
  parseExpiry,
  CLOCK_SKEW_MS,
  type BindingPolicy,
  type DeviceIdentity,
} from './compat.js';
export { canaryQuery, type CanaryOptions, type CanaryResult, type HealthCheck } from './health.js';
export {
  installBundle,
  recoverStore,
  DEFAULT_RESERVE_BYTES,
  type InstallOptions,
  type InstallResult,
  type InstallStep,
  type RecoverResult,
} from './install.js';
export {
  JOURNAL_STEPS,
  readJournal,
  readRelease,
  type Journal,
  type JournalStep,
  type ReleaseState,
} from './journal.js';
export { downloadBundle, type DownloadOptions } from './download.js';
export {
  DEFAULT_JOB_TIMEOUT_MS,
  DEFAULT_MAX_QUEUED,
  hookWarning,
  UpdateHandler,
  UpdateJobSchema,
  UPDATE_STATES,
  TERMINAL_STATES,
  type UpdateEvent,
  type UpdateHandlerOptions,
  type UpdateJob,
  type UpdateState,
} from './update.js';
export { JobListener, serveUpdates, type ServeUpdatesOptions } from './device.js';
export { MAX_REDIRECTS, UrlPolicy, urlPrefixProblem, type JobSource, type UrlPolicyOptions } from './policy.js';
export {
  isSealedBy,
  JOB_SIGNING_CONTEXT,
  jobSignatureProblem,
  newJobId,
  newNonce,
  sealState,
  signJob,
  UpdateStateSchema,
} from './wire.js';
export { rollout, type DeviceOutcome, type RolloutOptions, type RolloutResult } from './rollout.js';
export { updateTopic, updateStateTopic, fleetUpdateStateFilter } from '../mqtt/topics.js';
