/**
 * `setokim export plan`: sizes a model set from its architecture, without writing weights:
 * parameters and weight bytes per stage at a precision, FLOPs per stage and per query, the LLM's
 * KV cache at a context length, and whether the set fits each Jetson Orin module.
 *
 * Parameter counts mirror the graphs tools/export/stages builds (test/export/plan.test.ts checks
 * them against the built `tiny` graphs). FLOPs count a multiply-add as 2 and cover the matrix
 * products (linear layers and attention); norms, activations and softmax are left out.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { headDim, type Architecture, type StageName } from '../../src/engine/contract.js';
import { SetokimError } from '../../src/errors.js';
import { parseFlags } from '../../src/flags.js';
import { CONFIG_NAMES, CONFIGS, TEXT_VOCAB } from './configs.js';
import { ErrorCodes } from '../../src/errors.js';

export const PRECISIONS = ['fp16', 'int8', 'int4w'] as const;
export type Precision = (typeof PRECISIONS)[number];
/** Weight-only INT4 scales: one fp16 scale per block of 128 input weights (symmetric, no zero point). */
export const INT4_BLOCK = 128;
const GiB = 2 ** 30;

/** Patches per image: the stride-`patch` convolution drops the remainder (384 / 14 -> 27 x 27 = 729). */
const patches = (a: Architecture) => Math.floor(a.image.size / a.image.patch) ** 2;

/** Jetson Orin modules: memory is shared by CPU and GPU. */
export const MODULES = [
  { name: 'Orin Nano 8 GB', memoryBytes: 8 * GiB },
  { name: 'Orin NX 16 GB', memoryBytes: 16 * GiB },
  { name: 'AGX Orin 64 GB', memoryBytes: 64 * GiB },
] as const;
/** OS (headless L4T), carve-outs and page cache: not available to the model. */
export const OS_RESERVED_BYTES = 1.5 * GiB;
/** CUDA context, cuBLAS/cuDNN handles and TensorRT's tactic workspace. */
export const RUNTIME_BYTES = 0.5 * GiB;

/** A weight tensor: a linear layer's matrix (quantisable) plus its bias, or any other tensor. */
type Weight = { kind: 'linear'; in: number; out: number; bias: boolean; count: number; quant: boolean } | { kind: 'other'; n: number; count: number };
const lin = (inF: number, outF: number, count = 1, bias = true, quant = false): Weight => ({ kind: 'linear', in: inF, out: outF, bias, count, quant });
const other = (n: number, count = 1): Weight => ({ kind: 'other', n, count });
const ln = (w: number, count = 1) => other(2 * w, count); // LayerNorm scale + bias
const attn = (w: number, count = 1, kvW = w): Weight[] => [lin(w, w, count), lin(kvW, w, 2 * count), lin(w, w, count)];
const gmlp = (w: number, h: number, count = 1, out = w): Weight[] => [lin(w, h, count), lin(h, out, count)];
const times = (ws: Weight[], k: number) => ws.map((w) => ({ ...w, count: w.count * k }));

const paramsOf = (ws: Weight[]) => ws.reduce((n, w) => n + w.count * (w.kind === 'other' ? w.n : w.in * w.out + (w.bias ? w.out : 0)), 0);

/** Bytes of the weights: quantisable matrices at the LLM precision, everything else fp16. */
function bytesOf(ws: Weight[], precision: Precision): number {
  let bytes = 0;
  for (const w of ws) {
    if (w.kind === 'other') bytes += 2 * w.n * w.count;
    else {
      const bias = w.bias ? 2 * w.out : 0;
      const m = w.in * w.out;
      const matrix = !w.quant || precision === 'fp16' ? 2 * m
        : precision === 'int8' ? m + 2 * w.out // per-output-channel fp16 scale
          : m / 2 + 2 * Math.ceil(w.in / INT4_BLOCK) * w.out; // 4 bits + fp16 scale per 128-block
      bytes += w.count * (matrix + bias);
    }
  }
  return bytes;
}

/** The weights of every stage, as tools/export/stages builds them. */
export function stageWeights(a: Architecture, stage: StageName, opts: { text?: boolean } = {}): Weight[] {
  const C = a.encoder.width;
  const N = patches(a);
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const V = opts.text ? TEXT_VOCAB : a.llm.vocab;
  switch (stage) {
    case 'encoder': {
      const { layers, mlp } = a.encoder;
      const p = a.image.patch;
      return [other(C * 3 * p * p + C), other(N * C), ln(C, 2 * layers), ...attn(C, layers), ...gmlp(C, mlp, layers)];
    }
    case 'merger': {
      const { depth, mlp } = a.merger;
      const block = [ln(C, 2), ...attn(C, depth), ...gmlp(C, mlp)]; // one shared LN for the attentions, one for the MLP
      return [...times(block, 2), lin(C, D), lin(D, H), lin(H, H)]; // inner + inter, to_token, projector
    }
    case 'embed':
      return [other(V * H)];
    case 'llm': {
      const { layers, heads, kvHeads, intermediate: I } = a.llm;
      const hd = headDim(a);
      const q = (i: number, o: number) => lin(i, o, layers, false, true);
      return [
        q(H, heads * hd), q(H, kvHeads * hd), q(H, kvHeads * hd), q(heads * hd, H), // attention
        q(H, I), q(H, I), q(I, H), // SwiGLU gate, up, down
        other(H, 2 * layers + 1), // RMSNorm weights
        lin(H, V, 1, false, false), // lm_head stays fp16: it sets the logits
      ];
    }
    case 'diffusion': {
      const { width: W, layers } = a.diffusion;
      return [...gmlp(W, W), lin(H, W), lin(D, W), lin(W, 3 * W, layers), ...gmlp(W, W, layers), lin(W, 2 * W), lin(W, D)];
    }
    case 'detokenizer': {
      const { queries: Q, width: W, layers, patch: p } = a.detokenizer;
      const vit = [ln(W, 2), ...attn(W), ...gmlp(W, 4 * W)];
      return [lin(D, W), ln(W), other(Q * W), ...vit, ...times(vit, layers), ln(W), lin(W, 3 * p * p)];
    }
    case 'mask_decoder': {
      const W = a.maskDecoder.width;
      return [ln(C), ...gmlp(C, W, 1, W), lin(D, W), ln(W), ...attn(W), lin(W, W), lin(H, W)];
    }
  }
}

/** SigLIP-SO400M as published (HF SiglipVisionModel: adds the post-LayerNorm and the MAP pooling head). */
export function siglipPublishedParams(a: Architecture): number {
  const C = a.encoder.width;
  const head = [other(C), lin(C, 3 * C), lin(C, C), ln(C), ...gmlp(C, a.encoder.mlp)]; // probe, MHA, LN, MLP
  return paramsOf(stageWeights(a, 'encoder')) + 2 * C + paramsOf(head);
}

/** Vicuna-7B as published (LlamaForCausalLM with the 32000-piece vocabulary). */
export function llamaPublishedParams(a: Architecture): number {
  return paramsOf(stageWeights(a, 'embed', { text: true })) + paramsOf(stageWeights(a, 'llm', { text: true }));
}

export interface QueryShape {
  /** Vision tokens L after clustering. */
  tokens: number;
  /** Text tokens of the prompt (template and question). */
  promptTokens: number;
  /** Generated answer tokens. */
  answerTokens: number;
}

/** FLOPs of one use of a stage (2 per multiply-add; matrix products only). */
export function stageFlops(a: Architecture, stage: StageName | 'cluster', q: QueryShape): number {
  const C = a.encoder.width;
  const N = patches(a);
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const L = q.tokens;
  const macs = (ws: Weight[], tokens: number) => 2 * tokens * ws.reduce((n, w) => n + (w.kind === 'linear' ? w.count * w.in * w.out : 0), 0);
  const attnScores = (sq: number, sk: number, width: number) => 4 * sq * sk * width; // QK^T and AV
  switch (stage) {
    case 'encoder': {
      const p = a.image.patch;
      return 2 * N * C * 3 * p * p + macs(stageWeights(a, 'encoder'), N) + a.encoder.layers * attnScores(N, N, C);
    }
    case 'cluster': // pairwise distances of the N patch features (DPC-KNN, on the CPU)
      return 2 * N * N * C;
    case 'merger': {
      const { depth, mlp } = a.merger;
      const block = (T: number) => macs([...attn(C, depth), ...gmlp(C, mlp)], T) + depth * attnScores(T, T, C);
      // inner: one masked attention over all N patches (dense); pooling is a [L, N] x [N, C] product
      return block(N) + 2 * L * N * C + block(L) + macs([lin(C, D)], L) + macs([lin(D, H), lin(H, H)], L);
    }
    case 'embed':
      return 0; // a gather
    case 'llm': {
      const { layers, heads, hidden: H, vocab: V } = a.llm;
      const head = 2 * H * V; // lm_head: the graph computes logits for the last position only
      const perToken = macs(stageWeights(a, 'llm'), 1) - head;
      const P = q.promptTokens + L;
      const S = P + q.answerTokens; // the query's fixed cache: every decode step reads all of it
      const width = heads * headDim(a);
      // prefill from an empty cache: P x P scores among the new tokens (masked, not skipped)
      const prefill = P * perToken + head + layers * attnScores(P, P, width);
      // each decode step: scores against the S cache rows (those past the write position masked) and itself
      return prefill + q.answerTokens * (perToken + head + layers * attnScores(1, S + 1, width));
    }
    case 'diffusion': // per generated image: every one of the L tokens, every sampling step
      return a.diffusion.steps * L * macs(stageWeights(a, 'diffusion'), 1);
    case 'detokenizer': {
      const { queries: Q, width: W, layers, patch: p } = a.detokenizer;
      const cross = macs([lin(W, W, 2)], Q) + macs([lin(W, W, 2)], L) + attnScores(Q, L, W) + macs(gmlp(W, 4 * W), Q);
      const vit = layers * (macs([...attn(W), ...gmlp(W, 4 * W)], Q) + attnScores(Q, Q, W));
      return macs([lin(D, W)], L) + cross + vit + macs([lin(W, 3 * p * p)], Q);
    }
    case 'mask_decoder': {
      const W = a.maskDecoder.width;
      const f = macs(gmlp(C, W, 1, W), N);
      const t = macs([lin(D, W), lin(W, W, 2)], L) + macs([lin(W, W, 2)], N) + attnScores(L, N, W) + macs([lin(W, W)], L);
      return f + t + 2 * L * W * N + macs([lin(H, W)], 1) + 2 * W * N;
    }
  }
}

/** Peak activation bytes of the largest stage run (fp16 activations, fp32 logits), a rough upper bound. */
function activationBytes(a: Architecture, q: QueryShape): number {
  const C = a.encoder.width;
  const N = patches(a);
  const H = a.llm.hidden;
  const T = q.promptTokens + q.tokens;
  const { queries: Q, width: W, heads: dh } = a.detokenizer;
  return Math.max(
    2 * (N * (4 * C + a.encoder.mlp) + a.encoder.heads * N * N), // encoder layer: residual, qkv, MLP, scores
    2 * (N * (4 * C + a.merger.mlp) + a.merger.heads * N * N), // merger's dense masked attention
    // prefill, and the last position's logits
    2 * (T * (4 * H + 2 * a.llm.intermediate) + a.llm.heads * T * T) + 4 * a.llm.vocab,
    2 * (Q * 8 * W + dh * Q * Q), // detokenizer
  );
}

const STAGE_USE: Record<StageName | 'cluster', string> = {
  encoder: 'per query',
  cluster: 'per query (CPU)',
  merger: 'per query',
  embed: 'per query',
  llm: 'per query',
  diffusion: 'per generated image',
  detokenizer: 'per generated image',
  mask_decoder: 'per segmentation',
};
/** The stages that answer `ask` and `describe`; generation and segmentation add the others. */
const UNDERSTANDING: readonly StageName[] = ['encoder', 'merger', 'embed', 'llm'];

export interface StagePlan {
  stage: StageName | 'cluster';
  precision: string;
  params: number;
  bytes: number;
  flops: number;
  use: string;
}

export interface ModulePlan {
  module: string;
  memoryBytes: number;
  /** memoryBytes less the OS reservation. */
  availableBytes: number;
  /** ask/describe: understanding stages + KV cache + activations + runtime. */
  ask: { needBytes: number; fits: boolean; spareBytes: number };
  /** every stage resident (generate, edit, segment too). */
  all: { needBytes: number; fits: boolean; spareBytes: number };
}

export interface ModelSetPlan {
  precision: Precision;
  query: QueryShape;
  context: number;
  stages: StagePlan[];
  totals: { params: number; bytes: number; bytesUnderstanding: number };
  kvCacheBytes: number;
  /**
   * Bytes between host and device per decode step: the token's embedding and the write position in,
   * the last position's logits and hidden state out (IO is fp32). The KV cache stays in device memory.
   */
  decodeStepHostBytes: number;
  /** What a step would move if the cache crossed with it, in and out (the growing-cache contract this replaced). */
  growingCacheStepBytes: number;
  activationBytes: number;
  runtimeBytes: number;
  osReservedBytes: number;
  /** FLOPs of one `ask` query (encoder, cluster, merger, LLM prefill and answer). */
  queryFlops: number;
  /** The same query with 256 fixed vision tokens, the paper's baseline. */
  queryFlopsFixed256: number;
  /** Counts comparable with the published model sizes. */
  published: { siglipVisionTower: number; vicuna: number };
  modules: ModulePlan[];
}

export interface PlanOptions {
  precision: Precision;
  tokens: number;
  context: number;
  promptTokens?: number;
  answerTokens?: number;
}

const stagePrecision = (stage: StageName, p: Precision) =>
  stage !== 'llm' || p === 'fp16' ? 'fp16' : p === 'int8' ? 'int8 (lm_head fp16)' : `int4w/${INT4_BLOCK} (lm_head fp16)`;

export function planModelSet(a: Architecture, opts: PlanOptions): ModelSetPlan {
  const query: QueryShape = { tokens: opts.tokens, promptTokens: opts.promptTokens ?? 64, answerTokens: opts.answerTokens ?? 64 };
  const stages: StagePlan[] = (['encoder', 'cluster', 'merger', 'embed', 'llm', 'diffusion', 'detokenizer', 'mask_decoder'] as const).map((stage) => {
    const flops = stageFlops(a, stage, query);
    if (stage === 'cluster') return { stage, precision: 'fp32', params: 0, bytes: 0, flops, use: STAGE_USE[stage] };
    const ws = stageWeights(a, stage);
    return { stage, precision: stagePrecision(stage, opts.precision), params: paramsOf(ws), bytes: bytesOf(ws, opts.precision), flops, use: STAGE_USE[stage] };
  });
  const sum = (f: (s: StagePlan) => number, only?: readonly string[]) =>
    stages.filter((s) => !only || only.includes(s.stage)).reduce((n, s) => n + f(s), 0);
  const queryFlops = sum((s) => s.flops, ['encoder', 'cluster', 'merger', 'embed', 'llm']);
  const fixed = { ...query, tokens: 256 };
  const queryFlopsFixed256 = (['encoder', 'cluster', 'merger', 'llm'] as const).reduce((n, s) => n + stageFlops(a, s, fixed), 0);
  const kvCacheBytes = 2 * a.llm.layers * a.llm.kvHeads * headDim(a) * opts.context * 2; // K and V, fp16
  const act = activationBytes(a, query);
  const bytes = sum((s) => s.bytes);
  const bytesUnderstanding = sum((s) => s.bytes, UNDERSTANDING);
  const fit = (weights: number, available: number) => {
    const needBytes = weights + kvCacheBytes + act + RUNTIME_BYTES;
    return { needBytes, fits: needBytes <= available, spareBytes: available - needBytes };
  };
  const modules = MODULES.map((m) => {
    const availableBytes = m.memoryBytes - OS_RESERVED_BYTES;
    return { module: m.name, memoryBytes: m.memoryBytes, availableBytes, ask: fit(bytesUnderstanding, availableBytes), all: fit(bytes, availableBytes) };
  });
  return {
    precision: opts.precision,
    query,
    context: opts.context,
    stages,
    totals: { params: sum((s) => s.params), bytes, bytesUnderstanding },
    kvCacheBytes,
    decodeStepHostBytes: 4 * (a.llm.hidden + a.llm.vocab + a.llm.hidden) + 8,
    growingCacheStepBytes: 2 * kvCacheBytes,
    activationBytes: act,
    runtimeBytes: RUNTIME_BYTES,
    osReservedBytes: OS_RESERVED_BYTES,
    queryFlops,
    queryFlopsFixed256,
    published: { siglipVisionTower: siglipPublishedParams(a), vicuna: llamaPublishedParams(a) },
    modules,
  };
}

const fmtParams = (n: number) => (n === 0 ? '-' : n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : `${(n / 1e6).toFixed(1)} M`);
const fmtBytes = (n: number) => (n === 0 ? '-' : Math.abs(n) >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`);
const fmtGiB = (n: number) => (n / GiB).toFixed(2);
const fmtFlops = (n: number) => (n >= 1e12 ? `${(n / 1e12).toFixed(2)} T` : `${(n / 1e9).toFixed(1)} G`);
/** Table row: the first `left` columns left-aligned (names), the rest right-aligned (numbers). */
const pad = (cells: string[], widths: number[], left = 1) =>
  cells.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();

export function formatPlan(config: string, p: ModelSetPlan): string {
  const q = p.query;
  const out = [
    `${config} at ${p.precision}: ${q.tokens} vision tokens, prompt ${q.promptTokens} + answer ${q.answerTokens} text tokens, KV cache for ${p.context} positions`,
    '',
  ];
  const w = [13, 24, 8, 11, 9];
  out.push(pad(['stage', 'precision', 'params', 'weights', 'FLOPs'], w, 2) + '  use');
  for (const s of p.stages) out.push(pad([s.stage, s.precision, fmtParams(s.params), fmtBytes(s.bytes), fmtFlops(s.flops)], w, 2) + `  ${s.use}`);
  out.push(pad(['total', '', fmtParams(p.totals.params), fmtBytes(p.totals.bytes), ''], w, 2));
  out.push(
    '',
    `published sizes: SigLIP-SO400M vision tower ${fmtParams(p.published.siglipVisionTower)} (with its pooling head and post-LayerNorm, which the encoder stage leaves out), Vicuna-7B ${fmtParams(p.published.vicuna)} (32000-piece vocabulary)`,
    `per ask query: ${fmtFlops(p.queryFlops)}FLOPs with ${q.tokens} vision tokens, ${fmtFlops(p.queryFlopsFixed256)}FLOPs with 256 fixed tokens (ratio ${(p.queryFlops / p.queryFlopsFixed256).toFixed(2)}; the paper reports 8.3 vs 15.7 TFLOPs, ratio 0.53)`,
    `KV cache (fp16, ${p.context} positions): ${fmtBytes(p.kvCacheBytes)}; peak activations ${fmtBytes(p.activationBytes)}; CUDA/TensorRT runtime ${fmtBytes(p.runtimeBytes)}; OS reserve ${fmtBytes(p.osReservedBytes)}`,
    `per decode step to and from the host: ${(p.decodeStepHostBytes / 1024).toFixed(0)} KiB ` +
      "(the token's embedding in, the last logits and hidden out); the KV cache stays on the device " +
      `(crossing with each step it would move ${fmtBytes(p.growingCacheStepBytes)})`,
    '',
  );
  const mw = [16, 7, 9, 9, 5, 7, 9, 5, 7];
  out.push('memory (GiB)      ask/describe: encoder+merger+embed+llm      all stages resident');
  out.push(pad(['module', 'total', 'usable', 'need', 'fits', 'spare', 'need', 'fits', 'spare'], mw));
  for (const m of p.modules) {
    const yn = (b: boolean) => (b ? 'yes' : 'no');
    out.push(pad([m.module, fmtGiB(m.memoryBytes), fmtGiB(m.availableBytes), fmtGiB(m.ask.needBytes), yn(m.ask.fits), fmtGiB(m.ask.spareBytes), fmtGiB(m.all.needBytes), yn(m.all.fits), fmtGiB(m.all.spareBytes)], mw));
  }
  out.push(
    '',
    'assumptions: vision stages stay fp16 at every precision (the clustering threshold is absolute, so quantising the encoder',
    `shifts the token count); int8 = INT8 LLM weights with per-channel fp16 scales; int4w = INT4 LLM weights, symmetric, one fp16`,
    `scale per ${INT4_BLOCK} weights; embeddings, norms and lm_head stay fp16. Engine deserialisation peaks are not counted.`,
  );
  return out.join('\n');
}

const PlanCliOptions = z.object({
  config: z.enum(CONFIG_NAMES, { error: (i) => `unknown config ${JSON.stringify(i.input)}; one of ${CONFIG_NAMES.join(', ')}` }),
  precision: z.enum(PRECISIONS, { error: (i) => `unknown precision ${JSON.stringify(i.input)}; one of ${PRECISIONS.join(', ')}` }),
  tokens: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1'),
  context: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1').optional(),
  promptTokens: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1'),
  answerTokens: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1'),
  json: z.boolean().optional(),
});

/** Validates the CLI options and plans; every bad option is a BAD_ARGUMENT naming it. */
export function planFromCli(raw: unknown): { config: string; plan: ModelSetPlan } {
  const o = parseFlags(PlanCliOptions, raw, 'export plan');
  const a = CONFIGS[o.config];
  const N = patches(a);
  if (o.tokens > N) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `export plan: --tokens ${o.tokens} is more than the ${N} patches an image has`);
  const context = o.context ?? Math.min(2048, a.llm.maxContext);
  const needed = o.promptTokens + o.tokens + o.answerTokens;
  if (context > a.llm.maxContext) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `export plan: --context ${context} is beyond the LLM's ${a.llm.maxContext} positions`);
  }
  if (context < needed) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `export plan: --context ${context} cannot hold the query's ${needed} tokens (prompt + vision + answer)`);
  }
  return { config: o.config, plan: planModelSet(a, { precision: o.precision, tokens: o.tokens, context, promptTokens: o.promptTokens, answerTokens: o.answerTokens }) };
}

export function registerPlanCommand(exportCmd: Command): void {
  exportCmd
    .command('plan')
    .description('size a model set for Jetson: parameters, weight bytes and FLOPs per stage, KV cache, which Orin modules it fits')
    .requiredOption('--config <name>', `architecture: ${CONFIG_NAMES.join(' | ')}`)
    .requiredOption('--precision <p>', `LLM weight precision: ${PRECISIONS.join(' | ')}`)
    .requiredOption('--tokens <L>', 'vision tokens per image after clustering (the paper averages about 25)')
    .option('--context <n>', 'KV cache positions to reserve (default 2048, at most the LLM context)')
    .option('--prompt-tokens <n>', 'text tokens of the prompt, template included', '64')
    .option('--answer-tokens <n>', 'generated tokens per answer', '64')
    .option('--json', 'print the plan as JSON')
    .action((raw: unknown) => {
      const { config, plan } = planFromCli(raw);
      process.stdout.write((((raw as { json?: boolean }).json ? JSON.stringify({ config, ...plan }, null, 2) : formatPlan(config, plan))) + '\n');
    });
}
