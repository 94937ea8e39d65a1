/**
 * Pipeline benchmark on the `small` reference set (27 x 27 = 729 patches, ViT-S encoder, ~60 M
 * LLaMA). Run: `npx tsx bench/pipeline.ts [--models DIR] [--runs N] [--tokens N] [--threads N]`.
 * Synthesises the set (seed 1) into the temp dir when --models is not given and the cached copy is
 * missing or was made from another version of the config.
 *
 * Prints, measured side by side in one run:
 * - time per stage, time to first token and decode tokens/s over N `ask` queries;
 * - LLM prefill with SeTok's L tokens against the same prompt fed all 729 patch tokens (the merger
 *   with one cluster per patch), alternating, median of 5 each, and the ratio;
 * - orchestration overhead: wall time of a query over the sum of its stage times (target <= 1.10);
 * - segment, generate and edit once each (mask decoder, diffusion head, detokenizer);
 * - two queries in flight at once against the same two one after the other.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { synthesize } from '../tools/export/synth.js';
import { CONFIGS } from '../tools/export/configs.js';
import { patchGrid } from '../src/engine/contract.js';
import { createPipeline, type LocalPipeline } from '../src/pipeline/pipeline.js';
import { LlmContext } from '../src/pipeline/generate.js';
import { buildVicunaPrompt, promptLength } from '../src/pipeline/template.js';
import { mergeTokens, visionTokens, type VisionTokens } from '../src/pipeline/vision.js';
import { preprocess } from '../src/pipeline/preprocess.js';
import type { RequestContext } from '../src/pipeline/scheduler.js';
import type { PipelineEvent, QueryRequest } from '../src/pipeline/types.js';
import { busyImage } from '../tools/export/sample-images.js';

type Done = Extract<PipelineEvent, { type: 'done' }>;

const { values: args } = parseArgs({
  options: {
    models: { type: 'string' },
    runs: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '64' },
    threads: { type: 'string' },
  },
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const ms = (x: number) => `${x.toFixed(1)} ms`;

async function modelsDir(): Promise<string> {
  if (args.models) return args.models;
  const dir = path.join(tmpdir(), 'setokim-bench', 'small-seed1');
  const manifest = path.join(dir, 'manifest.json');
  const current = existsSync(manifest) && isDeepStrictEqual(JSON.parse(readFileSync(manifest, 'utf8')).architecture, CONFIGS.small);
  if (!current) {
    process.stdout.write(`synthesising the small set into ${dir} ...\n`);
    await synthesize({ config: 'small', seed: 1, out: dir });
  }
  return dir;
}

async function query(p: LocalPipeline, r: QueryRequest): Promise<{ done: Done; wall: number }> {
  const t0 = performance.now();
  let done: Done | undefined;
  for await (const e of p.run(r)) {
    if (e.type === 'error') throw new Error(`${e.code}: ${e.message}`);
    if (e.type === 'done') done = e;
  }
  return { done: done!, wall: performance.now() - t0 };
}

/** Prefill time of the ask prompt around the given vision embeddings, on a fresh KV cache. */
async function prefillMs(p: LocalPipeline, vision: VisionTokens): Promise<number> {
  const { arch: a, tokenizer, stages } = p.models;
  const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
  const llm = new LlmContext(a, stages.llm!, stages.embed!, ctx);
  const layout = buildVicunaPrompt(tokenizer, { prompt: 'What is in the picture?', image: true });
  await llm.open(promptLength(layout, vision.count));
  try {
    await llm.step(await llm.promptEmbeds(layout.segments, vision.embeds), 'prefill');
  } finally {
    llm.release();
  }
  return ctx.times.prefill!;
}

async function main(): Promise<void> {
  const dir = await modelsDir();
  const runs = Number(args.runs);
  const maxTokens = Number(args.tokens);
  const threads = args.threads ? Number(args.threads) : undefined;
  const p = await createPipeline({ modelsDir: dir, threads, maxInFlight: 2, verify: false });
  const a = p.models.arch;
  const N = patchGrid(a) ** 2;
  console.log(`setokim pipeline bench: ${p.info.modelSetId} (${p.info.backend}), ${cpus().length} x ${cpus()[0]?.model.trim()}`);
  console.log(`encoder ${a.encoder.layers}x${a.encoder.width}, LLM ${a.llm.layers}x${a.llm.hidden}, ${N} patches, ${runs} ask queries of ${maxTokens} new tokens\n`);
  const images = await Promise.all(Array.from({ length: runs }, (_, i) => busyImage(5 + i * 6, 40 + 20 * i)));
  await query(p, { id: 'warmup', task: 'ask', prompt: 'Hi', image: images[0]!, generation: { maxTokens: 4 } });

  // 1. Stages, TTFT, decode rate, overhead: queries one at a time.
  const dones: { done: Done; wall: number }[] = [];
  for (let i = 0; i < runs; i++)
    dones.push(await query(p, { id: `q${i}`, task: 'ask', prompt: 'What is in the picture?', image: images[i]!, generation: { maxTokens } }));
  const stageNames = [...new Set(dones.flatMap((d) => Object.keys(d.done.stages)))];
  console.log('time per stage (mean over queries):');
  for (const s of stageNames) console.log(`  ${s.padEnd(12)} ${ms(mean(dones.map((d) => d.done.stages[s] ?? 0))).padStart(10)}`);
  const ttft = mean(dones.map((d) => d.done.firstTokenMs!));
  const rate = mean(dones.map((d) => (d.done.generatedTokens - 1) / (d.done.stages.decode! / 1000)));
  const stepRate = mean(dones.map((d) => (d.done.generatedTokens - 1) / ((d.wall - d.done.firstTokenMs!) / 1000)));
  console.log(`vision tokens: ${dones.map((d) => d.done.visionTokens).join(', ')} (of ${N} patches)`);
  console.log(`time to first token: ${ms(ttft)}`);
  console.log(`decode: ${rate.toFixed(1)} tokens/s (LLM time only), ${stepRate.toFixed(1)} tokens/s wall after the first token`);
  const overheads = dones.map((d) => d.wall / Object.values(d.done.stages).reduce((x, y) => x + y, 0));
  const backendOnly = dones.map(
    (d) => d.wall / Object.entries(d.done.stages).filter(([s]) => !['preprocess', 'cluster', 'png'].includes(s)).reduce((x, [, y]) => x + y, 0),
  );
  console.log(`orchestration overhead, wall / sum of stage time: ${mean(overheads).toFixed(3)} (target <= 1.10)`);
  console.log(`  wall / sum of ONNX stage time only (preprocess, clustering and PNG counted as overhead): ${mean(backendOnly).toFixed(3)}\n`);

  // 2. Prefill: SeTok tokens against all patch tokens, alternating so drift hits both.
  const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
  const pre = await preprocess(images[0]!, a.image);
  const setok = await visionTokens(a, { encoder: p.models.stages.encoder!, merger: p.models.stages.merger! }, pre.pixels, ctx);
  const identity = { centers: Int32Array.from({ length: N }, (_, i) => i), labels: Int32Array.from({ length: N }, (_, i) => i), scores: new Float32Array(N) };
  const patches = await mergeTokens(a, p.models.stages.merger!, setok.features, identity, ctx);
  const tSetok: number[] = [];
  const tPatch: number[] = [];
  for (let i = 0; i < 5; i++) {
    tSetok.push(await prefillMs(p, setok));
    tPatch.push(await prefillMs(p, patches));
  }
  const ms1 = median(tSetok);
  const ms2 = median(tPatch);
  console.log('LLM prefill, same prompt, median of 5:');
  console.log(`  SeTok   ${String(setok.count).padStart(4)} vision tokens  ${ms(ms1).padStart(10)}`);
  console.log(`  patches ${String(N).padStart(4)} vision tokens  ${ms(ms2).padStart(10)}`);
  console.log(`  patch / SeTok prefill time: ${(ms2 / ms1).toFixed(2)}x\n`);

  // 3. The other tasks, once each: the stages only they run (mask decoder, diffusion, detokenizer).
  console.log('other tasks (one query each, 16 new tokens):');
  for (const task of ['segment', 'generate', 'edit'] as const) {
    const { done, wall } = await query(p, {
      id: task,
      task,
      prompt: task === 'segment' ? 'Segment the largest circle.' : 'A red boat on a lake.',
      image: task === 'generate' ? undefined : images[0]!,
      generation: { maxTokens: 16 },
    });
    const own = ['mask_decoder', 'diffusion', 'detokenizer'].filter((s) => done.stages[s] !== undefined);
    console.log(`  ${task.padEnd(9)} ${ms(wall).padStart(10)} wall; ${own.map((s) => `${s} ${ms(done.stages[s]!)}`).join(', ')}`);
  }
  console.log(`  (diffusion: ${a.diffusion.steps} DDIM steps over all <target> tokens in one batch)\n`);

  // 4. Two queries in flight at once against one after the other.
  const pair = (i: number): QueryRequest => ({ id: `c${i}`, task: 'ask', prompt: 'What is in the picture?', image: images[i % runs]!, generation: { maxTokens } });
  let t0 = performance.now();
  await query(p, pair(0));
  await query(p, pair(1));
  const seq = performance.now() - t0;
  t0 = performance.now();
  await Promise.all([query(p, pair(0)), query(p, pair(1))]);
  const par = performance.now() - t0;
  console.log(`two queries: one after the other ${ms(seq)}, in flight together ${ms(par)} (${(seq / par).toFixed(2)}x)`);
  await p.close();
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
