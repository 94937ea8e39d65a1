/**
 * fp32, fp16, int8 and int4w side by side on one model set, in one run (ONNX Runtime CPU).
 * Run: `npx tsx bench/quant.ts [--config tiny|small] [--images N] [--tokens N] [--threads N] [--dialects]`.
 * Synthesises the set (seed 1) and writes its fp16, int8 and int4w variants (`export quantize`
 * defaults, 8 calibration images) into the temp dir when they are missing, then, on held-out images
 * (sampleImages past the 8 calibration ones):
 * - bytes per stage of each precision's file (the TensorRT dialect, and the ONNX Runtime one where
 *   int4w has two), and the planner's bytes against them;
 * - cosine to fp32 of every stage output, each precision's stage run on the fp32 pipeline's own
 *   stage inputs (worst over the inputs);
 * - the four pipelines answering the same greedy questions, query by query alternating: time per
 *   stage (median), vision tokens per image, answers identical to fp32, decode time per token;
 * - --dialects: the LLM's INT4 weights written as MatMulNBits (accuracy level 0 and 4) and as
 *   DequantizeLinear + MatMul, timed on decode steps alternating (recorded decode feeds).
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Session, Tensor } from '../src/engine/backend.js';
import { STAGES, type StageName } from '../src/engine/contract.js';
import type { Precision } from '../src/engine/manifest.js';
import { openModelSet, type ModelSet } from '../src/engine/modelset.js';
import { OrtBackend } from '../src/engine/onnxruntime.js';
import { createPipeline, type LocalPipeline } from '../src/pipeline/pipeline.js';
import type { PipelineEvent } from '../src/pipeline/types.js';
import {
  collectFeeds,
  decodeModel,
  encodeModel,
  planInt4,
  quantizeModelSet,
  selectInt4,
  splitSamples,
  tensorError,
  withSession,
  Int4Rewrite,
  type Feeds,
} from '../src/quant/index.js';
import { sampleImages } from '../tools/export/quantize.js';
import { planModelSet } from '../tools/export/plan.js';
import { synthesize } from '../tools/export/synth.js';

type Done = Extract<PipelineEvent, { type: 'done' }>;
const PRECISIONS = ['fp32', 'fp16', 'int8', 'int4w'] as const;
const BUILT = ['fp16', 'int8', 'int4w'] as const;

const { values: args } = parseArgs({
  options: {
    config: { type: 'string', default: 'tiny' },
    images: { type: 'string', default: '6' },
    tokens: { type: 'string', default: '16' },
    threads: { type: 'string', default: '1' },
    dialects: { type: 'boolean', default: false },
    /** Only the --dialects measurement (the set and its variants must exist). */
    'dialects-only': { type: 'boolean', default: false },
    rounds: { type: 'string', default: '5' },
  },
});
const config = args.config === 'small' ? 'small' : 'tiny';
const threads = Number(args.threads);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const mib = (b: number) => (b / 2 ** 20).toFixed(2);
const pad = (s: string | number, n: number) => String(s).padStart(n);

async function modelsDir(): Promise<string> {
  const dir = path.join(tmpdir(), 'setokim-bench', `${config}-seed1-quant`);
  if (!existsSync(path.join(dir, 'manifest.json'))) {
    process.stdout.write(`synthesising ${config} into ${dir} ...\n`);
    await synthesize({ config, seed: 1, out: dir });
  }
  for (const precision of BUILT) {
    const set = await openModelSet(dir, { verify: false });
    if (set.variants('llm').some((v) => v.precision === precision)) continue;
    process.stdout.write(`export quantize --precision ${precision} (defaults, 8 calibration images) ...\n`);
    const t0 = performance.now();
    await quantizeModelSet({ dir, precision, images: await sampleImages(8), threads });
    process.stdout.write(`  ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
  }
  return dir;
}

/** The file each backend runs for a stage at a precision (fp32: the main file). */
const fileOf = (set: ModelSet, s: StageName, p: Precision, target: 'onnxruntime' | 'tensorrt') =>
  p === 'fp32' ? set.stagePath(s) : set.pick(s, p, target) ? set.stagePath(s, p, target) : set.stagePath(s);

async function bytesTable(set: ModelSet): Promise<void> {
  console.log('\n## bytes per stage (MiB; TensorRT dialect, ONNX Runtime dialect in brackets where it differs)\n');
  console.log(`stage         | ${PRECISIONS.map((p) => pad(p, 16)).join(' | ')}`);
  const totals = Object.fromEntries(PRECISIONS.map((p) => [p, 0]));
  for (const s of STAGES.filter((x) => set.has(x))) {
    const cells = [];
    for (const p of PRECISIONS) {
      const trt = (await stat(fileOf(set, s, p, 'tensorrt'))).size;
      const ort = (await stat(fileOf(set, s, p, 'onnxruntime'))).size;
      totals[p] += trt;
      cells.push(pad(ort === trt ? mib(trt) : `${mib(trt)} [${mib(ort)}]`, 16));
    }
    console.log(`${s.padEnd(13)} | ${cells.join(' | ')}`);
  }
  console.log(`${'total'.padEnd(13)} | ${PRECISIONS.map((p) => pad(mib(totals[p]!), 16)).join(' | ')}`);
  const llm = (p: Precision) => stat(fileOf(set, 'llm', p, 'tensorrt')).then((x) => x.size);
  console.log(
    `\nint4w LLM / fp32 LLM bytes: ${((await llm('int4w')) / (await llm('fp32'))).toFixed(3)} (target <= 0.30)`,
  );

  // The planner against the files: weight bytes (initializers) of each TensorRT-dialect file.
  let worst = 0;
  for (const p of PRECISIONS) {
    const plan = planModelSet(set.architecture, { precision: p, tokens: 8, context: 256 });
    for (const s of STAGES.filter((x) => set.has(x))) {
      const m = decodeModel(new Uint8Array(await readFile(fileOf(set, s, p, 'tensorrt'))));
      const stored = (m.graph!.initializer ?? []).reduce((n, x) => n + (x.rawData?.length ?? 0), 0);
      worst = Math.max(worst, Math.abs(plan.stages.find((x) => x.stage === s)!.bytes / stored - 1));
    }
  }
  console.log(
    `planner weight bytes against the files written, every stage and precision: worst ` +
      `${(100 * worst).toFixed(2)}% (target <= 5%)`,
  );
}

async function cosineTable(set: ModelSet, images: Uint8Array[]): Promise<void> {
  const stages = STAGES.filter((x) => set.has(x));
  const rec = await collectFeeds({ modelsDir: set.dir, stages, images, threads, verify: false });
  const backend = new OrtBackend({ threads });
  console.log(
    '\n## cosine to fp32 per stage output (worst over the held-out stage inputs; ' +
      'the TensorRT dialect run in ONNX Runtime, [ONNX Runtime dialect])\n',
  );
  console.log(`stage / output               | ${BUILT.map((p) => pad(p, 20)).join(' | ')}`);
  for (const s of stages) {
    const feeds = splitSamples(rec.samples(s)).heldOut.slice(0, 6);
    const signature = set.manifest.stages[s]!.signature;
    const run = async (file: string): Promise<Record<string, Tensor>[]> =>
      withSession(backend, new Uint8Array(await readFile(file)), { stage: s, signature, threads }, async (r) => {
        const outs = [];
        for (const f of feeds) outs.push(await r(f));
        return outs;
      });
    const ref = await run(set.stagePath(s));
    const cos: Record<string, Record<string, string>> = {};
    const cell = (xs: number[]) => xs.map((c) => c.toFixed(6)).join(' [') + (xs.length > 1 ? ']' : '');
    for (const p of BUILT) {
      const files = [fileOf(set, s, p, 'tensorrt'), fileOf(set, s, p, 'onnxruntime')];
      const outs = await Promise.all([...new Set(files)].map(run));
      for (const name of Object.keys(ref[0]!)) {
        if (ref[0]![name]!.dtype !== 'float32') continue;
        const each = outs.map((o) => ref.map((r, i) => tensorError(r[name]!, o[i]![name]!).cosine));
        (cos[name] ??= {})[p] = cell(each.map((c) => Math.min(...c)));
        if (s === 'llm' && name === 'logits')
          (cos['logits (mean)'] ??= {})[p] = cell(each.map((c) => c.reduce((x, y) => x + y, 0) / c.length));
      }
    }
    for (const [name, byP] of Object.entries(cos))
      console.log(`${`${s} / ${name}`.padEnd(28)} | ${BUILT.map((p) => pad(byP[p]!, 20)).join(' | ')}`);
  }
}

async function ask(p: LocalPipeline, image: Uint8Array, id: string): Promise<{ done: Done; text: string }> {
  let text = '';
  let done: Done | undefined;
  for await (const e of p.run({
    id,
    task: 'ask',
    image,
    prompt: 'What is in the picture?',
    generation: { maxTokens: Number(args.tokens), temperature: 0 },
  })) {
    if (e.type === 'text') text += e.delta;
    if (e.type === 'done') done = e;
    if (e.type === 'error') throw new Error(`${e.code}: ${e.message}`);
  }
  return { done: done!, text };
}

async function pipelines(dir: string, images: Uint8Array[]): Promise<void> {
  const ps = new Map<Precision, LocalPipeline>();
  for (const p of PRECISIONS)
    ps.set(
      p,
      await createPipeline({
        modelsDir: dir,
        threads,
        maxInFlight: 1,
        verify: false,
        ...(p === 'fp32' ? {} : { precision: p }),
      }),
    );
  for (const p of ps.values()) await ask(p, images[0]!, 'warm');
  const times = new Map<string, Record<string, number[]>>();
  const tokens: Record<string, number[]> = {};
  const texts: Record<string, string[]> = {};
  const decodePerToken: Record<string, number[]> = {};
  for (const [i, image] of images.entries()) {
    for (const [name, p] of ps) {
      const { done, text } = await ask(p, image, `${name}-${i}`);
      (tokens[name] ??= []).push(done.visionTokens);
      (texts[name] ??= []).push(text);
      (decodePerToken[name] ??= []).push((done.stages.decode ?? NaN) / Math.max(1, done.generatedTokens - 1));
      for (const [stage, ms] of Object.entries(done.stages)) {
        const row = times.get(stage) ?? {};
        (row[name] ??= []).push(ms);
        times.set(stage, row);
      }
    }
  }
  for (const p of ps.values()) await p.close();
  console.log(
    `\n## pipelines, ${images.length} held-out images, ${args.tokens} greedy tokens, ${threads} thread(s) per ` +
      `stage: median ms per stage (x fp32)\n`,
  );
  console.log(`stage         | ${PRECISIONS.map((p) => pad(p, 15)).join(' | ')}`);
  for (const [stage, row] of times) {
    const base = median(row.fp32!);
    const cell = (p: Precision) => `${median(row[p]!).toFixed(1)} (${(median(row[p]!) / base).toFixed(2)})`;
    console.log(`${stage.padEnd(13)} | ${PRECISIONS.map((p) => pad(cell(p), 15)).join(' | ')}`);
  }
  const d = (p: string) => median(decodePerToken[p]!);
  const perToken = PRECISIONS.map((p) => `${p} ${d(p).toFixed(2)}`).join(', ');
  console.log(`decode ms/token: ${perToken}; int4w / fp32 = ${(d('int4w') / d('fp32')).toFixed(2)} (target <= 1)`);
  for (const p of BUILT) {
    const drift = tokens[p]!.map((n, i) => n - tokens.fp32![i]!);
    const same = texts[p]!.filter((x, i) => x === texts.fp32![i]).length;
    const counts = tokens[p]!.map((n, i) => (n === tokens.fp32![i] ? String(n) : `${tokens.fp32![i]}->${n}`)).join(' ');
    const changed = drift.filter((x) => x !== 0).length;
    console.log(
      `${p}: vision tokens ${counts}; changed on ${changed} of ${images.length} images; ` +
        `answers identical to fp32: ${same} of ${images.length}`,
    );
  }
}

/**
 * The LLM's INT4 weights as MatMulNBits (accuracy 0, 4) and DequantizeLinear, timed on recorded decode
 * steps, alternating.
 */
async function dialects(dir: string, calibration: Uint8Array[], heldOut: Uint8Array[]): Promise<void> {
  const set = await openModelSet(dir, { verify: false });
  const backend = new OrtBackend({ threads });
  const model = decodeModel(new Uint8Array(await readFile(set.stagePath('llm'))));
  const cal = await collectFeeds({ modelsDir: dir, stages: ['llm'], images: calibration, threads, verify: false });
  const test = await collectFeeds({ modelsDir: dir, stages: ['llm'], images: heldOut, threads, verify: false });
  const { plan } = await planInt4(backend, model, selectInt4(model, 128), splitSamples(cal.samples('llm')).calibrate, {
    stage: 'llm',
    threads,
  });
  const rw = new Int4Rewrite(model, plan, 'llm');
  const forms: [string, Uint8Array][] = [
    ['fp32', new Uint8Array(await readFile(set.stagePath('llm')))],
    ['MatMulNBits acc 0', encodeModel(rw.write('nbits', { headsFp16: true, accuracyLevel: 0 }).model)],
    ['MatMulNBits acc 4', encodeModel(rw.write('nbits', { headsFp16: true, accuracyLevel: 4 }).model)],
    ['DequantizeLinear', encodeModel(rw.write('dq', { headsFp16: true }).model)],
  ];
  const decode: Feeds[] = test
    .samples('llm')
    .filter((f) => f.inputs_embeds!.dims[1] === 1)
    .slice(0, 24);
  const signature = set.manifest.stages.llm!.signature;
  const tmp = await mkdtemp(path.join(tmpdir(), 'setokim-dialects-'));
  const sessions: Session[] = [];
  try {
    for (const [i, [name, bytes]] of forms.entries()) {
      const file = path.join(tmp, `llm.${i}.onnx`);
      await writeFile(file, bytes);
      sessions.push(await backend.open(file, { stage: name, signature, threads }));
    }
    const ms: number[][] = forms.map(() => []);
    const outs: Record<string, Tensor>[][] = forms.map(() => []);
    for (const s of sessions) await s.run(decode[0]!);
    for (let round = 0; round < Number(args.rounds); round++) {
      // each round starts with the next form, so none always runs first or last
      for (const i of sessions.map((_, j) => (j + round) % sessions.length)) {
        const s = sessions[i]!;
        const t0 = performance.now();
        for (const f of decode) {
          const o = await s.run(f);
          if (round === 0) outs[i]!.push(o);
        }
        ms[i]!.push((performance.now() - t0) / decode.length);
      }
    }
    console.log(
      `\n## INT4 in ONNX Runtime: ${decode.length} recorded decode steps, ${args.rounds} rounds alternating, median ms per step\n`,
    );
    forms.forEach(([name, bytes], i) => {
      const cos = Math.min(...outs[0]!.map((r, j) => tensorError(r.logits!, outs[i]![j]!.logits!).cosine));
      console.log(
        `${name.padEnd(18)} ${mib(bytes.length).padStart(8)} MiB  ${median(ms[i]!).toFixed(2).padStart(7)} ` +
          `ms/step (${(median(ms[i]!) / median(ms[0]!)).toFixed(2)}x fp32)  logits cosine ${cos.toFixed(5)}`,
      );
    });
  } finally {
    for (const s of sessions) await s.dispose();
    await rm(tmp, { recursive: true, force: true });
  }
}

const dir = await modelsDir();
const set = await openModelSet(dir, { verify: false });
// Held-out images: export quantize calibrates on sampleImages(8); these start past them.
const images = (await sampleImages(8 + Number(args.images))).slice(8);
console.log(`# fp32 / fp16 / int8 / int4w, ${config} set (${dir}), ONNX Runtime CPU`);
if (!args['dialects-only']) {
  await bytesTable(set);
  await cosineTable(set, images);
  await pipelines(dir, images);
}
if (args.dialects || args['dialects-only']) await dialects(dir, await sampleImages(8), images);
