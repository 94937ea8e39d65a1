/**
 * manifest.json: what a model set directory holds. The architecture config, and per stage the
 * file, its sha256 and byte size, its precision and the IO signature it was built to, plus any
 * quantised variants of the same stage. Loading checks the format version first, then the schema;
 * verifying checks every listed file (present, size, sha256, an ONNX ModelProto that is whole).
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, normalize } from 'node:path';
import { Transform } from 'node:stream';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  ArchitectureSchema,
  SignatureSchema,
  STAGES,
  REQUIRED_STAGES,
  stageSignature,
  type StageName,
  type StageSignature,
} from './contract.js';

export const MANIFEST_FILE = 'manifest.json';
export const MANIFEST_FORMAT = 'setokim-modelset';
export const MANIFEST_VERSION = 1;

export const PRECISIONS = ['fp32', 'fp16', 'int8', 'int4w'] as const;
export type Precision = (typeof PRECISIONS)[number];
/**
 * The backend a variant's graph is written for, when it is not for every backend: an INT4 stage is
 * written twice, computing in float32 for ONNX Runtime and in float16 for TensorRT (docs/QUANT.md).
 * A variant without a dialect is for any backend.
 */
export const DIALECTS = ['onnxruntime', 'tensorrt'] as const;
export type Dialect = (typeof DIALECTS)[number];

/** A plain relative file name inside the set's directory (no '..', no absolute paths). */
const FileName = z
  .string()
  .min(1)
  .refine((f) => !isAbsolute(f) && !normalize(f).startsWith('..'), 'must be a path inside the model set directory');

/** A sha256 as the manifests, bundles and update jobs write it. */
export const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits');
/**
 * Names a model store keeps for itself beside the set directories (src/engine/modelset.ts):
 * the `active` pointer and the `<name>.tmp` files durable writes go through; its `.fleet/` state
 * is a dot-name, which no id can start with. Compared case-insensitively (a store on a
 * case-insensitive file system).
 */
export function isReservedStoreName(id: string): boolean {
  const lower = id.toLowerCase();
  return lower === 'active' || lower.endsWith('.tmp');
}

/**
 * A model set id: a store directory name and what fleet updates switch between. The one check of
 * every id (set manifest, bundle manifest, journal, release record, ModelStore.dirOf), so no signed
 * bundle can name the store's own files.
 */
export const ModelSetId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" and "-", starting with a letter or digit')
  .refine((id) => !isReservedStoreName(id), 'reserved for the model store ("active" and names ending in ".tmp")');

export const StageFileSchema = z.object({
  file: FileName,
  format: z.enum(['onnx', 'tensorrt']).default('onnx'),
  sha256: Sha256Hex,
  bytes: z.number().int().positive(),
  precision: z.enum(PRECISIONS),
  dialect: z.enum(DIALECTS).optional(),
});
export type StageFile = z.infer<typeof StageFileSchema>;

export const StageEntrySchema = StageFileSchema.extend({
  signature: SignatureSchema,
  /** Other builds of the same stage with the same signature (e.g. int8, int4w), chosen at open. */
  variants: z.array(StageFileSchema).default([]),
}).refine((e) => e.dialect === undefined, {
  message: 'the main file is for every backend: no dialect',
  path: ['dialect'],
});
export type StageEntry = z.infer<typeof StageEntrySchema>;

export const ManifestSchema = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    formatVersion: z.literal(MANIFEST_VERSION),
    /** Identifies the set (fleet updates switch between ids), e.g. setokim-tiny-seed1. */
    id: ModelSetId,
    description: z.string().default(''),
    architecture: ArchitectureSchema,
    stages: z.partialRecord(z.enum(STAGES), StageEntrySchema),
  })
  .superRefine((m, ctx) => {
    for (const s of REQUIRED_STAGES) {
      if (!m.stages[s])
        ctx.addIssue({ code: 'custom', path: ['stages', s], message: `required stage ${s} is missing` });
    }
  });
export type Manifest = z.infer<typeof ManifestSchema>;
export type ManifestInput = z.input<typeof ManifestSchema>;

/** Reads and validates `<dir>/manifest.json` (does not touch the stage files; see verifyModelSet). */
export async function loadManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.MODEL_NOT_FOUND,
      `${path}: no model set manifest here; write one with \`setokim export synth\` or point to a model set directory`,
      { cause: err },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${path}: not valid JSON (${(err as Error).message}); re-export the model set`,
      { cause: err },
    );
  }
  return parseManifest(json, path);
}

/** Validates a parsed manifest; `where` names it in errors. The version is checked before the rest. */
export function parseManifest(json: unknown, where = MANIFEST_FILE): Manifest {
  const head = z.object({ format: z.unknown(), formatVersion: z.unknown() }).safeParse(json);
  if (!head.success || head.data.format !== MANIFEST_FORMAT) {
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${where}: not a Setokim model set manifest (format must be "${MANIFEST_FORMAT}")`,
    );
  }
  if (head.data.formatVersion !== MANIFEST_VERSION) {
    throw new SetokimError(
      ErrorCodes.MODEL_VERSION,
      `${where}: manifest formatVersion ${JSON.stringify(head.data.formatVersion)} is not supported (this runtime reads version ${MANIFEST_VERSION}); update setokim-edge or re-export the model set`,
    );
  }
  const parsed = ManifestSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SetokimError(ErrorCodes.MODEL_INVALID, `${where}: invalid manifest: ${issues}`);
  }
  for (const [stage, entry] of Object.entries(parsed.data.stages) as [StageName, StageEntry][]) {
    const want = stageSignature(stage, parsed.data.architecture);
    const diff = signatureDifference(want, entry.signature);
    if (diff)
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `${where}: stage ${stage} (${entry.file}) does not follow the stage contract: ${diff}`,
      );
  }
  return parsed.data;
}

/** First difference between two signatures (names, order, dtypes, dims), or null when equal. */
export function signatureDifference(want: StageSignature, got: StageSignature): string | null {
  for (const side of ['inputs', 'outputs'] as const) {
    const w = want[side];
    const g = got[side];
    if (w.length !== g.length)
      return `${side}: expected ${w.map((t) => t.name).join(', ')}, got ${g.map((t) => t.name).join(', ')}`;
    for (let i = 0; i < w.length; i++) {
      const a = w[i]!;
      const b = g[i]!;
      if (a.name !== b.name) return `${side}[${i}]: expected ${a.name}, got ${b.name}`;
      if (a.dtype !== b.dtype) return `${a.name}: expected dtype ${a.dtype}, got ${b.dtype}`;
      if (JSON.stringify(a.shape) !== JSON.stringify(b.shape))
        return `${a.name}: expected shape [${a.shape}], got [${b.shape}]`;
    }
  }
  return null;
}

/** Streams a file into `hash` (a fresh sha256 by default): a resumed download seeds it with its partial file. */
export async function hashFile(path: string, hash: Hash = createHash('sha256'), signal?: AbortSignal): Promise<Hash> {
  for await (const chunk of createReadStream(path, signal ? { signal } : {})) hash.update(chunk as Buffer);
  return hash;
}

/**
 * A pass-through stream that feeds every chunk into `hash`, after `onChunk` saw its length (a
 * throw there fails the stream before the chunk goes on): hashing while copying or downloading.
 */
export function hashingTap(hash: Hash, onChunk?: (bytes: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        onChunk?.(chunk.length);
      } catch (err) {
        return cb(err as Error);
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
}

/** sha256 of bytes in memory, hex: the manifest's hash of a file about to be written. */
export function sha256Bytes(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** sha256 of a file, hex, read as a stream (model and engine files are large). */
export async function sha256File(path: string): Promise<string> {
  return (await hashFile(path)).digest('hex');
}

/**
 * Checks one stage file: present, the listed size, the listed sha256, and (ONNX) a whole
 * ModelProto. Size is checked before the hash so a truncated file says so.
 */
export async function verifyStageFile(dir: string, f: StageFile): Promise<string> {
  const path = join(dir, f.file);
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.MODEL_NOT_FOUND,
      `${path}: model file listed in the manifest is missing; re-download or re-export the model set`,
      { cause: err },
    );
  }
  if (size !== f.bytes) {
    const what = size < f.bytes ? 'truncated' : 'larger than listed';
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${path}: ${what} (${size} bytes, manifest says ${f.bytes}); re-download or re-export the model set`,
    );
  }
  const actual = await sha256File(path);
  if (actual !== f.sha256) {
    throw new SetokimError(
      ErrorCodes.MODEL_HASH_MISMATCH,
      `${path}: sha256 ${actual} does not match the manifest's ${f.sha256}; the file is corrupt or from another model set`,
    );
  }
  if (f.format === 'onnx') await checkOnnxFile(path);
  return path;
}

/** Verifies every stage file and variant of a loaded manifest; returns the main file path per stage. */
export async function verifyModelSet(dir: string, manifest: Manifest): Promise<Partial<Record<StageName, string>>> {
  const paths: Partial<Record<StageName, string>> = {};
  for (const [stage, entry] of Object.entries(manifest.stages) as [StageName, StageEntry][]) {
    paths[stage] = await verifyStageFile(dir, entry);
    for (const v of entry.variants) await verifyStageFile(dir, v);
  }
  return paths;
}

/**
 * Cheap structural check of an ONNX file without decoding the graph: walks the top-level
 * ModelProto fields (tag + length only) and requires ir_version (1) and graph (7), with every
 * length-delimited field ending inside the file and the last one ending exactly at its end.
 * A truncated or non-ONNX file fails; a multi-GB graph is never read into memory.
 */
export async function checkOnnxFile(path: string): Promise<void> {
  const bad = (why: string) =>
    new SetokimError(ErrorCodes.MODEL_INVALID, `${path}: not a valid ONNX model (${why}); re-export the stage`);
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(20);
    let pos = 0;
    const seen = new Set<number>();
    while (pos < size) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      let i = 0;
      const varint = (): number => {
        let v = 0;
        for (let shift = 0; shift < 64; shift += 7) {
          if (i >= bytesRead) throw bad(`cut off at byte ${pos + i}`);
          const b = buf[i++]!;
          v += (b & 0x7f) * 2 ** shift;
          if (b < 0x80) return v;
        }
        throw bad(`malformed varint at byte ${pos}`);
      };
      const tag = varint();
      const field = Math.floor(tag / 8);
      const wire = tag & 7;
      if (field < 1 || field > 20) throw bad(`unexpected field ${field} at byte ${pos}`);
      seen.add(field);
      if (wire === 0) varint();
      else if (wire === 2) {
        const len = varint(); // not `i += varint()`: that reads i before varint() advances it
        i += len;
      } else if (wire === 1) i += 8;
      else if (wire === 5) i += 4;
      else throw bad(`unexpected wire type ${wire} at byte ${pos}`);
      pos += i;
      if (pos > size) throw bad(`field ${field} runs past the end of the file: truncated`);
    }
    if (!seen.has(1)) throw bad('no ir_version');
    if (!seen.has(7)) throw bad('no graph');
  } finally {
    await fh.close();
  }
}

/** A manifest as written by export tools: stable key order, two-space JSON, trailing newline. */
export function serializeManifest(m: ManifestInput): string {
  return JSON.stringify(m, null, 2) + '\n';
}

export const manifestPath = (dir: string) => join(dir, MANIFEST_FILE);
