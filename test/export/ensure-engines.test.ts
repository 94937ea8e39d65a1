/**
 * `setokim export ensure-engines` (setokim-engines.service's command): here, without TensorRT, it
 * builds nothing, says why and exits 0, for a set and for a store's active set; which stages it
 * rebuilds is checked with a TensorRtBuilderTestDouble (it writes what buildEngine writes, with a
 * placeholder plan: TensorRT itself cannot run here) across first boot, a second boot, a JetPack
 * upgrade, a damaged manifest and a re-exported stage.
 */
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { profileFromSignature, stageDimProfiles, type BuildEngineOptions } from '../../src/engine/engine-builder.js';
import {
  ENGINE_MANIFEST_FORMAT,
  engineManifestPath,
  type EngineManifest,
  type MachineInfo,
} from '../../src/engine/engine-manifest.js';
import { sha256File } from '../../src/engine/manifest.js';
import { ModelStore, openModelSet } from '../../src/engine/modelset.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { synthesize } from '../../tools/export/synth.js';
import { checkEngines, ensureEngines } from '../../tools/export/ensure-engines.js';
import { runCli } from '../helpers/cli.js';

const dir = t.testdir();
const setDir = join(dir, 'set');
await synthesize({ config: 'tiny', seed: 5, out: setDir });
const reason = tensorrtUnavailableReason();

t.test(
  'no TensorRT here: builds nothing, says why, exits 0 (a set, a store, an empty store)',
  { skip: !reason && 'TensorRT is available here' },
  async (t) => {
    const id = (await openModelSet(setDir, { verify: false })).id;
    const r = await runCli(['export', 'ensure-engines', '--model', setDir]);
    t.equal(r.status, 0, r.err);
    t.equal(
      r.out,
      `ensure-engines: built nothing for ${id}: TensorRT cannot build engines here: ${reason}. ` +
        'The agent serves the set on ONNX Runtime.\n',
    );
    t.notOk(existsSync(join(setDir, 'engines')), 'nothing written');

    const store = join(dir, 'store');
    const empty = await runCli(['export', 'ensure-engines', '--store', store]);
    t.equal(empty.status, 0);
    t.equal(
      empty.out,
      `ensure-engines: built nothing: ${store} has no active model set yet (install a bundle first)\n`,
    );
    await mkdir(store, { recursive: true });
    await cp(setDir, join(store, id), { recursive: true });
    await new ModelStore(store).activate(id);
    const active = await runCli(['export', 'ensure-engines', '--store', store]);
    t.equal(active.status, 0);
    t.match(active.out, new RegExp(`^ensure-engines: built nothing for ${id}: TensorRT cannot build engines here: `));
  },
);

t.test('--store or --model, one of them', async (t) => {
  for (const args of [[], ['--store', 'a', '--model', 'b']]) {
    const r = await runCli(['export', 'ensure-engines', ...args]);
    t.equal(r.status, 2);
    t.match(
      r.err,
      /\[BAD_ARGUMENT\]: export ensure-engines: .*give --store \(its active set\) or --model, one of them/,
    );
  }
});

const orin = (tensorrt: string): MachineInfo => ({
  tensorrtCompiled: true,
  tensorrt,
  cuda: '12.6',
  gpus: [{ index: 0, name: 'Orin', sm: '8.7' }],
  l4t: '36.4.3',
});

/** Writes what buildEngine writes, for `machine`, with a placeholder where TensorRT's plan would be. */
class TensorRtBuilderTestDouble {
  readonly built: string[] = [];
  constructor(private readonly machine: () => MachineInfo) {}
  build = async (o: BuildEngineOptions): Promise<EngineManifest> => {
    await mkdir(join(o.plan, '..'), { recursive: true });
    await writeFile(o.plan, `placeholder plan for ${o.stage}\n`);
    const m = this.machine();
    const manifest: EngineManifest = {
      format: ENGINE_MANIFEST_FORMAT,
      stage: o.stage,
      plan: o.plan.split('/').at(-1)!,
      sha256: await sha256File(o.plan),
      bytes: (await readFile(o.plan)).length,
      source: { file: o.onnx.split('/').at(-1)!, sha256: await sha256File(o.onnx) },
      tensorrt: m.tensorrt!,
      cuda: m.cuda!,
      sm: m.gpus[0]!.sm,
      gpu: m.gpus[0]!.name,
      jetpack: null,
      l4t: m.l4t,
      precision: o.precision,
      stronglyTyped: true,
      versionCompatible: false,
      profiles: o.profiles!.map((p) => profileFromSignature(o.signature, p)),
      io: o.signature,
      builder: { workspaceBytes: 1 << 30, timingCache: !!o.timingCache, seconds: 0.5 },
      builtAt: new Date().toISOString(),
    };
    await writeFile(engineManifestPath(o.plan), JSON.stringify(manifest));
    this.built.push(o.stage);
    return manifest;
  };
}

t.test('which engines are built: first boot, second boot, JetPack upgrade, damaged manifest, new export', async (t) => {
  const copy = join(dir, 'set-engines');
  await cp(setDir, copy, { recursive: true });
  const set = await openModelSet(copy, { verify: false });
  const stages = checkEngines(set, orin('10.3.0')).map((c) => c.stage);
  t.same(
    stages,
    Object.keys(set.manifest.stages).filter((s) => stages.includes(s as never)),
    'every stage of the set',
  );
  t.ok(stages.length >= 5, `${stages.length} stages`);
  let machine = orin('10.3.0');
  const builder = new TensorRtBuilderTestDouble(() => machine);
  const logs: string[] = [];
  const run = () =>
    ensureEngines({
      set,
      unavailable: undefined,
      machine: () => machine,
      build: builder.build,
      log: (l) => logs.push(l),
    });

  const first = await run();
  t.same(first, { built: stages, kept: [] }, 'first boot: every engine');
  t.ok(
    logs.every((l) =>
      /: (building \S+\.plan \(no engine yet\)|built in 0\.5 s \(TensorRT 10\.3\.0, SM 8\.7\))$/.test(l),
    ),
    logs.join('\n'),
  );
  const encoder = checkEngines(set, machine).find((c) => c.stage === 'encoder')!;
  t.same(
    JSON.parse(await readFile(engineManifestPath(encoder.plan), 'utf8')).profiles.length,
    stageDimProfiles('encoder', set.architecture).length,
  );

  t.same(await run(), { built: [], kept: stages }, 'second boot: nothing to do');

  machine = orin('10.7.0');
  t.match(checkEngines(set, machine)[0]!.rebuild, /built with TensorRT 10\.3\.0, this machine has TensorRT 10\.7\.0/);
  t.same(await run(), { built: stages, kept: [] }, 'after a JetPack upgrade: every engine again');

  await writeFile(engineManifestPath(encoder.plan), '{"format":');
  const m = JSON.parse(
    await readFile(engineManifestPath(checkEngines(set, machine).find((c) => c.stage === 'llm')!.plan), 'utf8'),
  ) as EngineManifest;
  m.source.sha256 = '0'.repeat(64);
  await writeFile(
    engineManifestPath(checkEngines(set, machine).find((c) => c.stage === 'llm')!.plan),
    JSON.stringify(m),
  );
  const why = Object.fromEntries(checkEngines(set, machine).map((c) => [c.stage, c.rebuild]));
  t.match(why.encoder, /is not JSON/);
  t.match(why.llm, /built from another llm\.onnx \(sha256 000000000000, the set has [0-9a-f]{12}\)/);
  builder.built.length = 0;
  const fixed = await run();
  t.same([...fixed.built].sort(), ['encoder', 'llm']);
  t.equal(fixed.kept.length, stages.length - 2);

  const skipped = await ensureEngines({ set, unavailable: 'no GPU is present', build: builder.build, log: () => {} });
  t.same(skipped, { built: [], kept: [], skipped: 'TensorRT cannot build engines here: no GPU is present' });
});
