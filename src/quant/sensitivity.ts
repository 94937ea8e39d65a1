/**
 * Mixed precision for int4w: the MatMuls whose INT4 weights move the stage's answer most keep float16
 * weights, within a budget (as llama.cpp's Q4_K_M keeps some tensors at more bits than Q4_K_S).
 *
 * Sensitivity is measured, not guessed: for each activation group (the MatMuls reading one input, which
 * share AWQ multipliers) the stage runs on calibration feeds with every group INT4 but that one, and the
 * group's gain is how much the error falls: the mean over feeds of the worst 1 - cosine to fp32 among the
 * outputs that answer (the LLM's logits: its cache outputs reach the answer only through later logits,
 * and an early layer's cache error would otherwise outweigh what the user sees). On the `small` set one
 * group stands out, the first layer's MLP input (docs/QUANT.md): kept float16 it lifts the held-out
 * logits' worst cosine from 0.988 to 0.991, while the output error its MatMuls make on their own
 * calibration rows is no larger than the other layers' (so that error cannot pick it).
 *
 * The kept groups are the set with the largest total gain that fits the budget: a share of the stage's
 * INT4 MatMul weights (by count, not of the file: the float16 output head dominates a small model's file
 * and would buy every MatMul of `tiny` back), capped in bytes. Each kept weight costs 1.5 bytes more than
 * INT4 (3.5 in ONNX Runtime, which widens float16 weights to float32 at load): the default share, 6%,
 * buys `small` its one outlier group (5.6% of its INT4 weights, +2 MiB); the cap, 64 MiB, keeps a 7B
 * LLM within an Orin Nano 8 GB (6% of its 6.5 B INT4 weights would add 0.54 GiB).
 */
import type { Backend, Tensor } from '../engine/backend.js';
import type { StageSignature } from '../engine/contract.js';
import { withSession } from './calibrate.js';
import { tensorError } from './compare.js';
import { Int4Rewrite, type Int4Form, type Int4Plan, type Int4Target } from './int4-graph.js';
import { int4Bytes } from './int4.js';
import { encodeModel, type ModelProto } from './onnx-model.js';
import type { Feeds } from './record.js';

/** The default budget: this share of the stage's INT4 MatMul weights (by count) may stay float16, ... */
export const DEFAULT_FP16_SHARE = 0.06;
/** ... adding at most this many MiB to the stage. */
export const DEFAULT_FP16_MAX_MIB = 64;
/** Bytes a float16 weight takes beyond an INT4 one (2 - 0.5, scales aside). */
export const FP16_EXTRA_BYTES = 1.5;
/** Calibration feeds each candidate is measured on (evenly spread over the recorded ones). */
const SENSITIVITY_FEEDS = 16;

export interface KeptGroup {
  activation: string;
  matmuls: number;
  /** Fall of the mean worst (1 - cosine) of the measured outputs when this group alone stays float16. */
  gain: number;
  /** Weights in the group's MatMuls. */
  weights: number;
  /** float16 bytes minus the INT4 bytes they replace. */
  extraBytes: number;
}

export interface SensitivityOptions {
  stage: string;
  signature?: StageSignature;
  threads?: number;
  /** Share of the INT4 MatMul weights (by count) that may stay float16 (0: none). */
  share: number;
  /** The most the kept weights may add, MiB (default DEFAULT_FP16_MAX_MIB). */
  maxMib?: number;
  /** The outputs the error is measured on (default: every float32 output). */
  outputs?: readonly string[];
  /** The form the candidates are measured in (the ONNX Runtime dialect's). */
  form: Int4Form;
  onProgress?: (done: number, total: number) => void;
}

export interface SensitivityResult {
  plan: Int4Plan;
  kept: KeptGroup[];
  /** Mean worst (1 - cosine) of the measured outputs with every group INT4. */
  errorAllInt4: number;
  /** Weights the budget allows. */
  budget: number;
  candidates: number;
}

/** Measures each group's sensitivity on `feeds` and moves the ones the budget buys to `selection.kept`. */
export class SensitivityPass {
  private readonly feeds: Feeds[];
  private reference: Record<string, Tensor>[] = [];

  constructor(
    private readonly backend: Backend,
    private readonly model: ModelProto,
    private readonly plan: Int4Plan,
    feeds: readonly Feeds[],
    private readonly o: SensitivityOptions,
  ) {
    const step = Math.max(1, feeds.length / SENSITIVITY_FEEDS);
    this.feeds = Array.from(
      { length: Math.min(feeds.length, SENSITIVITY_FEEDS) },
      (_, i) => feeds[Math.floor(i * step)]!,
    );
  }

  async run(): Promise<SensitivityResult> {
    const groups = [...this.plan.selection.groups];
    const budget = fp16Budget(
      groups.reduce((n, [, targets]) => n + weightsOf(targets), 0),
      this.o.share,
      this.o.maxMib ?? DEFAULT_FP16_MAX_MIB,
    );
    const candidates = groups.filter(([, targets]) => weightsOf(targets) <= budget);
    const none = { plan: this.plan, kept: [], errorAllInt4: NaN, budget, candidates: candidates.length };
    if (candidates.length === 0 || this.feeds.length === 0) return none;
    const total = candidates.length + 2;
    let done = 0;
    const step = () => this.o.onProgress?.(++done, total);
    this.reference = await this.outputs(this.model);
    step();
    const errorAllInt4 = await this.error(this.plan);
    step();
    const measured: KeptGroup[] = [];
    for (const [activation, targets] of candidates) {
      const e = await this.error(this.keeping([activation]));
      measured.push({
        activation,
        matmuls: targets.length,
        gain: errorAllInt4 - e,
        weights: weightsOf(targets),
        extraBytes: extraBytes(targets),
      });
      step();
    }
    const kept = pick(measured, budget);
    return {
      plan: this.keeping(kept.map((k) => k.activation)),
      kept,
      errorAllInt4,
      budget,
      candidates: candidates.length,
    };
  }

  /** The plan with these groups' MatMuls float16 instead of INT4. */
  private keeping(activations: readonly string[]): Int4Plan {
    const { selection } = this.plan;
    const groups = new Map(selection.groups);
    const multipliers = new Map(this.plan.multipliers);
    const kept = [...selection.kept];
    for (const a of activations) {
      kept.push(...(groups.get(a) ?? []));
      groups.delete(a);
      multipliers.delete(a);
    }
    return { selection: { ...selection, groups, kept }, weights: this.plan.weights, multipliers };
  }

  /** Mean over the feeds of the worst output's 1 - cosine to fp32. */
  private async error(plan: Int4Plan): Promise<number> {
    const model = new Int4Rewrite(this.model, plan, this.o.stage).write(this.o.form, { headsFp16: true }).model;
    const got = await this.outputs(model);
    let sum = 0;
    got.forEach((out, i) => {
      let worst = 0;
      for (const [name, r] of Object.entries(this.reference[i]!)) {
        if (r.dtype !== 'float32' || (this.o.outputs && !this.o.outputs.includes(name))) continue;
        const g = out[name];
        worst = Math.max(worst, g ? 1 - tensorError(r, g).cosine : 2);
      }
      sum += worst;
    });
    return sum / got.length;
  }

  private outputs(model: ModelProto): Promise<Record<string, Tensor>[]> {
    return withSession(this.backend, encodeModel(model), this.o, async (run) => {
      const out: Record<string, Tensor>[] = [];
      for (const f of this.feeds) out.push(await run(f));
      return out;
    });
  }
}

/** Weights that may stay float16: a share of the INT4 ones, at most maxMib of extra bytes. */
export const fp16Budget = (int4Weights: number, share: number, maxMib: number) =>
  Math.min(share * int4Weights, (maxMib * 2 ** 20) / FP16_EXTRA_BYTES);

const weightsOf = (targets: readonly Int4Target[]) => targets.reduce((n, t) => n + t.dims[0] * t.dims[1], 0);

/** float16 bytes of a group's weights minus their INT4 bytes. */
function extraBytes(targets: readonly Int4Target[]): number {
  return targets.reduce((n, t) => n + 2 * t.dims[0] * t.dims[1] - int4Bytes(t.dims[0], t.dims[1], t.block), 0);
}

/**
 * The groups with the largest total gain whose weights fit the budget (0/1 knapsack over weight units,
 * the gcd of the groups' sizes, at most 4096 of them); groups with no gain are never kept. Most
 * sensitive first.
 */
export function pick(measured: readonly KeptGroup[], budget: number): KeptGroup[] {
  const items = measured.filter((m) => m.gain > 0 && m.weights <= budget);
  if (items.length === 0) return [];
  const unit = Math.max(
    items.reduce((g, m) => gcd(g, m.weights), 0),
    Math.ceil(budget / 4096),
  );
  const cap = Math.floor(budget / unit);
  const size = items.map((m) => Math.ceil(m.weights / unit));
  const best = new Float64Array(cap + 1);
  const took = items.map(() => new Uint8Array(cap + 1));
  items.forEach((m, i) => {
    for (let c = cap; c >= size[i]!; c--) {
      const v = best[c - size[i]!]! + m.gain;
      if (v > best[c]!) [best[c], took[i]![c]] = [v, 1];
    }
  });
  const out: KeptGroup[] = [];
  for (let i = items.length - 1, c = cap; i >= 0; i--) {
    if (took[i]![c]) [out[out.length], c] = [items[i]!, c - size[i]!];
  }
  return out.sort((a, b) => b.gain - a.gain);
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}
