/**
 * Before an engine is built: the preflight refuses with ENGINE_BUILD_RESOURCES and the numbers when
 * an Orin's /proc/meminfo (a fake root with a real board's fields) shows too little memory or
 * CMA for the builder's peak, or the disk too little room for the plans; nothing is built and the
 * committed set stays. And while engines build, the old set keeps serving: a real query on the
 * set the store serves answers in the middle of a build.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { STAGES } from '../../src/engine/contract.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { installBundle, readRelease } from '../../src/fleet/index.js';
import { preflightBuilds } from '../../src/fleet/engine-env.js';
import { createPipeline } from '../../src/pipeline/index.js';
import { EngineBuilderTestDouble, tensorRtCanaryTestDouble, testEnvironment } from './engine-doubles.js';
import { bundleOf, fixture, testDevice } from './helpers.js';

const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
const MiB = 2 ** 20;
const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const set2 = JSON.parse(await readFile(path.join(f.sets[2]!, 'manifest.json'), 'utf8'));
const llmBytes: number = set2.stages.llm.bytes;
const biggest = STAGES.filter((s) => set2.stages[s]).reduce(
  (a, s) => (set2.stages[s].bytes > set2.stages[a].bytes ? s : a),
  'llm' as string,
);

/** A fake root whose /proc/meminfo is an Orin Nano's, with these MemAvailable and CmaFree (kB). */
function orinRoot(name: string, memAvailableKb: number, cmaFreeKb: number): string {
  const root = path.join(f.dir, name);
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(
    path.join(root, 'proc', 'meminfo'),
    `MemTotal:        7802008 kB\nMemFree:         ${memAvailableKb} kB\nMemAvailable:    ${memAvailableKb} kB\nCmaTotal:         262144 kB\nCmaFree:          ${cmaFreeKb} kB\n`,
  );
  return root;
}

let n = 0;
async function storeWith1(): Promise<string> {
  const root = path.join(f.dir, `store${n++}`);
  await installBundle({
    device: testDevice,
    bundle: b1,
    store: root,
    pubkey: f.pub,
    health: tensorRtCanaryTestDouble(NANO),
    engines: { env: testEnvironment(NANO, new EngineBuilderTestDouble()) },
  });
  return root;
}
const state = async (root: string) => ({
  active: await new ModelStore(root).active(),
  release: (await readRelease(root))?.release,
});
const mib = (x: number) => (x / MiB).toFixed(0);

t.test('too little memory or CMA on an Orin: refused with the numbers, nothing built, release 1 serves', async (t) => {
  t.equal(biggest, 'llm', 'the LLM is the largest stage of the tiny set');
  const root = await storeWith1();
  const before = await state(root);
  const host = 4 * llmBytes + 512 * MiB + 1024 * MiB;
  const lowMem = new EngineBuilderTestDouble();
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: b2,
      store: root,
      pubkey: f.pub,
      health: tensorRtCanaryTestDouble(NANO),
      engines: { env: testEnvironment(NANO, lowMem, orinRoot('low-mem', 1024 * 1024, 200_000)) },
    }),
    {
      code: 'ENGINE_BUILD_RESOURCES',
      message: new RegExp(
        `host memory: building llm needs about ${mib(host)} MiB \\(4 x ${mib(llmBytes)} MiB of weights, the builder and the 1024 MiB workspace\\), MemAvailable is 1024 MiB`,
      ),
    },
  );
  t.same(lowMem.started, [], 'no build started');
  t.same(await state(root), before);

  const lmHead = set2.architecture.llm.vocab * set2.architecture.llm.hidden * 4;
  const lowCma = new EngineBuilderTestDouble();
  await t.rejects(
    installBundle({
      device: testDevice,
      bundle: b2,
      store: root,
      pubkey: f.pub,
      health: tensorRtCanaryTestDouble(NANO),
      engines: { env: testEnvironment(NANO, lowCma, orinRoot('low-cma', 6_000_000, 0)) },
    }),
    {
      code: 'ENGINE_BUILD_RESOURCES',
      message: new RegExp(
        `CMA: llm's largest tensor needs ${mib(lmHead)} MiB contiguous, CmaFree is 0 MiB.*publish prebuilt engines for ${NANO.replaceAll('.', '\\.')}`,
      ),
    },
  );
  t.same(lowCma.started, []);
  t.same(await state(root), before);

  // A smaller builder workspace fits the same 1 GiB: the estimate is what decides.
  const fits = new EngineBuilderTestDouble();
  const env = testEnvironment(NANO, fits, orinRoot('fits', 1024 * 1024, 200_000));
  const r = await installBundle({
    device: testDevice,
    bundle: b2,
    store: root,
    pubkey: f.pub,
    health: tensorRtCanaryTestDouble(NANO),
    engines: { env, workspaceBytes: 64 * MiB },
  });
  t.equal(r.engines?.built.length, fits.started.length);
  t.ok(fits.started.length > 0, 'built with a 64 MiB workspace in 1 GiB');
});

t.test('disk: the plans must fit with the reserve; a discrete GPU does not count the workspace', async (t) => {
  const set = set2 as { architecture: Parameters<typeof preflightBuilds>[1] };
  const builds = [
    { stage: 'llm' as const, weightBytes: 100 * MiB, precision: 'fp16' },
    { stage: 'encoder' as const, weightBytes: 60 * MiB, precision: 'fp16' },
  ];
  const env = (
    free: { memAvailableBytes: number; cmaFreeBytes: number | null; diskFreeBytes: number },
    jetson = true,
  ) => ({ ...testEnvironment(NANO, new EngineBuilderTestDouble()), jetson, resources: async () => free });
  const plans = Math.ceil(1.25 * 100 * MiB) + 16 * MiB + Math.ceil(1.25 * 60 * MiB) + 16 * MiB + 64 * MiB;
  await t.rejects(
    preflightBuilds(
      builds,
      set.architecture,
      env({ memAvailableBytes: 64 * 2 ** 30, cmaFreeBytes: null, diskFreeBytes: 100 * MiB }),
      { dir: '/store/.fleet/engines', workspaceBytes: 1024 * MiB, reserveBytes: 64 * MiB },
    ),
    {
      code: 'ENGINE_BUILD_RESOURCES',
      message: new RegExp(
        `disk: the plans need about ${mib(plans)} MiB with the reserve, /store/\\.fleet/engines has 100 MiB free`,
      ),
    },
  );
  const est = await preflightBuilds(
    builds,
    set.architecture,
    env({ memAvailableBytes: 1000 * MiB, cmaFreeBytes: null, diskFreeBytes: 10 * 2 ** 30 }, false),
    { dir: '/d', workspaceBytes: 1024 * MiB, reserveBytes: 0 },
  );
  t.equal(est.get('llm')!.hostBytes, 400 * MiB + 512 * MiB, 'discrete GPU: 912 MiB fits 1000 MiB');
  await t.rejects(
    preflightBuilds(
      builds,
      set.architecture,
      env({ memAvailableBytes: 1000 * MiB, cmaFreeBytes: null, diskFreeBytes: 10 * 2 ** 30 }),
      { dir: '/d', workspaceBytes: 1024 * MiB, reserveBytes: 0 },
    ),
    { code: 'ENGINE_BUILD_RESOURCES', message: /building llm needs about 1936 MiB/ },
    'on a Jetson the workspace comes out of the same memory',
  );
  t.same(
    [
      ...(await preflightBuilds(
        [],
        set.architecture,
        env({ memAvailableBytes: 0, cmaFreeBytes: 0, diskFreeBytes: 0 }),
        { dir: '/d', workspaceBytes: 0, reserveBytes: 0 },
      )),
    ],
    [],
    'nothing to build: nothing to check',
  );
});

t.test('while engines build, the old set keeps serving: a real query on release 1 answers mid-build', async (t) => {
  const root = await storeWith1();
  const serving = await createPipeline({ modelsDir: new ModelStore(root).dirOf('setokim-tiny-seed1'), maxTokens: 4 }); // ONNX Runtime here
  t.teardown(() => serving.close());
  const during: Array<{ active: string | null; tokens: number }> = [];
  const image = await gradient();
  const builder = new EngineBuilderTestDouble({
    onStep: async (stage, step) => {
      if (stage !== 'merger' || step !== 2) return;
      let tokens = 0;
      for await (const e of serving.run({
        id: `mid-build`,
        task: 'describe',
        image,
        generation: { maxTokens: 4, temperature: 0 },
      })) {
        if (e.type === 'done') tokens = e.generatedTokens;
        if (e.type === 'error') throw new Error(`${e.code}: ${e.message}`);
      }
      during.push({ active: await new ModelStore(root).active(), tokens });
    },
  });
  await installBundle({
    device: testDevice,
    bundle: b2,
    store: root,
    pubkey: f.pub,
    health: tensorRtCanaryTestDouble(NANO),
    engines: { env: testEnvironment(NANO, builder) },
  });
  t.equal(during.length, 1, 'a query ran while the merger engine was being built');
  t.same(during[0], { active: 'setokim-tiny-seed1', tokens: during[0]!.tokens });
  t.ok(during[0]!.tokens >= 1, `release 1 answered (${during[0]!.tokens} tokens) mid-build`);
  t.equal(await new ModelStore(root).active(), 'setokim-tiny-seed2', 'and release 2 took over after');
});

async function gradient(): Promise<Uint8Array> {
  const sharp = (await import('sharp')).default;
  const w = 64;
  const px = Buffer.alloc(w * w * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 7) % 256;
  return new Uint8Array(
    await sharp(px, { raw: { width: w, height: w, channels: 3 } })
      .png()
      .toBuffer(),
  );
}
