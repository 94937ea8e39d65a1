/**
 * Who may start an update and what a job can learn (issues 15 and 16), on a real mosquitto and
 * real HTTP servers on port 0: a device (UpdateHandler + serveUpdates on its own connection) takes
 * jobs an operator publishes. A job outside updates.allowUrls, naming file:, http: without
 * allowHttp, or redirecting outside the list never reaches a server; a retained job never runs;
 * states carry generic text only (no HTTP status, hash, errno, redirect target or query string);
 * every job has a time limit, the queue is bounded, stop() ends a download at once; the downloads
 * folder holds one partial at most; a device that requires signed jobs refuses the rest.
 */
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import t from 'tap';
import {
  isSealedBy,
  serveUpdates,
  signJob,
  UpdateHandler,
  updateTopic,
  UrlPolicy,
  type UpdateEvent,
  type UpdateHandlerOptions,
} from '../../src/fleet/index.js';
import { topicLink } from '../../src/mqtt/subscriptions.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { bundleServer, noCanary } from './helpers.js';

if (!mosquittoPath()) {
  t.test('update jobs on mosquitto', { skip: 'needs mosquitto (apt-get install -y mosquitto)' }, async () => undefined);
} else {
  await suite();
}

async function suite(): Promise<void> {
  const work = t.testdir({});
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const keys = generateKeyPairSync('ed25519');
  const body = randomBytes(256 * 1024);
  const bodySha = createHash('sha256').update(body).digest('hex');
  const wrongSha = 'a'.repeat(64);
  const clients: MqttClient[] = [];
  t.teardown(() => Promise.all(clients.map((c) => c.endAsync(true))));

  /** Requests held open until released (a server that takes its time). */
  const held: ServerResponse[] = [];
  const trickle = (_req: unknown, res: ServerResponse) => {
    res.writeHead(200); // no length: chunked, one byte every 50 ms, forever
    const timer = setInterval(() => res.write('x'), 50);
    res.on('close', () => clearInterval(timer));
  };
  const allowed = await bundleServer(
    {},
    {
      'bundles/body': (_req, res) => void res.writeHead(200, { 'content-length': body.length }).end(body),
      'bundles/hold': (_req, res) => void held.push(res),
      'bundles/trickle': trickle,
      'bundles/half': (_req, res) => {
        res.writeHead(200, { 'content-length': body.length });
        res.write(body.subarray(0, body.length / 2), () => res.destroy());
      },
    },
  );
  t.teardown(allowed.close);
  const outside = await bundleServer({}, { secret: (_req, res) => void res.writeHead(200).end('the secret') });
  t.teardown(outside.close);
  // Redirects: out of the list, and within it (to a body whose sha256 is not the job's, so it fails after fetching).
  const redirector = await bundleServer(
    {},
    {
      'bundles/out': (_req, res) => void res.writeHead(302, { location: outside.url('secret') }).end(),
      'bundles/in': (_req, res) => void res.writeHead(302, { location: allowed.url('bundles/body') }).end(),
    },
  );
  t.teardown(redirector.close);
  const prefixes = [`${allowed.base}/bundles/`, `${redirector.base}/bundles/`];
  const op = await connectAsync(broker.url, { clientId: 'operator', protocolVersion: 5 });
  clients.push(op);

  /** A device serving jobs on its own connection; its handler's log is kept. */
  async function device(name: string, o: Partial<UpdateHandlerOptions> = {}) {
    const logs: string[] = [];
    const store = path.join(work, name);
    const handler = new UpdateHandler({
      store,
      pubkey: keys.publicKey,
      health: noCanary,
      urls: { allowUrls: prefixes, allowHttp: true },
      log: (_l, m) => void logs.push(m),
      ...o,
    });
    const c = await connectAsync(broker.url, { clientId: name, protocolVersion: 5 });
    clients.push(c);
    const served = await serveUpdates(topicLink(c), handler, {
      fleet: 'jobs',
      device: name,
      log: (_l, m) => void logs.push(m),
    });
    return { name, handler, logs, store, served };
  }

  /** Every state of every job, as the operator sees it on the broker. */
  const states: Array<{ device: string; raw: string; e: UpdateEvent }> = [];
  const waiters: Array<() => void> = [];
  op.on('message', (topic, payload) => {
    const raw = payload.toString();
    states.push({ device: topic.split('/')[3]!, raw, e: JSON.parse(raw) as UpdateEvent });
    for (const w of waiters.splice(0)) w();
  });
  await op.subscribeAsync('setokim/v1/jobs/+/update/state', { qos: 1 });
  const statesOf = (jobId: string) => states.filter((s) => s.e.jobId === jobId);
  /** Resolves with the job's final state (failed or committed). */
  async function final(jobId: string): Promise<UpdateEvent> {
    for (;;) {
      const last = statesOf(jobId).find((s) => s.e.state === 'failed' || s.e.state === 'committed');
      if (last) return last.e;
      await new Promise<void>((r) => waiters.push(r));
    }
  }
  const job = (jobId: string, url: string, extra: Record<string, unknown> = {}) => ({
    jobId,
    url,
    sha256: wrongSha,
    size: body.length,
    ...extra,
  });
  const publish = (dev: string, j: object, retain = false) =>
    op.publishAsync(updateTopic('jobs', dev), JSON.stringify(j), { qos: 1, retain });
  const send = async (dev: string, j: { jobId: string }) => {
    await publish(dev, j);
    return final(j.jobId);
  };
  const requested = (p: string) =>
    [...allowed.seen, ...redirector.seen, ...outside.seen].some((s) => s.url.startsWith(`/${p}`));

  t.test(
    'UrlPolicy: prefixes match by scheme, host, port and whole path segments; a bad prefix is BAD_CONFIG',
    async (t) => {
      const p = new UrlPolicy({ allowUrls: ['https://updates.example/bundles', 'https://cdn.example/'] });
      const ok = (u: string) => p.check(u, 'mqtt').href;
      t.equal(ok('https://updates.example/bundles/r2.bundle?sig=x'), 'https://updates.example/bundles/r2.bundle?sig=x');
      t.equal(
        ok('https://UPDATES.example:443/bundles/a/../r2.bundle'),
        'https://updates.example/bundles/r2.bundle',
        'normalised before the match',
      );
      t.equal(ok('https://cdn.example/anything'), 'https://cdn.example/anything');
      for (const bad of [
        'https://updates.example/bundles-evil/r2.bundle', // not a whole segment
        'https://updates.example/other/r2.bundle',
        'https://updates.example.evil/bundles/r2.bundle',
        'https://updates.example:8443/bundles/r2.bundle',
        'http://updates.example/bundles/r2.bundle', // http without allowHttp
        'https://user:pw@updates.example/bundles/r2.bundle',
        'https://updates.example/bundles/..%2fsecret',
        'https://updates.example/bundles/../secret',
        'file:///etc/hostname',
        'ftp://updates.example/bundles/r2.bundle',
      ]) {
        t.throws(() => p.check(bad, 'mqtt'), { code: 'URL_NOT_ALLOWED' }, bad);
      }
      t.throws(
        () => new UrlPolicy().check('https://updates.example/bundles/r2', 'mqtt'),
        { code: 'URL_NOT_ALLOWED', message: /updates\.allowUrls, which is empty/ },
        'default: nothing is allowed',
      );
      t.equal(
        new UrlPolicy().check('file:///srv/r2.bundle', 'local').protocol,
        'file:',
        'a local caller may read files',
      );
      t.throws(() => new UrlPolicy({ allowUrls: ['http://updates.example/'] }), {
        code: 'BAD_CONFIG',
        message: /allowHttp/,
      });
      t.throws(() => new UrlPolicy({ allowUrls: ['https://updates.example/?sig=1'] }), {
        code: 'BAD_CONFIG',
        message: /no user info, query or fragment/,
      });
    },
  );

  t.test('a job outside updates.allowUrls fails URL_NOT_ALLOWED before any byte is fetched', async (t) => {
    const d = await device('outside');
    const none = await device('none', { urls: {} }); // the default: no prefix, every job refused
    const cases = {
      'other-server': outside.url('secret'),
      'lookalike-path': `${allowed.base}/bundles-evil/body`,
      'not-a-prefix': `${allowed.base}/secret`,
    };
    for (const [id, url] of Object.entries(cases))
      t.match(await send(d.name, job(id, url)), { state: 'failed', code: 'URL_NOT_ALLOWED' }, id);
    t.match(await send(none.name, job('default-none', allowed.url('bundles/body'))), {
      state: 'failed',
      code: 'URL_NOT_ALLOWED',
    });
    const https = await device('https-only', {
      urls: { allowUrls: [`https://127.0.0.1:${new URL(allowed.base).port}/bundles/`] },
    });
    t.match(
      await send(https.name, job('http-url', allowed.url('bundles/body'))),
      { state: 'failed', code: 'URL_NOT_ALLOWED' },
      'http: without allowHttp',
    );
    t.same(outside.seen, [], 'the server outside the list never saw a request');
    t.notOk(
      requested('bundles-evil') || requested('secret') || requested('bundles/body'),
      'nor did the allowed server',
    );
    t.match(
      d.logs.join('\n'),
      /update other-server refused: \[URL_NOT_ALLOWED\] the job URL http:\/\/127\.0\.0\.1:\d+\/secret is not under the prefixes of updates\.allowUrls/,
      'the device log says why',
    );
  });

  t.test(
    'file: over MQTT is refused at once with one generic message: no hash, no errno; /dev/zero blocks nothing',
    async (t) => {
      const d = await device('files');
      const hostnameSha = createHash('sha256').update(readFileSync('/etc/hostname')).digest('hex');
      const began = performance.now();
      const got = [];
      for (const [id, url] of [
        ['hostname', 'file:///etc/hostname'],
        ['missing', 'file:///etc/setokim/no-such-key.pem'],
        ['zero', 'file:///dev/zero'],
      ] as const) {
        got.push(await send(d.name, job(id, url)));
      }
      t.same(
        got.map((e) => [e.state, e.code]),
        Array(3).fill(['failed', 'URL_NOT_ALLOWED']),
      );
      t.equal(new Set(got.map((e) => e.message)).size, 1, 'an existing and a missing file read the same');
      const raw = ['hostname', 'missing', 'zero'].flatMap((id) => statesOf(id).map((s) => s.raw)).join('\n');
      t.notOk(raw.includes(hostnameSha), "the file's sha256 is not published");
      t.notMatch(raw, /ENOENT|EACCES|no such file|[0-9a-f]{64}/i, 'nor an errno or any hash');
      t.same(
        statesOf('zero').map((s) => s.e.state),
        ['failed'],
        'refused before downloading',
      );
      const next = await send(d.name, job('after-zero', allowed.url('bundles/body')));
      t.match(next, { state: 'failed', code: 'BUNDLE_TAMPERED' }, 'the next job ran (and fetched)');
      t.ok(performance.now() - began < 20_000, `all four in ${Math.round(performance.now() - began)} ms`);
    },
  );

  t.test('a retained job is never run; a live one after it is', async (t) => {
    await publish('retained', job('retained-job', allowed.url('bundles/body?retained')), true);
    const d = await device('retained');
    t.teardown(() => op.publishAsync(updateTopic('jobs', 'retained'), '', { qos: 1, retain: true }));
    t.match(await send(d.name, job('live-job', allowed.url('bundles/body?live'))), {
      state: 'failed',
      code: 'BUNDLE_TAMPERED',
    });
    t.same(statesOf('retained-job'), [], 'no state for the retained job');
    t.notOk(
      allowed.seen.some((s) => s.url.endsWith('?retained')),
      'its URL was never fetched',
    );
    t.match(d.logs.join('\n'), /ignored a retained update job/);
  });

  t.test('redirects: one outside the list is never followed; one inside it is; the state names neither', async (t) => {
    const d = await device('redirects');
    const out = await send(d.name, job('redirect-out', redirector.url('bundles/out')));
    t.match(out, { state: 'failed', code: 'URL_NOT_ALLOWED' });
    t.same(outside.seen, [], 'the redirect target never saw a request');
    const raw = statesOf('redirect-out')
      .map((s) => s.raw)
      .join('\n');
    t.notOk(
      raw.includes(outside.base) || raw.includes('secret') || raw.includes('302'),
      'no redirect target or status in the state',
    );
    t.notMatch(raw, /[0-9a-f]{64}/, 'nor a hash of anything fetched');
    t.match(
      d.logs.join('\n'),
      /a redirect from http:\/\/127\.0\.0\.1:\d+\/bundles\/out: http:\/\/127\.0\.0\.1:\d+\/secret is not under/,
      'the device log names it',
    );
    t.match(
      await send(d.name, job('redirect-in', redirector.url('bundles/in'))),
      { state: 'failed', code: 'BUNDLE_TAMPERED' },
      'followed within the list, fetched, checked',
    );
  });

  t.test(
    'failures publish generic text: no HTTP status, no computed hash, no errno, no signed query string',
    async (t) => {
      const d = await device('generic');
      const notFound = await send(d.name, job('not-found', allowed.url('bundles/missing')));
      t.match(notFound, {
        state: 'failed',
        code: 'BUNDLE_INVALID',
        message: 'the download failed: no connection, no file at the URL, or a broken transfer',
      });
      const refused = await send(d.name, job('refused', 'http://127.0.0.1:1/bundles/x'));
      t.equal(refused.code, 'URL_NOT_ALLOWED', 'a port outside the list is not even tried');
      const closed = await device('generic-closed', { urls: { allowUrls: ['http://127.0.0.1:1/'], allowHttp: true } });
      t.match(
        await send(closed.name, job('closed', 'http://127.0.0.1:1/bundles/x')),
        { code: 'BUNDLE_INVALID', message: notFound.message },
        'a refused connection reads the same',
      );
      const secret = 'SIGNED-TOKEN-123';
      const tampered = await send(d.name, job('tampered', allowed.url(`bundles/body?token=${secret}`)));
      t.match(tampered, {
        code: 'BUNDLE_TAMPERED',
        message: "the downloaded file's sha256 is not the job's sha256 (damaged or replaced)",
      });
      const raw = ['not-found', 'closed', 'tampered'].flatMap((id) => statesOf(id).map((s) => s.raw)).join('\n');
      t.notMatch(raw, /404|Not Found|ECONNREFUSED|fetch failed/, 'no HTTP status or errno');
      t.notOk(raw.includes(bodySha), 'not the sha256 of what was fetched');
      t.notOk(raw.includes(secret), 'not the signed query string');
      const log = [...d.logs, ...closed.logs].join('\n');
      t.match(log, /HTTP 404/, 'the device log has the detail');
      t.match(log, new RegExp(`sha256 ${bodySha} is not the job's`));
      t.match(log, /bundles\/body\?<redacted>/, 'with the URL redacted');
      t.notOk(log.includes(secret), 'the log never has the token either');
    },
  );

  t.test(
    'the job queue is bounded: past maxQueued waiting jobs a job fails BUSY at once, fetching nothing',
    async (t) => {
      const d = await device('queue', { maxQueued: 1 });
      const heldNow = async () => {
        while (held.length === 0) await new Promise((r) => setTimeout(r, 20));
        held.shift()!.writeHead(404).end();
      };
      await publish(d.name, job('q1', allowed.url('bundles/hold?q1'))); // runs (the server holds it)
      await publish(d.name, job('q2', allowed.url('bundles/hold?q2'))); // waits
      t.match(await send(d.name, job('q3', allowed.url('bundles/hold?q3'))), { state: 'failed', code: 'BUSY' });
      t.notOk(
        allowed.seen.some((s) => s.url.endsWith('?q3')),
        'q3 fetched nothing',
      );
      await heldNow();
      t.match(await final('q1'), { code: 'BUNDLE_INVALID' });
      await heldNow();
      t.match(await final('q2'), { code: 'BUNDLE_INVALID' }, 'the waiting job ran after the first');
    },
  );

  t.test('every job has a time limit: a server that trickles forever is stopped, and the next job runs', async (t) => {
    const d = await device('deadline', { jobTimeoutMs: 800 });
    const began = performance.now();
    await publish(d.name, job('slow', allowed.url('bundles/trickle?slow')));
    const next = send(d.name, job('next', allowed.url('bundles/body?next')));
    t.match(await final('slow'), { state: 'failed', code: 'UPDATE_TIMED_OUT', message: /time limit/ });
    const took = performance.now() - began;
    t.ok(took >= 750 && took < 10_000, `stopped after ${Math.round(took)} ms`);
    t.match(await next, { code: 'BUNDLE_TAMPERED' }, 'the job behind it ran');
  });

  t.test('stop(): a running download ends at once (CANCELLED), a waiting job fetches nothing', async (t) => {
    const d = await device('stopping');
    await publish(d.name, job('running', allowed.url('bundles/trickle?running')));
    await publish(d.name, job('waiting', allowed.url('bundles/body?waiting')));
    while (!allowed.seen.some((s) => s.url.endsWith('?running'))) await new Promise((r) => setTimeout(r, 20));
    const began = performance.now();
    await d.served.stop();
    await d.handler.stop();
    t.ok(performance.now() - began < 5_000, `stopped in ${Math.round(performance.now() - began)} ms`);
    t.match(await final('running'), { code: 'CANCELLED' });
    t.match(await final('waiting'), { code: 'CANCELLED' });
    t.notOk(
      allowed.seen.some((s) => s.url.endsWith('?waiting')),
      'the waiting job fetched nothing',
    );
  });

  t.test(
    'the downloads folder: one partial at most, a size over the cap and no room are refused before any request',
    async (t) => {
      const d = await device('disk', { maxDownloadBytes: 4 * 2 ** 20 });
      const downloads = path.join(d.store, '.fleet', 'downloads');
      await mkdir(downloads, { recursive: true });
      const stale = ['1'.repeat(64), '2'.repeat(64)];
      await writeFile(path.join(downloads, `${stale[0]}.bundle.partial`), randomBytes(1000));
      await writeFile(path.join(downloads, `${stale[1]}.bundle`), randomBytes(1000));
      t.match(await send(d.name, job('half', allowed.url('bundles/half'), { sha256: bodySha })), {
        code: 'BUNDLE_INVALID',
      });
      t.same(await readdir(downloads), [`${bodySha}.bundle.partial`], "only this job's partial, to resume");
      const kept = (await stat(path.join(downloads, `${bodySha}.bundle.partial`))).size;
      t.match(await send(d.name, job('half-again', allowed.url('bundles/half'), { sha256: bodySha })), {
        code: 'BUNDLE_INVALID',
      });
      t.same(
        allowed.seen.filter((s) => s.url === '/bundles/half').at(-1)?.range,
        `bytes=${kept}-`,
        'the same sha256 resumes its partial',
      );
      const before = allowed.seen.length;
      t.match(await send(d.name, job('too-large', allowed.url('bundles/body'), { size: 4 * 2 ** 20 + 1 })), {
        code: 'BUNDLE_TOO_LARGE',
      });
      const huge = await device('disk-huge', { maxDownloadBytes: 2 ** 50 });
      t.match(
        await send(huge.name, job('no-size', allowed.url('bundles/body'), { size: undefined })),
        { code: 'NO_SPACE' },
        'without a size, the cap must fit',
      );
      t.equal(allowed.seen.length, before, 'neither made a request');
    },
  );

  t.test(
    'signed jobs: unsigned, for another device, expired or edited are JOB_SIGNATURE before any fetch; signed ones run',
    async (t) => {
      const d = await device('signed', { signedJobs: true, jobsFor: { fleet: 'jobs', device: 'signed' } });
      const url = allowed.url('bundles/body?signed');
      const expiresAt = new Date(Date.now() + 60_000).toISOString();
      const sign = (id: string, extra: Record<string, unknown> = {}) =>
        signJob({ ...job(id, url), fleet: 'jobs', device: 'signed', expiresAt, ...extra }, keys.privateKey);
      const other = generateKeyPairSync('ed25519').privateKey;
      const cases: Array<[string, object]> = [
        ['unsigned', job('unsigned', url)],
        ['other-device', sign('other-device', { device: 'cam9' })],
        ['expired', sign('expired', { expiresAt: new Date(Date.now() - 1000).toISOString() })],
        ['edited', { ...sign('edited'), url: allowed.url('bundles/body?edited') }],
        ['other-key', signJob({ ...job('other-key', url), fleet: 'jobs', device: 'signed', expiresAt }, other)],
      ];
      for (const [id, j] of cases)
        t.match(await send(d.name, j as { jobId: string }), { state: 'failed', code: 'JOB_SIGNATURE' }, id);
      t.notOk(
        allowed.seen.some((s) => s.url.includes('?signed') || s.url.includes('?edited')),
        'none fetched',
      );
      t.match(await send(d.name, sign('good')), { code: 'BUNDLE_TAMPERED' }, 'a job signed for this device is fetched');
      t.match(
        d.logs.join('\n'),
        /update other-device refused: \[JOB_SIGNATURE\] update job other-device: the job is signed for jobs\/cam9/,
      );
    },
  );

  t.test("a job's states are sealed with its nonce", async (t) => {
    const d = await device('sealed');
    const nonce = randomBytes(32).toString('base64url');
    await send(d.name, job('sealed-job', allowed.url('bundles/body'), { nonce }));
    const raws = statesOf('sealed-job').map((s) => JSON.parse(s.raw) as unknown);
    t.same([...new Set(raws.map((r) => (r as UpdateEvent).state))], ['downloading', 'failed']);
    t.ok(
      raws.every((r) => isSealedBy(r, nonce)),
      'every state carries the MAC',
    );
    t.notOk(
      isSealedBy({ ...(raws[1] as object), code: 'NONE', state: 'committed' }, nonce),
      'an edited state does not',
    );
    t.notOk(
      raws.some((r) => JSON.stringify(r).includes(nonce)),
      'the nonce itself is never published',
    );
  });
}
