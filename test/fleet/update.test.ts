/**
 * The device-side update handler: resumable download (a real HTTP server on port 0 that breaks
 * the first transfer off), the state events of a job, deduplication, and a rollback reported.
 */
import { readFile, stat } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { ModelStore } from '../../src/engine/modelset.js';
import { downloadBundle, readJournal, UpdateHandler, type UpdateEvent } from '../../src/fleet/index.js';
import { brokenLlmSet, bundleOf, fixture, noCanary, testDevice } from './helpers.js';
import { sha256File } from '../../src/engine/manifest.js';

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const broken = await bundleOf(f, await brokenLlmSet(f.sets[2]!, path.join(f.dir, 'broken')), 3, 'broken');
/** Consecutive repeats (progress events) folded into one state. */
const statesOf = (events: UpdateEvent[]) => events.map((e) => e.state).filter((x, i, a) => x !== a[i - 1]);

/** Serves one file with Range support; `cutFirstAt` bytes into the first response, the socket is destroyed. */
async function fileServer(file: string, cutFirstAt?: number) {
  const body = await readFile(file);
  const seen: IncomingHttpHeaders[] = [];
  let first = true;
  const server = createServer((req, res) => {
    seen.push(req.headers);
    if (req.url !== '/b.bundle') return void res.writeHead(404).end();
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    if (start >= body.length) return void res.writeHead(416).end();
    res.writeHead(m ? 206 : 200, {
      'content-length': body.length - start,
      ...(m ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    if (first && cutFirstAt !== undefined) {
      first = false;
      res.write(body.subarray(start, start + cutFirstAt), () => res.destroy());
      return;
    }
    res.end(body.subarray(start));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/b.bundle`;
  return { url, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

t.test('http download broken off half-way resumes with a Range request and verifies the whole', async (t) => {
  const cut = 5 * 2 ** 20;
  const s = await fileServer(b2, cut);
  t.teardown(s.close);
  const dest = path.join(f.dir, 'dl', 'b2.bundle');
  const want = await sha256File(b2);
  await t.rejects(downloadBundle(s.url, { sha256: want, dest }), { code: 'BUNDLE_INVALID', message: /broke off/ });
  const partial = (await stat(`${dest}.partial`)).size;
  t.ok(partial > 0 && partial <= cut, `kept ${partial} bytes`);
  let lastDone = 0;
  const got = await downloadBundle(s.url, { sha256: want, dest, onProgress: (d) => (lastDone = d) });
  t.equal(got, dest);
  t.equal(s.seen[1]!.range, `bytes=${partial}-`, 'the second request asked only for the rest');
  t.equal(lastDone, (await stat(b2)).size);
  t.equal(await sha256File(dest), want);
  await t.rejects(stat(`${dest}.partial`), { code: 'ENOENT' });
});

t.test('a wrong sha256: BUNDLE_TAMPERED and the partial is dropped; file:// is checked in place', async (t) => {
  const s = await fileServer(b1);
  t.teardown(s.close);
  const dest = path.join(f.dir, 'dl2', 'x.bundle');
  await t.rejects(downloadBundle(s.url, { sha256: 'f'.repeat(64), dest }), { code: 'BUNDLE_TAMPERED' });
  await t.rejects(stat(`${dest}.partial`), { code: 'ENOENT' });
  t.equal(await downloadBundle(pathToFileURL(b1).href, { sha256: await sha256File(b1), dest: 'unused' }), b1);
  await t.rejects(downloadBundle(pathToFileURL(b1).href, { sha256: '0'.repeat(64), dest: 'unused' }), {
    code: 'BUNDLE_TAMPERED',
  });
  await t.rejects(downloadBundle('ftp://x/y', { sha256: '0'.repeat(64), dest: 'unused' }), { code: 'URL_NOT_ALLOWED' });
});

t.test('a job over http: states in order, committed; the same job id again runs nothing', async (t) => {
  const s = await fileServer(b1);
  t.teardown(s.close);
  const store = path.join(f.dir, 'store-job');
  const installSteps: string[] = [];
  const h = new UpdateHandler({
    binding: { device: testDevice },
    store,
    pubkey: f.pub,
    health: noCanary,
    progressIntervalMs: 0,
    onInstallStep: (s) => void installSteps.push(s),
  });
  const events: UpdateEvent[] = [];
  const job = { jobId: 'j1', url: s.url, sha256: await sha256File(b1), release: 1 };
  const r = await h.run(job, (e) => events.push(e), 'local');
  t.equal(r.release, 1);
  t.same(
    installSteps,
    ['verified', 'staging', 'staged', 'placed', 'activated', 'healthy', 'committed'],
    'the agent hook saw every install step',
  );
  t.same(statesOf(events), ['downloading', 'verifying', 'installing', 'activating', 'health', 'committed']);
  t.ok(
    events.some((e) => e.state === 'downloading' && e.done === e.total && e.total! > 0),
    'download progress reached the end',
  );
  t.match(events.at(-1), { jobId: 'j1', state: 'committed', modelSetId: 'setokim-tiny-seed1', release: 1 });
  const n = events.length;
  t.equal(await h.run(job, (e) => events.push(e), 'local'), r, 'a duplicate delivery returns the first result');
  t.equal(events.length, n, 'and emits nothing');
  t.equal(s.seen.length, 1, 'and downloads nothing');
  await t.rejects(
    stat(path.join(store, '.fleet', 'downloads', `${job.sha256}.bundle`)),
    { code: 'ENOENT' },
    'the download is not kept',
  );
});

t.test(
  'a set that fails its canary: health, rolled-back, failed with HEALTH_CHECK_FAILED; a bad job: failed BAD_MESSAGE',
  async (t) => {
    const store = path.join(f.dir, 'store-bad');
    const h = new UpdateHandler({ binding: { device: testDevice }, store, pubkey: f.pub });
    await h
      .run({ jobId: 'ok', url: pathToFileURL(b1).href, sha256: await sha256File(b1) }, () => {}, 'local')
      .catch(() => {});
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed1');
    const events: UpdateEvent[] = [];
    await t.rejects(
      h.run(
        { jobId: 'bad', url: pathToFileURL(broken).href, sha256: await sha256File(broken) },
        (e) => events.push(e),
        'local',
      ),
      { code: 'HEALTH_CHECK_FAILED' },
    );
    t.same(statesOf(events), [
      'downloading',
      'verifying',
      'installing',
      'activating',
      'health',
      'rolled-back',
      'failed',
    ]);
    t.match(events.at(-1), { state: 'failed', code: 'HEALTH_CHECK_FAILED' });
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed1');
    const again: UpdateEvent[] = [];
    await t.rejects(
      h.run(
        { jobId: 'bad', url: pathToFileURL(broken).href, sha256: await sha256File(broken) },
        (e) => again.push(e),
        'local',
      ),
      { code: 'HEALTH_CHECK_FAILED' },
    );
    t.equal(statesOf(again).at(-1), 'failed', 'a failed job id runs again when it is sent again');
    const bad: UpdateEvent[] = [];
    await t.rejects(
      h.run({ jobId: 'x', url: 'file:///b', sha256: 'nothex' }, (e) => bad.push(e), 'local'),
      { code: 'BAD_MESSAGE' },
    );
    t.match(bad, [{ jobId: 'x', state: 'failed', code: 'BAD_MESSAGE', message: /sha256/ }]);
    const refused: UpdateEvent[] = [];
    await t.rejects(
      h.run(
        { jobId: 'old', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
        (e) => refused.push(e),
        'local',
      ),
      { code: 'ROLLBACK_REFUSED' },
    );
    t.same(
      statesOf(refused),
      ['downloading', 'verifying', 'failed'],
      'refused before anything was activated: no rolled-back',
    );
  },
);

t.test(
  'http errors: 404 and a refused connection are BUNDLE_INVALID; a partial that is already whole gets 416 and is used',
  async (t) => {
    const s = await fileServer(b1);
    t.teardown(s.close);
    const want = await sha256File(b1);
    const dest = path.join(f.dir, 'dl3', 'b1.bundle');
    await t.rejects(downloadBundle(s.url.replace('b.bundle', 'nope'), { sha256: want, dest }), {
      code: 'BUNDLE_INVALID',
      message: /HTTP 404/,
    });
    await t.rejects(downloadBundle('http://127.0.0.1:1/b.bundle', { sha256: want, dest }), {
      code: 'BUNDLE_INVALID',
      message: /download failed/,
    });
    const { mkdir, copyFile } = await import('node:fs/promises');
    await mkdir(path.dirname(dest), { recursive: true });
    await copyFile(b1, `${dest}.partial`);
    t.equal(await downloadBundle(s.url, { sha256: want, dest }), dest);
    t.equal(s.seen.at(-1)!.range, `bytes=${(await stat(b1)).size}-`);
    t.equal(await sha256File(dest), want);
  },
);

t.test(
  'an install still running at the time limit rolls back at its next step: failed UPDATE_TIMED_OUT, the old set active',
  async (t) => {
    const store = path.join(f.dir, 'store-deadline');
    await new UpdateHandler({ binding: { device: testDevice }, store, pubkey: f.pub, health: noCanary }).run(
      { jobId: 'flash', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
      () => {},
      'local',
    );
    const steps: string[] = [];
    const h = new UpdateHandler({
      binding: { device: testDevice },
      store,
      pubkey: f.pub,
      health: noCanary,
      jobTimeoutMs: 1_500,
      // A step that takes longer than the job has left (an unpack on a slow card would).
      onInstallStep: async (s) => {
        steps.push(s);
        if (s === 'staged') await new Promise((r) => setTimeout(r, 2_000));
      },
    });
    const events: UpdateEvent[] = [];
    const job = { jobId: 'late', url: pathToFileURL(b2).href, sha256: await sha256File(b2) };
    await t.rejects(
      h.run(job, (e) => events.push(e), 'local'),
      { code: 'UPDATE_TIMED_OUT' },
    );
    t.same(steps, ['verified', 'staging', 'staged', 'rolled-back'], 'nothing ran after the step that passed the limit');
    t.match(events.at(-1), { jobId: 'late', state: 'failed', code: 'UPDATE_TIMED_OUT', message: /time limit/ });
    t.equal(await new ModelStore(store).active(), 'setokim-tiny-seed1', 'the old set is active');
    t.equal(await readJournal(store), null, 'rolled back: no journal left');
    t.same(await new ModelStore(store).list(), ['setokim-tiny-seed1'], 'and no trace of the new set');
  },
);
