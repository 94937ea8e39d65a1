/**
 * Pipeline benchmark on the `small` reference set (27 x 27 = 729 patches, ViT-S encoder, ~60 M
 * LLaMA). Run: `npx tsx bench/pipeline.ts [--models DIR] [--runs N] [--tokens N] [--threads N]
 * [--reps N] [--only SECTIONS] [--sequential]`.
 * Synthesises the set (seed 1) into the temp dir when --models is not given and the cached copy is
 * missing or was made from another version of the config.
 *
 * Prints, measured side by side in one run:
 * - time per stage, time to first token and decode tokens/s over N `ask` queries;
 * - LLM prefill with SeTok's L tokens against the same prompt fed all 729 patch tokens (the merger
 *   with one cluster per patch), alternating, median of 5 each, and the ratio;
 * - orchestration overhead: wall time of a query over the sum of its stage times (target <= 1.10);
 * - segment, generate and edit once each (mask decoder, diffusion head, detokenizer);
 * - two queries in flight at once against the same two one after the other;
 * - decode tokens/s at contexts of 64, 512 and 1024 positions (the KV cache stays in the LLM's
 *   session), alternating, median of `--reps`, and the 1024 / 64 ratio (target >= 0.8);
 * - time to first token of a second question on the same image against the first (vision-token
 *   and prefix caches; target <= 0.2x);
 * - a follow-up in a conversation against the same turn asked cold (a pipeline with no cache
 *   replays the whole transcript): prefill tokens and time.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { benchSet } from './sets.js';
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
    reps: { type: 'string', default: '3' },
    only: { type: 'string' }, // comma-separated sections: stages,prefill,tasks,pair,decode,ttft,conversation
    sequential: { type: 'boolean' }, // decode section: one context after the other instead of in turn
  },
});
const sections = new Set((args.only ?? 'stages,prefill,tasks,pair,decode,ttft,conversation').split(','));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const ms = (x: number) => `${x.toFixed(1)} ms`;

async function modelsDir(): Promise<string> {
  return args.models ?? benchSet('small');
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

/**
 * Decode tokens/s after prompts of each of `contexts` tokens: one sequence per context, prefilled,
 * then greedy steps taken in turn across the sequences (one step of each, again and again), so
 * that the machine's drift hits every context alike. A step is what the pipeline does per token:
 * pick the id, embed it, run the LLM on the session's resident cache.
 */
async function decodeRates(p: LocalPipeline, contexts: readonly number[], steps: number): Promise<number[]> {
  const { arch: a, tokenizer: tok, stages } = p.models;
  const words = tok.encode(
    'The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill.',
  );
  const seqs: { llm: LlmContext; ms: number; logits: Float32Array }[] = [];
  try {
    for (const context of contexts) {
      const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
      const llm = new LlmContext(a, stages.llm!, stages.embed!, ctx);
      seqs.push({ llm, ms: 0, logits: new Float32Array(0) as Float32Array });
      await llm.open(context + steps);
      const prompt = [tok.specials.bos, ...Array.from({ length: context - 1 }, (_, i) => words[i % words.length]!)];
      seqs.at(-1)!.logits = (await llm.step(await llm.embedIds(prompt), 'prefill')).logits;
    }
    for (let n = 0; n < steps; n++) {
      for (const s of seqs) {
        const t0 = performance.now();
        let id = 0;
        for (let i = 1; i < tok.vocabSize; i++) if (s.logits[i]! > s.logits[id]!) id = i;
        s.logits = (await s.llm.step(await s.llm.embedIds([id]), 'decode')).logits;
        s.ms += performance.now() - t0;
      }
    }
    return seqs.map((s) => steps / (s.ms / 1000));
  } finally {
    for (const s of seqs) s.llm.release();
  }
}

async function main(): Promise<void> {
  const dir = await modelsDir();
  const runs = Number(args.runs);
  const reps = Number(args.reps);
  const maxTokens = Number(args.tokens);
  const threads = args.threads ? Number(args.threads) : undefined;
  const p = await createPipeline({ modelsDir: dir, threads, maxInFlight: 2, verify: false });
  const a = p.models.arch;
  const N = patchGrid(a) ** 2;
  console.log(
    `setokim pipeline bench: ${p.info.modelSetId} (${p.info.backend}), ${cpus().length} x ${cpus()[0]?.model.trim()}`,
  );
  console.log(
    `encoder ${a.encoder.layers}x${a.encoder.width}, LLM ${a.llm.layers}x${a.llm.hidden}, ${N} patches, ` +
      `${runs} ask queries of ${maxTokens} new tokens\n`,
  );
  // Every section asks about images none before it saw: the caches start cold for each.
  let seed = 5;
  const freshImages = (n: number) =>
    Promise.all(Array.from({ length: n }, (_, i) => busyImage(seed++ * 6, 40 + 20 * (i % 3))));
  await query(p, {
    id: 'warmup',
    task: 'ask',
    prompt: 'Hi',
    image: (await freshImages(1))[0]!,
    generation: { maxTokens: 4 },
  });

  if (sections.has('stages')) {
    // 1. Stages, TTFT, decode rate, overhead: queries one at a time, each on a new image.
    const images = await freshImages(runs);
    const dones: { done: Done; wall: number }[] = [];
    for (let i = 0; i < runs; i++)
      dones.push(
        await query(p, {
          id: `q${i}`,
          task: 'ask',
          prompt: 'What is in the picture?',
          image: images[i]!,
          generation: { maxTokens },
        }),
      );
    const stageNames = [...new Set(dones.flatMap((d) => Object.keys(d.done.stages)))];
    console.log('time per stage (mean over queries):');
    for (const s of stageNames)
      console.log(`  ${s.padEnd(12)} ${ms(mean(dones.map((d) => d.done.stages[s] ?? 0))).padStart(10)}`);
    const ttft = mean(dones.map((d) => d.done.firstTokenMs!));
    const rate = mean(dones.map((d) => (d.done.generatedTokens - 1) / (d.done.stages.decode! / 1000)));
    const stepRate = mean(dones.map((d) => (d.done.generatedTokens - 1) / ((d.wall - d.done.firstTokenMs!) / 1000)));
    console.log(`vision tokens: ${dones.map((d) => d.done.visionTokens).join(', ')} (of ${N} patches)`);
    console.log(`time to first token: ${ms(ttft)}`);
    console.log(
      `decode: ${rate.toFixed(1)} tokens/s (LLM time only), ${stepRate.toFixed(1)} tokens/s wall after the first token`,
    );
    const overheads = dones.map((d) => d.wall / Object.values(d.done.stages).reduce((x, y) => x + y, 0));
    const backendOnly = dones.map(
      (d) =>
        d.wall /
        Object.entries(d.done.stages)
          .filter(([s]) => !['preprocess', 'cluster', 'png'].includes(s))
          .reduce((x, [, y]) => x + y, 0),
    );
    console.log(`orchestration overhead, wall / sum of stage time: ${mean(overheads).toFixed(3)} (target <= 1.10)`);
    console.log(
      '  wall / sum of ONNX stage time only (preprocess, clustering and PNG counted as overhead): ' +
        `${mean(backendOnly).toFixed(3)}\n`,
    );
  }

  if (sections.has('prefill')) {
    // 2. Prefill: SeTok tokens against all patch tokens, alternating so drift hits both.
    const ctx: RequestContext = { signal: new AbortController().signal, times: {} };
    const pre = await preprocess((await freshImages(1))[0]!, a.image);
    const setok = await visionTokens(
      a,
      { encoder: p.models.stages.encoder!, merger: p.models.stages.merger! },
      pre.pixels,
      ctx,
    );
    const identity = {
      centers: Int32Array.from({ length: N }, (_, i) => i),
      labels: Int32Array.from({ length: N }, (_, i) => i),
      scores: new Float32Array(N),
    };
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
  }

  if (sections.has('tasks')) {
    // 3. The other tasks, once each: the stages only they run (mask decoder, diffusion, detokenizer).
    console.log('other tasks (one query each, 16 new tokens):');
    const [image] = await freshImages(1);
    for (const task of ['segment', 'generate', 'edit'] as const) {
      const { done, wall } = await query(p, {
        id: task,
        task,
        prompt: task === 'segment' ? 'Segment the largest circle.' : 'A red boat on a lake.',
        image: task === 'generate' ? undefined : image,
        generation: { maxTokens: 16 },
      });
      const own = ['mask_decoder', 'diffusion', 'detokenizer'].filter((s) => done.stages[s] !== undefined);
      console.log(
        `  ${task.padEnd(9)} ${ms(wall).padStart(10)} wall; ` +
          own.map((s) => `${s} ${ms(done.stages[s]!)}`).join(', '),
      );
    }
    console.log(
      `  (diffusion: ${a.diffusion.steps} DDIM steps over all <target> tokens in one batch; ` +
        "edit reuses segment's tokens)\n",
    );
  }

  if (sections.has('pair')) {
    // 4. Two queries in flight at once against one after the other (four new images: no cache hits).
    const [i0, i1, i2, i3] = await freshImages(4);
    const pair = (id: string, image: Uint8Array): QueryRequest => ({
      id,
      task: 'ask',
      prompt: 'What is in the picture?',
      image,
      generation: { maxTokens },
    });
    let t0 = performance.now();
    await query(p, pair('c0', i0!));
    await query(p, pair('c1', i1!));
    const seq = performance.now() - t0;
    t0 = performance.now();
    await Promise.all([query(p, pair('c2', i2!)), query(p, pair('c3', i3!))]);
    const par = performance.now() - t0;
    console.log(
      `two queries: one after the other ${ms(seq)}, in flight together ${ms(par)} (${(seq / par).toFixed(2)}x)\n`,
    );
  }

  if (sections.has('decode')) {
    // 5. Decode rate against the context: the cache stays in the session, each step has one shape.
    const contexts = [64, 512, 1024];
    const rates = new Map<number, number[]>(contexts.map((c) => [c, []]));
    const steps = Math.min(maxTokens, 32);
    await decodeRates(p, [64], 4); // warm-up
    for (let r = 0; r < reps; r++) {
      if (!args.sequential) (await decodeRates(p, contexts, steps)).forEach((x, k) => rates.get(contexts[k]!)!.push(x));
      else {
        const order = r % 2 ? [...contexts].reverse() : contexts;
        for (const c of order) rates.get(c)!.push((await decodeRates(p, [c], steps))[0]!);
      }
    }
    console.log(
      `decode tokens/s after a prompt of N tokens (${steps} greedy steps each, ` +
        `${args.sequential ? 'one context after the other' : 'taken in turn across the contexts'}; median of ${reps}):`,
    );
    for (const c of contexts)
      console.log(
        `  context ${String(c).padStart(4)}: ${median(rates.get(c)!).toFixed(1)} tokens/s  (${rates
          .get(c)!
          .map((x) => x.toFixed(1))
          .join(', ')})`,
      );
    console.log(
      `  1024 / 64 rate: ${(median(rates.get(1024)!) / median(rates.get(64)!)).toFixed(2)} (target >= 0.8)\n`,
    );
  }

  if (sections.has('ttft')) {
    // 6. A second question on the same image: vision tokens and the prefix's KV rows from the caches.
    const images = await freshImages(reps);
    const first: number[] = [];
    const second: number[] = [];
    for (const [i, image] of images.entries()) {
      const q1 = await query(p, {
        id: `t${i}a`,
        task: 'ask',
        prompt: 'What is in the picture?',
        image,
        generation: { maxTokens: 4 },
      });
      const q2 = await query(p, {
        id: `t${i}b`,
        task: 'ask',
        prompt: 'Which colour is the largest shape?',
        image,
        generation: { maxTokens: 4 },
      });
      first.push(q1.done.firstTokenMs!);
      second.push(q2.done.firstTokenMs!);
      if (i === 0)
        console.log(
          `  second query: ${q2.done.cachedTokens} of ${q2.done.promptTokens} prompt tokens from the prefix cache, ` +
            `stages ${Object.keys(q2.done.stages).join(' ')}`,
        );
    }
    console.log(
      `time to first token, median of ${reps} images: first question ${ms(median(first))}, ` +
        `second on the same image ${ms(median(second))}`,
    );
    console.log(`  second / first: ${(median(second) / median(first)).toFixed(3)} (target <= 0.2)\n`);
  }

  if (sections.has('conversation')) {
    // 7. A conversation's follow-up against the same turn with no cache (the whole transcript prefilled).
    const cold = await createPipeline({
      modelsDir: dir,
      threads,
      maxInFlight: 1,
      verify: false,
      visionCacheBytes: 0,
      reuseKv: false,
    });
    try {
      const [image] = await freshImages(1);
      const turns = ['What is in the picture?', 'Which shape is the largest?', 'What colour is it?'];
      const rows: string[] = [];
      for (const [i, prompt] of turns.entries()) {
        const q = (pl: LocalPipeline, tag: string) =>
          query(pl, {
            id: `${tag}${i}`,
            task: 'ask',
            prompt,
            conversation: `bench-${tag}`,
            ...(i === 0 ? { image } : {}),
            generation: { maxTokens: 32 },
          });
        const warm = await q(p, 'warm');
        const coldRun = await q(cold, 'cold');
        if (i === 0) continue;
        const line = (d: Done) =>
          `${String(d.promptTokens - (d.cachedTokens ?? 0)).padStart(4)} prefilled of ${d.promptTokens}, ` +
          `prefill ${ms(d.stages.prefill!).padStart(9)}, first token ${ms(d.firstTokenMs!).padStart(9)}`;
        rows.push(
          `  turn ${i + 1} kept cache: ${line(warm.done)}`,
          `  turn ${i + 1} cold:       ${line(coldRun.done)}`,
        );
        rows.push(
          `    prefill time kept / cold: ${(warm.done.stages.prefill! / coldRun.done.stages.prefill!).toFixed(3)}`,
        );
      }
      console.log('conversation follow-ups (32 new tokens a turn): kept KV cache against no cache');
      for (const r of rows) console.log(r);
      console.log();
    } finally {
      await cold.close();
    }
  }
  const s = p.cacheStats();
  const mib = (s.vision.bytes / 2 ** 20).toFixed(1);
  console.log(
    `caches: vision ${s.vision.hits} hits / ${s.vision.misses} misses (${mib} MiB), ` +
      `prefix ${s.prefix.hits} / ${s.prefix.misses}, KV evictions ${s.kv.evictions}`,
  );
  await p.close();
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
