/**
 * Writing, reading and unpacking bundle files (layout in format.ts). Files are streamed, never
 * held whole in memory; every byte read from a bundle is hashed on its way to where it goes, so
 * what is checked is exactly what is written (no gap between a check pass and a copy pass).
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
  BUNDLE_VERSION,
  BundleHeaderSchema,
  encodePrefix,
  MAX_HEADER_BYTES,
  parseBundleManifest,
  PREFIX_BYTES,
  signedBytes,
  type BundleFile,
  type BundleManifest,
  type BundleManifestV2,
  type Compatibility,
} from './format.js';
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
  payloadBytes: number;
}

/** Every regular file under `dir` as a sorted relative POSIX path; links and devices are refused. */
async function listFiles(dir: string, root = dir): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(full, root)));
    else if (e.isFile()) out.push(relative(root, full).split(sep).join('/'));
    else throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${full} is not a regular file (a link or a device); a bundle holds plain files only`);
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
  createdAt?: Date;
  onProgress?: ByteProgress;
}

/** Bundles a model set: verifies it, hashes every file, signs the manifest, writes prefix + files. */
export async function createBundle(o: CreateOptions): Promise<BundleManifestV2> {
  const createdAt = o.createdAt ?? new Date();
  if (Date.parse(o.compatibility.notAfter) <= createdAt.getTime()) {
    const when = `(${o.compatibility.notAfter}) before it is created (${createdAt.toISOString()})`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `the bundle would expire ${when}; give a later expiry`);
  }
  const set = await loadManifest(o.models);
  await verifyModelSet(o.models, set); // never sign a set that would not open
  const paths = await listFiles(o.models);
  // The model set manifest first: a reader sees what the set is before its big files.
  const ordered = [MANIFEST_FILE, ...paths.filter((p) => p !== MANIFEST_FILE)];
  const files: BundleFile[] = [];
  for (const p of ordered) {
    const full = join(o.models, p);
    files.push({ path: p, size: (await stat(full)).size, sha256: await sha256File(full) });
  }
  const manifest = parseBundleManifest(
    {
      format: BUNDLE_FORMAT,
      formatVersion: BUNDLE_VERSION,
      modelSetId: set.id,
      release: o.release,
      createdAt: createdAt.toISOString(),
      keyId: keyIdOf(o.key),
      compatibility: o.compatibility,
      files,
    },
    'new bundle',
  ) as BundleManifestV2;
  const signature = sign(null, signedBytes(manifest), o.key);
  const total = files.reduce((a, f) => a + f.size, 0);
  const tmp = `${o.out}.partial`;
  await mkdir(dirname(o.out), { recursive: true });
  try {
    await writeFile(tmp, encodePrefix(manifest, signature));
    let done = 0;
    for (const f of files) {
      // Re-hashed while copying: a file changed after it was signed must not ship.
      const h = createHash('sha256');
      const count = hashingTap(h, (n) => {
        done += n;
        o.onProgress?.(done, total, f.path);
      });
      await pipeline(createReadStream(join(o.models, f.path)), count, createWriteStream(tmp, { flags: 'a' }));
      if (h.digest('hex') !== f.sha256) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${join(o.models, f.path)} changed while it was being bundled; bundle a set nothing is writing to`);
    }
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
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot open bundle ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = (await fh.stat()).size;
    const prefix = Buffer.alloc(PREFIX_BYTES);
    const { bytesRead } = await fh.read(prefix, 0, PREFIX_BYTES, 0);
    if (bytesRead < PREFIX_BYTES || !prefix.subarray(0, BUNDLE_MAGIC.length).equals(BUNDLE_MAGIC)) {
      throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${path}: not a Setokim bundle (no SETOKIM-BNDL magic); make one with \`setokim bundle create\``);
    }
    const headerLen = prefix.readUInt32BE(BUNDLE_MAGIC.length);
    if (headerLen > MAX_HEADER_BYTES || PREFIX_BYTES + headerLen > size) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${path}: header length ${headerLen} does not fit the file (${size} bytes); the bundle is truncated or corrupt`);
    const headerBuf = Buffer.alloc(headerLen);
    await fh.read(headerBuf, 0, headerLen, PREFIX_BYTES);
    let json: unknown;
    try {
      json = JSON.parse(headerBuf.toString('utf8'));
    } catch (err) {
      throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${path}: the bundle header is not JSON (${(err as Error).message}); the bundle is corrupt`, { cause: err });
    }
    const header = BundleHeaderSchema.safeParse(json);
    if (!header.success) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${path}: bundle header: ${header.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
    const manifest = parseBundleManifest(header.data.manifest, path);
    const trusted = keyIdOf(pubkey);
    if (manifest.keyId !== trusted) {
      throw new SetokimError(ErrorCodes.BUNDLE_SIGNATURE, `${path}: signed by key ${manifest.keyId}, but the trusted public key is ${trusted}; install a bundle signed by your fleet's key or pass the matching --pubkey`);
    }
    if (!verify(null, signedBytes(manifest), pubkey, Buffer.from(header.data.signature, 'base64'))) {
      throw new SetokimError(ErrorCodes.BUNDLE_SIGNATURE, `${path}: the Ed25519 signature does not verify with key ${trusted}; the bundle manifest or its signature was altered: do not install it`);
    }
    const offsets: number[] = [];
    let at = PREFIX_BYTES + headerLen;
    for (const f of manifest.files) {
      offsets.push(at);
      at += f.size;
    }
    if (at !== size) {
      const what = at > size ? `truncated (${size} bytes, the signed manifest needs ${at})` : `${size - at} bytes longer than the signed manifest says`;
      throw new SetokimError(ErrorCodes.BUNDLE_TAMPERED, `${path}: ${what}; download the bundle again`);
    }
    return { path, manifest, offsets, payloadBytes: at - PREFIX_BYTES - headerLen };
  } finally {
    await fh.close();
  }
}

/**
 * Streams every file of an opened bundle through sha256 into `dest` (a directory), or nowhere
 * when `dest` is null (verify only). The first file that differs from the manifest throws
 * BUNDLE_TAMPERED; files written so far stay for the caller to remove.
 */
export async function streamBundle(b: OpenedBundle, dest: string | null, onProgress?: ByteProgress): Promise<void> {
  let done = 0;
  for (const [i, f] of b.manifest.files.entries()) {
    const h = createHash('sha256');
    let n = 0;
    const tap = hashingTap(h, (bytes) => {
      n += bytes;
      done += bytes;
      onProgress?.(done, b.payloadBytes, f.path);
    });
    const source = f.size === 0 ? [] : createReadStream(b.path, { start: b.offsets[i]!, end: b.offsets[i]! + f.size - 1 });
    if (dest === null) {
      await pipeline(source, tap, new Writable({ write: (_c, _e, cb) => cb() }));
    } else {
      const target = join(dest, ...f.path.split('/'));
      await mkdir(dirname(target), { recursive: true });
      // wx: a pre-existing file is an error, never an overwrite
      await pipeline(source, tap, createWriteStream(target, { flags: 'wx' }));
      await syncFile(target); // on disk before anything points at it
    }
    const digest = h.digest('hex');
    if (n !== f.size || digest !== f.sha256) {
      throw new SetokimError(ErrorCodes.BUNDLE_TAMPERED, `${b.path}: ${f.path} has sha256 ${digest} (${n} bytes) but the signed manifest says ${f.sha256} (${f.size} bytes); the bundle was altered or damaged: download it again`);
    }
  }
}

/** Signature, layout and every file's hash: what `setokim bundle verify` checks. */
export async function verifyBundle(path: string, pubkey: KeyObject, onProgress?: ByteProgress): Promise<BundleManifest> {
  const b = await openBundle(path, pubkey);
  await streamBundle(b, null, onProgress);
  return b.manifest;
}
