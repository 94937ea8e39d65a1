/**
 * Update jobs on a device with engines to build (an Orin Nano target, EngineBuilderTestDouble where
 * TensorRT would build): the job's states include `building-engines`, with progress per stage
 * (engines done of engines to build, the stage); a build that fails ends the job `failed` with
 * ENGINE_BUILD_FAILED and no rollback to report (the new set was never active); the job's time
 * limit cancels a build under way.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { STAGES } from '../../src/engine/contract.js';
import { sha256File } from '../../src/engine/manifest.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { UpdateHandler, UpdateStateSchema, type UpdateEvent } from '../../src/fleet/index.js';
import {
  EngineBuilderTestDouble,
  tensorRtCanaryTestDouble,
  testEnvironment,
  type BuilderDoubleOptions,
} from './engine-doubles.js';
import { bundleOf, fixture, testDevice } from './helpers.js';

const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
const f = await fixture([1]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const job = async (jobId: string) => ({ jobId, url: pathToFileURL(b1).href, sha256: await sha256File(b1) });
const statesOf = (events: UpdateEvent[]) => events.map((e) => e.state).filter((x, i, a) => x !== a[i - 1]);

function handler(store: string, builder: BuilderDoubleOptions = {}, jobTimeoutMs?: number) {
  const double = new EngineBuilderTestDouble(builder);
  const steps: string[] = [];
  const h = new UpdateHandler({
    binding: { device: testDevice },
    store,
    pubkey: f.pub,
    health: tensorRtCanaryTestDouble(NANO),
    progressIntervalMs: 0,
    engines: { env: testEnvironment(NANO, double) },
    onInstallStep: (s) => void steps.push(s),
    ...(jobTimeoutMs ? { jobTimeoutMs } : {}),
  });
  return { h, double, steps };
}

t.test(
  'a job that builds engines: building-engines with progress per stage, then activating, health, committed',
  async (t) => {
    const { h, double, steps } = handler(path.join(f.dir, 'store-ok'));
    const events: UpdateEvent[] = [];
    const r = await h.run(await job('j1'), (e) => events.push(e), 'local');
    t.same(statesOf(events), [
      'downloading',
      'verifying',
      'installing',
      'building-engines',
      'activating',
      'health',
      'committed',
    ]);
    t.ok(steps.includes('building-engines') && steps.includes('engines-ready'), 'the agent hook saw the engine step');
    const building = events.filter((e) => e.state === 'building-engines' && e.stage);
    const count = double.built.length;
    t.ok(count >= 4);
    t.same(
      [...new Set(building.map((e) => e.stage))],
      STAGES.filter((s) => double.built.includes(s)),
      'progress names each stage, in order',
    );
    t.ok(
      building.every((e) => e.total === count && e.done! >= 0 && e.done! <= count),
      `done counts engines of ${count}`,
    );
    t.match(building.at(-1), { done: count, total: count }, 'the last progress says all are built');
    t.same(
      events.filter((e) => !UpdateStateSchema.safeParse(e).success),
      [],
      'every state is a valid state message',
    );
    t.equal(r.engines?.backend, 'tensorrt');
    t.equal(await new ModelStore(path.join(f.dir, 'store-ok')).active(), 'setokim-tiny-seed1');
  },
);

t.test(
  'a build that fails: failed ENGINE_BUILD_FAILED after building-engines, nothing rolled back (never active)',
  async (t) => {
    const store = path.join(f.dir, 'store-fail');
    const { h } = handler(store, { failAt: 'merger' });
    const events: UpdateEvent[] = [];
    await t.rejects(
      h.run(await job('j2'), (e) => events.push(e), 'local'),
      { code: 'ENGINE_BUILD_FAILED' },
    );
    t.same(statesOf(events), ['downloading', 'verifying', 'installing', 'building-engines', 'failed']);
    t.match(events.at(-1), {
      state: 'failed',
      code: 'ENGINE_BUILD_FAILED',
      message: 'TensorRT could not build an engine from a stage graph on this device',
    });
    t.equal(await new ModelStore(store).active(), null, 'nothing active: this was the first install');
  },
);

t.test("the job's time limit cancels a build under way: failed UPDATE_TIMED_OUT", async (t) => {
  const store = path.join(f.dir, 'store-deadline');
  const { h, double } = handler(store, { hangAt: 'llm' }, 4000);
  const events: UpdateEvent[] = [];
  await t.rejects(
    h.run(await job('j3'), (e) => events.push(e), 'local'),
    { code: 'UPDATE_TIMED_OUT' },
  );
  t.equal(statesOf(events).at(-2), 'building-engines');
  t.match(events.at(-1), { state: 'failed', code: 'UPDATE_TIMED_OUT' });
  t.notOk(double.built.includes('llm'), 'the hung llm build was cancelled, not finished');
  t.equal(await new ModelStore(store).active(), null);
});
