/**
 * The bundle file layout, documented in docs/FLEET.md:
 *
 *   bytes 0..11   magic "SETOKIM-BNDL"
 *   bytes 12..15  header length N, uint32 big-endian (at most MAX_HEADER_BYTES)
 *   next N bytes  header: UTF-8 JSON { "manifest": BundleManifest, "signature": base64 }
 *   then          each file of manifest.files, in that order, back to back, no padding
 *
 * The file must end exactly after the last file. The signature is Ed25519 over
 * SIGNING_CONTEXT + canonicalJson(manifest), so the header can be read and checked before any
 * payload byte is touched, and each file sits at an offset computed from the sizes before it.
 * Manifest format 2 adds the signed compatibility section (fleets, targets, expiry, minimum agent
 * version) that binds a bundle to where and until when it may be installed; format 1 has none.
 */
import { isAbsolute, posix } from 'node:path';
import { z } from 'zod';
import { ModelSetId, Sha256Hex } from '../engine/manifest.js';
import { TargetPattern } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { levelName } from '../mqtt/topics.js';

export const BUNDLE_MAGIC = Buffer.from('SETOKIM-BNDL', 'ascii');
export const PREFIX_BYTES = BUNDLE_MAGIC.length + 4;
export const MAX_HEADER_BYTES = 4 * 2 ** 20;
export const BUNDLE_FORMAT = 'setokim-bundle';
/** The manifest format this runtime writes (2: with the compatibility section). */
export const BUNDLE_VERSION = 2;
/** The manifest formats this runtime reads: 1 (unbound: installed only with allowUnbound) and 2. */
export const READABLE_BUNDLE_VERSIONS: readonly number[] = [1, 2];
/** Domain separation: a signature over a bundle manifest is never valid for anything else. */
export const SIGNING_CONTEXT = 'setokim-bundle-v1\n';

/** A relative POSIX path inside the model set: no '..', no absolute paths, no odd characters. */
const BundlePath = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/, 'letters, digits, ".", "_", "-" and "/" only')
  .refine((p) => !isAbsolute(p) && !p.split('/').some((s) => s === '.' || s === '..') && posix.normalize(p) === p, 'must be a plain path inside the model set');

export const BundleFileSchema = z.strictObject({
  path: BundlePath,
  size: z.number().int().min(0),
  sha256: Sha256Hex,
});
export type BundleFile = z.infer<typeof BundleFileSchema>;

/** The first setokim-edge that reads format 2 (the default minAgentVersion of `bundle create`). */
export const FIRST_BOUND_AGENT_VERSION = '0.1.0';

/** A setokim-edge version, major.minor.patch. */
export const AgentVersion = z.string().regex(/^\d{1,6}\.\d{1,6}\.\d{1,6}$/, 'a version major.minor.patch, e.g. 0.1.0');

const distinct = (xs: string[]) => new Set(xs).size === xs.length;

/**
 * Where and until when a bundle may be installed (format 2; docs/FLEET.md "Compatibility"). A
 * device refuses the bundle unless its fleet is listed, its target (src/engine/target.ts) matches
 * a pattern, its clock is not past notAfter (plus a small skew) and its agent is at least
 * minAgentVersion. Signed with the rest: none of it can be edited without breaking the signature.
 * Strict: a field a device does not know is refused, never ignored (new constraints come with a
 * new formatVersion); per-target engines (issue 13) will sit beside `files`, not in here.
 */
export const CompatibilitySchema = z.strictObject({
  /** The fleets (MQTT fleet names, the agent's --fleet) whose devices may install it. */
  fleets: z.array(levelName).min(1).max(256).refine(distinct, 'a fleet is listed twice'),
  /** Target patterns (`*`, or `orin-nano-*\/jp6.*\/trt10.3`): the device's target must match one. */
  targets: z.array(TargetPattern).min(1).max(256).refine(distinct, 'a target is listed twice'),
  /** After this instant devices refuse it (ISO 8601, UTC). */
  notAfter: z.iso.datetime(),
  /** The oldest setokim-edge that may install it. */
  minAgentVersion: AgentVersion,
});
export type Compatibility = z.infer<typeof CompatibilitySchema>;

const manifestFields = {
  format: z.literal(BUNDLE_FORMAT),
  modelSetId: ModelSetId,
  /** Monotonically increasing per fleet: a device refuses a release not above the one it committed. */
  release: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  createdAt: z.iso.datetime(),
  /** Which key signed it: the first 16 hex digits of sha256 over the public key's SPKI DER. */
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  files: z.array(BundleFileSchema).min(1),
};

function checkFiles(m: { files: BundleFile[] }, ctx: z.RefinementCtx): void {
  const seen = new Set<string>();
  for (const f of m.files) {
    if (seen.has(f.path)) ctx.addIssue({ code: 'custom', path: ['files'], message: `${f.path} is listed twice` });
    seen.add(f.path);
  }
  // A file may not also be a directory of another ('a' and 'a/b'): unpacking could not write both.
  for (const f of m.files) {
    const parts = f.path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (seen.has(dir)) ctx.addIssue({ code: 'custom', path: ['files'], message: `${dir} is a file and also the directory of ${f.path}` });
    }
  }
  if (!seen.has('manifest.json')) ctx.addIssue({ code: 'custom', path: ['files'], message: 'manifest.json (the model set manifest) is missing' });
}

/** Format 1: no compatibility section, so bound to nothing (read for the opt-in only). */
export const BundleManifestV1Schema = z
  .strictObject({ ...manifestFields, formatVersion: z.literal(1) })
  .superRefine(checkFiles);
/** Format 2: what `bundle create` writes. */
export const BundleManifestV2Schema = z
  .strictObject({ ...manifestFields, formatVersion: z.literal(2), compatibility: CompatibilitySchema })
  .superRefine(checkFiles);
export type BundleManifestV1 = z.infer<typeof BundleManifestV1Schema>;
export type BundleManifestV2 = z.infer<typeof BundleManifestV2Schema>;
export type BundleManifest = BundleManifestV1 | BundleManifestV2;

/** The compatibility section of a manifest, or null for an unbound (format 1) bundle. */
export const compatibilityOf = (m: BundleManifest): Compatibility | null =>
  m.formatVersion === 2 ? m.compatibility : null;

export const BundleHeaderSchema = z.strictObject({
  manifest: z.unknown(),
  signature: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/, 'base64'),
});

/**
 * JSON with object keys sorted at every level and no whitespace: the bytes that are signed. The
 * manifest holds only strings, safe integers, arrays and objects, so this is unambiguous.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value as object)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(',')}}`;
  }
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `bundle manifest: ${value} is not a whole number; only integers are allowed`);
  return JSON.stringify(value);
}

export const signedBytes = (m: BundleManifest): Buffer => Buffer.from(SIGNING_CONTEXT + canonicalJson(m), 'utf8');

/** Validates a parsed manifest; `where` names the bundle in errors. */
export function parseBundleManifest(json: unknown, where: string): BundleManifest {
  const head = z.object({ format: z.unknown(), formatVersion: z.unknown() }).safeParse(json);
  if (!head.success || head.data.format !== BUNDLE_FORMAT) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${where}: not a Setokim bundle manifest (format must be "${BUNDLE_FORMAT}")`);
  const version = head.data.formatVersion;
  if (typeof version !== 'number' || !READABLE_BUNDLE_VERSIONS.includes(version)) {
    const reads = READABLE_BUNDLE_VERSIONS.join(' and ');
    const msg = `${where}: bundle formatVersion ${JSON.stringify(version)} is not supported (this runtime reads ${reads})`;
    throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${msg}; update setokim-edge`);
  }
  const parsed = (version === 1 ? BundleManifestV1Schema : BundleManifestV2Schema).safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${where}: invalid bundle manifest: ${issues}`);
  }
  return parsed.data;
}

/** Encodes magic + length + header JSON. */
export function encodePrefix(manifest: BundleManifest, signature: Buffer): Buffer {
  const header = Buffer.from(JSON.stringify({ manifest, signature: signature.toString('base64') }), 'utf8');
  if (header.length > MAX_HEADER_BYTES) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `bundle header is ${header.length} bytes (at most ${MAX_HEADER_BYTES}); bundle fewer files`);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(header.length);
  return Buffer.concat([BUNDLE_MAGIC, len, header]);
}
