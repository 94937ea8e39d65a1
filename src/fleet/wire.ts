/**
 * The update path's two wire messages (docs/FLEET.md, "Updates over MQTT"), one zod schema each
 * with its type inferred: the job an operator publishes on `setokim/v1/<fleet>/<device>/update`
 * and the state a device publishes on `.../update/state`. And how they are tied together:
 *
 * - A job's `nonce` is a random secret that only the operator and the device see (the broker's
 *   ACL keeps the job topic between them). The device seals each state of the job with an
 *   HMAC-SHA256 keyed by it (`mac`), so a client that may publish on a state topic, or reads the
 *   retained states, still cannot forge a state of that job (a canary's `committed`).
 * - A job may be signed with the fleet's Ed25519 key (the bundle signing key, under its own
 *   context string): the signature covers every field, including the fleet and device it is for
 *   and an expiry, so a signed job cannot be replayed onto another device or much later.
 */
import { createHmac, randomBytes, sign, timingSafeEqual, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { Sha256Hex } from '../engine/manifest.js';
import { ERRORS, ErrorCodes, isErrorCode, type ErrorCode } from '../errors.js';
import { canonicalJson } from './format.js';

export const UPDATE_STATES = [
  'downloading',
  'verifying',
  'installing',
  'building-engines',
  'activating',
  'health',
  'committed',
  'rolled-back',
  'failed',
] as const;
export type UpdateState = (typeof UPDATE_STATES)[number];
export const TERMINAL_STATES: ReadonlySet<UpdateState> = new Set(['committed', 'failed']);

/** What signs a job: never the same bytes as a bundle manifest's signature. */
export const JOB_SIGNING_CONTEXT = 'setokim-update-job-v1\n';
const STATE_MAC_CONTEXT = 'setokim-update-state-v1\n';

const base64url = (min: number, max: number) =>
  z.string().regex(new RegExp(`^[A-Za-z0-9_-]{${min},${max}}$`), 'base64url');

export const UpdateJobSchema = z.strictObject({
  jobId: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/),
  url: z.string().min(1).max(4096),
  sha256: Sha256Hex,
  /** Informational: the release the publisher expects (the signed manifest decides). */
  release: z.number().int().positive().optional(),
  /** The bundle file's size in bytes: the download refuses more and checks free space for it. */
  size: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
  /** A random secret (16 to 64 bytes, base64url) keying the HMAC that seals the job's states. */
  nonce: base64url(22, 86).optional(),
  /** Signed jobs only: the fleet and device the job is for, and when it stops being valid. */
  fleet: z.string().min(1).max(64).optional(),
  device: z.string().min(1).max(64).optional(),
  expiresAt: z.iso.datetime().optional(),
  /** Ed25519 over JOB_SIGNING_CONTEXT + the canonical JSON of every other field, base64. */
  signature: z
    .string()
    .regex(/^[A-Za-z0-9+/]{86}==$/, 'base64 of 64 bytes')
    .optional(),
});
export type UpdateJob = z.infer<typeof UpdateJobSchema>;

/** An error code off the wire: one this version does not know reads as INTERNAL. */
const WireCode = z.string().transform((c): ErrorCode => (isErrorCode(c) ? c : ErrorCodes.INTERNAL));

export const UpdateStateSchema = z.object({
  jobId: z.string(),
  state: z.enum(UPDATE_STATES),
  /** Set on rolled-back and failed. */
  code: WireCode.optional(),
  /** Generic text for the code (never what was fetched, a hash, a path or a server's answer). */
  message: z.string().optional(),
  /** Bytes, while downloading or unpacking; engines built of the engines to build, while building-engines. */
  done: z.number().int().nonnegative().optional(),
  total: z.number().int().nonnegative().optional(),
  /** While building-engines: the stage whose engine is being built. */
  stage: z.string().max(64).optional(),
  modelSetId: z.string().optional(),
  release: z.number().int().optional(),
  /** On committed only: a hook run after the commit point failed; the release stays committed and active. */
  warning: z.object({ code: WireCode, message: z.string() }).optional(),
  at: z.string(),
  /** HMAC-SHA256 keyed by the job's nonce over every other field (base64url); absent when the job had no nonce. */
  mac: base64url(43, 43).optional(),
});
export type UpdateEvent = z.infer<typeof UpdateStateSchema>;

/** A fresh nonce for a job (32 random bytes). */
export const newNonce = (): string => randomBytes(32).toString('base64url');

/** A job id nobody can guess ahead of the job (16 random bytes). */
export const newJobId = (): string => `job-${randomBytes(16).toString('base64url')}`;

function macOf(fields: Record<string, unknown>, nonce: string): Buffer {
  return createHmac('sha256', Buffer.from(nonce, 'base64url'))
    .update(STATE_MAC_CONTEXT + canonicalJson(fields))
    .digest();
}

/** The state as published: sealed with the job's nonce when it has one. */
export function sealState(e: UpdateEvent, nonce: string | undefined): UpdateEvent {
  const { mac: _drop, ...fields } = e;
  return nonce ? { ...fields, mac: macOf(fields, nonce).toString('base64url') } : fields;
}

/**
 * Whether a state as it came off the wire (parsed JSON, before the schema) carries the MAC of the
 * job whose nonce is `nonce`. Checked on the raw object, so every field the device sent counts.
 */
export function isSealedBy(raw: unknown, nonce: string): boolean {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return false;
  const { mac, ...fields } = raw as Record<string, unknown>;
  if (typeof mac !== 'string') return false;
  let want: Buffer;
  try {
    want = macOf(fields, nonce);
  } catch {
    return false; // not canonical JSON (a fraction): no device wrote it
  }
  const got = Buffer.from(mac, 'base64url');
  return got.length === want.length && timingSafeEqual(got, want);
}

const signedJobBytes = (job: UpdateJob): Buffer => {
  const { signature: _drop, ...fields } = job;
  return Buffer.from(JOB_SIGNING_CONTEXT + canonicalJson(fields), 'utf8');
};

/** Signs a job for one device of one fleet, valid until `expiresAt` (the operator's side). */
export function signJob(job: UpdateJob, key: KeyObject): UpdateJob {
  return { ...job, signature: sign(null, signedJobBytes(job), key).toString('base64') };
}

/**
 * Why a job's signature does not hold for this device, or undefined when it does: it verifies
 * with `pubkey`, names this fleet and device, and has not expired.
 */
export function jobSignatureProblem(
  job: UpdateJob,
  pubkey: KeyObject,
  me: { fleet: string; device: string },
  now = Date.now(),
): string | undefined {
  if (!job.signature) return 'the job is not signed';
  if (!verify(null, signedJobBytes(job), pubkey, Buffer.from(job.signature, 'base64')))
    return 'the signature does not verify with the fleet key';
  if (job.fleet !== me.fleet || job.device !== me.device)
    return `the job is signed for ${job.fleet ?? '?'}/${job.device ?? '?'}`;
  if (!job.expiresAt) return 'a signed job must carry expiresAt';
  if (Date.parse(job.expiresAt) <= now) return `the job expired at ${job.expiresAt}`;
  return undefined;
}

/** The text a state carries for a code: the ERRORS table's meaning, or `override` (what a download means by it). */
export function publicText(code: ErrorCode, override?: Partial<Record<ErrorCode, string>>): string {
  return override?.[code] ?? ERRORS[code].meaning;
}
