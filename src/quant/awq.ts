/**
 * Activation-aware INT4 scales (AWQ, Lin et al. 2023, the "auto-scale" step): a MatMul's weight rows
 * are multiplied by s[k] before INT4 quantisation and its input channels divided by s[k], so input
 * channels that carry large activations get finer weight steps. s = mean|x|^alpha (per input
 * channel, over the calibration activations), normalised by sqrt(max s * min s); alpha is searched
 * on a grid for the smallest output error ||X W - X W_q||^2 over sampled calibration rows X. The
 * MatMuls reading one activation (q/k/v, gate/up) share one s, since one multiplier feeds them all.
 *
 * In the graph the activation is multiplied by m = 1/s (rounded to float16, so both dialects hold
 * the same value) in one explicit Mul before those MatMuls, as TensorRT Model Optimizer's exports
 * do (its "pre_quant_scale"), and the weights quantised are W / m. alpha = 0 is plain round-to-
 * nearest: no Mul is written. The error products X E run in ONNX Runtime (one MatMul session).
 *
 * The chosen alpha's weights are then quantised with GPTQ error feedback (gptq.ts) on the scaled
 * problem (weights W / m, activations X m, H from the same sampled rows), with int4.ts's clip search
 * choosing each block's scale; `gptq: false` keeps round-to-nearest with the clip search.
 */
import type { Backend } from '../engine/backend.js';
import type { StageSignature } from '../engine/contract.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { activationStats, withSession, type ActivationStats } from './calibrate.js';
import type { Int4Plan, Int4Selection } from './int4-graph.js';
import { InverseHessian, quantizeGptq } from './gptq.js';
import { CLIP_RATIOS, dequantizeInt4, quantizeInt4, type Int4Weights } from './int4.js';
import { DT, encodeModel, floatValues, onnx, roundToFloat16, type ModelProto } from './onnx-model.js';
import type { Feeds } from './record.js';

/** The alphas tried: 0 (round to nearest) to 1 in steps of 0.05, as AWQ's grid of 20. */
export const AWQ_ALPHAS = Array.from({ length: 21 }, (_, i) => i / 20);
/** Calibration rows the search measures the output error on. */
export const AWQ_ROWS = 256;

export interface AwqWeight {
  name: string;
  /** [K, N] row-major. */
  w: Float32Array;
  N: number;
  block: number;
}

export interface AwqGroup {
  /** The activation the MatMuls read (their shared input). */
  activation: string;
  K: number;
  weights: AwqWeight[];
}

export interface AwqResult {
  activation: string;
  alpha: number;
  /** m[k] = 1/s[k] as float16 values; undefined when alpha is 0 (no Mul). */
  multipliers?: Float32Array;
  /** The quantised weights (of W / m), in the group's order. */
  quantized: Int4Weights[];
  /** Output error at alpha 0 and at the chosen alpha, sum of squares over the sampled rows. */
  lossRtn: number;
  loss: number;
  /** Whether the weights were quantised with GPTQ error feedback (false without calibration rows). */
  gptq: boolean;
}

export interface AwqOptions {
  stage: string;
  threads?: number;
  /** GPTQ error feedback after the alpha search (default true). */
  gptq?: boolean;
  onGroup?: (done: number, total: number) => void;
}

/** The multipliers m = 1/s for one alpha (float16 values). */
export function awqMultipliers(meanAbs: Float64Array, alpha: number, where: string): Float32Array {
  const K = meanAbs.length;
  let top = 0;
  meanAbs.forEach((v, k) => {
    if (!(v >= 0 && Number.isFinite(v)))
      throw new SetokimError(
        ErrorCodes.QUANT_SCALE_INVALID,
        `${where}: the AWQ scale of input channel ${k} is ${v} (its mean |x| over the calibration rows); ` +
          `calibrate on other images or quantise without this stage`,
      );
    top = Math.max(top, v);
  });
  const floor = top > 0 ? top * 1e-4 : 1; // a dead channel: no blow-up
  const s = new Float64Array(K);
  let lo = Infinity;
  let hi = 0;
  for (let k = 0; k < K; k++) {
    s[k] = Math.max(meanAbs[k]!, floor) ** alpha;
    lo = Math.min(lo, s[k]!);
    hi = Math.max(hi, s[k]!);
  }
  const norm = Math.sqrt(lo * hi);
  const m = new Float32Array(K);
  for (let k = 0; k < K; k++) {
    m[k] = roundToFloat16(norm / s[k]!);
    if (!Number.isFinite(m[k]!) || m[k]! <= 0) {
      throw new SetokimError(
        ErrorCodes.QUANT_SCALE_INVALID,
        `${where}: the AWQ scale of input channel ${k} is ${m[k]} (mean |x| ${meanAbs[k]}, alpha ${alpha}); ` +
          `calibrate on other images or quantise without this stage`,
      );
    }
  }
  return m;
}

/** W / m row-wise (the weights the graph stores for multipliers m). */
function divideRows(w: Float32Array, m: Float32Array | undefined, N: number): Float64Array {
  const out = new Float64Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = m ? w[i]! / m[Math.floor(i / N)]! : w[i]!;
  return out;
}

/** A MatMul(A [r, K], B [K, N]) graph with free dims, for the error products. */
function matmulModel(): Uint8Array {
  const io = (name: string, a: string, b: string) =>
    onnx.ValueInfoProto.create({
      name,
      type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: a }, { dimParam: b }] } } },
    });
  const m: ModelProto = onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'setokim-edge',
    graph: {
      name: 'awq_error',
      node: [{ opType: 'MatMul', name: 'error', input: ['x', 'e'], output: ['y'] }],
      input: [io('x', 'r', 'k'), io('e', 'k', 'n')],
      output: [io('y', 'r', 'n')],
    },
  });
  return encodeModel(m);
}

/** Searches alpha for every group, in one ONNX Runtime session. */
export async function searchAwq(
  backend: Backend,
  groups: readonly AwqGroup[],
  stats: ReadonlyMap<string, ActivationStats>,
  opts: AwqOptions,
): Promise<AwqResult[]> {
  return withSession(
    backend,
    matmulModel(),
    { stage: `${opts.stage} (AWQ search)`, threads: opts.threads },
    async (run) => {
      const out: AwqResult[] = [];
      for (const g of groups) {
        out.push(
          await searchGroup(g, stats.get(g.activation), opts, async (x, rows, e, n) => {
            const y = await run({
              x: { dtype: 'float32', dims: [rows, g.K], data: x, location: 'host' },
              e: { dtype: 'float32', dims: [g.K, n], data: e, location: 'host' },
            });
            return y.y!.data as Float32Array;
          }),
        );
        opts.onGroup?.(out.length, groups.length);
      }
      return out;
    },
  );
}

type MatMul = (x: Float32Array, rows: number, e: Float32Array, n: number) => Promise<Float32Array>;

async function searchGroup(
  g: AwqGroup,
  st: ActivationStats | undefined,
  opts: AwqOptions,
  matmul: MatMul,
): Promise<AwqResult> {
  const stage = opts.stage;
  // alpha is searched with max|w| / 7 scales (fast); the chosen alpha's weights then get the clip search (int4.ts)
  const quantize = (m: Float32Array | undefined, ratios: readonly number[] = [1]) =>
    g.weights.map((w) => quantizeInt4(divideRows(w.w, m, w.N), g.K, w.N, w.block, `${stage} ${w.name}`, ratios));
  const rtn = quantize(undefined);
  const rows = st?.rows();
  if (!st || !rows || rows.count === 0 || st.width !== g.K)
    return {
      activation: g.activation,
      alpha: 0,
      quantized: quantize(undefined, CLIP_RATIOS),
      lossRtn: NaN,
      loss: NaN,
      gptq: false,
    };
  const totalN = g.weights.reduce((s, w) => s + w.N, 0);
  // E = W - m * deq(Q(W / m)), all weights of the group side by side: [K, sum N]
  const loss = async (q: Int4Weights[], m: Float32Array | undefined): Promise<number> => {
    const e = new Float32Array(g.K * totalN);
    let col = 0;
    g.weights.forEach((w, i) => {
      const d = dequantizeInt4(q[i]!);
      for (let k = 0; k < g.K; k++) {
        const mk = m ? m[k]! : 1;
        for (let n = 0; n < w.N; n++) e[k * totalN + col + n] = w.w[k * w.N + n]! - mk * d[k * w.N + n]!;
      }
      col += w.N;
    });
    const y = await matmul(rows.data, rows.count, e, totalN);
    let s = 0;
    for (const v of y) s += v * v;
    return s;
  };
  const lossRtn = await loss(rtn, undefined);
  let best: AwqResult = { activation: g.activation, alpha: 0, quantized: rtn, lossRtn, loss: lossRtn, gptq: false };
  const meanAbs = st.channelMeanAbs();
  for (const alpha of AWQ_ALPHAS.slice(1)) {
    const m = awqMultipliers(meanAbs, alpha, `${stage} ${g.activation}`);
    const q = quantize(m);
    const l = await loss(q, m);
    if (l < best.loss) best = { ...best, alpha, multipliers: m, quantized: q, loss: l };
  }
  if (opts.gptq === false) {
    const clipped = quantize(best.multipliers, CLIP_RATIOS);
    return { ...best, quantized: clipped, loss: await loss(clipped, best.multipliers) };
  }
  const m = best.multipliers;
  const hinv = InverseHessian.fromRows(rows.data, rows.count, g.K, {
    m,
    where: `${stage} ${g.activation}`,
  });
  const q = g.weights.map((w) =>
    quantizeGptq(divideRows(w.w, m, w.N), g.K, w.N, w.block, hinv, `${stage} ${w.name}`, CLIP_RATIOS),
  );
  return { ...best, quantized: q, loss: await loss(q, m), gptq: true };
}

/**
 * Calibrates the selected MatMuls' activations on `feeds`, searches AWQ for each group and returns the
 * weights to write.
 */
export async function planInt4(
  backend: Backend,
  model: ModelProto,
  selection: Int4Selection,
  feeds: readonly Feeds[],
  opts: {
    stage: string;
    signature?: StageSignature;
    threads?: number;
    /** GPTQ error feedback (default true). */
    gptq?: boolean;
    onProgress?: (phase: 'activations' | 'awq', done: number, total: number) => void;
  },
): Promise<{ plan: Int4Plan; awq: AwqResult[] }> {
  const names = [...selection.groups.keys()];
  const stats = await activationStats(backend, model, names, feeds, {
    ...opts,
    channels: true,
    rows: AWQ_ROWS,
    onSample: (d, t) => opts.onProgress?.('activations', d, t),
  });
  const inits = new Map((model.graph!.initializer ?? []).map((t) => [t.name!, t]));
  const groups: AwqGroup[] = [...selection.groups].map(([activation, targets]) => ({
    activation,
    K: targets[0]!.dims[0],
    weights: targets.map((t) => ({
      name: t.weight,
      w: floatValues(inits.get(t.weight)!),
      N: t.dims[1],
      block: t.block,
    })),
  }));
  const awq = await searchAwq(backend, groups, stats, { ...opts, onGroup: (d, t) => opts.onProgress?.('awq', d, t) });
  const weights = new Map<string, Int4Weights>();
  const multipliers = new Map<string, Float32Array>();
  awq.forEach((r, i) => {
    groups[i]!.weights.forEach((w, j) => weights.set(w.name, r.quantized[j]!));
    if (r.multipliers) multipliers.set(r.activation, r.multipliers);
  });
  return { plan: { selection, weights, multipliers }, awq };
}
