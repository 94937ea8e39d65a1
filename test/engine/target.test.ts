/**
 * Targets: detection from fake roots that hold what real Jetsons show (test/engine/fixtures/targets),
 * the L4T -> JetPack table, the fallbacks, pattern matching, and this machine's own target.
 */
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Capabilities } from '../../src/engine/native.js';
import {
  describeTarget,
  detectTarget,
  jetpackOf,
  jetsonModule,
  matchingPatterns,
  matchTarget,
  parseCompatible,
  parseNvTegraRelease,
  TargetId,
  TargetPattern,
} from '../../src/engine/target.js';

const root = (name: string) => fileURLToPath(new URL(`./fixtures/targets/${name}`, import.meta.url));

/** Capabilities as the addon reports them: TensorRT compiled in and present, one GPU (or none). */
function caps(trt: string | null, sm: string | null): Capabilities {
  return {
    compiled: {
      cuda: sm !== null,
      cudaVersion: sm ? '12.6' : null,
      cudaArchitectures: '87',
      tensorrt: trt !== null,
      tensorrtVersion: trt,
      simd: 'neon',
    },
    present: {
      gpus: sm ? [{ index: 0, name: 'Orin', computeCapability: sm, totalMemoryBytes: 7.4 * 2 ** 30 }] : [],
      cudaDriverVersion: sm ? 12060 : 0,
      gpuProbeError: sm ? null : 'no CUDA-capable device is detected',
      tensorrtLibraryVersion: trt,
    },
  };
}

t.test('real nv_tegra_release first lines give the L4T release, and the table the JetPack', async (t) => {
  t.equal(
    parseNvTegraRelease(
      '# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n',
    ),
    '36.4.3',
  );
  t.equal(
    parseNvTegraRelease(
      '# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n',
    ),
    '35.4.1',
  );
  t.equal(
    parseNvTegraRelease(
      '# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022',
    ),
    '32.7.1',
  );
  t.equal(parseNvTegraRelease('TARGET_USERSPACE_LIB_DIR=nvidia\n'), null);
  t.equal(parseNvTegraRelease(''), null);
  t.same(['35.4.1', '35.6.1', '36.3.0', '36.4.0', '36.4.3', '36.4.4', '36.5.0'].map(jetpackOf), [
    '5.1.2',
    '5.1.5',
    '6.0',
    '6.1',
    '6.2',
    '6.2.1',
    null,
  ]);
});

t.test('module names: the SKU in compatible wins; else the model family and the memory; else the chip', async (t) => {
  t.same(parseCompatible('nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0'), [
    'nvidia,p3768-0000+p3767-0005',
    'nvidia,p3767-0005',
    'nvidia,tegra234',
  ]);
  const c = (sku: string) => [`nvidia,p3768-0000+${sku}`, 'nvidia,tegra234'];
  t.same(
    ['p3767-0000', 'p3767-0001', 'p3767-0003', 'p3767-0004', 'p3767-0005'].map((s) => jetsonModule('', c(s), null)),
    ['orin-nx-16gb', 'orin-nx-8gb', 'orin-nano-8gb', 'orin-nano-4gb', 'orin-nano-8gb'],
  );
  t.equal(
    jetsonModule('NVIDIA Jetson AGX Orin Developer Kit', ['nvidia,p3737-0000+p3701-0005', 'nvidia,tegra234'], null),
    'agx-orin-64gb',
  );
  // The devkit carrier's model string names no module size; the SKU decides, not the words.
  t.equal(
    jetsonModule('NVIDIA Jetson Orin NX Engineering Reference Developer Kit', c('p3767-0003'), null),
    'orin-nano-8gb',
  );
  t.equal(
    jetsonModule('Custom board with Jetson Orin NX', ['acme,board', 'nvidia,tegra234'], 7.6 * 2 ** 30),
    'orin-nx-8gb',
  );
  t.equal(jetsonModule('Custom board with Jetson AGX Orin', ['nvidia,tegra234'], 61 * 2 ** 30), 'agx-orin-64gb');
  t.equal(jetsonModule('Custom board with Jetson AGX Orin', ['nvidia,tegra234'], null), 'agx-orin');
  t.equal(jetsonModule('Some Tegra board', ['nvidia,tegra234'], 8 * 2 ** 30), 'jetson-tegra234');
});

const jetsons: Array<
  [string, Capabilities | null, string, Partial<{ l4t: string | null; jetpack: string | null; sm: string | null }>]
> = [
  [
    'orin-nano-devkit-jp6.2-super',
    caps('10.3.0', '8.7'),
    'orin-nano-8gb/jp6.2/trt10.3',
    { l4t: '36.4.3', jetpack: '6.2', sm: '8.7' },
  ],
  ['orin-nano-devkit-jp5.1.2', caps('8.5.2', '8.7'), 'orin-nano-8gb/jp5.1/trt8.5', { l4t: '35.4.1', jetpack: '5.1.2' }],
  ['orin-nx-16gb-jp6.0', caps('8.6.2', '8.7'), 'orin-nx-16gb/jp6.0/trt8.6', { l4t: '36.3.0', jetpack: '6.0' }],
  ['orin-nx-8gb-jp5.1.1', caps('8.5.2', '8.7'), 'orin-nx-8gb/jp5.1/trt8.5', { l4t: '35.3.1', jetpack: '5.1.1' }],
  ['agx-orin-64gb-jp6.1', caps('10.3.0', '8.7'), 'agx-orin-64gb/jp6.1/trt10.3', { l4t: '36.4.0', jetpack: '6.1' }],
  // No addon (or one without TensorRT): the cpu runtime; the SM from the chip.
  ['agx-orin-32gb-jp5.1.2', null, 'agx-orin-32gb/jp5.1/cpu', { l4t: '35.4.1', jetpack: '5.1.2', sm: '8.7' }],
  // An unknown SKU on a custom carrier: the family from the model, 4 GB from MemTotal; an L4T release the table does not know.
  [
    'custom-carrier-orin-nano-4gb-l4t36.5',
    caps('10.7.0', '8.7'),
    'orin-nano-4gb/l4t36.5/trt10.7',
    { l4t: '36.5.0', jetpack: null },
  ],
];

for (const [name, c, id, want] of jetsons) {
  t.test(`detects ${name} as ${id}`, async (t) => {
    const target = await detectTarget({ root: root(name), capabilities: c, arch: 'arm64' });
    t.equal(target.id, id);
    t.equal(target.arch, 'aarch64');
    t.equal(`${target.module}/${target.platform}/${target.runtime}`, id);
    t.ok(TargetId.safeParse(target.id).success);
    t.match(target.jetson, {
      chip: 'tegra234',
      ...('l4t' in want ? { l4t: want.l4t } : {}),
      ...('jetpack' in want ? { jetpack: want.jetpack } : {}),
    });
    t.notMatch(target.jetson!.model, /\0/, 'the model without its NUL');
    if (want.sm) t.equal(target.sm, want.sm);
    t.equal(target.tensorrt, c?.present.tensorrtLibraryVersion ?? null);
  });
}

t.test('off Jetson: <arch>/none/cpu, and <arch>-sm<NN>/none/trt<x.y> when TensorRT runs on a GPU', async (t) => {
  t.equal((await detectTarget({ root: root('x86-host'), capabilities: null, arch: 'x64' })).id, 'x86_64/none/cpu');
  t.equal(
    (await detectTarget({ root: root('x86-host'), capabilities: caps(null, '8.9'), arch: 'x64' })).id,
    'x86_64/none/cpu',
    'a GPU without TensorRT runs no engine',
  );
  const gpu = await detectTarget({ root: root('x86-host'), capabilities: caps('10.3.0', '8.9'), arch: 'x64' });
  t.equal(gpu.id, 'x86_64-sm89/none/trt10.3');
  t.equal(gpu.sm, '8.9');
  t.equal(gpu.jetson, null);
  t.equal(
    (await detectTarget({ root: root('x86-host'), capabilities: caps('10.13.3', '11.0'), arch: 'arm64' })).id,
    'aarch64-sm110/none/trt10.13',
  );
  t.equal(
    (await detectTarget({ root: t.testdir(), capabilities: null, arch: 'arm64' })).id,
    'aarch64/none/cpu',
    'an empty root',
  );
});

t.test('this machine: a valid target, the same one twice', async (t) => {
  const a = await detectTarget();
  t.ok(TargetId.safeParse(a.id).success, a.id);
  t.equal((await detectTarget()).id, a.id);
  t.match(describeTarget(a), new RegExp(`^${a.id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(`));
});

t.test('patterns: * anywhere within a segment, whole segments only', async (t) => {
  const id = 'orin-nano-8gb/jp6.2/trt10.3';
  const yes = [
    '*',
    'orin-nano-8gb/jp6.2/trt10.3',
    'orin-nano-*/jp6.*/trt10.3',
    '*/*/*',
    'orin-*/jp6.2/*',
    '*-8gb/jp6.2/trt10.*',
  ];
  const no = [
    'orin-nx-*/jp6.*/trt10.3',
    'orin-nano-8gb/jp6.1/trt10.3',
    'orin-nano-8gb/jp6.2/trt10',
    'orin-nano-8gb/jp6/trt10.3',
    'orin-nano-8gb/*',
    'orin-nano-8gb',
    'x86_64/none/cpu',
  ];
  for (const p of yes) t.ok(matchTarget(p, id), p);
  for (const p of no) t.notOk(matchTarget(p, id), p);
  t.notOk(matchTarget('orin-nano-*', 'orin-nano-8gb/jp6.2/trt10.3'), 'a segment * does not reach across /');
  t.notOk(matchTarget('jp6.2/*/*', 'orin-nano-8gb/jp6x2/trt10.3'), '. is a dot, not any character');
  t.notOk(matchTarget('orin-nano-8gb/jp6.2/trt10.3', 'orin-nano-8gb/jp6x2/trt10.3'));
  t.same(matchingPatterns(['x86_64/none/cpu', 'orin-*/jp6.*/trt10.3', '*'], id), ['orin-*/jp6.*/trt10.3', '*']);
  for (const p of [...yes, ...no.slice(0, 4), 'x86_64/none/cpu']) t.ok(TargetPattern.safeParse(p).success, p);
  for (const p of ['orin-nano-8gb', 'a/b', 'a/b/c/d', 'Orin/jp6.2/trt10.3', 'a//c', 'a/b/c?', '', '**/ /x'])
    t.notOk(TargetPattern.safeParse(p).success, JSON.stringify(p));
  for (const p of ['*', 'orin-*/jp6.2/trt10.3'])
    t.notOk(TargetId.safeParse(p).success, `${p} is a pattern, not a target`);
});
