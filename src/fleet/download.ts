/**
 * Fetching a bundle by URL for an update job. `file:` (local callers only: see policy.ts) is read
 * in place; `http(s):` is streamed into `<dest>.partial` and resumed with a Range request when a
 * partial file is there already (a 200 answer to a Range request starts over). Either way the whole
 * file's sha256 must equal the job's before anything opens it.
 *
 * Limits, so a bad server or a bad job can neither hang an update nor fill a device's disk:
 * - every URL fetched, the job's and each redirect's (at most MAX_REDIRECTS), passes `checkUrl`
 *   first (the allow-list): a redirect outside it is never requested;
 * - no response headers or no body bytes for `stallMs` is DOWNLOAD_STALLED (the partial is kept
 *   for the next try); `signal` (the job's time limit, the agent stopping) ends it at any point,
 *   hashing included, with the signal's reason;
 * - a body larger than the job's `size`, or `maxBytes` (the cap of the downloads folder) is refused
 *   before a byte past the limit is written, and the partial is removed (BUNDLE_TOO_LARGE); a size
 *   over `maxBytes` is refused before any request;
 * - free space for what is left to fetch (the size, or `maxBytes` without one) is checked before
 *   any request (NO_SPACE).
 * Messages name the URL redacted (src/redact.ts); they are for the device's log.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { freeBytes, syncFile } from '../engine/durable.js';
import { hashFile } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { redactUrl } from '../redact.js';
import type { ByteProgress } from './bundle.js';
import { MAX_REDIRECTS, UrlPolicy } from './policy.js';

/** No response headers or body bytes for this long aborts a download (keeping the partial). */
export const DEFAULT_STALL_MS = 30_000;
/** The largest bundle downloaded: the cap of the downloads folder (one download at a time). */
export const DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 2 ** 30;

export interface DownloadOptions {
  /** Expected sha256 of the whole bundle file (lowercase hex). */
  sha256: string;
  /** Where an http(s) download is kept (`.partial` while incomplete). */
  dest: string;
  /** The bundle file's size in bytes, when the job gives it: the download's limit, and what free space must hold. */
  size?: number;
  /** The cap of any download, and the free space needed without a `size` (default DEFAULT_MAX_DOWNLOAD_BYTES). */
  maxBytes?: number;
  /** Default DEFAULT_STALL_MS. */
  stallMs?: number;
  onProgress?: ByteProgress;
  /** Ends the download at once (its reason is thrown when it is a SetokimError). */
  signal?: AbortSignal;
  /**
   * Checks the job's URL and each redirect before it is requested, returning it parsed, or throws
   * (URL_NOT_ALLOWED). Default: any file: or http(s): URL (a local caller's policy).
   */
  checkUrl?: (url: string, what: string) => URL;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** Returns the local path of the verified bundle. */
export function downloadBundle(url: string, o: DownloadOptions): Promise<string> {
  return new BundleDownload(url, o).run();
}

class BundleDownload {
  private readonly shown: string;
  private readonly limit: number;
  private readonly partial: string;
  private readonly stallMs: number;
  private readonly stall = new AbortController();
  private readonly signal: AbortSignal;
  private timer?: NodeJS.Timeout;
  /** Bytes of the partial file already there (resumed from). */
  private have = 0;

  constructor(
    private readonly url: string,
    private readonly o: DownloadOptions,
  ) {
    this.shown = redactUrl(url);
    this.limit = o.size ?? o.maxBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES;
    this.partial = `${o.dest}.partial`;
    this.stallMs = o.stallMs ?? DEFAULT_STALL_MS;
    this.signal = o.signal ? AbortSignal.any([o.signal, this.stall.signal]) : this.stall.signal;
  }

  async run(): Promise<string> {
    const check = this.o.checkUrl ?? ((u: string, what: string) => new UrlPolicy().check(u, 'local', what));
    const u = check(this.url, 'the job URL');
    this.checkSize();
    if (u.protocol === 'file:') return this.readLocal(fileURLToPath(u));
    try {
      await this.prepare();
      const res = await this.request(u, check);
      const hash = await this.receive(res);
      await this.verify(hash);
    } catch (err) {
      throw this.aborted() ?? err;
    } finally {
      clearTimeout(this.timer);
    }
    await syncFile(this.partial);
    await rename(this.partial, this.o.dest);
    return this.o.dest;
  }

  /** A size over the cap is refused before anything is fetched. */
  private checkSize(): void {
    const cap = this.o.maxBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES;
    if (this.o.size !== undefined && this.o.size > cap) {
      throw new SetokimError(
        ErrorCodes.BUNDLE_TOO_LARGE,
        `${this.shown}: the job's size of ${this.o.size} bytes is over the download cap of ${cap} bytes; raise updates.maxDownloadMib or ship a smaller bundle`,
      );
    }
  }

  /** The signal's reason when the job's signal ended the download, as the error to throw. */
  private aborted(): SetokimError | undefined {
    const s = this.o.signal;
    if (!s?.aborted) return undefined;
    return s.reason instanceof SetokimError
      ? s.reason
      : new SetokimError(ErrorCodes.CANCELLED, `${this.shown}: the download was cancelled`);
  }

  private tooLarge(bytes: number): SetokimError {
    const what =
      this.o.size !== undefined ? `the job's size of ${this.limit} bytes` : `the download limit of ${this.limit} bytes`;
    const fix =
      this.o.size !== undefined
        ? "check that the URL serves the job's bundle, or publish the job with the bundle's size"
        : "check the URL, or publish the job with the bundle's size";
    return new SetokimError(
      ErrorCodes.BUNDLE_TOO_LARGE,
      `${this.shown}: ${bytes} bytes would exceed ${what}; the download was stopped and removed: ${fix}`,
    );
  }

  private mismatch(got: string): SetokimError {
    return new SetokimError(
      ErrorCodes.BUNDLE_TAMPERED,
      `${this.shown}: sha256 ${got} is not the job's ${this.o.sha256}; the download was damaged or replaced: publish the job again with the bundle's sha256`,
    );
  }

  /** file: a regular file, no larger than the limit, hashed in place (the signal stops it). */
  private async readLocal(path: string): Promise<string> {
    const st = await stat(path).catch((err: Error) => {
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${this.shown}: cannot read the bundle (${err.message})`, {
        cause: err,
      });
    });
    if (!st.isFile()) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${this.shown} is not a regular file`);
    if (st.size > this.limit) throw this.tooLarge(st.size);
    const h = createHash('sha256');
    let read = 0;
    try {
      if (st.size > 0) {
        for await (const chunk of createReadStream(path, { end: st.size - 1, signal: this.signal })) {
          h.update(chunk as Buffer);
          read += (chunk as Buffer).length;
        }
      }
    } catch (err) {
      throw this.aborted() ?? err;
    }
    if (read !== st.size) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${this.shown} changed while it was read`);
    this.o.onProgress?.(st.size, st.size, path);
    const digest = h.digest('hex');
    if (digest !== this.o.sha256) throw this.mismatch(digest);
    return path;
  }

  /** The partial to resume from (none when it is longer than the bundle can be), and the free space for the rest. */
  private async prepare(): Promise<void> {
    const dir = dirname(this.o.dest);
    await mkdir(dir, { recursive: true });
    this.have = await stat(this.partial).then(
      (s) => s.size,
      () => 0,
    );
    if (this.have > this.limit) {
      await rm(this.partial, { force: true });
      this.have = 0;
    }
    const free = await freeBytes(dir);
    const need = this.limit - this.have;
    if (free < need) {
      const of =
        this.o.size !== undefined
          ? `bundle of ${this.o.size} bytes`
          : `no size in the job, so the download cap of ${this.limit} bytes`;
      throw new SetokimError(
        ErrorCodes.NO_SPACE,
        `${dir}: ${free} bytes free, the download needs ${need} more bytes (${of}); free disk space on the device, or give the job's size, and send it again`,
      );
    }
  }

  private arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.stall.abort(), this.stallMs);
  }

  private stalled(what: string): SetokimError {
    return new SetokimError(
      ErrorCodes.DOWNLOAD_STALLED,
      `${this.shown}: ${what} for ${this.stallMs} ms, so the download was stopped; what arrived is kept in ${this.partial} and the next try resumes from it: check the server and the device's network, then send the job again`,
    );
  }

  /** GET with Range when resuming; each redirect is checked before it is followed. */
  private async request(first: URL, check: (url: string, what: string) => URL): Promise<Response> {
    let u = first;
    for (let hop = 0; ; hop++) {
      this.arm();
      let res: Response;
      try {
        res = await fetch(u, {
          headers: this.have > 0 ? { Range: `bytes=${this.have}-` } : {},
          redirect: 'manual',
          signal: this.signal,
        });
      } catch (err) {
        if (this.stall.signal.aborted) throw this.stalled('no response headers');
        throw new SetokimError(
          ErrorCodes.BUNDLE_INVALID,
          `${redactUrl(u.href)}: download failed (${(err as Error).message}); the partial file is kept and the next try resumes`,
          { cause: err },
        );
      }
      clearTimeout(this.timer); // hashing a large partial must not count as a stall
      if (!REDIRECTS.has(res.status)) return res;
      await res.body?.cancel().catch(() => {});
      const location = res.headers.get('location');
      if (!location)
        throw new SetokimError(
          ErrorCodes.BUNDLE_INVALID,
          `${redactUrl(u.href)}: HTTP ${res.status} without a Location`,
        );
      if (hop >= MAX_REDIRECTS)
        throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${this.shown}: more than ${MAX_REDIRECTS} redirects`);
      const next = check(new URL(location, u).href, `a redirect from ${redactUrl(u.href)}:`);
      if (next.protocol !== 'http:' && next.protocol !== 'https:')
        throw new SetokimError(
          ErrorCodes.URL_NOT_ALLOWED,
          `${redactUrl(u.href)} redirects to ${next.protocol} which is never followed`,
        );
      u = next;
    }
  }

  /** Streams the body into the partial (appending when resumed), hashing it; returns the whole file's hash. */
  private async receive(res: Response): Promise<Hash> {
    let start: number;
    if (res.status === 206 && this.have > 0) start = this.have;
    else if (res.status === 200) start = 0;
    else if (res.status === 416 && this.have > 0)
      start = this.have; // nothing left to fetch: the partial is whole
    else {
      await res.body?.cancel().catch(() => {});
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${this.shown}: HTTP ${res.status} ${res.statusText}; check the URL and that the server allows GET${this.have ? ' with Range' : ''}`,
      );
    }
    const length = Number(res.headers.get('content-length') ?? NaN);
    if (res.status !== 416 && Number.isFinite(length) && start + length > this.limit) {
      await res.body?.cancel().catch(() => {});
      await rm(this.partial, { force: true });
      throw this.tooLarge(start + length);
    }
    const h = start > 0 ? await hashFile(this.partial, createHash('sha256'), this.signal) : createHash('sha256');
    if (res.status === 416 || !res.body) {
      await res.body?.cancel();
      return h;
    }
    const total = this.o.size ?? start + (Number.isFinite(length) ? length : 0);
    let done = start;
    this.arm();
    try {
      // Each chunk is on the file before the next is read, so a download that breaks off keeps every
      // byte it received and the next try resumes from there (a stream pipeline would drop the file
      // stream's unwritten buffer, all of it when the break comes before the file is open).
      const file = await open(this.partial, start > 0 ? 'a' : 'w');
      try {
        for await (const chunk of Readable.fromWeb(res.body as never) as AsyncIterable<Buffer>) {
          this.arm();
          // Refused before it reaches the file: what is written never passes the limit.
          if (done + chunk.length > this.limit) throw this.tooLarge(done + chunk.length);
          h.update(chunk);
          await file.write(chunk);
          done += chunk.length;
          this.o.onProgress?.(done, Math.max(total, done), this.shown);
        }
      } finally {
        await file.close();
      }
    } catch (err) {
      if (err instanceof SetokimError && err.code === ErrorCodes.BUNDLE_TOO_LARGE) {
        await rm(this.partial, { force: true }); // it cannot become the right file
        throw err;
      }
      if (this.o.signal?.aborted) throw this.aborted()!;
      if (this.stall.signal.aborted) throw this.stalled(`no bytes after ${done}${total ? ` of ${total}` : ''}`);
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${this.shown}: download broke off at ${done} bytes (${(err as Error).message}); the next try resumes from there`,
        { cause: err },
      );
    }
    return h;
  }

  private async verify(h: Hash): Promise<void> {
    const digest = h.digest('hex');
    if (digest === this.o.sha256) return;
    await rm(this.partial, { force: true }); // a wrong whole cannot be resumed into a right one
    throw this.mismatch(digest);
  }
}
