/**
 * Power loss during the engine step: a child process installs release 2 over release 1 on an Orin
 * Nano target (EngineBuilderTestDouble where TensorRT would build) and is SIGKILLed when the
 * building-engines step reached the disk, with the llm plan half-written, or once every engine was
 * ready. The next start rolls back (release 1 whole and active, no journal, no staging, no build
 * left in progress); the engines that were finished stay in the cache, so the next install of
 * release 2 builds only the rest.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { STAGES } from '../../src/engine/contract.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { installBundle, readJournal, readRelease, recoverStore } from '../../src/fleet/index.js';
import { childEnv } from '../helpers/child-env.js';
import { EngineBuilderTestDouble, tensorRtCanaryTestDouble, testEnvironment } from './engine-doubles.js';
import { bundleOf, fixture, testDevice } from './helpers.js';

const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
const child = fileURLToPath(new URL('./fixtures/engines-crash-child.ts', import.meta.url));
const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const env = (builder: EngineBuilderTestDouble) => testEnvironment(NANO, builder);

function crashAt(at: string, store: string): Promise<{ signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child, b2, store, f.pubPath, at], {
      env: childEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (_code, signal) => resolve({ signal, out }));
  });
}

const dirs = async (p: string) => (await readdir(p).catch(() => [] as string[])).sort();
async function snapshot(root: string) {
  const store = new ModelStore(root);
  return {
    active: await store.active(),
    sets: await store.list(),
    release: (await readRelease(root))?.release ?? null,
    journal: await readJournal(root),
    staging: await dirs(path.join(root, '.fleet', 'staging')),
    building: await dirs(path.join(root, '.fleet', 'engines', '.building')),
  };
}
const cachedCount = async (root: string) =>
  (await dirs(path.join(root, '.fleet', 'engines', NANO.replaceAll('/', '+')))).filter((x) => x.endsWith('.plan'))
    .length;

const set1Manifest = JSON.parse(await readFile(path.join(f.sets[1]!, 'manifest.json'), 'utf8'));
const set1Stages = STAGES.filter((s) => s in set1Manifest.stages);
const beforeLlm = set1Stages.slice(0, set1Stages.indexOf('llm'));
const cases = [
  { at: 'building-engines', journal: 'building-engines', finished: [] as string[] },
  { at: 'mid-build', journal: 'building-engines', finished: beforeLlm },
  { at: 'engines-ready', journal: 'building-engines', finished: set1Stages },
];

const crashed = await Promise.all(
  cases.map(async (c) => {
    const root = path.join(f.dir, `store-${c.at}`);
    await installBundle({
      device: testDevice,
      bundle: b1,
      store: root,
      pubkey: f.pub,
      health: tensorRtCanaryTestDouble(NANO),
      engines: { env: env(new EngineBuilderTestDouble()) },
    });
    return crashAt(c.at, root);
  }),
);

for (const [i, c] of cases.entries()) {
  t.test(
    `killed at ${c.at}: rolled back to release 1; the ${c.finished.length} engines finished are reused`,
    async (t) => {
      const root = path.join(f.dir, `store-${c.at}`);
      t.equal(crashed[i]!.signal, 'SIGKILL', `the child died at ${c.at}: ${crashed[i]!.out}`);
      t.equal((await readJournal(root))?.step, c.journal, 'the journal says an engine step was under way');
      t.equal(
        await new ModelStore(root).active(),
        'setokim-tiny-seed1',
        'release 1 served throughout: nothing was placed yet',
      );
      if (c.at === 'mid-build')
        t.match(
          (await dirs(path.join(root, '.fleet', 'engines', '.building')))[0],
          /^[0-9a-f]{64}\.plan\.partial$/,
          'a half-written plan was left',
        );

      const rec = await recoverStore(root);
      t.equal(rec.action, 'rolled-back');
      t.same(await snapshot(root), {
        active: 'setokim-tiny-seed1',
        sets: ['setokim-tiny-seed1'],
        release: 1,
        journal: null,
        staging: [],
        building: [],
      });
      t.equal((await new ModelStore(root).openActive()).id, 'setokim-tiny-seed1', 'release 1 verifies whole');
      t.equal(
        await cachedCount(root),
        set1Stages.length + c.finished.length,
        "release 1's engines and the finished ones of release 2 are cached",
      );

      const builder = new EngineBuilderTestDouble();
      const r = await installBundle({
        device: testDevice,
        bundle: b2,
        store: root,
        pubkey: f.pub,
        health: tensorRtCanaryTestDouble(NANO),
        engines: { env: env(builder) },
      });
      t.same(r.engines?.reused, c.finished, 'the next install reuses what was finished');
      t.same(
        builder.started,
        set1Stages.filter((s) => !c.finished.includes(s)),
        'and builds only the rest',
      );
      t.equal(r.release, 2);
    },
  );
}
