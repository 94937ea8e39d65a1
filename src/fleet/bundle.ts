/**
 * Writing, reading and unpacking bundle files (layout in format.ts). Files are streamed, never
 * held whole in memory; every byte read from a bundle is hashed on its way to where it goes, so
 * what is checked is exactly what is written (no gap between a check pass and a copy pass).
 * A device unpacks the set's files and only its own target's engine group (format 3): the other
 * targets' bytes are never read, so a bundle for five targets needs one target's space.
 */
import { createHash, sign, verify, type KeyObject } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hashingTap, loadManifest, MANIFEST_FILE, sha256File, verifyModelSet } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  BUNDLE_FORMAT,
  BUNDLE_MAGIC,
  BUNDLE_ENGINES_VERSION,
  BUNDLE_VERSION,
  BundleHeaderSchema,
  engineGroupsOf,
  ENGINES_DIR,
  encodePrefix,
  MAX_HEADER_BYTES,
  parseBundleManifest,
  PREFIX_BYTES,
  signedBytes,
  type BundleFile,
  type BundleManifest,
  type BundleManifestV2,
  type BundleManifestV3,
  type Compatibility,
  type EngineGroup,
} from './format.js';
import { readEngineDirs } from './bundle-engines.js';
import { syncFile } from '../engine/durable.js';
import { keyIdOf } from './keys.js';

/** Bytes done of bytes total, for progress bars. */
export type ByteProgress = (done: number, total: number, file: string) => void;

/** A bundle whose header was read and whose signature verified; the payload is not checked yet. */
export interface OpenedBundle {
  path: string;
  manifest: BundleManifest;
  /** Offset of each file's first byte in the bundle file, in manifest order. */
  offsets: number[];
  /** Per engine group (format 3), the offset of each of its files. */
  engineOffsets: number[][];
  payloadBytes: number;
}

/** One file of a bundle as it is read: where it sits, and where it goes under the unpack directory. */
interface Entry {
  file: BundleFile;
  offset: number;
  /** Path under the destination directory. */
  to: string;
}

/**
 * What unpacking reads and writes: the set's files, plus the engine group of `engines` (a target id),
 * every group ('all', for verifying), or none (null).
 */
function entriesOf(b: OpenedBundle, engines: string | null | 'all'): Entry[] {
  const out: Entry[] = b.manifest.files.map((file, i) => ({ file, offset: b.offsets[i]!, to: file.path }));
  engineGroupsOf(b.manifest).forEach((g, gi) => {
    if (engines !== 'all' && g.target !== engines) return;
    g.files.forEach((file, i) =>
      out.push({ file, offset: b.engineOffsets[gi]![i]!, to: `${ENGINES_DIR}/${file.path}` }),
    );
  });
  return out;
}

/** The bytes unpacking writes for a device of `target` (null: no engines): the set plus its target's group. */
export const unpackedBytes = (b: OpenedBundle, target: string | null): number =>
  entriesOf(b, target).reduce((n, e) => n + e.file.size, 0);

/** The engine group for `target` in an opened bundle, if it has one. */
export const engineGroupFor = (b: OpenedBundle, target: string): EngineGroup | undefined =>
  engineGroupsOf(b.manifest).find((g) => g.target === target);

/** Every regular file under `dir` as a sorted relative POSIX path; links and devices are refused. */
async function listFiles(dir: string, root = dir): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(full, root)));
    else if (e.isFile()) out.push(relative(root, full).split(sep).join('/'));
    else
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `${full} is not a regular file (a link or a device); a bundle holds plain files only`,
      );
  }
  return out.sort();
}

export interface CreateOptions {
  models: string;
  release: number;
  key: KeyObject;
  out: string;
  /** Which fleets and targets the bundle is for, and until when (signed; checked by each device). */
  compatibility: Compatibility;
  /** Engines directories, one per target (format 3; bundle-engines.ts checks them). */
  engines?: readonly string[];
  createdAt?: Date;
  onProgress?: ByteProgress;
}

/** Size and sha256 of `names` under `dir`, in that order. */
async function describeFiles(dir: string, names: readonly string[]): Promise<BundleFile[]> {
  const files: BundleFile[] = [];
  for (const p of names) {
    const full = join(dir, p);
    files.push({ path: p, size: (await stat(full)).size, sha256: await sha256File(full) });
  }
  return files;
}

/** Appends `files` of `dir` to `out`, re-hashing each on the way: a file changed after it was signed must not ship. */
async function appendFiles(
  out: string,
  dir: string,
  files: BundleFile[],
  progress: (n: number, file: string) => void,
): Promise<void> {
  for (const f of files) {
    const h = createHash('sha256');
    const count = hashingTap(h, (n) => progress(n, f.path));
    await pipeline(createReadStream(join(dir, f.path)), count, createWriteStream(out, { flags: 'a' }));
    if (h.digest('hex') !== f.sha256)
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `${join(dir, f.path)} changed while it was being bundled; bundle a set nothing is writing to`,
      );
  }
}

/**
 * Bundles a model set: verifies it, hashes every file, signs the manifest, writes prefix + files,
 * then each target's engines (format 3 when there are any). The set's own `engines/` directory is
 * left out: engines belong to a target and travel in engine groups.
 */
export async function createBundle(o: CreateOptions): Promise<BundleManifestV2 | BundleManifestV3> {
  const createdAt = o.createdAt ?? new Date();
  if (Date.parse(o.compatibility.notAfter) <= createdAt.getTime()) {
    const when = `(${o.compatibility.notAfter}) before it is created (${createdAt.toISOString()})`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `the bundle would expire ${when}; give a later expiry`);
  }
  const set = await loadManifest(o.models);
  await verifyModelSet(o.models, set); // never sign a set that would not open
  const engineDirs = await readEngineDirs(o.engines ?? [], set, o.compatibility);
  const paths = (await listFiles(o.models)).filter((p) => p.split('/')[0] !== ENGINES_DIR);
  // The model set manifest first: a reader sees what the set is before its big files.
  const files = await describeFiles(o.models, [MANIFEST_FILE, ...paths.filter((p) => p !== MANIFEST_FILE)]);
  const engines: EngineGroup[] = [];
  for (const e of engineDirs) engines.push({ target: e.target, files: await describeFiles(e.dir, e.names) });
  const manifest = parseBundleManifest(
    {
      format: BUNDLE_FORMAT,
      formatVersion: engines.length ? BUNDLE_ENGINES_VERSION : BUNDLE_VERSION,
      modelSetId: set.id,
      release: o.release,
      createdAt: createdAt.toISOString(),
      keyId: keyIdOf(o.key),
      compatibility: o.compatibility,
      files,
      ...(engines.length ? { engines } : {}),
    },
    'new bundle',
  ) as BundleManifestV2 | BundleManifestV3;
  const signature = sign(null, signedBytes(manifest), o.key);
  const sum = (fs: BundleFile[]) => fs.reduce((a, f) => a + f.size, 0);
  const total = sum(files) + engines.reduce((a, g) => a + sum(g.files), 0);
  const tmp = `${o.out}.partial`;
  await mkdir(dirname(o.out), { recursive: true });
  try {
    await writeFile(tmp, encodePrefix(manifest, signature));
    let done = 0;
    const progress = (n: number, file: string) => o.onProgress?.((done += n), total, file);
    await appendFiles(tmp, o.models, files, progress);
    for (const [i, g] of engines.entries()) await appendFiles(tmp, engineDirs[i]!.dir, g.files, progress);
    await syncFile(tmp);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await rename(tmp, o.out);
  return manifest;
}

/** Reads the header, verifies the signature with `pubkey`, and checks the payload's length. */
export async function openBundle(path: string, pubkey: KeyObject): Promise<OpenedBundle> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot open bundle ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  try {
    const size = (await fh.stat()).size;
    const prefix = Buffer.alloc(PREFIX_BYTES);
    const { bytesRead } = await fh.read(prefix, 0, PREFIX_BYTES, 0);
    if (bytesRead < PREFIX_BYTES || !prefix.subarray(0, BUNDLE_MAGIC.length).equals(BUNDLE_MAGIC)) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${path}: not a Setokim bundle (no SETOKIM-BNDL magic); make one with \`setokim bundle create\``,
      );
    }
    const headerLen = prefix.readUInt32BE(BUNDLE_MAGIC.length);
    if (headerLen > MAX_HEADER_BYTES || PREFIX_BYTES + headerLen > size)
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${path}: header length ${headerLen} does not fit the file (${size} bytes); the bundle is truncated or corrupt`,
      );
    const headerBuf = Buffer.alloc(headerLen);
    await fh.read(headerBuf, 0, headerLen, PREFIX_BYTES);
    let json: unknown;
    try {
      json = JSON.parse(headerBuf.toString('utf8'));
    } catch (err) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${path}: the bundle header is not JSON (${(err as Error).message}); the bundle is corrupt`,
        { cause: err },
      );
    }
    const header = BundleHeaderSchema.safeParse(json);
    if (!header.success)
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${path}: bundle header: ${header.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
      );
    const manifest = parseBundleManifest(header.data.manifest, path);
    const trusted = keyIdOf(pubkey);
    if (manifest.keyId !== trusted) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_SIGNATURE,
        `${path}: signed by key ${manifest.keyId}, but the trusted public key is ${trusted}; install a bundle signed by your fleet's key or pass the matching --pubkey`,
      );
    }
    if (!verify(null, signedBytes(manifest), pubkey, Buffer.from(header.data.signature, 'base64'))) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_SIGNATURE,
        `${path}: the Ed25519 signature does not verify with key ${trusted}; the bundle manifest or its signature was altered: do not install it`,
      );
    }
    let at = PREFIX_BYTES + headerLen;
    const place = (fs: BundleFile[]) => fs.map((f) => ((at += f.size), at - f.size));
    const offsets = place(manifest.files);
    const engineOffsets = engineGroupsOf(manifest).map((g) => place(g.files));
    if (at !== size) {
      const what =
        at > size
          ? `truncated (${size} bytes, the signed manifest needs ${at})`
          : `${size - at} bytes longer than the signed manifest says`;
      throw new SetokimError(ErrorCodes.BUNDLE_TAMPERED, `${path}: ${what}; download the bundle again`);
    }
    return { path, manifest, offsets, engineOffsets, payloadBytes: at - PREFIX_BYTES - headerLen };
  } finally {
    await fh.close();
  }
}

/**
 * Streams the files of an opened bundle through sha256 into `dest` (a directory), or nowhere when
 * `dest` is null (verify only): the set's files, and the engine group `engines` selects (a target
 * id, 'all', or null for none; default: every group when verifying, none when unpacking), its
 * files going to `dest/engines/`. The first file that differs from the manifest throws
 * BUNDLE_TAMPERED; files written so far stay for the caller to remove.
 */
export async function streamBundle(
  b: OpenedBundle,
  dest: string | null,
  onProgress?: ByteProgress,
  engines: string | null | 'all' = dest === null ? 'all' : null,
): Promise<void> {
  const entries = entriesOf(b, engines);
  const total = entries.reduce((n, e) => n + e.file.size, 0);
  let done = 0;
  for (const { file: f, offset, to } of entries) {
    const h = createHash('sha256');
    let n = 0;
    const tap = hashingTap(h, (bytes) => {
      n += bytes;
      done += bytes;
      onProgress?.(done, total, to);
    });
    const source = f.size === 0 ? [] : createReadStream(b.path, { start: offset, end: offset + f.size - 1 });
    if (dest === null) {
      await pipeline(source, tap, new Writable({ write: (_c, _e, cb) => cb() }));
    } else {
      const target = join(dest, ...to.split('/'));
      await mkdir(dirname(target), { recursive: true });
      // wx: a pre-existing file is an error, never an overwrite
      await pipeline(source, tap, createWriteStream(target, { flags: 'wx' }));
      await syncFile(target); // on disk before anything points at it
    }
    const digest = h.digest('hex');
    if (n !== f.size || digest !== f.sha256) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_TAMPERED,
        `${b.path}: ${to} has sha256 ${digest} (${n} bytes) but the signed manifest says ${f.sha256} (${f.size} bytes); the bundle was altered or damaged: download it again`,
      );
    }
  }
}

/** Signature, layout and every file's hash: what `setokim bundle verify` checks. */
export async function verifyBundle(
  path: string,
  pubkey: KeyObject,
  onProgress?: ByteProgress,
): Promise<BundleManifest> {
  const b = await openBundle(path, pubkey);
  await streamBundle(b, null, onProgress);
  return b.manifest;
}
