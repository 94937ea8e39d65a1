/**
 * Install on a device store: the round trip activates the set after a real canary query; every
 * refusal (signature, tampered file, wrong key, rollback, space) leaves the store as it was; a
 * set that verifies but cannot answer is rolled back to the previous one.
 */
import { sign } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { ModelStore } from '../../src/engine/modelset.js';
import {
  installBundle,
  parseBundleManifest,
  readJournal,
  readRelease,
  recoverStore,
  signedBytes,
  type InstallStep,
} from '../../src/fleet/index.js';
import { runCli } from '../helpers/cli.js';
import {
  brokenLlmSet,
  bundleOf,
  fixture,
  flipByte,
  offsetOf,
  rewriteHeader,
  setWithId,
  signedAnyway,
  testDevice,
} from './helpers.js';

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const broken = await bundleOf(f, await brokenLlmSet(f.sets[2]!, path.join(f.dir, 'broken')), 3, 'broken');

let n = 0;
const newStore = () => path.join(f.dir, `store${n++}`);

/** What a store holds, for before/after comparisons. */
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

/** Stands in for the canary where a test is about something else (the real one runs in the round trip, the broken set and the CLI). */
const noCanary = async () => ({ ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' });

/** A store with release 1 (seed 1) committed. */
async function storeWith1(): Promise<string> {
  const root = newStore();
  await installBundle({ device: testDevice, bundle: b1, store: root, pubkey: f.pub, health: noCanary });
  return root;
}

t.test(
  'round trip: install 1 (real canary query) then 2; 2 active, 1 kept, steps in order, release recorded',
  async (t) => {
    const root = newStore();
    const steps: InstallStep[] = [];
    const r1 = await installBundle({
      device: testDevice,
      bundle: b1,
      store: root,
      pubkey: f.pub,
      onStep: (s) => void steps.push(s),
    });
    t.same(steps, ['verified', 'staging', 'staged', 'placed', 'activated', 'healthy', 'committed']);
    t.equal(r1.previous, null);
    t.ok(r1.health.generatedTokens >= 1 && r1.health.visionTokens >= 1, 'the canary answered');
    const r2 = await installBundle({ device: testDevice, bundle: b2, store: root, pubkey: f.pub, health: noCanary });
    t.equal(r2.previous, 'setokim-tiny-seed1');
    t.same(await snapshot(root), {
      active: 'setokim-tiny-seed2',
      sets: ['setokim-tiny-seed1', 'setokim-tiny-seed2'],
      release: 2,
      journal: null,
      staging: [],
    });
    const active = await new ModelStore(root).openActive(); // verifies every file again
    t.equal(active.id, 'setokim-tiny-seed2');
    t.equal((await readRelease(root))!.previous, 'setokim-tiny-seed1');
  },
);

t.test('refusals leave the store exactly as it was: tampered file, flipped signature, wrong key', async (t) => {
  const root = await storeWith1();
  const before = await snapshot(root);
  const flipped = await flipByte(b2, (await offsetOf(b2, 'llm.onnx')) + 4096, path.join(f.dir, 'i-flip.bundle'));
  const steps: InstallStep[] = [];
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: flipped,
      store: root,
      pubkey: f.pub,
      onStep: (s) => void steps.push(s),
    }),
    { code: 'BUNDLE_TAMPERED', message: /llm\.onnx/ },
  );
  t.same(steps, ['verified', 'staging', 'rolled-back'], 'caught while unpacking, before anything was placed');
  t.same(await snapshot(root), before);
  await t.rejects(stat(path.join(root, 'setokim-tiny-seed2')), { code: 'ENOENT' });

  const badSig = await rewriteHeader(b2, path.join(f.dir, 'i-sig.bundle'), (h) => {
    const s = Buffer.from(h.signature, 'base64');
    s[0]! ^= 0x80;
    h.signature = s.toString('base64');
  });
  await t.rejects(installBundle({ device: testDevice, bundle: badSig, store: root, pubkey: f.pub }), {
    code: 'BUNDLE_SIGNATURE',
  });
  t.same(await snapshot(root), before);

  const { generateKeys, loadPublicKey } = await import('../../src/fleet/index.js');
  const other = await loadPublicKey((await generateKeys(path.join(f.dir, 'i-other'))).publicPath);
  await t.rejects(installBundle({ device: testDevice, bundle: b2, store: root, pubkey: other }), {
    code: 'BUNDLE_SIGNATURE',
  });
  t.same(await snapshot(root), before);
});

t.test(
  'anti-rollback: release 1 after 2 is refused, and so is 2 again; a failed 3 does not raise the floor',
  async (t) => {
    const root = await storeWith1();
    await installBundle({ device: testDevice, bundle: b2, store: root, pubkey: f.pub, health: noCanary });
    const before = await snapshot(root);
    await t.rejects(installBundle({ device: testDevice, bundle: b1, store: root, pubkey: f.pub }), {
      code: 'ROLLBACK_REFUSED',
      message: /release 1 is not newer than release 2/,
    });
    const again = await bundleOf(f, f.sets[1]!, 2, 'again2');
    await t.rejects(installBundle({ device: testDevice, bundle: again, store: root, pubkey: f.pub }), {
      code: 'ROLLBACK_REFUSED',
    });
    t.same(await snapshot(root), before);
  },
);

t.test('no space: the reserve cannot be met on this filesystem -> NO_SPACE before anything is written', async (t) => {
  const root = await storeWith1();
  const before = await snapshot(root);
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: b2,
      store: root,
      pubkey: f.pub,
      reserveBytes: Number.MAX_SAFE_INTEGER,
    }),
    { code: 'NO_SPACE', message: /MiB free/ },
  );
  t.same(await snapshot(root), before);
});

t.test(
  'a set that verifies but cannot answer: HEALTH_CHECK_FAILED, previous set active again, new set removed',
  async (t) => {
    const root = await storeWith1();
    const before = await snapshot(root);
    const steps: InstallStep[] = [];
    await t.rejects(
      installBundle({
        device: testDevice,
        bundle: broken,
        store: root,
        pubkey: f.pub,
        onStep: (s) => void steps.push(s),
      }),
      {
        code: 'HEALTH_CHECK_FAILED',
        message: /canary query: \[MODEL_INVALID\] stage 'llm'.*rolled back: active set is setokim-tiny-seed1/,
      },
    );
    t.same(
      steps,
      ['verified', 'staging', 'staged', 'placed', 'activated', 'rolled-back'],
      'it was active before the canary',
    );
    t.same(await snapshot(root), before, 'floor not raised: release 3 may be fixed and sent again');
    // The fixed release 3 installs (the failed attempt did not burn the number).
    const fixed = await bundleOf(f, f.sets[2]!, 3, 'fixed3');
    await installBundle({ device: testDevice, bundle: fixed, store: root, pubkey: f.pub, health: noCanary });
    t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2');
  },
);

t.test('a failing first install leaves no set active (there was none to go back to)', async (t) => {
  const root = newStore();
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: b1,
      store: root,
      pubkey: f.pub,
      health: async () => Promise.reject(new Error('no answer')),
    }),
    { code: 'HEALTH_CHECK_FAILED', message: /active set is none/ },
  );
  t.same(await snapshot(root), { active: null, sets: [], release: null, journal: null, staging: [] });
});

t.test('the serving set id cannot be replaced in place; a second installer is refused while one runs', async (t) => {
  const root = await storeWith1();
  const same = await bundleOf(f, f.sets[1]!, 5, 'same5');
  await t.rejects(installBundle({ device: testDevice, bundle: same, store: root, pubkey: f.pub }), {
    code: 'UPDATE_CONFLICT',
    message: /is the set serving/,
  });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let activated!: () => void;
  const isActive = new Promise<void>((r) => (activated = r));
  // The first holds the lock and waits in its health check until the second was refused.
  const first = installBundle({
    device: testDevice,
    bundle: b2,
    store: root,
    pubkey: f.pub,
    onStep: (s) => void (s === 'activated' && activated()),
    health: async () => (await gate, { ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' }),
  });
  await isActive;
  const steps: InstallStep[] = [];
  await t.rejects(
    installBundle({ device: testDevice, bundle: b2, store: root, pubkey: f.pub, onStep: (s) => void steps.push(s) }),
    { code: 'UPDATE_CONFLICT', message: new RegExp(`process ${process.pid}`) },
  );
  t.same(steps, [], 'refused before it touched anything');
  release();
  await first;
  t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2');
});

t.test('an onStep that throws at staging rolls back at once: no journal, no staging, store as it was', async (t) => {
  const root = await storeWith1();
  const before = await snapshot(root);
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: b2,
      store: root,
      pubkey: f.pub,
      health: noCanary,
      onStep: (s) => {
        if (s === 'staging') throw new Error('the agent could not drain');
      },
    }),
    { message: 'the agent could not drain' },
  );
  t.same(await snapshot(root), before);
});

t.test('a store that cannot be written is BAD_ARGUMENT naming it, not an internal error', async (t) => {
  const file = path.join(f.dir, 'not-a-dir');
  await writeFile(file, 'x');
  const root = path.join(file, 'store'); // ENOTDIR as any user (root ignores permission bits)
  await t.rejects(installBundle({ device: testDevice, bundle: b1, store: root, pubkey: f.pub, health: noCanary }), {
    code: 'BAD_ARGUMENT',
    message: /cannot write the model store/,
  });
  await t.rejects(recoverStore(root), { code: 'BAD_ARGUMENT' });
});

t.test(
  'CLI install: a good bundle exits 0; a broken one exits 3 with HEALTH_CHECK_FAILED; status shows the store',
  async (t) => {
    const root = newStore();
    const ok = await runCli([
      'bundle',
      'install',
      b1,
      '--store',
      root,
      '--fleet',
      'test',
      '--pubkey',
      f.pubPath,
      '--no-progress',
    ]);
    t.equal(ok.status, 0, ok.err);
    t.match(ok.out, /installed setokim-tiny-seed1 release 1 .*previous: none.*canary answered/);
    t.match(ok.err, /\[committed\] setokim-tiny-seed1 release 1/);
    const bad = await runCli([
      'bundle',
      'install',
      broken,
      '--store',
      root,
      '--fleet',
      'test',
      '--pubkey',
      f.pubPath,
      '--no-progress',
    ]);
    t.equal(bad.status, 3);
    t.match(bad.err, /\[HEALTH_CHECK_FAILED\]/);
    const s = await runCli(['bundle', 'status', '--store', root]);
    t.same(JSON.parse(s.out), {
      store: root,
      active: 'setokim-tiny-seed1',
      release: 1,
      previous: null,
      sets: ['setokim-tiny-seed1'],
      interrupted: null,
    });
    const img = await runCli([
      'bundle',
      'install',
      b2,
      '--store',
      root,
      '--fleet',
      'test',
      '--pubkey',
      f.pubPath,
      '--canary-image',
      path.join(f.dir, 'missing.png'),
    ]);
    t.equal(img.status, 2);
    t.match(img.err, /--canary-image/);
  },
);

t.test(
  'a signed bundle whose manifest.json names another set than its signed modelSetId: BUNDLE_INVALID, nothing placed',
  async (t) => {
    const root = await storeWith1();
    const before = await snapshot(root);
    // A publisher's mistake, correctly signed: the signature cannot catch it, the unpacked set does.
    const wrong = await rewriteHeader(b2, path.join(f.dir, 'wrong-id.bundle'), (h) => {
      h.manifest.modelSetId = 'setokim-other';
      h.signature = sign(null, signedBytes(parseBundleManifest(h.manifest, 'x')), f.priv).toString('base64');
    });
    await t.rejects(
      installBundle({ device: testDevice, bundle: wrong, store: root, pubkey: f.pub, health: noCanary }),
      { code: 'BUNDLE_INVALID', message: /names set setokim-tiny-seed2, its signed bundle manifest setokim-other/ },
    );
    t.same(await snapshot(root), before);
  },
);

t.test(
  'rollback onto a previous set that no longer verifies: nothing is left active, the rollback finishes, and the error says so',
  async (t) => {
    const root = await storeWith1();
    const p = path.join(root, 'setokim-tiny-seed1', 'merger.onnx');
    const bytes = await readFile(p);
    bytes[100]! ^= 1;
    await writeFile(p, bytes);
    await t.rejects(
      installBundle({
        device: testDevice,
        bundle: b2,
        store: root,
        pubkey: f.pub,
        health: async () => Promise.reject(new Error('no answer')),
      }),
      {
        code: 'MODEL_HASH_MISMATCH',
        message: /rolling back to setokim-tiny-seed1 failed .*no model set is active now/,
      },
    );
    // The rollback finished all the same (the new set removed, no journal), so the next start is
    // not stuck retrying it: nothing is active, and recovery has nothing left to do.
    t.same(await snapshot(root), {
      active: null,
      sets: ['setokim-tiny-seed1'],
      release: 1,
      journal: null,
      staging: [],
    });
    t.equal((await recoverStore(root)).action, 'none');
  },
);

t.test(
  'a hand-edited journal is refused with MODEL_INVALID; stray staging dirs without a journal are cleared',
  async (t) => {
    const root = await storeWith1();
    await mkdir(path.join(root, '.fleet', 'staging', 'stray'), { recursive: true });
    t.equal((await recoverStore(root)).action, 'none');
    t.same((await snapshot(root)).staging, [], 'stray staging removed');
    await writeFile(path.join(root, '.fleet', 'journal.json'), '{"step":"sideways"}');
    await t.rejects(installBundle({ device: testDevice, bundle: b2, store: root, pubkey: f.pub, health: noCanary }), {
      code: 'MODEL_INVALID',
      message: /update journal/,
    });
    await writeFile(path.join(root, '.fleet', 'journal.json'), '{"step":');
    await t.rejects(installBundle({ device: testDevice, bundle: b2, store: root, pubkey: f.pub, health: noCanary }), {
      code: 'MODEL_INVALID',
      message: /update journal is not JSON/,
    });
    await writeFile(path.join(root, '.fleet', 'release.json'), 'not json');
    await t.rejects(readRelease(root), { code: 'MODEL_INVALID', message: /release record is not JSON/ });
  },
);

t.test(
  "a signed set id that names the store's own files (active, active.tmp, *.tmp) is refused; the serving set stays active",
  async (t) => {
    const root = await storeWith1();
    const before = await snapshot(root);
    for (const id of ['active', 'active.tmp', 'seed2.tmp', 'ACTIVE']) {
      const dir = await setWithId(f.sets[2]!, path.join(f.dir, `id-${id}`), id);
      const b = await signedAnyway(f, dir, path.join(f.dir, `id-${id}.bundle`), (m) => void (m.release = 2));
      await t.rejects(
        installBundle({ device: testDevice, bundle: b, store: root, pubkey: f.pub, health: noCanary }),
        { code: 'BUNDLE_INVALID', message: /modelSetId: .*reserved/ },
        id,
      );
      t.same(await snapshot(root), before, `${id}: the store is as it was`);
      t.equal((await new ModelStore(root).openActive()).id, 'setokim-tiny-seed1', `${id}: the serving set still opens`);
    }
    t.throws(() => new ModelStore(root).dirOf('active'), { code: 'BAD_ARGUMENT', message: /reserved/ });
  },
);

t.test(
  'rollback leaves the previous set active even when the active pointer was lost during the install',
  async (t) => {
    const root = await storeWith1();
    const before = await snapshot(root);
    const steps: InstallStep[] = [];
    await t.rejects(
      installBundle({
        device: testDevice,
        bundle: b2,
        store: root,
        pubkey: f.pub,
        onStep: async (s) => {
          steps.push(s);
          if (s === 'activated') await rm(path.join(root, 'active')); // e.g. removed by hand, or by a bug
        },
        health: async () => Promise.reject(new Error('no answer')),
      }),
      { code: 'HEALTH_CHECK_FAILED', message: /active set is setokim-tiny-seed1/ },
    );
    t.same(steps, ['verified', 'staging', 'staged', 'placed', 'activated', 'rolled-back']);
    t.same(await snapshot(root), before);
  },
);
