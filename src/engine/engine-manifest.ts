/**
 * The manifest every TensorRT engine (plan) travels with. A plan only runs on the TensorRT version
 * and GPU it was built for, and there is no preflight call to ask TensorRT, so the runtime reads
 * the manifest first and refuses with every reason at once (ENGINE_INCOMPATIBLE) instead of
 * failing inside deserialisation. docs/ENGINES.md describes the lifecycle.
 */
import { createPublicKey, verify as verifySignature } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { SignatureSchema } from './contract.js';
import type { Capabilities } from './native.js';
import { DIALECTS, Sha256Hex, sha256File } from './manifest.js';
import { writeFileDurable } from './durable.js';
import { moduleSm, platformOf, TargetId } from './target.js';

export const ENGINE_MANIFEST_FORMAT = 'setokim-engine/1';

const Version = z.string().regex(/^\d+(\.\d+)*$/, 'a dotted version such as 10.3.0');
const ShapeRange = z
  .object({
    min: z.array(z.number().int().nonnegative()),
    opt: z.array(z.number().int().nonnegative()),
    max: z.array(z.number().int().nonnegative()),
  })
  .refine(
    (r) => r.min.length === r.opt.length && r.opt.length === r.max.length,
    'min, opt and max must have the same rank',
  )
  .refine(
    (r) => r.min.every((v, i) => v <= r.opt[i]! && r.opt[i]! <= r.max[i]!),
    'each profile needs min <= opt <= max',
  );

export const EngineManifestSchema = z.object({
  format: z.literal(ENGINE_MANIFEST_FORMAT),
  stage: z.string().min(1),
  /** The plan's file name, beside the manifest. */
  plan: z.string().min(1),
  sha256: Sha256Hex,
  bytes: z.number().int().nonnegative(),
  /** The ONNX graph it was built from. */
  source: z.object({ file: z.string(), sha256: Sha256Hex }),
  tensorrt: Version,
  cuda: Version,
  /** Compute capability, e.g. "8.7" for Orin. */
  sm: z.string().regex(/^\d+\.\d+$/),
  gpu: z.string(),
  jetpack: Version.nullable(),
  l4t: Version.nullable(),
  /** Precision lives in the ONNX graph: engines are built strongly typed. */
  precision: z.enum(['fp32', 'fp16', 'int8', 'int4w', 'mixed']),
  stronglyTyped: z.literal(true),
  /** Version-compatible engines embed host code: loaded only with a trusted signature. */
  versionCompatible: z.boolean().default(false),
  /** Optimisation profiles: per input, min/opt/max shapes. */
  profiles: z.array(z.record(z.string(), ShapeRange)).min(1),
  io: SignatureSchema,
  builder: z.object({
    workspaceBytes: z.number().int().positive(),
    timingCache: z.boolean(),
    seconds: z.number().nonnegative(),
  }),
  builtAt: z.string(),
  /**
   * The target it was built for (`orin-nano-8gb/jp6.2/trt10.3`, src/engine/target.ts). Written by every
   * build since fleet engine updates; `bundle create --engines` needs it. Absent in older manifests.
   */
  target: TargetId.optional(),
  /**
   * The graph dialect it was built from, when a stage has more than one form of the same weights
   * (the TensorRT form of int4w, docs/QUANT.md); absent: a graph for every backend. Part of the
   * engine cache key.
   */
  dialect: z.enum(DIALECTS).optional(),
  /** ed25519 signature over the manifest without this field (see manifestSigningBytes). */
  signature: z
    .object({ keyId: z.string().min(1), algorithm: z.literal('ed25519'), value: z.string().min(1) })
    .optional(),
});
export type EngineManifest = z.infer<typeof EngineManifestSchema>;

/** The manifest beside a plan: `encoder.plan` -> `encoder.plan.json`. */
export const engineManifestPath = (plan: string): string => `${plan}.json`;

export function parseEngineManifest(json: unknown, where: string): EngineManifest {
  const r = EngineManifestSchema.safeParse(json);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `engine manifest ${where} is invalid: ${issues}. Rebuild the engine with \`setokim export engine\`.`,
    );
  }
  return r.data;
}

export function readEngineManifest(plan: string): EngineManifest {
  const file = engineManifestPath(plan);
  if (!existsSync(file)) {
    throw new SetokimError(
      ErrorCodes.MODEL_NOT_FOUND,
      `engine ${plan} has no manifest (${file}); an engine is never loaded without one. Rebuild it with \`setokim export engine\`.`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SetokimError(ErrorCodes.MODEL_INVALID, `engine manifest ${file} is not JSON: ${(err as Error).message}`);
  }
  return parseEngineManifest(json, file);
}

/** What the running machine offers an engine, drawn from capabilities(). */
export interface MachineInfo {
  tensorrtCompiled: boolean;
  /** The libnvinfer actually loaded, else the headers the addon was built with. */
  tensorrt: string | null;
  cuda: string | null;
  gpus: { index: number; name: string; sm: string }[];
  l4t: string | null;
}

/** L4T release from /etc/nv_tegra_release ("# R36 (release), REVISION: 3.0" -> "36.3.0"). */
export function readL4t(file = '/etc/nv_tegra_release'): string | null {
  if (!existsSync(file)) return null;
  const m = /R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)/.exec(readFileSync(file, 'utf8'));
  return m ? `${m[1]}.${m[2]}` : null;
}

export function machineInfo(caps: Capabilities, l4t: string | null = readL4t()): MachineInfo {
  return {
    tensorrtCompiled: caps.compiled.tensorrt,
    tensorrt: caps.present.tensorrtLibraryVersion ?? caps.compiled.tensorrtVersion,
    cuda: caps.compiled.cudaVersion,
    gpus: caps.present.gpus.map((g) => ({ index: g.index, name: g.name, sm: g.computeCapability })),
    l4t,
  };
}

/** The first n parts of a version, missing parts as 0 ("10.3" and "10.3.0" agree). */
const parts = (v: string, n: number) => Array.from({ length: n }, (_, i) => Number(v.split('.')[i] ?? 0)).join('.');

export interface CompatibilityOptions {
  /** Trusted ed25519 public keys (PEM) by key id. */
  trustedKeys?: Readonly<Record<string, string>>;
  /** Refuse unsigned engines even when they are not version-compatible. */
  requireSignature?: boolean;
}

/** Every reason this machine cannot run the engine; empty when it can. */
export function incompatibilities(m: EngineManifest, machine: MachineInfo, opts: CompatibilityOptions = {}): string[] {
  const why: string[] = [];
  if (!machine.tensorrtCompiled)
    why.push('this build of the addon has no TensorRT backend (rebuild with TENSORRT_ROOT set)');
  else if (!machine.tensorrt) why.push('TensorRT libraries are not loaded on this machine');
  else if (!m.versionCompatible && parts(m.tensorrt, 3) !== parts(machine.tensorrt, 3)) {
    why.push(
      `built with TensorRT ${m.tensorrt}, this machine has TensorRT ${machine.tensorrt} (a plan only runs on the exact version that built it)`,
    );
  } else if (m.versionCompatible && parts(m.tensorrt, 1) !== parts(machine.tensorrt, 1)) {
    why.push(
      `version-compatible engine from TensorRT ${m.tensorrt} cannot run on major version ${parts(machine.tensorrt, 1)}`,
    );
  }
  if (machine.gpus.length === 0) why.push('no GPU is present');
  else if (!machine.gpus.some((g) => g.sm === m.sm)) {
    why.push(
      `built for SM ${m.sm} (${m.gpu}), this machine has ${machine.gpus.map((g) => `SM ${g.sm} (${g.name})`).join(', ')}`,
    );
  }
  if (machine.cuda && parts(m.cuda, 1) !== parts(machine.cuda, 1)) {
    why.push(`built with CUDA ${m.cuda}, this runtime uses CUDA ${machine.cuda} (the major versions must match)`);
  }
  if (m.l4t && machine.l4t && parts(m.l4t, 1) !== parts(machine.l4t, 1)) {
    why.push(`built on L4T ${m.l4t} (JetPack ${m.jetpack ?? '?'}), this machine runs L4T ${machine.l4t}`);
  }
  const signed = verifyManifestSignature(m, opts.trustedKeys ?? {});
  if (m.versionCompatible && signed !== true) {
    why.push(`version-compatible engines embed host code and load only when signed by a trusted key: ${signed}`);
  } else if (opts.requireSignature && signed !== true) {
    why.push(`a signed engine is required: ${signed}`);
  }
  return why;
}

export function assertEngineCompatible(m: EngineManifest, machine: MachineInfo, opts: CompatibilityOptions = {}): void {
  const why = incompatibilities(m, machine, opts);
  if (why.length) {
    throw new SetokimError(
      ErrorCodes.ENGINE_INCOMPATIBLE,
      `engine for stage '${m.stage}' (${m.plan}) cannot run here: ${why.join('; ')}. ` +
        'Build the engine on this device with `setokim export engine`, or run the stage on ONNX Runtime.',
    );
  }
}

/** A copy of a JSON value with object keys sorted at every level: JSON.stringify of it is canonical. */
export const sortKeys = (v: unknown): unknown =>
  Array.isArray(v)
    ? v.map(sortKeys)
    : v && typeof v === 'object'
      ? Object.fromEntries(
          Object.keys(v)
            .sort()
            .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
        )
      : v;

/**
 * Where an engine manifest's own facts contradict the target it names (or `target`, the one it is
 * shipped for): the TensorRT major.minor of the runtime segment, the SM the module implies, the
 * JetPack/L4T release of the platform segment. Empty when they agree. A manifest that names a
 * target it was not built on "lies about its target": bundles refuse to carry it, devices to install it.
 */
export function targetContradictions(m: EngineManifest, target = m.target): string[] {
  if (!target) return ['the manifest names no target (an engine built before targets existed: rebuild it)'];
  const why: string[] = [];
  if (m.target && m.target !== target) why.push(`its manifest says target ${m.target}, it is shipped as ${target}`);
  const [module, platform, runtime] = target.split('/') as [string, string, string];
  const trt = `trt${parts(m.tensorrt, 2)}`;
  if (runtime !== trt) why.push(`target runtime ${runtime}, but built with TensorRT ${m.tensorrt} (${trt})`);
  const sm = moduleSm(module);
  if (sm && sm !== m.sm) why.push(`module ${module} has SM ${sm}, but built for SM ${m.sm} (${m.gpu})`);
  const built = m.l4t ? platformOf(m.l4t) : 'none';
  if (platform !== built)
    why.push(`target platform ${platform}, but built on ${m.l4t ? `L4T ${m.l4t} (${built})` : 'no Jetson'}`);
  return why;
}

/** The bytes a signature covers: the manifest without `signature`, keys sorted, no whitespace. */
export function manifestSigningBytes(m: EngineManifest): Buffer {
  const { signature: _drop, ...rest } = m;
  return Buffer.from(JSON.stringify(sortKeys(rest)));
}

/** Writes `<plan>.json` so that a crash leaves the old manifest or the new one, whole. */
export async function writeEngineManifest(plan: string, m: EngineManifest): Promise<void> {
  await writeFileDurable(engineManifestPath(plan), JSON.stringify(m, null, 2) + '\n');
}

/** true when signed by a trusted key, otherwise why not. */
export function verifyManifestSignature(
  m: EngineManifest,
  trustedKeys: Readonly<Record<string, string>>,
): true | string {
  if (!m.signature) return 'the manifest is unsigned';
  const pem = trustedKeys[m.signature.keyId];
  if (!pem) return `key '${m.signature.keyId}' is not trusted`;
  try {
    const ok = verifySignature(
      null,
      manifestSigningBytes(m),
      createPublicKey(pem),
      Buffer.from(m.signature.value, 'base64'),
    );
    return ok ? true : `the signature by key '${m.signature.keyId}' does not match the manifest`;
  } catch (err) {
    return `the signature could not be checked: ${(err as Error).message}`;
  }
}

/** Refuses a plan whose bytes are not the ones the manifest describes. */
export async function verifyPlanFile(plan: string, m: EngineManifest): Promise<void> {
  if (!existsSync(plan)) throw new SetokimError(ErrorCodes.MODEL_NOT_FOUND, `engine plan ${plan} does not exist`);
  const got = await sha256File(plan);
  if (got !== m.sha256) {
    throw new SetokimError(
      ErrorCodes.MODEL_HASH_MISMATCH,
      `engine plan ${plan} has sha256 ${got}, its manifest says ${m.sha256}; the file is corrupt or was replaced. Rebuild or re-download it.`,
    );
  }
}

/** Whether the engine's profiles cover a range for a named input dim (e.g. L 1..maxTokens). */
export function profileCovers(m: EngineManifest, input: string, axis: number, min: number, max: number): boolean {
  return m.profiles.some((p) => {
    const r = p[input];
    return !!r && r.min[axis]! <= min && r.max[axis]! >= max;
  });
}
