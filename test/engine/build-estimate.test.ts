/**
 * The builder's peak estimate and what the device has free: the numbers the build preflight of a
 * fleet install compares (src/fleet/engine-env.ts), read from a Jetson's /proc/meminfo on a fake root.
 */
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  builderPeakEstimate,
  hostResources,
  largestWeightBytes,
  parseMeminfo,
  BUILDER_BASE_BYTES,
} from '../../src/engine/build-estimate.js';
import { freeBytes } from '../../src/engine/durable.js';
import type { Architecture } from '../../src/engine/contract.js';
import { tmpDir } from './fixtures.js';

const MiB = 2 ** 20;

/** An Orin Nano 8 GB's /proc/meminfo (JetPack 6), with its CMA lines. */
const ORIN_MEMINFO = `MemTotal:        7802008 kB
MemFree:         2600669 kB
MemAvailable:    3901004 kB
Buffers:           41236 kB
Cached:          1288404 kB
SwapTotal:       3901004 kB
CmaTotal:         262144 kB
CmaFree:          196608 kB
HugePages_Total:       0
`;

t.test(
  'the estimate: 4x the weights plus the builder, the workspace on a Jetson only; CMA for the largest tensor; disk for the plan',
  async (t) => {
    const jetson = builderPeakEstimate({
      weightBytes: 1000 * MiB,
      largestTensorBytes: 300 * MiB,
      workspaceBytes: 1024 * MiB,
      integratedGpu: true,
    });
    t.same(jetson, {
      hostBytes: 4000 * MiB + BUILDER_BASE_BYTES + 1024 * MiB,
      cmaBytes: 300 * MiB,
      diskBytes: 1250 * MiB + 16 * MiB,
    });
    t.equal(jetson.hostBytes / MiB, 5536, '4000 + 512 + 1024 MiB');
    const discrete = builderPeakEstimate({
      weightBytes: 1000 * MiB,
      largestTensorBytes: 300 * MiB,
      workspaceBytes: 1024 * MiB,
      integratedGpu: false,
    });
    t.equal(discrete.hostBytes / MiB, 4512, 'a discrete GPU has its own memory for the workspace');
    t.equal(discrete.cmaBytes, 0, 'no CMA off Jetson');
    t.equal(
      builderPeakEstimate({ weightBytes: 10, workspaceBytes: 0, integratedGpu: true }).cmaBytes,
      0,
      'no CMA bound claimed without a known largest tensor',
    );
  },
);

t.test('the largest tensor: the LLM lm_head (fp16 unless the graph is fp32)', async (t) => {
  const a = { llm: { vocab: 32064, hidden: 4096 } } as Architecture;
  t.equal(largestWeightBytes('llm', a, 'int4w'), 32064 * 4096 * 2, 'lm_head stays fp16 in quantised graphs: 250.5 MiB');
  t.equal(largestWeightBytes('llm', a, 'fp32'), 32064 * 4096 * 4);
  t.equal(largestWeightBytes('encoder', a, 'fp16'), undefined);
});

t.test('what the device has free: MemAvailable, CmaFree (a Jetson), free disk', async (t) => {
  t.same(parseMeminfo(ORIN_MEMINFO).CmaFree, 196608 * 1024);
  t.equal(parseMeminfo(ORIN_MEMINFO).HugePages_Total, 0, 'a count without kB stays a count');
  const root = tmpDir();
  mkdirSync(path.join(root, 'proc'));
  writeFileSync(path.join(root, 'proc', 'meminfo'), ORIN_MEMINFO);
  const r = await hostResources(root, root);
  t.equal(r.memAvailableBytes, 3901004 * 1024);
  t.equal(r.cmaFreeBytes, 192 * MiB);
  t.equal(r.diskFreeBytes, await freeBytes(root));
  writeFileSync(path.join(root, 'proc', 'meminfo'), 'MemTotal: 16000000 kB\nMemFree: 9000000 kB\n');
  t.same(
    await hostResources(root, root),
    { memAvailableBytes: 9000000 * 1024, cmaFreeBytes: null, diskFreeBytes: await freeBytes(root) },
    'no MemAvailable: MemFree; no CMA off Jetson',
  );
  const here = await hostResources(root);
  t.ok(here.memAvailableBytes > 0, `this machine: ${(here.memAvailableBytes / MiB).toFixed(0)} MiB available`);
});
