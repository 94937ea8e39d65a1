/**
 * Signed bundles are bound to fleets, targets, a time and an agent version, and a device checks
 * them before it installs anything: a bundle replayed to another fleet, another board, after its
 * expiry or to an older agent is refused with its own code, and the store stays as it was. A
 * format-1 bundle (bound to nothing) is refused unless the installer opts in; the MQTT path never
 * does. A release far above the committed one is refused when a maximum jump is configured.
 */
import { pathToFileURL } from 'node:url';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import t, { type Test } from 'tap';
import { sha256File } from '../../src/engine/manifest.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { detectTarget } from '../../src/engine/target.js';
import {
  CLOCK_SKEW_MS,
  compareVersions,
  createBundle,
  installBundle,
  parseExpiry,
  readJournal,
  readRelease,
  UpdateHandler,
  verifyBundle,
  type InstallOptions,
  type InstallStep,
} from '../../src/fleet/index.js';
import { runCli } from '../helpers/cli.js';
import {
  bundleOf,
  bundleServer,
  fixture,
  noCanary,
  rewriteHeader,
  signedAnyway,
  testCompatibility,
  testDevice,
} from './helpers.js';

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
let n = 0;
const newStore = () => path.join(f.dir, `store${n++}`);

async function snapshot(root: string) {
  const store = new ModelStore(root);
  const staging = await readdir(path.join(root, '.fleet', 'staging')).catch(() => []);
  return {
    active: await store.active(),
    sets: await store.list(),
    release: (await readRelease(root))?.release ?? null,
    journal: await readJournal(root),
    staging,
  };
}

/** A store with release 1 committed. */
async function storeWith1(): Promise<string> {
  const root = newStore();
  await installBundle({ bundle: b1, store: root, pubkey: f.pub, device: testDevice, health: noCanary });
  return root;
}

/** Release 1 committed: the store every refusal is tried on (each must leave it as it was). */
const root1 = await storeWith1();

async function refused(
  t: Test,
  bundle: string,
  opts: Partial<InstallOptions>,
  code: string,
  message: RegExp,
  stepsBefore: InstallStep[] = [],
) {
  const before = await snapshot(root1);
  const steps: InstallStep[] = [];
  await t.rejects(
    installBundle({
      bundle,
      store: root1,
      pubkey: f.pub,
      health: noCanary,
      onStep: (s) => void steps.push(s),
      ...opts,
    }),
    { code, message },
  );
  t.same(steps, stepsBefore, 'refused before anything was written');
  t.same(await snapshot(root1), before, 'the store is as it was');
}

/** Installs release 2 (seed 2) into a new store. */
async function installs(t: Test, bundle: string, opts: Partial<InstallOptions>) {
  const root = newStore();
  const r = await installBundle({ bundle, store: root, pubkey: f.pub, health: noCanary, ...opts });
  t.equal(r.release, 2);
  t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2');
}

const bound = (name: string, over: Parameters<typeof testCompatibility>[0] = {}, createdAt?: Date) =>
  createBundle({
    models: f.sets[2]!,
    release: 2,
    key: f.priv,
    out: path.join(f.dir, `${name}.bundle`),
    compatibility: testCompatibility(over),
    ...(createdAt ? { createdAt } : {}),
  }).then(() => path.join(f.dir, `${name}.bundle`));

t.test(
  'fleets: a bundle signed for other fleets is refused (BUNDLE_WRONG_FLEET), so is an install naming no fleet',
  async (t) => {
    const b = await bound('fleets', { fleets: ['site1', 'site2'] });
    await refused(
      t,
      b,
      { device: { fleet: 'site3' } },
      'BUNDLE_WRONG_FLEET',
      /signed for fleet site1, site2, not for this device's fleet site3/,
    );
    await refused(t, b, {}, 'BUNDLE_WRONG_FLEET', /this install names no fleet; pass --fleet/);
    await refused(t, b, { device: { fleet: 'site' } }, 'BUNDLE_WRONG_FLEET', /not for this device's fleet site;/);
    await installs(t, b, { device: { fleet: 'site2' } });
  },
);

t.test(
  'a bundle replayed over the update path to a device of another fleet: failed BUNDLE_WRONG_FLEET, nothing installed',
  async (t) => {
    const before = await snapshot(root1);
    const b = await bound('replay', { fleets: ['site1'] });
    const http = await bundleServer({ 'replay.bundle': b });
    t.teardown(http.close);
    const urls = { allowUrls: [`${http.base}/`], allowHttp: true };
    const h = new UpdateHandler({
      binding: { device: { fleet: 'site9' } },
      store: root1,
      pubkey: f.pub,
      health: noCanary,
      urls,
    });
    const states: string[] = [];
    const job = { jobId: 'j1', url: http.url('replay.bundle'), sha256: await sha256File(b) };
    await t.rejects(
      h.run(job, (e) => void states.push(`${e.state}${e.code ? ` ${e.code}` : ''}`), 'mqtt'),
      { code: 'BUNDLE_WRONG_FLEET' },
    );
    t.same(
      states.filter((x, i, a) => x !== a[i - 1]),
      ['downloading', 'verifying', 'failed BUNDLE_WRONG_FLEET'],
    );
    t.same(await snapshot(root1), before);
  },
);

t.test('targets: patterns against the device target (given, or detected on this machine)', async (t) => {
  const orin = await bound('orin', { targets: ['orin-nano-*/jp6.*/trt10.3', 'agx-orin-64gb/jp6.*/trt10.3'] });
  const here = (await detectTarget()).id;
  if (here.startsWith('orin-nano-') || here.startsWith('agx-orin-64gb/'))
    t.comment(`this machine is ${here}: the detected-target refusal is not checked here`);
  else
    await refused(
      t,
      orin,
      { device: testDevice },
      'BUNDLE_WRONG_TARGET',
      new RegExp(
        `built for target orin-nano-\\*/jp6\\.\\*/trt10\\.3, agx-orin-64gb/jp6\\.\\*/trt10\\.3; this device is ${here.replace(/[.*]/g, '\\$&')}`,
      ),
    );
  await refused(
    t,
    orin,
    { device: { ...testDevice, target: 'orin-nx-16gb/jp6.2/trt10.3' } },
    'BUNDLE_WRONG_TARGET',
    /this device is orin-nx-16gb\/jp6\.2\/trt10\.3/,
  );
  await refused(
    t,
    orin,
    { device: { ...testDevice, target: 'orin-nano-8gb/jp5.1/trt8.5' } },
    'BUNDLE_WRONG_TARGET',
    /this device is orin-nano-8gb\/jp5\.1\/trt8\.5/,
  );
  await installs(t, orin, { device: { ...testDevice, target: 'orin-nano-8gb/jp6.2/trt10.3' } });
  await installs(t, orin, { device: { ...testDevice, target: 'agx-orin-64gb/jp6.1/trt10.3' } });
  // This machine's own target, detected at install time.
  await installs(t, await bound('here', { targets: ['orin-nano-*/jp6.*/trt10.3', here] }), { device: testDevice });
});

t.test(
  `expiry: refused once the device's clock is more than ${CLOCK_SKEW_MS / 60_000} minutes past notAfter (BUNDLE_EXPIRED)`,
  async (t) => {
    const notAfter = new Date('2030-01-01T00:00:00.000Z');
    const b = await bound('expiry', { notAfter: notAfter.toISOString() }, new Date('2029-12-01T00:00:00.000Z'));
    const at = (ms: number) => ({ device: { ...testDevice, now: () => new Date(notAfter.getTime() + ms) } });
    await refused(
      t,
      b,
      at(CLOCK_SKEW_MS + 1000),
      'BUNDLE_EXPIRED',
      /expired at 2030-01-01T00:00:00\.000Z \(this device's clock says 2030-01-01T00:05:01\.000Z\)/,
    );
    await refused(t, b, at(400 * 86_400_000), 'BUNDLE_EXPIRED', /publish a fresh bundle/);
    await installs(t, b, at(CLOCK_SKEW_MS - 1000)); // within the skew
    await installs(t, b, at(-86_400_000));
    // By the real clock, a bundle that expired a day ago.
    const old = await bound(
      'old',
      { notAfter: new Date(Date.now() - 86_400_000).toISOString() },
      new Date(Date.now() - 30 * 86_400_000),
    );
    await refused(t, old, { device: testDevice }, 'BUNDLE_EXPIRED', /expired at/);
  },
);

t.test('minAgentVersion: an older agent refuses (AGENT_TOO_OLD); this package is the default', async (t) => {
  const b = await bound('newer', { minAgentVersion: '0.2.0' });
  await refused(
    t,
    b,
    { device: testDevice },
    'AGENT_TOO_OLD',
    /needs setokim-edge 0\.2\.0 or newer, this device runs 0\.1\.0; update the agent first/,
  );
  await refused(t, b, { device: { ...testDevice, agentVersion: '0.1.9' } }, 'AGENT_TOO_OLD', /runs 0\.1\.9/);
  await installs(t, b, { device: { ...testDevice, agentVersion: '0.2.0' } });
  await installs(t, b, { device: { ...testDevice, agentVersion: '0.10.0' } });
  t.ok(
    compareVersions('0.10.0', '0.9.9') > 0 &&
      compareVersions('1.0.0', '1.0.0') === 0 &&
      compareVersions('1.2.3-rc.1', '1.2.4') < 0,
  );
});

t.test('the binding is signed: fleets, targets or expiry edited in the header fail the signature', async (t) => {
  const b = await bound('signed', { fleets: ['site1'] });
  for (const [what, edit] of [
    ['fleets', (c: any) => void c.fleets.push('site9')],
    ['targets', (c: any) => void (c.targets = ['x86_64/none/cpu'])],
    ['notAfter', (c: any) => void (c.notAfter = '2099-01-01T00:00:00.000Z')],
    ['minAgentVersion', (c: any) => void (c.minAgentVersion = '0.0.1')],
  ] as const) {
    const out = await rewriteHeader(b, path.join(f.dir, `edited-${what}.bundle`), (h) =>
      edit(h.manifest.compatibility),
    );
    await refused(t, out, { device: { fleet: 'site9' } }, 'BUNDLE_SIGNATURE', /does not verify/);
  }
});

t.test(
  'format 1 (bound to nothing): BUNDLE_UNBOUND unless the installer opts in; never over the update path',
  async (t) => {
    const v1 = await signedAnyway(f, f.sets[2]!, path.join(f.dir, 'v1.bundle'), (m) => {
      m.formatVersion = 1;
      m.release = 2;
      delete m.compatibility;
    });
    t.equal((await verifyBundle(v1, f.pub)).formatVersion, 1, 'it verifies: the signature is good');
    await refused(
      t,
      v1,
      { device: testDevice },
      'BUNDLE_UNBOUND',
      /format-1 bundle signs no fleet, target or expiry.*--allow-unbound/,
    );
    const steps: string[] = [];
    const root = newStore();
    await installBundle({
      bundle: v1,
      store: root,
      pubkey: f.pub,
      health: noCanary,
      allowUnbound: true,
      onStep: (s, d) => void steps.push(`${s} ${d}`),
    });
    t.match(steps[0], /^verified .*an unbound format-1 bundle .*taken as asked/);
    t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2');
    // UpdateHandler's binding has no allowUnbound; passed anyway (untyped JS), it is not used.
    const h = new UpdateHandler({
      binding: { device: testDevice, allowUnbound: true } as never,
      store: root1,
      pubkey: f.pub,
      health: noCanary,
    });
    await t.rejects(
      h.run({ jobId: 'v1', url: pathToFileURL(v1).href, sha256: await sha256File(v1) }, () => {}, 'local'),
      { code: 'BUNDLE_UNBOUND' },
    );
    t.equal(await new ModelStore(root1).active(), 'setokim-tiny-seed1');
    // A format-1 manifest carrying a compatibility section is not format 1: refused by the schema.
    const mixed = await signedAnyway(
      f,
      f.sets[2]!,
      path.join(f.dir, 'v1-mixed.bundle'),
      (m) => void (m.formatVersion = 1),
    );
    await refused(t, mixed, { device: testDevice, allowUnbound: true }, 'BUNDLE_INVALID', /compatibility/);
  },
);

t.test(
  'maxReleaseJump: a release too far above the committed one is refused (RELEASE_JUMP_REFUSED); a first install sets the floor',
  async (t) => {
    const huge = await createBundle({
      models: f.sets[2]!,
      release: 1_000_000_000,
      key: f.priv,
      out: path.join(f.dir, 'huge.bundle'),
      compatibility: testCompatibility(),
    }).then(() => path.join(f.dir, 'huge.bundle'));
    await refused(
      t,
      huge,
      { device: testDevice, maxReleaseJump: 1000 },
      'RELEASE_JUMP_REFUSED',
      /release 1000000000 is 999999999 above the committed release 1.*within 2\.\.1001/,
      ['verified'],
    );
    const r101 = await createBundle({
      models: f.sets[2]!,
      release: 101,
      key: f.priv,
      out: path.join(f.dir, 'r101.bundle'),
      compatibility: testCompatibility(),
    }).then(() => path.join(f.dir, 'r101.bundle'));
    await refused(t, r101, { device: testDevice, maxReleaseJump: 99 }, 'RELEASE_JUMP_REFUSED', /is 100 above/, [
      'verified',
    ]);
    const root = await storeWith1();
    t.equal(
      (
        await installBundle({
          bundle: r101,
          store: root,
          pubkey: f.pub,
          health: noCanary,
          device: testDevice,
          maxReleaseJump: 100,
        })
      ).release,
      101,
      'exactly the maximum',
    );
    const fresh = newStore();
    t.equal(
      (
        await installBundle({
          bundle: huge,
          store: fresh,
          pubkey: f.pub,
          health: noCanary,
          device: testDevice,
          maxReleaseJump: 10,
        })
      ).release,
      1_000_000_000,
      'no committed release: nothing to jump from',
    );
    await t.rejects(
      installBundle({ bundle: b1, store: newStore(), pubkey: f.pub, device: testDevice, maxReleaseJump: 0 }),
      { code: 'BAD_ARGUMENT', message: /maxReleaseJump 0/ },
    );
    // Over the update path too.
    const h = new UpdateHandler({
      binding: { device: testDevice, maxReleaseJump: 5 },
      store: root1,
      pubkey: f.pub,
      health: noCanary,
    });
    await t.rejects(
      h.run({ jobId: 'far', url: pathToFileURL(huge).href, sha256: await sha256File(huge) }, () => {}, 'local'),
      { code: 'RELEASE_JUMP_REFUSED' },
    );
  },
);

t.test('--expires: durations and dates, never in the past', async (t) => {
  const now = new Date('2026-11-27T12:00:00.000Z');
  t.equal(parseExpiry('30d', now).toISOString(), '2026-12-27T12:00:00.000Z');
  t.equal(parseExpiry('12h', now).toISOString(), '2026-11-28T00:00:00.000Z');
  t.equal(parseExpiry('90m', now).toISOString(), '2026-11-27T13:30:00.000Z');
  t.equal(parseExpiry('2w', now).toISOString(), '2026-12-11T12:00:00.000Z');
  t.equal(parseExpiry('2026-12-31', now).toISOString(), '2026-12-31T00:00:00.000Z');
  t.equal(parseExpiry('2027-01-01T08:00:00+02:00', now).toISOString(), '2027-01-01T06:00:00.000Z');
  for (const bad of ['1y', '30', 'd', '2026-13-45', 'tomorrow', '-1d'])
    t.throws(() => parseExpiry(bad, now), { code: 'BAD_ARGUMENT' }, bad);
  t.throws(() => parseExpiry('2026-11-01', now), { code: 'BAD_ARGUMENT', message: /not in the future/ });
  t.throws(() => parseExpiry('0m', now), { code: 'BAD_ARGUMENT', message: /not in the future/ });
  await t.rejects(bound('backwards', { notAfter: new Date(Date.now() - 1000).toISOString() }), {
    code: 'BAD_ARGUMENT',
    message: /expire .* before it is created/,
  });
  await t.rejects(bound('nofleet', { fleets: [] }), { code: 'BUNDLE_INVALID', message: /compatibility\.fleets/ });
  await t.rejects(bound('badtarget', { targets: ['Orin Nano'] }), {
    code: 'BUNDLE_INVALID',
    message: /compatibility\.targets/,
  });
  await t.rejects(bound('dupfleet', { fleets: ['a', 'a'] }), { code: 'BUNDLE_INVALID', message: /listed twice/ });
});

t.test(
  'CLI: create --fleet --target --expires; verify shows the binding; install --fleet, --allow-unbound, --max-release-jump',
  async (t) => {
    const out = path.join(f.dir, 'cli-bound.bundle');
    const create = (extra: string[]) =>
      runCli([
        'bundle',
        'create',
        '--models',
        f.sets[2]!,
        '--release',
        '2',
        '--key',
        f.privPath,
        '--out',
        out,
        '--no-progress',
        ...extra,
      ]);
    const c = await create([
      '--fleet',
      'site1',
      '--fleet',
      'site2',
      '--target',
      'orin-nano-*/jp6.*/trt10.3',
      '--target',
      '*',
      '--expires',
      '30d',
    ]);
    t.equal(c.status, 0, c.err);
    t.match(
      c.out,
      /for fleet site1, site2, target orin-nano-\*\/jp6\.\*\/trt10\.3, \*, until \d{4}-\d\d-\d\dT.*, agent 0\.1\.0 or newer/,
    );
    const v = await runCli(['bundle', 'verify', out, '--pubkey', f.pubPath, '--no-progress']);
    t.equal(v.status, 0, v.err);
    t.match(v.out, /OK: setokim-tiny-seed2 release 2, .*for fleet site1, site2/);
    for (const [args, flag] of [
      [['--target', '*', '--expires', '30d'], '--fleet: required'],
      [['--fleet', 'site1', '--expires', '30d'], '--target: required'],
      [['--fleet', 'site1', '--target', '*'], '--expires: required'],
      [['--fleet', 'a/b', '--target', '*', '--expires', '30d'], '--fleet'],
      [['--fleet', 'site1', '--target', 'Orin', '--expires', '30d'], '--target'],
      [['--fleet', 'site1', '--target', '*', '--expires', '2020-01-01'], '--expires 2020-01-01 is'],
      [['--fleet', 'site1', '--target', '*', '--expires', '30d', '--min-agent-version', 'one'], '--min-agent-version'],
    ] as const) {
      const r = await create([...args]);
      t.equal(r.status, 2, `${args.join(' ')}: ${r.err}`);
      t.match(r.err, flag);
    }
    const root = newStore();
    const v1 = await signedAnyway(f, f.sets[1]!, path.join(f.dir, 'cli-v1.bundle'), (m) => {
      m.formatVersion = 1;
      delete m.compatibility;
    });
    const unbound = await runCli([
      'bundle',
      'install',
      v1,
      '--store',
      root,
      '--pubkey',
      f.pubPath,
      '--fleet',
      'site2',
      '--no-progress',
    ]);
    t.equal(unbound.status, 3);
    t.match(unbound.err, /\[BUNDLE_UNBOUND\]/);
    const vv1 = await runCli(['bundle', 'verify', v1, '--pubkey', f.pubPath, '--no-progress']);
    t.match(vv1.out, /format 1: bound to no fleet, target or expiry/);
    const allowed = await runCli([
      'bundle',
      'install',
      v1,
      '--store',
      root,
      '--pubkey',
      f.pubPath,
      '--allow-unbound',
      '--no-progress',
    ]);
    t.equal(allowed.status, 0, allowed.err);
    t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed1');
    const wrong = await runCli([
      'bundle',
      'install',
      out,
      '--store',
      root,
      '--pubkey',
      f.pubPath,
      '--fleet',
      'site3',
      '--no-progress',
    ]);
    t.equal(wrong.status, 3);
    t.match(wrong.err, /\[BUNDLE_WRONG_FLEET\]/);
    const none = await runCli(['bundle', 'install', out, '--store', root, '--pubkey', f.pubPath, '--no-progress']);
    t.equal(none.status, 3);
    t.match(none.err, /\[BUNDLE_WRONG_FLEET\].*pass --fleet/);
    const jump = await runCli([
      'bundle',
      'install',
      out,
      '--store',
      root,
      '--pubkey',
      f.pubPath,
      '--fleet',
      'site2',
      '--max-release-jump',
      '0',
      '--no-progress',
    ]);
    t.equal(jump.status, 2, '--max-release-jump 0 is a usage error');
    const ok = await runCli([
      'bundle',
      'install',
      out,
      '--store',
      root,
      '--pubkey',
      f.pubPath,
      '--fleet',
      'site2',
      '--max-release-jump',
      '1',
      '--no-progress',
    ]);
    t.equal(ok.status, 0, ok.err);
    t.match(ok.err, /\[verified\] setokim-tiny-seed2 release 2, signed by [0-9a-f]{16}, for fleet site1, site2/);
    t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2');
  },
);
