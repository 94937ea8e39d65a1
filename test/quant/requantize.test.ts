/**
 * Re-quantising a set that has int8 builds already is crash-safe: a power loss between writing the
 * new builds and switching the manifest (a child SIGKILLed as it starts writing manifest.json)
 * leaves a set that still verifies, and the next run completes. The manifest goes through
 * writeFileDurable: no temp file is left, and leftovers of a cut-off run are removed.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { loadManifest, sha256File, verifyModelSet, type Manifest } from '../../src/engine/manifest.js';
import { ModelSet } from '../../src/engine/modelset.js';
import { quantizeModelSet } from '../../src/quant/index.js';
import { sampleImages } from '../../tools/export/quantize.js';
import { childEnv } from '../helpers/child-env.js';
import { tinySet } from '../pipeline/fixtures.js';

const STAGES = ['merger', 'llm'] as const;
const LOOSE = 1e9;
const child = fileURLToPath(new URL('./fixtures/crash-child.ts', import.meta.url));
const images = await sampleImages(2);
/**
 * 7- or 8-bit weights: every weight build differs between the two. (8-bit saturates ONNX Runtime's
 * x86 kernels, see weights.ts: the tolerance is lifted, these builds only need to differ.)
 */
const quantize = (dir: string, weightBits: 7 | 8) =>
  quantizeModelSet({ dir, precision: 'int8', stages: STAGES, images, weightBits, tolerance: LOOSE, threads: 1 });

const int8Of = (m: Manifest, s: (typeof STAGES)[number]) => m.stages[s]!.variants.find((v) => v.precision === 'int8');
const listed = (m: Manifest) =>
  new Set(Object.values(m.stages).flatMap((e) => [e.file, ...e.variants.map((v) => v.file)]));
/** Files in the set directory that the manifest does not name and the fresh set did not hold (`before`). */
const unlisted = async (dir: string, m: Manifest, before: readonly string[]) =>
  (await readdir(dir)).filter((f) => !listed(m).has(f) && !before.includes(f)).sort();

function crashRun(
  dir: string,
  weightBits: 7 | 8,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ['--import', 'tsx', child, dir, STAGES.join(','), String(weightBits), String(LOOSE)],
      { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

t.test(
  'a power loss between the new builds and the manifest switch leaves a set that verifies; the next run completes',
  async (t) => {
    const fx = await tinySet();
    t.teardown(fx.cleanup);
    const dir = fx.dir;
    const fp32Files = (await readdir(dir)).sort();
    await quantize(dir, 7);
    const m1 = await loadManifest(dir);
    const first = Object.fromEntries(STAGES.map((s) => [s, int8Of(m1, s)!]));
    t.same(
      STAGES.map((s) => first[s]!.file),
      ['merger.int8.onnx', 'llm.int8.onnx'],
      'a first quantisation takes the plain names',
    );
    const manifestText = await readFile(path.join(dir, 'manifest.json'), 'utf8');

    // 8-bit weights: different bytes from the 7-bit builds the manifest lists.
    const crash = await crashRun(dir, 8);
    t.equal(crash.signal, 'SIGKILL', `the child died as it began the manifest write: ${crash.out}`);
    t.equal(
      await readFile(path.join(dir, 'manifest.json'), 'utf8'),
      manifestText,
      'the manifest on disk is the old one',
    );
    const m = await loadManifest(dir);
    await t.resolves(verifyModelSet(dir, m), 'every file the manifest lists is whole and matches its sha256');
    for (const s of STAGES)
      t.equal(
        await sha256File(path.join(dir, first[s]!.file)),
        first[s]!.sha256,
        `${s}: the listed int8 build was not replaced`,
      );
    const orphans = await unlisted(dir, m, fp32Files);
    t.same(
      orphans.map((f) => f.split('.')[0]),
      ['llm', 'merger'],
      `the new builds had been written, unlisted: ${orphans.join(', ')}`,
    );
    await t.resolves(ModelSet.open(dir), 'the set opens (verified)');

    const r = await quantize(dir, 8);
    t.same(
      r.map((x) => x.stage),
      [...STAGES],
    );
    const m2 = await loadManifest(dir);
    await verifyModelSet(dir, m2);
    for (const s of STAGES) {
      const v = int8Of(m2, s)!;
      t.not(v.sha256, first[s]!.sha256, `${s}: the new build is listed`);
      t.match(
        v.file,
        new RegExp(`^${s}\\.int8\\.${v.sha256.slice(0, 12)}\\.onnx$`),
        `${s}: the replacing build took the hashed name (the plain one was listed)`,
      );
    }
    t.same(await unlisted(dir, m2, fp32Files), [], 'the replaced builds and the cut-off run’s leftovers are gone');

    // And back: the plain names are free again.
    await quantize(dir, 7);
    const m3 = await loadManifest(dir);
    await verifyModelSet(dir, m3);
    t.same(
      STAGES.map((s) => int8Of(m3, s)!.file),
      ['merger.int8.onnx', 'llm.int8.onnx'],
    );
    t.same(
      STAGES.map((s) => int8Of(m3, s)!.sha256),
      STAGES.map((s) => first[s]!.sha256),
      'the same builds as the first run (quantisation is deterministic)',
    );
    t.same(await unlisted(dir, m3, fp32Files), []);
  },
);

t.test(
  'the manifest is written through writeFileDurable: no temp file left, stale ones of a cut-off run removed',
  async (t) => {
    const fx = await tinySet();
    t.teardown(fx.cleanup);
    const dir = fx.dir;
    const before = await readdir(dir);
    // What a run killed mid-write leaves behind: writeFileDurable's manifest temp, an older version's build temp.
    await writeFile(path.join(dir, 'manifest.json.tmp'), '{"half": ');
    await writeFile(path.join(dir, 'merger.int8.onnx.tmp-4242'), new Uint8Array(100));
    await quantize(dir, 7);
    const m = await loadManifest(dir);
    await verifyModelSet(dir, m);
    t.same(
      (await readdir(dir)).filter((f) => f.includes('.tmp')),
      [],
      'no temp file in the set directory',
    );
    t.same(await unlisted(dir, m, before), [], 'nothing unlisted added');
  },
);
