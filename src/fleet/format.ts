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
 * Format 3 adds prebuilt TensorRT engines per target (`engines`): their files follow the set's, one
 * target's group after another, so a device reads (and writes) only its own target's group.
 */
import { isAbsolute, posix } from 'node:path';
import { z } from 'zod';
import { ModelSetId, Sha256Hex } from '../engine/manifest.js';
import { matchTarget, TargetId, TargetPattern } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { levelName } from '../mqtt/topics.js';

export const BUNDLE_MAGIC = Buffer.from('SETOKIM-BNDL', 'ascii');
export const PREFIX_BYTES = BUNDLE_MAGIC.length + 4;
export const MAX_HEADER_BYTES = 4 * 2 ** 20;
export const BUNDLE_FORMAT = 'setokim-bundle';
/** The manifest format this runtime writes for a set alone (2: with the compatibility section). */
export const BUNDLE_VERSION = 2;
/** The manifest format this runtime writes for a set with prebuilt engines per target. */
export const BUNDLE_ENGINES_VERSION = 3;
/** The manifest formats this runtime reads: 1 (unbound: installed only with allowUnbound), 2 and 3. */
export const READABLE_BUNDLE_VERSIONS: readonly number[] = [1, 2, 3];
/** Where a set keeps engines (src/engine/engine-builder.ts engineDir): never a portable set file in format 3. */
export const ENGINES_DIR = 'engines';
/** Domain separation: a signature over a bundle manifest is never valid for anything else. */
export const SIGNING_CONTEXT = 'setokim-bundle-v1\n';

/** A relative POSIX path inside the model set: no '..', no absolute paths, no odd characters. */
const BundlePath = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/, 'letters, digits, ".", "_", "-" and "/" only')
  .refine(
    (p) => !isAbsolute(p) && !p.split('/').some((s) => s === '.' || s === '..') && posix.normalize(p) === p,
    'must be a plain path inside the model set',
  );

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

/** A plan or its manifest in an engine group: `<stage>.<precision>.plan` and `<stage>.<precision>.plan.json`. */
const EngineFileName = /^[A-Za-z0-9_-]+\.[a-z0-9]+\.plan(\.json)?$/;

/**
 * The prebuilt engines for one target (format 3): plans with their engine manifests
 * (src/engine/engine-manifest.ts), unpacked into `<set>/engines/` on a device of that target only.
 */
export const EngineGroupSchema = z.strictObject({
  /** The exact target the plans were built on (no pattern): `orin-nano-8gb/jp6.2/trt10.3`. */
  target: TargetId,
  files: z
    .array(BundleFileSchema.extend({ path: z.string().regex(EngineFileName, '<stage>.<precision>.plan[.json]') }))
    .min(2)
    .max(256),
});
export type EngineGroup = z.infer<typeof EngineGroupSchema>;

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
      if (seen.has(dir))
        ctx.addIssue({
          code: 'custom',
          path: ['files'],
          message: `${dir} is a file and also the directory of ${f.path}`,
        });
    }
  }
  if (!seen.has('manifest.json'))
    ctx.addIssue({ code: 'custom', path: ['files'], message: 'manifest.json (the model set manifest) is missing' });
}

/** Each group's target distinct and allowed by `compatibility.targets`; each plan with its manifest; no set file under engines/. */
function checkEngines(
  m: { compatibility: Compatibility; engines: EngineGroup[]; files: BundleFile[] },
  ctx: z.RefinementCtx,
): void {
  const issue = (message: string) => ctx.addIssue({ code: 'custom', path: ['engines'], message });
  const targets = m.engines.map((g) => g.target);
  if (new Set(targets).size !== targets.length) issue('a target has two engine groups');
  for (const g of m.engines) {
    if (!m.compatibility.targets.some((p) => matchTarget(p, g.target))) {
      issue(
        `engines for ${g.target}, which compatibility.targets (${m.compatibility.targets.join(', ')}) does not allow`,
      );
    }
    const names = new Set(g.files.map((f) => f.path));
    if (names.size !== g.files.length) issue(`${g.target}: a file is listed twice`);
    for (const n of names) {
      const pair = n.endsWith('.json') ? n.slice(0, -'.json'.length) : `${n}.json`;
      if (!names.has(pair)) issue(`${g.target}: ${n} comes without ${pair}`);
    }
  }
  for (const f of m.files) {
    if (f.path.split('/')[0] === ENGINES_DIR) issue(`${f.path}: engines travel in engine groups, not as set files`);
  }
}

/** Format 1: no compatibility section, so bound to nothing (read for the opt-in only). */
export const BundleManifestV1Schema = z
  .strictObject({ ...manifestFields, formatVersion: z.literal(1) })
  .superRefine(checkFiles);
/** Format 2: what `bundle create` writes. */
export const BundleManifestV2Schema = z
  .strictObject({ ...manifestFields, formatVersion: z.literal(2), compatibility: CompatibilitySchema })
  .superRefine(checkFiles);
/** Format 3: format 2 plus prebuilt engines per target. */
export const BundleManifestV3Schema = z
  .strictObject({
    ...manifestFields,
    formatVersion: z.literal(3),
    compatibility: CompatibilitySchema,
    engines: z.array(EngineGroupSchema).min(1).max(64),
  })
  .superRefine(checkFiles)
  .superRefine(checkEngines);
export type BundleManifestV1 = z.infer<typeof BundleManifestV1Schema>;
export type BundleManifestV2 = z.infer<typeof BundleManifestV2Schema>;
export type BundleManifestV3 = z.infer<typeof BundleManifestV3Schema>;
export type BundleManifest = BundleManifestV1 | BundleManifestV2 | BundleManifestV3;

/** The compatibility section of a manifest, or null for an unbound (format 1) bundle. */
export const compatibilityOf = (m: BundleManifest): Compatibility | null =>
  m.formatVersion === 1 ? null : m.compatibility;

/** The engine groups of a manifest (none before format 3). */
export const engineGroupsOf = (m: BundleManifest): EngineGroup[] => (m.formatVersion === 3 ? m.engines : []);

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
  if (typeof value === 'number' && !Number.isSafeInteger(value))
    throw new SetokimError(
      ErrorCodes.BUNDLE_INVALID,
      `bundle manifest: ${value} is not a whole number; only integers are allowed`,
    );
  return JSON.stringify(value);
}

export const signedBytes = (m: BundleManifest): Buffer => Buffer.from(SIGNING_CONTEXT + canonicalJson(m), 'utf8');

/** Validates a parsed manifest; `where` names the bundle in errors. */
export function parseBundleManifest(json: unknown, where: string): BundleManifest {
  const head = z.object({ format: z.unknown(), formatVersion: z.unknown() }).safeParse(json);
  if (!head.success || head.data.format !== BUNDLE_FORMAT)
    throw new SetokimError(
      ErrorCodes.BUNDLE_INVALID,
      `${where}: not a Setokim bundle manifest (format must be "${BUNDLE_FORMAT}")`,
    );
  const version = head.data.formatVersion;
  if (typeof version !== 'number' || !READABLE_BUNDLE_VERSIONS.includes(version)) {
    const reads = `${READABLE_BUNDLE_VERSIONS.slice(0, -1).join(', ')} and ${READABLE_BUNDLE_VERSIONS.at(-1)}`;
    const msg = `${where}: bundle formatVersion ${JSON.stringify(version)} is not supported (this runtime reads ${reads})`;
    throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${msg}; update setokim-edge`);
  }
  const schema = { 1: BundleManifestV1Schema, 2: BundleManifestV2Schema, 3: BundleManifestV3Schema }[
    version as 1 | 2 | 3
  ];
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${where}: invalid bundle manifest: ${issues}`);
  }
  return parsed.data;
}

/** Encodes magic + length + header JSON. */
export function encodePrefix(manifest: BundleManifest, signature: Buffer): Buffer {
  const header = Buffer.from(JSON.stringify({ manifest, signature: signature.toString('base64') }), 'utf8');
  if (header.length > MAX_HEADER_BYTES)
    throw new SetokimError(
      ErrorCodes.BUNDLE_INVALID,
      `bundle header is ${header.length} bytes (at most ${MAX_HEADER_BYTES}); bundle fewer files`,
    );
  const len = Buffer.alloc(4);
  len.writeUInt32BE(header.length);
  return Buffer.concat([BUNDLE_MAGIC, len, header]);
}
