/**
 * The install state machine with its engine step, on a device pretending to be an Orin Nano on
 * JetPack 6.2 (TensorRT doubled where it would run: EngineBuilderTestDouble, tensorRtCanaryTestDouble;
 * everything else real): a build that succeeds (journalled, progress per stage, cached, served by
 * tensorrt), two releases that share stages (only the changed one is rebuilt), a JetPack upgrade
 * (a new target misses, the old one is pruned), and builds that fail or time out, canaries that
 * fail or run elsewhere: rolled back, the committed set untouched, finished builds kept for the next try.
 */
import { cp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { createHash } from 'node:crypto';
import { STAGES } from '../../src/engine/contract.js';
import { cacheKeyOf, engineCacheKey } from '../../src/engine/engine-cache.js';
import { readEngineManifest } from '../../src/engine/engine-manifest.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { installBundle, readJournal, readRelease, type InstallStep } from '../../src/fleet/index.js';
import type { EngineProgress } from '../../src/fleet/engines.js';
import {
  EngineBuilderTestDouble,
  prebuiltEngines,
  tensorRtCanaryTestDouble,
  testEnvironment,
  type BuilderDoubleOptions,
} from './engine-doubles.js';
import { bundleOf, fixture, setWithId, testDevice } from './helpers.js';

const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
const f = await fixture([1, 2]);
t.teardown(f.cleanup);

/** Set 1 with one stage taken from set 2: a release that changes only that stage. */
async function withStageFrom(stage: string, id: string): Promise<string> {
  const out = await setWithId(f.sets[1]!, path.join(f.dir, id), id);
  const m = JSON.parse(await readFile(path.join(out, 'manifest.json'), 'utf8'));
  const donor = JSON.parse(await readFile(path.join(f.sets[2]!, 'manifest.json'), 'utf8'));
  await cp(path.join(f.sets[2]!, donor.stages[stage].file), path.join(out, m.stages[stage].file));
  m.stages[stage] = { ...m.stages[stage], sha256: donor.stages[stage].sha256, bytes: donor.stages[stage].bytes };
  await writeFile(path.join(out, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  return out;
}

const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, await withStageFrom('detokenizer', 'setokim-tiny-seed1b'), 2);
const b3 = await bundleOf(f, f.sets[2]!, 3);

let n = 0;
const newStore = () => path.join(f.dir, `store${n++}`);

async function snapshot(root: string) {
  const store = new ModelStore(root);
  const dirs = async (p: string) => (await readdir(p).catch(() => [] as string[])).sort();
  return {
    active: await store.active(),
    sets: await store.list(),
    release: (await readRelease(root))?.release ?? null,
    journal: await readJournal(root),
    staging: await dirs(path.join(root, '.fleet', 'staging')),
    building: await dirs(path.join(root, '.fleet', 'engines', '.building')),
  };
}

/** The cache entries (key names) of a target in a store. */
async function cached(root: string, target = NANO): Promise<string[]> {
  const names = await readdir(path.join(root, '.fleet', 'engines', target.replaceAll('/', '+'))).catch(
    () => [] as string[],
  );
  return names
    .filter((x) => x.endsWith('.plan'))
    .map((x) => x.slice(0, -'.plan'.length))
    .sort();
}

/** The cache keys of the engines a set in the store uses. */
async function keysOf(root: string, id: string): Promise<string[]> {
  const dir = path.join(root, id, 'engines');
  const plans = (await readdir(dir)).filter((x) => x.endsWith('.plan'));
  return plans.map((p) => engineCacheKey(cacheKeyOf(readEngineManifest(path.join(dir, p)))!)).sort();
}

function install(
  root: string,
  bundle: string,
  o: {
    target?: string;
    builder?: BuilderDoubleOptions | EngineBuilderTestDouble;
    health?: ReturnType<typeof tensorRtCanaryTestDouble>;
    buildTimeoutMs?: number;
    cancelGraceMs?: number;
    onStep?: (s: InstallStep, d: string) => void;
    onProgress?: (p: EngineProgress) => void;
  } = {},
) {
  const target = o.target ?? NANO;
  const builder = o.builder instanceof EngineBuilderTestDouble ? o.builder : new EngineBuilderTestDouble(o.builder);
  const engines = {
    env: testEnvironment(target, builder),
    ...(o.buildTimeoutMs ? { buildTimeoutMs: o.buildTimeoutMs } : {}),
    ...(o.cancelGraceMs ? { cancelGraceMs: o.cancelGraceMs } : {}),
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
  };
  const run = installBundle({
    device: testDevice,
    bundle,
    store: root,
    pubkey: f.pub,
    health: o.health ?? tensorRtCanaryTestDouble(target),
    engines,
    ...(o.onStep ? { onStep: o.onStep } : {}),
  });
  return { run, builder };
}

const setStages = Object.keys(JSON.parse(await readFile(path.join(f.sets[1]!, 'manifest.json'), 'utf8')).stages);
const ordered = STAGES.filter((s) => setStages.includes(s));

t.test(
  'a build that succeeds: every stage built and cached, journalled as building-engines, progress per stage, canary on tensorrt',
  async (t) => {
    t.ok(ordered.length >= 4, `the tiny set has ${ordered.join(', ')}`);
    const root = newStore();
    const steps: InstallStep[] = [];
    const progress: EngineProgress[] = [];
    const health = tensorRtCanaryTestDouble(NANO);
    const { run, builder } = install(root, b1, {
      health,
      onStep: (s) => void steps.push(s),
      onProgress: (p) => void progress.push(p),
    });
    const r = await run;
    t.same(steps, [
      'verified',
      'staging',
      'staged',
      'building-engines',
      'engines-ready',
      'placed',
      'activated',
      'healthy',
      'committed',
    ]);
    t.same(builder.built, ordered, 'every stage, in pipeline order');
    t.same(r.engines, { backend: 'tensorrt', prebuilt: [], reused: [], built: ordered });
    t.same(health.calls, [{ backend: 'tensorrt' }], 'the canary was asked to run on the backend that will serve');
    t.equal(r.health.backend, 'tensorrt');
    const starts = progress.filter((p) => p.phase === 'start');
    t.same(
      starts.map((p) => [p.stage, p.index, p.count]),
      ordered.map((s, i) => [s, i + 1, ordered.length]),
    );
    t.ok(
      progress.some((p) => p.phase === 'Building engine' && p.step === 3 && p.steps === 3),
      "the builder's own steps come through",
    );
    t.same(
      await cached(root),
      await keysOf(root, 'setokim-tiny-seed1'),
      'one cache entry per stage, and the set uses exactly those',
    );
    const inSet = await stat(path.join(root, 'setokim-tiny-seed1', 'engines', 'llm.fp32.plan'));
    t.equal(inSet.nlink, 2, 'the set links the cached plan');
    t.same(await snapshot(root), {
      active: 'setokim-tiny-seed1',
      sets: ['setokim-tiny-seed1'],
      release: 1,
      journal: null,
      staging: [],
      building: [],
    });
  },
);

t.test(
  'two releases: an update that changes one stage rebuilds only that one; old entries go with their set',
  async (t) => {
    const root = newStore();
    await install(root, b1).run;
    const first = await keysOf(root, 'setokim-tiny-seed1');
    const r2 = install(root, b2);
    const res2 = await r2.run;
    t.same(r2.builder.started, ['detokenizer'], 'only the changed stage was built');
    t.same(
      res2.engines?.reused,
      ordered.filter((s) => s !== 'detokenizer'),
    );
    const second = await keysOf(root, 'setokim-tiny-seed1b');
    t.equal(second.filter((k) => first.includes(k)).length, ordered.length - 1, 'the two sets share every other entry');
    t.equal((await cached(root)).length, ordered.length + 1, 'both sets are in the store: one more entry');

    const r3 = install(root, b3);
    await r3.run;
    t.same(
      r3.builder.started,
      ordered.filter((x) => x !== 'detokenizer'),
      'release 3 (seed 2) builds every stage but the detokenizer release 2 took from it',
    );
    t.same((await r3.run).engines?.reused, ['detokenizer']);
    const s = await snapshot(root);
    t.same(s.sets, ['setokim-tiny-seed1b', 'setokim-tiny-seed2'], 'release 1, older than the previous set, was pruned');
    const keep = new Set([...second, ...(await keysOf(root, 'setokim-tiny-seed2'))]);
    t.same(await cached(root), [...keep].sort(), "release 1's own detokenizer entry went with it; shared entries stay");
  },
);

t.test(
  'a JetPack upgrade is a new target: nothing is reused, and the old target goes at the next commit',
  async (t) => {
    const root = newStore();
    await install(root, b1, { target: 'orin-nano-8gb/jp6.1/trt10.3' }).run;
    t.equal((await cached(root, 'orin-nano-8gb/jp6.1/trt10.3')).length, ordered.length);
    const after = install(root, b2); // the same board on JetPack 6.2
    const r = await after.run;
    t.same(after.builder.started, ordered, 'every stage built again for the new target');
    t.same(r.engines?.reused, []);
    t.same(
      await readdir(path.join(root, '.fleet', 'engines')),
      ['orin-nano-8gb+jp6.2+trt10.3'],
      'the JetPack 6.1 entries were pruned',
    );
  },
);

t.test(
  'a build that fails rolls back; the builds that finished stay cached and the next try builds only the rest',
  async (t) => {
    const root = newStore();
    await install(root, b1).run;
    const before = await snapshot(root);
    const steps: InstallStep[] = [];
    const failing = install(root, b3, { builder: { failAt: 'llm' }, onStep: (s) => void steps.push(s) });
    await t.rejects(failing.run, {
      code: 'ENGINE_BUILD_FAILED',
      message:
        /building the llm engine on orin-nano-8gb\/jp6\.2\/trt10\.3 failed: \[ENGINE_BUILD_FAILED\] EngineBuilderTestDouble: the ONNX parser rejected/,
    });
    t.same(steps.slice(-2), ['building-engines', 'rolled-back']);
    t.same(await snapshot(root), before, 'the committed set serves, nothing half-installed, no build left in progress');
    const done = ordered.slice(0, ordered.indexOf('llm'));
    t.same(failing.builder.built, done);
    const retry = install(root, b3);
    const r = await retry.run;
    t.same(
      retry.builder.started,
      ordered.filter((s) => !done.includes(s)),
      `the next try reuses ${done.join(', ')}`,
    );
    t.same(r.engines?.reused, done);
  },
);

t.test('a build past its time limit is cancelled and rolled back, even when the builder does not stop', async (t) => {
  const root = newStore();
  await install(root, b1).run;
  const before = await snapshot(root);
  const t0 = performance.now();
  const hung = install(root, b3, { builder: { hangAt: 'merger' }, buildTimeoutMs: 300 });
  await t.rejects(hung.run, {
    code: 'ENGINE_BUILD_TIMEOUT',
    message: /building the merger engine took more than 0\.3 s on orin-nano-8gb\/jp6\.2\/trt10\.3; it was cancelled/,
  });
  t.same(await snapshot(root), before);
  const deaf = install(root, b3, {
    builder: { hangAt: 'merger', ignoreAbort: true },
    buildTimeoutMs: 300,
    cancelGraceMs: 200,
  });
  await t.rejects(deaf.run, { code: 'ENGINE_BUILD_TIMEOUT' });
  t.ok(performance.now() - t0 < 20_000, 'both gave up within their limits');
  t.same(await snapshot(root), before);
});

t.test(
  'the canary runs on the backend that will serve: a failing one, or one that ran elsewhere, rolls back',
  async (t) => {
    const root = newStore();
    await install(root, b1).run;
    const before = await snapshot(root);
    await t.rejects(install(root, b3, { health: tensorRtCanaryTestDouble(NANO, { failAt: 'llm' }) }).run, {
      code: 'HEALTH_CHECK_FAILED',
      message:
        /failed its canary query: \[INTERNAL\] stage 'llm': TensorRT failed to run.*rolled back: active set is setokim-tiny-seed1/,
    });
    t.same(await snapshot(root), before);
    await t.rejects(install(root, b3, { health: tensorRtCanaryTestDouble(NANO, { backend: 'onnxruntime-cpu' }) }).run, {
      code: 'HEALTH_CHECK_FAILED',
      message: /it ran on onnxruntime-cpu, not on tensorrt, which is to serve it: the engines did not load/,
    });
    t.same(await snapshot(root), before);
  },
);

t.test(
  'a stage with no ONNX graph and no engine for this target: ENGINE_MISSING, on TensorRT and on the CPU',
  async (t) => {
    const planOnly = await setWithId(f.sets[2]!, path.join(f.dir, 'plan-only'), 'setokim-tiny-plan-only');
    const m = JSON.parse(await readFile(path.join(planOnly, 'manifest.json'), 'utf8'));
    const bytes = Buffer.from('a plan built for some other board');
    await writeFile(path.join(planOnly, 'detokenizer.plan'), bytes);
    m.stages.detokenizer = {
      ...m.stages.detokenizer,
      file: 'detokenizer.plan',
      format: 'tensorrt',
      bytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
    };
    await writeFile(path.join(planOnly, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
    const bundle = await bundleOf(f, planOnly, 5, 'plan-only');
    const root = newStore();
    await install(root, b1).run;
    const before = await snapshot(root);
    const message =
      /stage 'detokenizer' of setokim-tiny-plan-only is a tensorrt file \(detokenizer\.plan\) with no ONNX graph to build from, and the bundle has no engines for it \(this device is orin-nano-8gb\/jp6\.2\/trt10\.3\)/;
    await t.rejects(install(root, bundle).run, { code: 'ENGINE_MISSING', message });
    t.same(await snapshot(root), before);
    const cpu = newStore();
    await t.rejects(
      installBundle({ device: testDevice, bundle, store: cpu, pubkey: f.pub, health: tensorRtCanaryTestDouble(NANO) }),
      { code: 'ENGINE_MISSING', message: /this device is x86_64\/none\/cpu/ },
    );

    // A stage file that is a plan for this very target (with its manifest) needs no engine.
    const ownPlan = await setWithId(planOnly, path.join(f.dir, 'own-plan'), 'setokim-tiny-own-plan');
    const built = await prebuiltEngines(f.sets[2]!, NANO, path.join(f.dir, 'own-plan-engines'), ['detokenizer']);
    await cp(path.join(built, 'detokenizer.fp32.plan'), path.join(ownPlan, 'detokenizer.plan'));
    await cp(path.join(built, 'detokenizer.fp32.plan.json'), path.join(ownPlan, 'detokenizer.plan.json'));
    const own = JSON.parse(await readFile(path.join(ownPlan, 'manifest.json'), 'utf8'));
    const planBytes = await readFile(path.join(ownPlan, 'detokenizer.plan'));
    const sha256 = createHash('sha256').update(planBytes).digest('hex');
    own.stages.detokenizer = { ...own.stages.detokenizer, bytes: planBytes.length, sha256 };
    await writeFile(path.join(ownPlan, 'manifest.json'), JSON.stringify(own, null, 2) + '\n');
    const ok = install(root, await bundleOf(f, ownPlan, 6, 'own-plan'));
    const r = await ok.run;
    t.notOk(ok.builder.started.includes('detokenizer'), 'the plan that is the stage file serves as it is');
    t.equal(r.engines?.backend, 'tensorrt');
  },
);
