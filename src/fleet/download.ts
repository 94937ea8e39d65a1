/**
 * Fetching a bundle by URL for an update job. file:// is read in place; http(s):// is streamed
 * into `<dest>.partial` and resumed with a Range request when a partial file is there already
 * (a 200 answer to a Range request starts over). Either way the whole file's sha256 must equal
 * the job's before anything opens it.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { hashFile, sha256File } from '../engine/manifest.js';
import { SetokimError } from '../errors.js';
import type { ByteProgress } from './bundle.js';
import { syncFile } from '../engine/durable.js';

export interface DownloadOptions {
  /** Expected sha256 of the whole bundle file (lowercase hex). */
  sha256: string;
  /** Where an http(s) download is kept (`.partial` while incomplete). */
  dest: string;
  onProgress?: ByteProgress;
  signal?: AbortSignal;
}

function mismatch(url: string, got: string, want: string): SetokimError {
  return new SetokimError('BUNDLE_TAMPERED', `${url}: sha256 ${got} is not the job's ${want}; the download was damaged or replaced: publish the job again with the bundle's sha256`);
}

/** Returns the local path of the verified bundle. */
export async function downloadBundle(url: string, o: DownloadOptions): Promise<string> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new SetokimError('BAD_ARGUMENT', `bundle URL ${JSON.stringify(url)} is not a URL; use file:///path or https://host/path`);
  }
  if (u.protocol === 'file:') {
    const path = fileURLToPath(u);
    const size = await stat(path).then(
      (s) => s.size,
      (err) => {
        throw new SetokimError('BAD_ARGUMENT', `${url}: cannot read the bundle (${(err as Error).message})`, { cause: err });
      },
    );
    const digest = await sha256File(path);
    o.onProgress?.(size, size, path);
    if (digest !== o.sha256) throw mismatch(url, digest, o.sha256);
    return path;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new SetokimError('BAD_ARGUMENT', `bundle URL ${url}: only file:, http: and https: are supported`);

  await mkdir(dirname(o.dest), { recursive: true });
  const partial = `${o.dest}.partial`;
  const have = await stat(partial).then((s) => s.size, () => 0);
  let res: Response;
  try {
    res = await fetch(u, { headers: have > 0 ? { Range: `bytes=${have}-` } : {}, signal: o.signal });
  } catch (err) {
    throw new SetokimError('BUNDLE_INVALID', `${url}: download failed (${(err as Error).message}); the partial file is kept and the next try resumes`, { cause: err });
  }
  let start: number;
  if (res.status === 206 && have > 0) start = have;
  else if (res.status === 200) start = 0;
  else if (res.status === 416 && have > 0) start = have; // nothing left to fetch: the partial is whole
  else throw new SetokimError('BUNDLE_INVALID', `${url}: HTTP ${res.status} ${res.statusText}; check the URL and that the server allows GET${have ? ' with Range' : ''}`);
  const h = start > 0 ? await hashFile(partial) : createHash('sha256');
  if (res.status !== 416 && res.body) {
    const length = Number(res.headers.get('content-length') ?? NaN);
    const total = start + (Number.isFinite(length) ? length : 0);
    let done = start;
    const tap = new Transform({
      transform(chunk: Buffer, _e, cb) {
        h.update(chunk);
        done += chunk.length;
        o.onProgress?.(done, Math.max(total, done), url);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as never), tap, createWriteStream(partial, { flags: start > 0 ? 'a' : 'w' }));
    } catch (err) {
      throw new SetokimError('BUNDLE_INVALID', `${url}: download broke off at ${done} bytes (${(err as Error).message}); the next try resumes from there`, { cause: err });
    }
  } else {
    await res.body?.cancel();
  }
  const digest = h.digest('hex');
  if (digest !== o.sha256) {
    await rm(partial, { force: true }); // a wrong whole cannot be resumed into a right one
    throw mismatch(url, digest, o.sha256);
  }
  await syncFile(partial);
  await rename(partial, o.dest);
  return o.dest;
}
