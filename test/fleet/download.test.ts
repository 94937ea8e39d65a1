/**
 * The bundle download's limits against a real HTTP server on port 0: a stall mid-body or before
 * the headers (DOWNLOAD_STALLED, partial kept, the next try resumes), a connection cut mid-body (every
 * byte that arrived kept, the next try resumes), a body over the size limit
 * by Content-Length or streamed without one (BUNDLE_TOO_LARGE, nothing left, nothing written past
 * the limit), a job size larger than the disk (NO_SPACE), and the job's `size` reaching it.
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { downloadBundle, UpdateHandler, type UpdateEvent } from '../../src/fleet/index.js';

const dir = await mkdtemp(path.join(tmpdir(), 'setokim-dl-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const body = randomBytes(3 * 2 ** 20 + 123);
const want = createHash('sha256').update(body).digest('hex');
const sha = async (p: string) =>
  createHash('sha256')
    .update(await readFile(p))
    .digest('hex');

type Handler = (res: ServerResponse, start: number, ranged: boolean, n: number) => void;

/** A server for `/b`; each request's Range start goes to `handle` (n counts requests from 0). */
async function server(handle: Handler) {
  const seen: IncomingHttpHeaders[] = [];
  const s = createServer((req, res) => {
    seen.push(req.headers);
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    handle(res, m ? Number(m[1]) : 0, m !== null, seen.length - 1);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(s.address() as AddressInfo).port}/b`;
  t.teardown(() => {
    s.closeAllConnections();
    return new Promise<void>((r) => s.close(() => r()));
  });
  return { url, seen };
}

/** Answers with `body` from the Range start, as a file server does. */
const serveRange: Handler = (res, start, ranged) => {
  if (start >= body.length) return void res.writeHead(416).end();
  res.writeHead(ranged ? 206 : 200, { 'content-length': body.length - start });
  res.end(body.subarray(start));
};

const sub = (name: string) => path.join(dir, name, 'b.bundle');

t.test(
  'a server that stops half-way: DOWNLOAD_STALLED after stallMs, partial kept; the next call resumes and verifies',
  async (t) => {
    const half = Math.floor(body.length / 2);
    const s = await server((res, start, ranged, n) => {
      if (n > 0) return serveRange(res, start, ranged, n);
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, half)); // and nothing more: the socket stays open
    });
    const dest = sub('stall');
    const stallMs = 300;
    const t0 = performance.now();
    await t.rejects(downloadBundle(s.url, { sha256: want, dest, stallMs }), {
      code: 'DOWNLOAD_STALLED',
      message: new RegExp(`no bytes after ${half} of ${body.length} for 300 ms.*resumes`),
    });
    const ms = performance.now() - t0;
    t.ok(ms >= stallMs - 5 && ms < stallMs + 3000, `stalled after ${ms.toFixed(0)} ms`);
    t.equal((await stat(`${dest}.partial`)).size, half, 'the bytes that arrived are kept');
    t.equal(await downloadBundle(s.url, { sha256: want, dest, stallMs }), dest);
    t.equal(s.seen[1]!.range, `bytes=${half}-`, 'the second request asked only for the rest');
    t.equal(await sha(dest), want);
    await t.rejects(stat(`${dest}.partial`), { code: 'ENOENT' });
  },
);

t.test(
  'a connection cut right after some bytes: BUNDLE_INVALID, every byte that arrived is on the file; the next call resumes',
  async (t) => {
    const sent = 100 * 1024;
    const s = await server((res, start, ranged, n) => {
      if (n > 0) return serveRange(res, start, ranged, n);
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, sent), () => res.destroy()); // the connection ends the moment they are out
    });
    for (let round = 0; round < 5; round++) {
      // Each round: a fresh destination, cut at once, nothing of it may be lost.
      const dest = sub(`cut-${round}`);
      s.seen.length = 0;
      await t.rejects(downloadBundle(s.url, { sha256: want, dest }), {
        code: 'BUNDLE_INVALID',
        message: new RegExp(`broke off at ${sent} bytes`),
      });
      t.equal((await stat(`${dest}.partial`)).size, sent, `round ${round}: the ${sent} bytes that arrived are kept`);
      t.equal(await downloadBundle(s.url, { sha256: want, dest }), dest);
      t.equal(s.seen[1]!.range, `bytes=${sent}-`, `round ${round}: the second request resumed`);
      t.equal(await sha(dest), want);
    }
  },
);

t.test('no response headers within stallMs: DOWNLOAD_STALLED', async (t) => {
  const s = await server(() => {}); // accepts, never answers
  const t0 = performance.now();
  await t.rejects(downloadBundle(s.url, { sha256: want, dest: sub('headers'), stallMs: 200 }), {
    code: 'DOWNLOAD_STALLED',
    message: /no response headers for 200 ms/,
  });
  t.ok(performance.now() - t0 < 3000);
});

t.test('a Content-Length over the limit: BUNDLE_TOO_LARGE before any write, a stale partial removed too', async (t) => {
  const s = await server(serveRange);
  const dest = sub('length');
  await t.rejects(downloadBundle(s.url, { sha256: want, dest, maxBytes: body.length - 1 }), {
    code: 'BUNDLE_TOO_LARGE',
    message: new RegExp(`${body.length} bytes would exceed the download limit of ${body.length - 1} bytes`),
  });
  t.same(await readdir(path.dirname(dest)), [], 'nothing written');
  // A resumed download: partial + the rest of Content-Length passes the job's size.
  await writeFile(`${dest}.partial`, body.subarray(0, 1000));
  await t.rejects(downloadBundle(s.url, { sha256: want, dest, size: body.length - 1 }), {
    code: 'BUNDLE_TOO_LARGE',
    message: /job's size/,
  });
  t.equal(s.seen.at(-1)!.range, 'bytes=1000-');
  t.same(await readdir(path.dirname(dest)), [], 'the partial is removed: it cannot become the right file');
  // The exact size passes.
  t.equal(await downloadBundle(s.url, { sha256: want, dest, size: body.length }), dest);
  t.equal(await sha(dest), want);
});

t.test(
  'a chunked body that goes on past the limit: BUNDLE_TOO_LARGE, never more than maxBytes written, partial removed',
  async (t) => {
    let sent = 0;
    const s = await server((res) => {
      res.writeHead(200); // no Content-Length: chunked
      const chunk = randomBytes(64 * 1024);
      const more = () => {
        while (!res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
      };
      res.on('close', () => res.removeAllListeners('drain'));
      more();
    });
    const dest = sub('chunked');
    const maxBytes = 1_000_000;
    let maxDone = 0;
    let maxOnDisk = 0;
    const onProgress = (done: number) => {
      maxDone = Math.max(maxDone, done);
      maxOnDisk = Math.max(maxOnDisk, statSync(`${dest}.partial`, { throwIfNoEntry: false })?.size ?? 0);
    };
    await t.rejects(downloadBundle(s.url, { sha256: want, dest, maxBytes, onProgress }), {
      code: 'BUNDLE_TOO_LARGE',
      message: /would exceed the download limit of 1000000 bytes/,
    });
    t.ok(sent > maxBytes, `the server sent ${sent} bytes`);
    t.ok(
      maxDone <= maxBytes && maxDone > maxBytes - 256 * 1024,
      `progress reached ${maxDone} bytes, not past the limit`,
    );
    t.ok(maxOnDisk <= maxBytes, `the partial never held more than the limit (${maxOnDisk})`);
    t.same(await readdir(path.dirname(dest)), [], 'the partial is removed');
  },
);

t.test(
  'a job size, or without one the cap, larger than the free space: NO_SPACE naming both, before any request; a size over the cap: BUNDLE_TOO_LARGE',
  async (t) => {
    const s = await server(serveRange);
    const dest = sub('space');
    await t.rejects(downloadBundle(s.url, { sha256: want, dest, size: 2 ** 50, maxBytes: 2 ** 51 }), {
      code: 'NO_SPACE',
      message: new RegExp(`\\d+ bytes free, the download needs ${2 ** 50} more bytes`),
    });
    // Without a size the cap must fit instead: the space check always applies.
    await t.rejects(downloadBundle(s.url, { sha256: want, dest, maxBytes: 2 ** 50 }), {
      code: 'NO_SPACE',
      message: /no size in the job, so the download cap of/,
    });
    // A size over the cap is refused first.
    await t.rejects(downloadBundle(s.url, { sha256: want, dest, size: 2 ** 50 }), {
      code: 'BUNDLE_TOO_LARGE',
      message: /over the download cap of 8589934592 bytes/,
    });
    t.equal(s.seen.length, 0, 'no request');
  },
);

t.test('file:// longer than the job size is BUNDLE_TOO_LARGE; a job carries size to the download', async (t) => {
  const file = path.join(dir, 'local.bundle');
  await writeFile(file, body);
  await t.rejects(downloadBundle(`file://${file}`, { sha256: want, dest: 'unused', size: body.length - 1 }), {
    code: 'BUNDLE_TOO_LARGE',
  });
  t.equal(await downloadBundle(`file://${file}`, { sha256: want, dest: 'unused', size: body.length }), file);

  const s = await server(serveRange);
  const store = path.join(dir, 'store');
  await mkdir(store, { recursive: true });
  const h = new UpdateHandler({ store, pubkey: generateKeyPairSync('ed25519').publicKey });
  const events: UpdateEvent[] = [];
  await t.rejects(
    h.run({ jobId: 'small', url: s.url, sha256: want, size: 4096 }, (e) => events.push(e), 'local'),
    { code: 'BUNDLE_TOO_LARGE' },
  );
  t.match(events.at(-1), { jobId: 'small', state: 'failed', code: 'BUNDLE_TOO_LARGE' });
  const bad: UpdateEvent[] = [];
  await t.rejects(
    h.run({ jobId: 'neg', url: s.url, sha256: want, size: -1 }, (e) => bad.push(e), 'local'),
    { code: 'BAD_MESSAGE' },
  );
  t.match(bad.at(-1), { state: 'failed', message: /size/ });
});
