/**
 * Power loss at every step of an install: a child process installs release 2 over release 1 and
 * is SIGKILLed right after a step reached the disk. Recovery must leave either release 1 (not
 * committed yet) or release 2 (committed) active, whole, with nothing half-installed around,
 * and the store must take the next install.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ModelStore } from '../../src/engine/modelset.js';
import { installBundle, readJournal, readRelease, recoverStore, type InstallStep } from '../../src/fleet/index.js';
import { childEnv } from '../helpers/child-env.js';
import { runCli } from '../helpers/cli.js';
import { bundleOf, fixture, noCanary, testDevice } from './helpers.js';

const child = fileURLToPath(new URL('./fixtures/crash-child.ts', import.meta.url));
const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
// The next release after recovery: a set id that is not the one serving then.
const b3 = {
  'rolled-back': await bundleOf(f, f.sets[2]!, 3, 'r3-seed2'),
  completed: await bundleOf(f, f.sets[1]!, 3, 'r3-seed1'),
};

function crashAt(
  step: string,
  store: string,
): Promise<{ signal: NodeJS.Signals | null; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child, b2, store, f.pubPath, step], {
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

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

const uncommitted = {
  active: 'setokim-tiny-seed1',
  sets: ['setokim-tiny-seed1'],
  release: 1,
  journal: null,
  staging: [],
};
const committed = {
  active: 'setokim-tiny-seed2',
  sets: ['setokim-tiny-seed1', 'setokim-tiny-seed2'],
  release: 2,
  journal: null,
  staging: [],
};

const cases: Array<{
  at: string;
  journal: string | null;
  expect: typeof uncommitted;
  action: 'rolled-back' | 'completed';
}> = [
  { at: 'unpacking', journal: 'staging', expect: uncommitted, action: 'rolled-back' },
  { at: 'staging', journal: 'staging', expect: uncommitted, action: 'rolled-back' },
  { at: 'staged', journal: 'staged', expect: uncommitted, action: 'rolled-back' },
  { at: 'placed', journal: 'placed', expect: uncommitted, action: 'rolled-back' },
  { at: 'activated', journal: 'activated', expect: uncommitted, action: 'rolled-back' },
  { at: 'healthy', journal: 'activated', expect: uncommitted, action: 'rolled-back' },
  { at: 'committed', journal: 'activated', expect: committed, action: 'completed' },
];

// The children start together (each spends most of its life loading tsx and the modules).
const crashed = await Promise.all(
  cases.map(async (c) => {
    const root = path.join(f.dir, `store-${c.at}`);
    await installBundle({ device: testDevice, bundle: b1, store: root, pubkey: f.pub, health: noCanary });
    return crashAt(c.at, root);
  }),
);

for (const [i, c] of cases.entries()) {
  t.test(
    `killed at ${c.at}: recovery ${c.action === 'completed' ? 'keeps release 2' : 'brings back release 1'}`,
    async (t) => {
      const root = path.join(f.dir, `store-${c.at}`);
      const r = crashed[i]!;
      t.equal(r.signal, 'SIGKILL', `the child died at ${c.at}: ${r.out}`);
      const j = await readJournal(root);
      t.equal(j?.step, c.journal, 'the journal names the last step on disk');
      if (c.at === 'activated' || c.at === 'healthy')
        t.equal(
          await new ModelStore(root).active(),
          'setokim-tiny-seed2',
          'the new set was active when the power went',
        );
      if (c.at === 'unpacking') {
        const partial = await readdir(path.join(root, '.fleet', 'staging', 'setokim-tiny-seed2-r2'));
        t.ok(partial.length > 0, `a half-unpacked staging dir was left (${partial.length} files)`);
      }
      // Half the cases recover explicitly, half through the next install's own recovery first.
      if (i % 2 === 0) {
        const rec = await recoverStore(root);
        t.equal(rec.action, c.action);
        t.equal(rec.journal?.step, c.journal);
        t.same(await snapshot(root), c.expect);
        t.equal((await recoverStore(root)).action, 'none', 'recovery is done once');
        const active = await new ModelStore(root).openActive(); // every file verifies
        t.equal(active.id, c.expect.active);
        const next = await installBundle({
          device: testDevice,
          bundle: b3[c.action],
          store: root,
          pubkey: f.pub,
          health: noCanary,
        });
        t.equal(next.release, 3, 'the store takes the next release');
      } else {
        const steps: Array<[InstallStep, string]> = [];
        const next = await installBundle({
          device: testDevice,
          bundle: c.action === 'completed' ? b3.completed : b2,
          store: root,
          pubkey: f.pub,
          health: noCanary,
          onStep: (s, d) => void steps.push([s, d]),
        });
        t.same(steps[0], ['recovered', `${c.action} release 2 (setokim-tiny-seed2)`], 'install recovered first');
        t.equal(next.release, c.action === 'completed' ? 3 : 2);
      }
      // The kernel dropped the dead child's flock; recovery took it and released it (the file stays, its note cleared).
      t.equal(
        await readFile(path.join(root, '.fleet', 'lock'), 'utf8'),
        '',
        "the dead child's lock was taken and released",
      );
    },
  );
}

t.test('CLI recover: says what it did', async (t) => {
  const root = path.join(f.dir, 'store-cli');
  await installBundle({ device: testDevice, bundle: b1, store: root, pubkey: f.pub, health: noCanary });
  t.equal((await crashAt('placed', root)).signal, 'SIGKILL');
  const st = await runCli(['bundle', 'status', '--store', root]);
  t.match(JSON.parse(st.out), { active: 'setokim-tiny-seed1', interrupted: { step: 'placed', release: 2 } });
  const r = await runCli(['bundle', 'recover', '--store', root]);
  t.equal(r.status, 0, r.err);
  t.match(
    r.out,
    /rolled-back release 2 \(setokim-tiny-seed2, interrupted after step placed\); active: setokim-tiny-seed1/,
  );
  const again = await runCli(['bundle', 'recover', '--store', root]);
  t.match(again.out, /nothing to recover; active: setokim-tiny-seed1/);
});
