/**
 * INT8 against fp32, side by side in one run, on one model set (ONNX Runtime CPU).
 * Run: `npx tsx bench/quant.ts [--config tiny|small] [--images N] [--tokens N] [--threads N]`.
 * Synthesises the set (seed 1) and its int8 variants (`export quantize` defaults) into the temp dir
 * when they are missing, then asks the same greedy questions of an fp32 and an int8 pipeline, query
 * by query alternating, and prints:
 * - time per stage (median over the queries) and the int8 / fp32 ratio;
 * - vision tokens per image with each: docs/SETOK.md's threshold is absolute, so a quantised encoder that
 *   shifts the feature scale shifts the token count;
 * - how many answers are identical, and the stage files' bytes.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { synthesize } from '../tools/export/synth.js';
import { sampleImages } from '../tools/export/quantize.js';
import { quantizeModelSet } from '../src/quant/index.js';
import { openModelSet } from '../src/engine/modelset.js';
import { STAGES } from '../src/engine/contract.js';
import { createPipeline, type LocalPipeline } from '../src/pipeline/pipeline.js';
import type { PipelineEvent } from '../src/pipeline/types.js';

type Done = Extract<PipelineEvent, { type: 'done' }>;

const { values: args } = parseArgs({
  options: {
    config: { type: 'string', default: 'tiny' },
    images: { type: 'string', default: '12' },
    tokens: { type: 'string', default: '16' },
    threads: { type: 'string', default: '1' },
  },
});
const config = args.config === 'small' ? 'small' : 'tiny';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

async function modelsDir(): Promise<string> {
  const dir = path.join(tmpdir(), 'setokim-bench', `${config}-seed1-int8`);
  if (!existsSync(path.join(dir, 'manifest.json'))) {
    process.stdout.write(`synthesising ${config} into ${dir} ...\n`);
    await synthesize({ config, seed: 1, out: dir });
  }
  const set = await openModelSet(dir, { verify: false });
  if (!set.variants('llm').some((v) => v.precision === 'int8')) {
    process.stdout.write('quantising (export quantize defaults, 8 calibration images) ...\n');
    await quantizeModelSet({ dir, precision: 'int8', images: await sampleImages(8) });
  }
  return dir;
}

async function ask(p: LocalPipeline, image: Uint8Array, id: string): Promise<{ done: Done; text: string }> {
  let text = '';
  let done: Done | undefined;
  for await (const e of p.run({ id, task: 'ask', image, prompt: 'What is in the picture?', generation: { maxTokens: Number(args.tokens), temperature: 0 } })) {
    if (e.type === 'text') text += e.delta;
    if (e.type === 'done') done = e;
    if (e.type === 'error') throw new Error(`${e.code}: ${e.message}`);
  }
  return { done: done!, text };
}

const dir = await modelsDir();
const threads = Number(args.threads);
const fp32 = await createPipeline({ modelsDir: dir, threads, maxInFlight: 1, verify: false });
const int8 = await createPipeline({ modelsDir: dir, threads, maxInFlight: 1, verify: false, precision: 'int8' });
// Held-out images: export quantize calibrates on sampleImages(8); these start past them.
const images = (await sampleImages(8 + Number(args.images))).slice(8);
await ask(fp32, images[0]!, 'warm');
await ask(int8, images[0]!, 'warm');

const stages = new Map<string, { a: number[]; b: number[] }>();
const tokens: [number, number][] = [];
let same = 0;
for (const [i, image] of images.entries()) {
  const a = await ask(fp32, image, `fp32-${i}`);
  const b = await ask(int8, image, `int8-${i}`);
  tokens.push([a.done.visionTokens, b.done.visionTokens]);
  same += Number(a.text === b.text);
  for (const [name, ms] of Object.entries(a.done.stages)) {
    const s = stages.get(name) ?? { a: [], b: [] };
    s.a.push(ms);
    s.b.push(b.done.stages[name] ?? NaN);
    stages.set(name, s);
  }
}
await fp32.close();
await int8.close();

console.log(`# int8 vs fp32, ${config} set, ${images.length} held-out images, ${args.tokens} greedy tokens, ${threads} thread(s) per stage`);
console.log('\nstage         | fp32 ms | int8 ms | int8/fp32');
for (const [name, s] of stages) {
  const a = median(s.a), b = median(s.b);
  console.log(`${name.padEnd(13)} | ${a.toFixed(1).padStart(7)} | ${b.toFixed(1).padStart(7)} | ${(b / a).toFixed(2).padStart(9)}`);
}
const changed = tokens.filter(([a, b]) => a !== b).length;
const drift = tokens.map(([a, b]) => b - a);
console.log(`\nvision tokens per image (fp32 -> int8): ${tokens.map(([a, b]) => (a === b ? `${a}` : `${a}->${b}`)).join(' ')}`);
console.log(`images whose token count changed: ${changed} of ${tokens.length} (mean shift ${(drift.reduce((x, y) => x + y, 0) / drift.length).toFixed(2)} tokens)`);
console.log(`identical answers: ${same} of ${images.length}`);

const set = await openModelSet(dir, { verify: false });
let bytes32 = 0, bytes8 = 0;
for (const s of STAGES.filter((x) => set.has(x))) {
  const v = set.variants(s);
  const f = v.find((x) => x.precision === 'fp32')!;
  const q = v.find((x) => x.precision === 'int8') ?? f;
  bytes32 += (await stat(path.join(dir, f.file))).size;
  bytes8 += (await stat(path.join(dir, q.file))).size;
}
console.log(`stage files: fp32 ${(bytes32 / 2 ** 20).toFixed(1)} MiB, int8 ${(bytes8 / 2 ** 20).toFixed(1)} MiB (${(bytes32 / bytes8).toFixed(2)}x smaller)`);
