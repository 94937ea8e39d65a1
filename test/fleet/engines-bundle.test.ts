/**
 * Bundles with prebuilt engines per target (format 3): create checks every engine against the set
 * and its target; a device unpacks only its own target's engines (measured: what the store holds
 * against what the bundle carries); prebuilt engines that lie about their target, or cannot run
 * on the device, are refused and the committed set keeps serving.
 */
import { createHash, sign } from 'node:crypto';
import { cp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { ModelStore } from '../../src/engine/modelset.js';
import {
  BUNDLE_ENGINES_VERSION,
  BUNDLE_FORMAT,
  createBundle,
  encodePrefix,
  engineGroupsOf,
  installBundle,
  keyIdOf,
  openBundle,
  parseBundleManifest,
  readRelease,
  signedBytes,
  verifyBundle,
} from '../../src/fleet/index.js';
import {
  EngineBuilderTestDouble,
  machineOf,
  prebuiltEngines,
  tensorRtCanaryTestDouble,
  testEnvironment,
} from './engine-doubles.js';
import { runCli } from '../helpers/cli.js';
import { fixture, noCanary, testCompatibility, testDevice } from './helpers.js';

const FIVE = [
  'orin-nano-8gb/jp6.2/trt10.3',
  'agx-orin-64gb/jp6.1/trt10.3',
  'orin-nx-16gb/jp5.1/trt8.5',
  'agx-thor-128gb/jp7.0/trt10.13',
  'x86_64-sm89/none/trt10.3',
];
const NANO = FIVE[0]!;

const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const set1 = f.sets[1]!;
const engineDirs: Record<string, string> = {};
for (const target of FIVE)
  engineDirs[target] = await prebuiltEngines(set1, target, path.join(f.dir, 'engines', target.replaceAll('/', '+')));

let n = 0;
const out = (name: string) => path.join(f.dir, `${name}-${n++}.bundle`);

async function bundleWithEngines(
  targets: readonly string[],
  release = 1,
  dirs = targets.map((x) => engineDirs[x]!),
): Promise<string> {
  const file = out(`r${release}`);
  await createBundle({
    models: set1,
    release,
    key: f.priv,
    out: file,
    compatibility: testCompatibility(),
    engines: dirs,
  });
  return file;
}

/** Bytes of the regular files under `dir`, each inode counted once (a hard link takes no space twice). */
async function bytesOnDisk(dir: string, seen = new Set<number>()): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await bytesOnDisk(p, seen);
    else if (e.isFile()) {
      const s = await stat(p);
      if (!seen.has(s.ino)) total += s.size;
      seen.add(s.ino);
    }
  }
  return total;
}

const sumSizes = (files: { size: number }[]) => files.reduce((a, x) => a + x.size, 0);
const stageCount = Object.keys(JSON.parse(await readFile(path.join(set1, 'manifest.json'), 'utf8')).stages).length;

t.test('a bundle for five targets: format 3, one group per target, verifies whole', async (t) => {
  const file = await bundleWithEngines(FIVE);
  const m = await verifyBundle(file, f.pub);
  t.equal(m.formatVersion, BUNDLE_ENGINES_VERSION);
  const groups = engineGroupsOf(m);
  t.same(
    groups.map((g) => g.target),
    FIVE,
  );
  for (const g of groups) {
    t.equal(g.files.length, 2 * stageCount, `${g.target}: a plan and its manifest per stage`);
    t.ok(g.files.every((x, i) => (i % 2 === 0 ? x.path.endsWith('.plan') : x.path === `${g.files[i - 1]!.path}.json`)));
  }
  t.notOk(
    m.files.some((x) => x.path.startsWith('engines/')),
    'no engine among the set files',
  );
});

t.test('a device unpacks only its target: the store holds the set plus one target, not five', async (t) => {
  const file = await bundleWithEngines(FIVE);
  const b = await openBundle(file, f.pub);
  const setBytes = sumSizes(b.manifest.files);
  const groups = engineGroupsOf(b.manifest);
  const nanoBytes = sumSizes(groups.find((g) => g.target === NANO)!.files);
  const allEngines = groups.reduce((a, g) => a + sumSizes(g.files), 0);
  t.equal(b.payloadBytes, setBytes + allEngines);

  const root = path.join(f.dir, 'store-nano');
  const builder = new EngineBuilderTestDouble();
  const r = await installBundle({
    device: testDevice,
    bundle: file,
    store: root,
    pubkey: f.pub,
    health: tensorRtCanaryTestDouble(NANO),
    engines: { env: testEnvironment(NANO, builder) },
  });
  t.same(builder.started, [], 'nothing built: every stage had its prebuilt engine');
  t.equal(r.engines?.prebuilt.length, stageCount);
  t.equal(r.engines?.backend, 'tensorrt');
  const written = await bytesOnDisk(root);
  const state = 64 * 1024; // journal-free store: release.json, active, lock
  t.ok(
    written <= setBytes + nanoBytes + state,
    `store ${written} bytes <= set ${setBytes} + this target's engines ${nanoBytes}`,
  );
  t.ok(written >= setBytes + nanoBytes, 'and holds them');
  t.ok(written < setBytes + 2 * nanoBytes, `the other four targets' ${allEngines - nanoBytes} bytes were not written`);
  t.comment(
    `bundle payload ${(b.payloadBytes / 2 ** 20).toFixed(1)} MiB (5 targets), store ${(written / 2 ** 20).toFixed(1)} MiB`,
  );
  const setEngines = (await readdir(path.join(root, 'setokim-tiny-seed1', 'engines'))).sort();
  t.equal(setEngines.length, 2 * stageCount);
  const m = JSON.parse(await readFile(path.join(root, 'setokim-tiny-seed1', 'engines', 'llm.fp32.plan.json'), 'utf8'));
  t.equal(m.target, NANO, "the set holds this target's engines");

  const cpu = path.join(f.dir, 'store-cpu');
  const rc = await installBundle({ device: testDevice, bundle: file, store: cpu, pubkey: f.pub, health: noCanary });
  t.equal(rc.engines?.backend, null, 'this machine (x86_64/none/cpu) serves on ONNX Runtime');
  t.equal((await bytesOnDisk(cpu)) <= setBytes + state, true, 'no engine of any target written on a CPU device');
  await t.rejects(stat(path.join(cpu, 'setokim-tiny-seed1', 'engines')), { code: 'ENOENT' });
});

t.test('create refuses engines that would be refused on the device, and writes nothing', async (t) => {
  const lying = path.join(f.dir, 'lying');
  await cp(engineDirs[NANO]!, lying, { recursive: true });
  const mp = path.join(lying, 'merger.fp32.plan.json');
  await writeFile(mp, JSON.stringify({ ...JSON.parse(await readFile(mp, 'utf8')), tensorrt: '8.6.1' }));
  const other = await prebuiltEngines(f.sets[2]!, NANO, path.join(f.dir, 'seed2-engines'), ['merger']);
  const untargeted = path.join(f.dir, 'untargeted');
  await cp(engineDirs[NANO]!, untargeted, { recursive: true });
  const up = path.join(untargeted, 'llm.fp32.plan.json');
  const { target: _t, ...old } = JSON.parse(await readFile(up, 'utf8'));
  await writeFile(up, JSON.stringify(old));
  const cases: Array<[string, string[], RegExp, string[]?]> = [
    [
      'a manifest that lies about its target',
      [lying],
      /merger\.fp32\.plan target runtime trt10\.3, but built with TensorRT 8\.6\.1 \(trt8\.6\)/,
    ],
    [
      'an engine of another export of the stage',
      [other],
      /does not belong to this set: built from merger\.onnx .* not from any file of stage 'merger'/,
    ],
    ['an engine without a target', [untargeted], /llm\.fp32\.plan the manifest names no target/],
    [
      'two directories of one target',
      [engineDirs[NANO]!, engineDirs[NANO]!],
      /are both for orin-nano-8gb\/jp6\.2\/trt10\.3/,
    ],
    [
      'a target no --target allows',
      [engineDirs[NANO]!],
      /which no --target \(agx-orin-\*\/jp6\.\*\/trt10\.3\) allows/,
      ['agx-orin-*/jp6.*/trt10.3'],
    ],
    ['no engines in the directory', [set1], /no <stage>\.<precision>\.plan/],
  ];
  for (const [what, dirs, message, targets] of cases) {
    const file = out('bad');
    const compatibility = testCompatibility(targets ? { targets } : {});
    await t.rejects(
      createBundle({ models: set1, release: 1, key: f.priv, out: file, compatibility, engines: dirs }),
      { code: 'BAD_ARGUMENT', message },
      what,
    );
    await t.rejects(stat(file), { code: 'ENOENT' }, `${what}: nothing written`);
  }
});

/** A format-3 bundle signed over whatever groups it is given, with none of create's checks (what a careless or hostile publisher with the key could ship). */
async function signedWithEngines(groups: Array<{ target: string; dir: string }>, release = 2): Promise<string> {
  const list = async (dir: string, names: string[]) =>
    Promise.all(
      names.map(async (p) => {
        const bytes = await readFile(path.join(dir, p));
        return { path: p, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), bytes };
      }),
    );
  const setNames = ['manifest.json', ...(await readdir(set1)).filter((x) => x !== 'manifest.json').sort()];
  const files = await list(set1, setNames);
  const engines = await Promise.all(
    groups.map(async (g) => ({ target: g.target, files: await list(g.dir, (await readdir(g.dir)).sort()) })),
  );
  const strip = (xs: typeof files) => xs.map(({ path: p, size, sha256 }) => ({ path: p, size, sha256 }));
  const manifest = parseBundleManifest(
    {
      format: BUNDLE_FORMAT,
      formatVersion: 3,
      modelSetId: 'setokim-tiny-seed1',
      release,
      createdAt: new Date().toISOString(),
      keyId: keyIdOf(f.pub),
      compatibility: testCompatibility(),
      files: strip(files),
      engines: engines.map((g) => ({ target: g.target, files: strip(g.files) })),
    },
    'test',
  );
  const file = out('signed');
  const all = [...files, ...engines.flatMap((g) => g.files)].map((x) => x.bytes);
  await writeFile(file, Buffer.concat([encodePrefix(manifest, sign(null, signedBytes(manifest), f.priv)), ...all]));
  return file;
}

t.test(
  'the device refuses prebuilt engines that lie about their target or cannot run on it; the committed set keeps serving',
  async (t) => {
    const root = path.join(f.dir, 'store-refuse');
    const seed2 = out('seed2');
    await createBundle({ models: f.sets[2]!, release: 1, key: f.priv, out: seed2, compatibility: testCompatibility() });
    await installBundle({
      device: testDevice,
      bundle: seed2,
      store: root,
      pubkey: f.pub,
      health: tensorRtCanaryTestDouble(NANO),
      engines: { env: testEnvironment(NANO, new EngineBuilderTestDouble()) },
    });
    const before = { active: await new ModelStore(root).active(), release: (await readRelease(root))?.release };

    const smLie = path.join(f.dir, 'sm-lie');
    await cp(engineDirs[NANO]!, smLie, { recursive: true });
    const mp = path.join(smLie, 'encoder.fp32.plan.json');
    await writeFile(mp, JSON.stringify({ ...JSON.parse(await readFile(mp, 'utf8')), sm: '8.9', gpu: 'NVIDIA L4' }));
    const shippedAs = await signedWithEngines([{ target: NANO, dir: engineDirs['agx-orin-64gb/jp6.1/trt10.3']! }]);
    const cases: Array<[string, string, RegExp, ReturnType<typeof machineOf>?]> = [
      [
        'an engine whose manifest contradicts its target',
        await signedWithEngines([{ target: NANO, dir: smLie }]),
        /prebuilt engine encoder\.fp32\.plan for orin-nano-8gb\/jp6\.2\/trt10\.3 lies about its target: module orin-nano-8gb has SM 8\.7, but built for SM 8\.9/,
      ],
      [
        'engines of another target shipped as this one',
        shippedAs,
        /lies about its target: its manifest says target agx-orin-64gb\/jp6\.1\/trt10\.3, it is shipped as orin-nano-8gb\/jp6\.2\/trt10\.3/,
      ],
      [
        'a device whose TensorRT moved on within the target',
        await signedWithEngines([{ target: NANO, dir: engineDirs[NANO]! }]),
        /cannot run on this device: built with TensorRT 10\.3\.0, this machine has TensorRT 10\.3\.1/,
        { ...machineOf(NANO), tensorrt: '10.3.1' },
      ],
    ];
    for (const [what, bundle, message, machine] of cases) {
      const builder = new EngineBuilderTestDouble();
      const env = { ...testEnvironment(NANO, builder), ...(machine ? { machine } : {}) };
      await t.rejects(
        installBundle({
          device: testDevice,
          bundle,
          store: root,
          pubkey: f.pub,
          health: tensorRtCanaryTestDouble(NANO),
          engines: { env },
        }),
        { code: 'ENGINE_INCOMPATIBLE', message },
        what,
      );
      t.same(
        { active: await new ModelStore(root).active(), release: (await readRelease(root))?.release },
        before,
        `${what}: the committed set serves`,
      );
      t.same(builder.started, [], `${what}: nothing was built`);
      t.same(await readdir(path.join(root, '.fleet', 'staging')).catch(() => []), [], 'no staging left');
    }
  },
);

t.test(
  'the manifest schema: a group for a target compatibility does not allow, a set file under engines/',
  async (t) => {
    const file = await bundleWithEngines([NANO]);
    const b = await openBundle(file, f.pub);
    const m = structuredClone(b.manifest) as any;
    t.throws(
      () =>
        parseBundleManifest(
          { ...m, compatibility: { ...m.compatibility, targets: ['agx-orin-*/jp6.*/trt10.3'] } },
          'x',
        ),
      {
        code: 'BUNDLE_INVALID',
        message:
          /engines for orin-nano-8gb\/jp6\.2\/trt10\.3, which compatibility\.targets \(agx-orin-\*\/jp6\.\*\/trt10\.3\) does not allow/,
      },
    );
    t.throws(
      () =>
        parseBundleManifest(
          { ...m, files: [...m.files, { path: 'engines/llm.fp32.plan', size: 1, sha256: 'a'.repeat(64) }] },
          'x',
        ),
      { code: 'BUNDLE_INVALID', message: /engines\/llm\.fp32\.plan: engines travel in engine groups/ },
    );
    t.throws(
      () => parseBundleManifest({ ...m, engines: [{ ...m.engines[0], files: m.engines[0].files.slice(1) }] }, 'x'),
      { code: 'BUNDLE_INVALID', message: /comes without/ },
    );
    t.throws(() => parseBundleManifest({ ...m, engines: [m.engines[0], m.engines[0]] }, 'x'), {
      code: 'BUNDLE_INVALID',
      message: /a target has two engine groups/,
    });
  },
);

t.test(
  'CLI: bundle create --engines, verify names the targets, install on this CPU machine unpacks none',
  async (t) => {
    const withOwn = path.join(f.dir, 'set-with-own-engines');
    await cp(set1, withOwn, { recursive: true });
    await cp(engineDirs[NANO]!, path.join(withOwn, 'engines'), { recursive: true });
    const file = path.join(f.dir, 'cli.bundle');
    const c = await runCli([
      'bundle',
      'create',
      '--models',
      withOwn,
      '--release',
      '1',
      '--key',
      f.privPath,
      '--out',
      file,
      '--fleet',
      'test',
      '--target',
      '*',
      '--expires',
      '1d',
      '--engines',
      engineDirs[NANO]!,
      engineDirs['agx-orin-64gb/jp6.1/trt10.3']!,
      '--no-progress',
    ]);
    t.equal(c.status, 0, c.err);
    t.match(c.err, /note: .*set-with-own-engines\/engines is left out: engines travel per target \(--engines DIR\)/);
    const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const groups = esc(`prebuilt engines for ${NANO} (${stageCount}), agx-orin-64gb/jp6.1/trt10.3 (${stageCount})`);
    t.match(
      c.out,
      new RegExp(`cli\\.bundle: setokim-tiny-seed1 release 1, .*; for fleet test, target \\*, .*${groups}`),
    );
    const v = await runCli(['bundle', 'verify', file, '--pubkey', f.pubPath, '--no-progress']);
    t.equal(v.status, 0, v.err);
    t.match(v.out, new RegExp(`OK: .*${groups}`));
    const root = path.join(f.dir, 'store-cli');
    const i = await runCli([
      'bundle',
      'install',
      file,
      '--store',
      root,
      '--fleet',
      'test',
      '--pubkey',
      f.pubPath,
      '--no-progress',
    ]);
    t.equal(i.status, 0, i.err);
    t.match(i.out, /installed setokim-tiny-seed1 release 1 .*canary answered in \d+ ms on onnxruntime-cpu/);
    t.notMatch(i.err, /building-engines/, 'no engine step on x86_64/none/cpu');
    await t.rejects(stat(path.join(root, 'setokim-tiny-seed1', 'engines')), { code: 'ENOENT' });
    const bad = await runCli([
      'bundle',
      'create',
      '--models',
      set1,
      '--release',
      '2',
      '--key',
      f.privPath,
      '--out',
      path.join(f.dir, 'x.bundle'),
      '--fleet',
      'test',
      '--target',
      'agx-orin-*/*/*',
      '--expires',
      '1d',
      '--engines',
      engineDirs[NANO]!,
    ]);
    t.equal(bad.status, 2);
    t.match(
      bad.err,
      /\[BAD_ARGUMENT\]: --engines .*: engines for orin-nano-8gb\/jp6\.2\/trt10\.3, which no --target \(agx-orin-\*\/\*\/\*\) allows/,
    );
  },
);
