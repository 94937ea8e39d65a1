/**
 * `setokim export plan`: sizes a model set from its architecture, without writing weights:
 * parameters and weight bytes per stage at a precision (plan-weights.ts: as `export quantize`
 * writes them), FLOPs per stage and per query, the LLM's KV cache at a context length, whether the
 * set fits each Jetson Orin module, the decode rate its memory bandwidth allows, and the host memory
 * a TensorRT engine build of each stage peaks at.
 *
 * FLOPs count a multiply-add as 2 and cover the matrix products (linear layers and attention);
 * norms, activations and softmax are left out.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { headDim, type Architecture, type StageName } from '../../src/engine/contract.js';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { group, parseCommandSettings, registerFlags, setting } from '../../src/settings.js';
import { DEFAULT_BLOCK_SIZE, DEFAULT_FP16_MAX_MIB, DEFAULT_FP16_SHARE } from '../../src/quant/index.js';
import { blockSizeSetting, fp16MaxMibSetting, fp16ShareSetting } from './flags.js';
import { CONFIG_NAMES, CONFIGS } from './configs.js';
import { DEFAULT_WORKSPACE_MB } from './engine.js';
import { builderPeakEstimate } from '../../src/engine/build-estimate.js';
import {
  attn,
  bytesOf,
  gmlp,
  lin,
  llamaPublishedParams,
  paramsOf,
  patches,
  PRECISIONS,
  siglipPublishedParams,
  stagePrecision,
  stageWeights,
  type Precision,
  type Weight,
} from './plan-weights.js';

export { PRECISIONS, stageWeights, type Precision } from './plan-weights.js';
const GiB = 2 ** 30;

/**
 * Jetson Orin modules: memory is shared by CPU and GPU; bandwidth is the LPDDR5's peak (NVIDIA's
 * module data sheets).
 */
export const MODULES = [
  { name: 'Orin Nano 8 GB', memoryBytes: 8 * GiB, bandwidthBytes: 68e9 },
  { name: 'Orin NX 16 GB', memoryBytes: 16 * GiB, bandwidthBytes: 102.4e9 },
  { name: 'AGX Orin 64 GB', memoryBytes: 64 * GiB, bandwidthBytes: 204.8e9 },
] as const;
/** OS (headless L4T), carve-outs and page cache: not available to the model. */
export const OS_RESERVED_BYTES = 1.5 * GiB;
/** CUDA context, cuBLAS/cuDNN handles and TensorRT's tactic workspace. */
export const RUNTIME_BYTES = 0.5 * GiB;

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
  const macs = (ws: Weight[], tokens: number) =>
    2 * tokens * ws.reduce((n, w) => n + (w.kind === 'linear' ? w.count * w.in * w.out : 0), 0);
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
      const t =
        macs([lin(D, W), lin(W, W, 2)], L) + macs([lin(W, W, 2)], N) + attnScores(L, N, W) + macs([lin(W, W)], L);
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
  /** Host memory a TensorRT engine build of the stage peaks at (estimate, see builderPeakBytes). */
  builderPeakBytes: number;
}

/**
 * A TensorRT engine build's host memory on a Jetson (unified memory), from the estimate the device's
 * build preflight checks too (src/engine/build-estimate.ts: 4x the weights, the builder, the
 * workspace), so the planner and a fleet install agree on what a build needs. Not measured on a device.
 */
export const builderPeakBytes = (weightBytes: number, workspaceBytes = DEFAULT_WORKSPACE_MB * 2 ** 20) =>
  builderPeakEstimate({ weightBytes, workspaceBytes, integratedGpu: true }).hostBytes;

export interface ModulePlan {
  module: string;
  memoryBytes: number;
  /** memoryBytes less the OS reservation. */
  availableBytes: number;
  /** ask/describe: understanding stages + KV cache + activations + runtime. */
  ask: { needBytes: number; fits: boolean; spareBytes: number };
  /** every stage resident (generate, edit, segment too). */
  all: { needBytes: number; fits: boolean; spareBytes: number };
  bandwidthBytes: number;
  /**
   * Decode ceiling: bandwidth / bytes read per generated token (the LLM's weights, one embedding row,
   * the KV cache).
   */
  decodeTokensPerS: number;
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
  /** Bytes one decode step reads: every LLM weight, one embedding row, the KV cache of the mean decode position. */
  decodeBytesPerToken: number;
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
  /** int4w: input rows per INT4 scale (default 128). */
  blockSize?: number;
  /** int4w: the share of INT4 weights `export quantize --fp16-share` may keep float16 (its default). */
  fp16Share?: number;
  /** int4w: the most those float16 weights may add, MiB (its default). */
  fp16MaxMib?: number;
}

export function planModelSet(a: Architecture, opts: PlanOptions): ModelSetPlan {
  const query: QueryShape = {
    tokens: opts.tokens,
    promptTokens: opts.promptTokens ?? 64,
    answerTokens: opts.answerTokens ?? 64,
  };
  const block = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  const stages: StagePlan[] = (
    ['encoder', 'cluster', 'merger', 'embed', 'llm', 'diffusion', 'detokenizer', 'mask_decoder'] as const
  ).map((stage) => {
    const flops = stageFlops(a, stage, query);
    if (stage === 'cluster')
      return { stage, precision: 'fp32', params: 0, bytes: 0, flops, use: STAGE_USE[stage], builderPeakBytes: 0 };
    const ws = stageWeights(a, stage);
    const bytes = bytesOf(stage, ws, opts.precision, block, opts.fp16Share, opts.fp16MaxMib);
    return {
      stage,
      precision: stagePrecision(stage, opts.precision, block),
      params: paramsOf(ws),
      bytes,
      flops,
      use: STAGE_USE[stage],
      builderPeakBytes: builderPeakBytes(bytes),
    };
  });
  const sum = (f: (s: StagePlan) => number, only?: readonly string[]) =>
    stages.filter((s) => !only || only.includes(s.stage)).reduce((n, s) => n + f(s), 0);
  const queryFlops = sum((s) => s.flops, ['encoder', 'cluster', 'merger', 'embed', 'llm']);
  const fixed = { ...query, tokens: 256 };
  const queryFlopsFixed256 = (['encoder', 'cluster', 'merger', 'llm'] as const).reduce(
    (n, s) => n + stageFlops(a, s, fixed),
    0,
  );
  const kvPerPosition = 2 * a.llm.layers * a.llm.kvHeads * headDim(a) * 2; // K and V, fp16
  const kvCacheBytes = kvPerPosition * opts.context;
  const llm = stages.find((s) => s.stage === 'llm')!;
  const embed = stages.find((s) => s.stage === 'embed')!;
  // the query's fixed cache (prompt, vision tokens, answer): every decode step reads all of it (docs/CONTRACT.md)
  const queryPositions = query.promptTokens + query.tokens + query.answerTokens;
  const decodeBytesPerToken = llm.bytes + embed.bytes / a.llm.vocab + kvPerPosition * queryPositions;
  const act = activationBytes(a, query);
  const bytes = sum((s) => s.bytes);
  const bytesUnderstanding = sum((s) => s.bytes, UNDERSTANDING);
  const fit = (weights: number, available: number) => {
    const needBytes = weights + kvCacheBytes + act + RUNTIME_BYTES;
    return { needBytes, fits: needBytes <= available, spareBytes: available - needBytes };
  };
  const modules = MODULES.map((m) => {
    const availableBytes = m.memoryBytes - OS_RESERVED_BYTES;
    return {
      module: m.name,
      memoryBytes: m.memoryBytes,
      availableBytes,
      ask: fit(bytesUnderstanding, availableBytes),
      all: fit(bytes, availableBytes),
      bandwidthBytes: m.bandwidthBytes,
      decodeTokensPerS: m.bandwidthBytes / decodeBytesPerToken,
    };
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
    decodeBytesPerToken,
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
const fmtBytes = (n: number) =>
  n === 0 ? '-' : Math.abs(n) >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
const fmtGiB = (n: number) => (n / GiB).toFixed(2);
const fmtFlops = (n: number) => (n >= 1e12 ? `${(n / 1e12).toFixed(2)} T` : `${(n / 1e9).toFixed(1)} G`);
/** Table row: the first `left` columns left-aligned (names), the rest right-aligned (numbers). */
const pad = (cells: string[], widths: number[], left = 1) =>
  cells
    .map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
    .join('  ')
    .trimEnd();

export function formatPlan(config: string, p: ModelSetPlan): string {
  const q = p.query;
  const out = [
    `${config} at ${p.precision}: ${q.tokens} vision tokens, prompt ${q.promptTokens} + answer ${q.answerTokens} ` +
      `text tokens, KV cache for ${p.context} positions`,
    '',
  ];
  const w = [13, 24, 8, 11, 9, 12];
  out.push(pad(['stage', 'precision', 'params', 'weights', 'FLOPs', 'engine build'], w, 2) + '  use');
  for (const s of p.stages) {
    const build = s.builderPeakBytes ? fmtBytes(s.builderPeakBytes) : '-';
    out.push(
      pad([s.stage, s.precision, fmtParams(s.params), fmtBytes(s.bytes), fmtFlops(s.flops), build], w, 2) +
        `  ${s.use}`,
    );
  }
  out.push(pad(['total', '', fmtParams(p.totals.params), fmtBytes(p.totals.bytes), '', ''], w, 2));
  out.push(
    '',
    `published sizes: SigLIP-SO400M vision tower ${fmtParams(p.published.siglipVisionTower)} (with its pooling ` +
      `head and post-LayerNorm, which the encoder stage leaves out), Vicuna-7B ${fmtParams(p.published.vicuna)} ` +
      `(32000-piece vocabulary)`,
    `per ask query: ${fmtFlops(p.queryFlops)}FLOPs with ${q.tokens} vision tokens, ` +
      `${fmtFlops(p.queryFlopsFixed256)}FLOPs with 256 fixed tokens (ratio ` +
      `${(p.queryFlops / p.queryFlopsFixed256).toFixed(2)}; the paper reports 8.3 vs 15.7 TFLOPs, ratio 0.53)`,
    `KV cache (fp16, ${p.context} positions): ${fmtBytes(p.kvCacheBytes)}; peak activations ` +
      `${fmtBytes(p.activationBytes)}; CUDA/TensorRT runtime ${fmtBytes(p.runtimeBytes)}; OS reserve ` +
      `${fmtBytes(p.osReservedBytes)}`,
    `per decode step to and from the host: ${(p.decodeStepHostBytes / 1024).toFixed(0)} KiB ` +
      "(the token's embedding in, the last logits and hidden out); the KV cache stays on the device " +
      `(crossing with each step it would move ${fmtBytes(p.growingCacheStepBytes)})`,
    '',
  );
  const mw = [16, 7, 9, 9, 5, 7, 9, 5, 7, 9, 10];
  out.push('memory (GiB)      ask/describe: encoder+merger+embed+llm      all stages resident     decode ceiling');
  out.push(
    pad(['module', 'total', 'usable', 'need', 'fits', 'spare', 'need', 'fits', 'spare', 'GB/s', 'tokens/s'], mw),
  );
  for (const m of p.modules) {
    const yn = (b: boolean) => (b ? 'yes' : 'no');
    const decode = [(m.bandwidthBytes / 1e9).toFixed(1), m.decodeTokensPerS.toFixed(1)];
    out.push(
      pad(
        [
          m.module,
          fmtGiB(m.memoryBytes),
          fmtGiB(m.availableBytes),
          fmtGiB(m.ask.needBytes),
          yn(m.ask.fits),
          fmtGiB(m.ask.spareBytes),
          fmtGiB(m.all.needBytes),
          yn(m.all.fits),
          fmtGiB(m.all.spareBytes),
          ...decode,
        ],
        mw,
      ),
    );
  }
  out.push(
    '',
    `decode ceiling: bandwidth / ${fmtBytes(p.decodeBytesPerToken)} read per generated token (every LLM weight,`,
    "one embedding row, the query's fixed fp16 KV cache, which every step reads whole); a decode step",
    'cannot be faster than its weights stream from memory.',
    'engine build: host memory a TensorRT build of the stage peaks at, estimated as 4x its weights',
    `(users see 3-4x) + the builder's 512 MiB + the ${DEFAULT_WORKSPACE_MB} MiB workspace; unified memory on a`,
    'Jetson; what a fleet install checks before it builds. Not measured on a device.',
    'weights: the builds `export quantize` writes (TensorRT dialect): fp16 keeps LayerNorm parameters',
    'fp32; int8 stores linear weights int8 with fp32 scales and keeps everything else fp32 (the embed',
    'stage has no int8 build); int4w = INT4 weights, symmetric, one fp16 scale per block, for the LLM',
    `(lm_head fp16, and the share of the INT4 weights --fp16-share allows, default ${100 * DEFAULT_FP16_SHARE}%, at`,
    `most --fp16-max-mib, default ${DEFAULT_FP16_MAX_MIB} MiB, float16 where they measure most sensitive: counted`,
    'in full), every other stage fp16.',
  );
  return out.join('\n');
}

const count = z.number().int('must be a whole number').min(1, 'must be at least 1');

/** One of `values`; a missing one is 'required', a wrong one named with the choices. */
const oneOf = <T extends readonly [string, ...string[]]>(what: string, values: T) =>
  z.enum(values, {
    error: (i) =>
      i.input === undefined ? 'required' : `unknown ${what} ${JSON.stringify(i.input)}; one of ${values.join(', ')}`,
  });

/** Every flag of `export plan`, declared once (src/settings.ts). */
const planSettings = group({
  config: setting({
    schema: oneOf('config', CONFIG_NAMES),
    required: true,
    flag: '--config <name>',
    help: `architecture: ${CONFIG_NAMES.join(' | ')} (required)`,
  }),
  precision: setting({
    schema: oneOf('precision', PRECISIONS),
    required: true,
    flag: '--precision <p>',
    help: `the builds \`export quantize\` writes: ${PRECISIONS.join(' | ')} (required)`,
  }),
  blockSize: blockSizeSetting,
  fp16Share: fp16ShareSetting,
  fp16MaxMib: fp16MaxMibSetting,
  tokens: setting({
    schema: count,
    required: true,
    flag: '--tokens <L>',
    read: 'number',
    help: 'vision tokens per image after clustering (the paper averages about 25; required)',
  }),
  context: setting({
    schema: count,
    flag: '--context <n>',
    read: 'number',
    help: 'KV cache positions to reserve (default 2048, at most the LLM context)',
  }),
  promptTokens: setting({
    schema: count,
    default: 64,
    flag: '--prompt-tokens <n>',
    read: 'number',
    help: 'text tokens of the prompt, template included',
  }),
  answerTokens: setting({
    schema: count,
    default: 64,
    flag: '--answer-tokens <n>',
    read: 'number',
    help: 'generated tokens per answer',
  }),
  json: setting({ schema: z.boolean(), default: false, flag: '--json', help: 'print the plan as JSON' }),
});

/** Validates the CLI options and plans; every bad option is a BAD_ARGUMENT naming it. */
export function planFromCli(raw: unknown): { config: string; plan: ModelSetPlan } {
  const o = parseCommandSettings(planSettings, raw as Record<string, unknown>, 'export plan');
  const a = CONFIGS[o.config];
  const N = patches(a);
  if (o.tokens > N)
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `export plan: --tokens ${o.tokens} is more than the ${N} patches an image has`,
    );
  const context = o.context ?? Math.min(2048, a.llm.maxContext);
  const needed = o.promptTokens + o.tokens + o.answerTokens;
  if (context > a.llm.maxContext) {
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `export plan: --context ${context} is beyond the LLM's ${a.llm.maxContext} positions`,
    );
  }
  if (context < needed) {
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `export plan: --context ${context} cannot hold the query's ${needed} tokens (prompt + vision + answer)`,
    );
  }
  return {
    config: o.config,
    plan: planModelSet(a, {
      precision: o.precision,
      tokens: o.tokens,
      context,
      promptTokens: o.promptTokens,
      answerTokens: o.answerTokens,
      blockSize: o.blockSize,
      fp16Share: o.fp16Share,
      fp16MaxMib: o.fp16MaxMib,
    }),
  };
}

export function registerPlanCommand(exportCmd: Command): void {
  const cmd = exportCmd
    .command('plan')
    .description(
      'size a model set for Jetson: parameters, weight bytes and FLOPs per stage, KV cache, ' +
        'which Orin modules it fits, decode ceiling, engine build memory',
    );
  registerFlags(cmd, planSettings).action((raw: Record<string, unknown>) => {
    const { config, plan } = planFromCli(raw);
    process.stdout.write((raw.json ? JSON.stringify({ config, ...plan }, null, 2) : formatPlan(config, plan)) + '\n');
  });
}
