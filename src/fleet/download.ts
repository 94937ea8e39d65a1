/**
 * Fetching a bundle by URL for an update job. file:// is read in place; http(s):// is streamed
 * into `<dest>.partial` and resumed with a Range request when a partial file is there already
 * (a 200 answer to a Range request starts over). Either way the whole file's sha256 must equal
 * the job's before anything opens it.
 *
 * Limits, so a bad server cannot hang an update job or fill a device's disk: no response headers
 * or no body bytes for `stallMs` is DOWNLOAD_STALLED (the partial is kept for the next try); a
 * body larger than the job's `size` (or `maxBytes` when the job has none) is refused before a
 * byte past the limit is written, and the partial is removed (BUNDLE_TOO_LARGE). With a known
 * `size`, the destination's free space is checked first (NO_SPACE).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { hashFile, hashingTap, sha256File } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { ByteProgress } from './bundle.js';
import { freeBytes, syncFile } from '../engine/durable.js';

/** No response headers or body bytes for this long aborts a download (keeping the partial). */
export const DEFAULT_STALL_MS = 30_000;
/** The largest bundle downloaded when the job does not give its size. */
export const DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 2 ** 30;

export interface DownloadOptions {
  /** Expected sha256 of the whole bundle file (lowercase hex). */
  sha256: string;
  /** Where an http(s) download is kept (`.partial` while incomplete). */
  dest: string;
  /** The bundle file's size in bytes, when the job gives it: the download's limit, and checked against free space. */
  size?: number;
  /** Limit when `size` is not given (default DEFAULT_MAX_DOWNLOAD_BYTES). */
  maxBytes?: number;
  /** Default DEFAULT_STALL_MS. */
  stallMs?: number;
  onProgress?: ByteProgress;
  signal?: AbortSignal;
}

function mismatch(url: string, got: string, want: string): SetokimError {
  return new SetokimError(ErrorCodes.BUNDLE_TAMPERED, `${url}: sha256 ${got} is not the job's ${want}; the download was damaged or replaced: publish the job again with the bundle's sha256`);
}

function tooLarge(url: string, bytes: number, limit: number, o: DownloadOptions): SetokimError {
  const what = o.size !== undefined ? `the job's size of ${limit} bytes` : `the download limit of ${limit} bytes`;
  const fix = o.size !== undefined ? "check that the URL serves the job's bundle, or publish the job with the bundle's size" : 'check the URL, or publish the job with the bundle\'s size';
  return new SetokimError(ErrorCodes.BUNDLE_TOO_LARGE, `${url}: ${bytes} bytes would exceed ${what}; the download was stopped and removed: ${fix}`);
}

/** Returns the local path of the verified bundle. */
export async function downloadBundle(url: string, o: DownloadOptions): Promise<string> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `bundle URL ${JSON.stringify(url)} is not a URL; use file:///path or https://host/path`);
  }
  const limit = o.size ?? o.maxBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES;
  if (u.protocol === 'file:') {
    const path = fileURLToPath(u);
    const size = await stat(path).then(
      (s) => s.size,
      (err) => {
        throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${url}: cannot read the bundle (${(err as Error).message})`, { cause: err });
      },
    );
    if (size > limit) throw tooLarge(url, size, limit, o);
    const digest = await sha256File(path);
    o.onProgress?.(size, size, path);
    if (digest !== o.sha256) throw mismatch(url, digest, o.sha256);
    return path;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `bundle URL ${url}: only file:, http: and https: are supported`);

  const dir = dirname(o.dest);
  await mkdir(dir, { recursive: true });
  const partial = `${o.dest}.partial`;
  let have = await stat(partial).then((s) => s.size, () => 0);
  if (have > limit) {
    await rm(partial, { force: true }); // longer than the bundle can be: start over
    have = 0;
  }
  if (o.size !== undefined) {
    const free = await freeBytes(dir);
    const need = o.size - have;
    if (free < need) throw new SetokimError(ErrorCodes.NO_SPACE, `${dir}: ${free} bytes free, the download needs ${need} more bytes (bundle of ${o.size} bytes); free disk space on the device and send the job again`);
  }

  const stallMs = o.stallMs ?? DEFAULT_STALL_MS;
  const stall = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => stall.abort(), stallMs);
  };
  const stalled = (what: string) =>
    new SetokimError(ErrorCodes.DOWNLOAD_STALLED, `${url}: ${what} for ${stallMs} ms, so the download was stopped; what arrived is kept in ${partial} and the next try resumes from it: check the server and the device's network, then send the job again`);
  const signal = o.signal ? AbortSignal.any([o.signal, stall.signal]) : stall.signal;
  try {
    let res: Response;
    arm();
    try {
      res = await fetch(u, { headers: have > 0 ? { Range: `bytes=${have}-` } : {}, signal });
    } catch (err) {
      if (stall.signal.aborted) throw stalled('no response headers');
      throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${url}: download failed (${(err as Error).message}); the partial file is kept and the next try resumes`, { cause: err });
    }
    clearTimeout(timer); // hashing a large partial below must not count as a stall
    let start: number;
    if (res.status === 206 && have > 0) start = have;
    else if (res.status === 200) start = 0;
    else if (res.status === 416 && have > 0) start = have; // nothing left to fetch: the partial is whole
    else {
      await res.body?.cancel().catch(() => {});
      throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${url}: HTTP ${res.status} ${res.statusText}; check the URL and that the server allows GET${have ? ' with Range' : ''}`);
    }
    const length = Number(res.headers.get('content-length') ?? NaN);
    if (res.status !== 416 && Number.isFinite(length) && start + length > limit) {
      await res.body?.cancel().catch(() => {});
      await rm(partial, { force: true });
      throw tooLarge(url, start + length, limit, o);
    }
    const h = start > 0 ? await hashFile(partial) : createHash('sha256');
    if (res.status !== 416 && res.body) {
      const total = o.size ?? start + (Number.isFinite(length) ? length : 0);
      let done = start;
      const tap = hashingTap(h, (n) => {
        arm();
        // Refused before it reaches the file: what is written never passes the limit.
        if (done + n > limit) throw tooLarge(url, done + n, limit, o);
        done += n;
        o.onProgress?.(done, Math.max(total, done), url);
      });
      arm();
      try {
        await pipeline(Readable.fromWeb(res.body as never), tap, createWriteStream(partial, { flags: start > 0 ? 'a' : 'w' }));
      } catch (err) {
        if (err instanceof SetokimError && err.code === ErrorCodes.BUNDLE_TOO_LARGE) {
          await rm(partial, { force: true }); // it cannot become the right file
          throw err;
        }
        if (stall.signal.aborted) throw stalled(`no bytes after ${done}${total ? ` of ${total}` : ''}`);
        throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${url}: download broke off at ${done} bytes (${(err as Error).message}); the next try resumes from there`, { cause: err });
      }
    } else {
      await res.body?.cancel();
    }
    const digest = h.digest('hex');
    if (digest !== o.sha256) {
      await rm(partial, { force: true }); // a wrong whole cannot be resumed into a right one
      throw mismatch(url, digest, o.sha256);
    }
  } finally {
    clearTimeout(timer);
  }
  await syncFile(partial);
  await rename(partial, o.dest);
  return o.dest;
}
