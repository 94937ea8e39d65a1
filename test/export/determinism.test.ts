/** One seed, byte-identical model sets; another seed, different weights everywhere. */
import t from 'tap';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { STAGES } from '../../src/engine/contract.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { synthesize } from '../../tools/export/synth.js';

async function hashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort())
    out[f] = createHash('sha256')
      .update(await readFile(join(dir, f)))
      .digest('hex');
  return out;
}

t.test('two synth runs with one seed give identical files; another seed differs', async (t) => {
  const root = t.testdir();
  const [d1, d2, d3] = ['a', 'b', 'c'].map((d) => join(root, d));
  const m1 = await synthesize({ config: 'tiny', seed: 42, out: d1! });
  await synthesize({ config: 'tiny', seed: 42, out: d2! });
  await synthesize({ config: 'tiny', seed: 43, out: d3! });
  const [h1, h2, h3] = await Promise.all([hashes(d1!), hashes(d2!), hashes(d3!)]);
  t.same(Object.keys(h1), ['manifest.json', ...STAGES.map((s) => `${s}.onnx`)].sort());
  t.same(h1, h2, 'every file, manifest included, is byte-identical');
  for (const s of STAGES) {
    t.equal(m1.stages[s]!.sha256, h1[`${s}.onnx`], `manifest lists the real sha256 of ${s}`);
    t.not(h3[`${s}.onnx`], h1[`${s}.onnx`], `seed 43 gives another ${s}`);
  }
});

t.test('the generator is pure integer arithmetic and forks by name', async (t) => {
  const a = new Rng(7);
  const first = Array.from({ length: 4 }, () => a.next());
  t.same(
    Array.from({ length: 4 }, () => new Rng(7).next()),
    Array(4).fill(first[0]),
    'a seed restarts the sequence',
  );
  t.ok(new Set(first).size === 4 && first.every((x) => x >= 0 && x < 1));
  t.same(Array.from(new Rng(7).fork('w').uniform(8, 1)), Array.from(new Rng(7).fork('w').uniform(8, 1)));
  t.not(new Rng(7).fork('w').next(), new Rng(7).fork('v').next(), 'different names, different streams');
  const u = new Rng(3).uniform(20000, 0.5);
  const mean = u.reduce((s, x) => s + x, 0) / u.length;
  const std = Math.sqrt(u.reduce((s, x) => s + (x - mean) ** 2, 0) / u.length);
  t.ok(
    Math.abs(mean) < 0.01 && Math.abs(std - 0.5) < 0.01,
    `uniform(std 0.5): mean ${mean.toFixed(4)}, std ${std.toFixed(4)}`,
  );
});
