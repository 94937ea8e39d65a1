/**
 * The INT4 weight-only rewrite: the same INT4 weights (int4.ts, with AWQ multipliers from awq.ts)
 * written in one of two graph forms.
 *
 *   'dq'     W -> DequantizeLinear(W_int4 [K, N] INT4, W_scale [K/B, N], axis=0, block_size=B) -> MatMul
 *            (opset 21, IR 10: the standard form; TensorRT's IDequantizeLayer block quantization,
 *            and ONNX Runtime, which fuses it into its MatMulNBits kernel)
 *   'nbits'  MatMul(x, W) -> com.microsoft MatMulNBits(x, B_uint4, scales, K, N, bits=4, block_size=B)
 *            (ONNX Runtime only)
 *
 * An activation with AWQ multipliers gets one Mul(x, m) before the MatMuls that read it. A MatMul
 * whose result is a graph output (the LLM's lm_head: it sets the logits) keeps float weights: in a
 * float32-compute graph they are stored float16 behind a Cast (ONNX Runtime folds it at load); the
 * float16 rewrite (fp16.ts) stores them float16 anyway. So do the MatMuls the selection keeps (the
 * ones whose INT4 error moved the stage's outputs most, sensitivity.ts). Embeddings are a Gather,
 * never rewritten.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import { findTargets, type QuantTarget } from './graph.js';
import { int4Block, int4Bytes, packInt4, packMatMulNBits, unpackInt4, type Int4Weights } from './int4.js';
import {
  DT,
  floatValues,
  intAttr,
  Names,
  node,
  onnx,
  opsetOf,
  setOpset,
  tensor,
  toFloat16Array,
  withGraph,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx-model.js';

export type Int4Form = 'dq' | 'nbits';
/** Opset and IR version of the 'dq' form (INT4 and block_size came with ONNX 1.16). */
export const INT4_OPSET = 21;
export const INT4_IR_VERSION = 10;

export interface Int4Target extends QuantTarget {
  block: number;
}

export interface Int4Selection {
  /** The MatMuls to quantise, grouped by the activation they read. */
  groups: Map<string, Int4Target[]>;
  /** MatMuls producing a graph output: float16 weights, not INT4. */
  heads: QuantTarget[];
  /** MatMuls whose INT4 error moved the stage's outputs most (sensitivity.ts): float16 weights too. */
  kept: QuantTarget[];
  skipped: { node: string; why: string }[];
}

/** Which MatMuls of a model get INT4 weights at block size `requested`. */
export function selectInt4(m: ModelProto, requested: number, minElements?: number): Int4Selection {
  const { targets, skipped } = findTargets(m, minElements);
  const g = m.graph!;
  const outputs = new Set((g.output ?? []).map((o) => o.name!));
  const identityOut = new Map(
    (g.node ?? []).filter((n) => n.opType === 'Identity').map((n) => [n.input![0]!, n.output![0]!]),
  );
  const groups = new Map<string, Int4Target[]>();
  const heads: QuantTarget[] = [];
  for (const t of targets) {
    const out = g.node![t.node]!.output![0]!;
    const label = g.node![t.node]!.name || `MatMul #${t.node}`;
    if (outputs.has(out) || outputs.has(identityOut.get(out) ?? '')) {
      heads.push(t);
      continue;
    }
    const [K, N] = t.dims;
    const block = int4Block(K, requested);
    if (block === undefined) {
      skipped.push({ node: label, why: `K = ${K} is not a multiple of 16 (no INT4 block divides it)` });
      continue;
    }
    if (N % 2 !== 0) {
      skipped.push({ node: label, why: `N = ${N} is odd (TensorRT packs INT4 in pairs along the last axis)` });
      continue;
    }
    const list = groups.get(t.activation) ?? [];
    list.push({ ...t, block });
    groups.set(t.activation, list);
  }
  return { groups, heads, kept: [], skipped };
}

/** The weights of one rewrite: for each quantised weight its INT4 values; per activation its multipliers. */
export interface Int4Plan {
  selection: Int4Selection;
  weights: Map<string, Int4Weights>;
  multipliers: Map<string, Float32Array>;
}

/** A rewritten weight: its name, [K, N] and its bytes before and after. */
export interface WeightBytes {
  name: string;
  dims: [number, number];
  bytesBefore: number;
  bytesAfter: number;
}

export interface Int4Report {
  weights: (WeightBytes & { block: number })[];
  heads: WeightBytes[];
  /** The selection's `kept` MatMuls. */
  kept: WeightBytes[];
  multiplied: string[];
}

/**
 * The ops a graph may hold to move from opset 17 to 21 (their meaning is the same in both, after the
 * Reduce axes move).
 */
const OPSET_21_SAFE = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'MatMul',
  'Conv',
  'LayerNormalization',
  'Softmax',
  'ReduceSum',
  'Sqrt',
  'Sin',
  'Cos',
  'Neg',
  'Sigmoid',
  'Tanh',
  'Identity',
  'Reshape',
  'Transpose',
  'Unsqueeze',
  'Expand',
  'Split',
  'Concat',
  'Gather',
  'Where',
  'Range',
  'Greater',
  'Shape',
  'Cast',
  'DequantizeLinear',
  'QuantizeLinear',
]);
/** Reduce ops whose `axes` attribute became an input in opset 18. */
const REDUCE_AXES_18 = new Set([
  'ReduceMean',
  'ReduceMax',
  'ReduceMin',
  'ReduceProd',
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceSumSquare',
]);

/** `f` computed once per key object while the key lives (the weights' derived bytes below). */
function once<K extends object, V>(f: (key: K) => V): (key: K) => V {
  const cache = new WeakMap<K, V>();
  return (key) => {
    let v = cache.get(key);
    if (v === undefined) cache.set(key, (v = f(key)));
    return v;
  };
}

// The sensitivity pass writes the stage once per candidate group from the same weights: each
// weight's float16 bits (the output head is the largest of all) and packed INT4 are made once.
const float16Bits = once((t: TensorProto) => toFloat16Array(floatValues(t)));
const packedInt4 = once((q: Int4Weights) => packInt4(q.q));
const packedNBits = once(packMatMulNBits);

export class Int4Rewrite {
  private readonly g;
  /** Fresh names, reset for each write: both dialects name their new values alike. */
  private names: Names;

  constructor(
    private readonly m: ModelProto,
    private readonly plan: Int4Plan,
    private readonly stage: string,
  ) {
    this.g = m.graph!;
    this.names = new Names(m);
  }

  /**
   * The model in `form`, computing in float32; `headsFp16` stores the output projections' and the kept
   * MatMuls' weights float16 behind a Cast.
   */
  write(
    form: Int4Form,
    opts: { headsFp16: boolean; accuracyLevel?: number },
  ): { model: ModelProto; report: Int4Report } {
    const report: Int4Report = { weights: [], heads: [], kept: [], multiplied: [] };
    this.names = new Names(this.m);
    const nodes = [...(this.g.node ?? [])];
    const inits = new Map((this.g.initializer ?? []).map((t) => [t.name!, t]));
    const prologue: NodeProto[] = [];
    const before = new Map<number, NodeProto[]>();
    const replaced = new Map<number, NodeProto>();
    const drop = new Set<string>();
    const castHeads = new Set<string>(); // the Cast's output takes the weight's name
    const add: TensorProto[] = [];

    for (const [activation, targets] of this.plan.selection.groups) {
      const m = this.plan.multipliers.get(activation);
      let input = activation;
      if (m) {
        input = this.names.fresh(`${activation}/awq`);
        const mName = this.names.fresh(`${activation}_awq_multiplier`);
        add.push(tensor(mName, DT.FLOAT, [m.length], m));
        const first = Math.min(...targets.map((t) => t.node));
        before.set(first, [
          ...(before.get(first) ?? []),
          node('Mul', this.names.fresh(`${activation}/awq/Mul`), [activation, mName], [input]),
        ]);
        report.multiplied.push(activation);
      }
      for (const t of targets) {
        const q = this.plan.weights.get(t.weight)!;
        const [K, N] = t.dims;
        const mm = nodes[t.node]!;
        if (form === 'dq') {
          if (!drop.has(t.weight)) {
            const qName = this.names.fresh(`${t.weight}_int4`);
            const sName = this.names.fresh(`${t.weight}_scale`);
            add.push(
              tensor(qName, DT.INT4, [K, N], packedInt4(q)),
              tensor(sName, DT.FLOAT, [K / q.block, N], q.scales),
            );
            prologue.push(
              node('DequantizeLinear', this.names.fresh(`${t.weight}/DequantizeLinear`), [qName, sName], [t.weight], {
                axis: 0,
                block_size: q.block,
              }),
            );
          }
          replaced.set(t.node, onnx.NodeProto.create({ ...mm, input: [input, t.weight] }));
        } else {
          const packed = packedNBits(q);
          const bName = this.names.fresh(`${t.weight}_uint4`);
          const sName = this.names.fresh(`${t.weight}_scale`);
          add.push(
            tensor(bName, DT.UINT8, [N, K / q.block, q.block / 2], packed.b),
            tensor(sName, DT.FLOAT, [N * (K / q.block)], packed.scales),
          );
          const attrs = { K, N, bits: 4, block_size: q.block, accuracy_level: opts.accuracyLevel ?? 0 };
          replaced.set(
            t.node,
            node(
              'MatMulNBits',
              mm.name || this.names.fresh(`${t.weight}/MatMulNBits`),
              [input, bName, sName],
              mm.output!,
              attrs,
              'com.microsoft',
            ),
          );
        }
        if (!drop.has(t.weight))
          report.weights.push({
            name: t.weight,
            dims: t.dims,
            block: q.block,
            bytesBefore: K * N * 4,
            bytesAfter: int4Bytes(K, N, q.block),
          });
        drop.add(t.weight);
      }
    }
    const float16 = [
      ...this.plan.selection.heads.map((h) => [h, report.heads] as const),
      ...this.plan.selection.kept.map((h) => [h, report.kept] as const),
    ];
    for (const [h, list] of float16) {
      const [K, N] = h.dims;
      list.push({
        name: h.weight,
        dims: h.dims,
        bytesBefore: K * N * 4,
        bytesAfter: K * N * (opts.headsFp16 ? 2 : 4),
      });
      if (!opts.headsFp16 || drop.has(h.weight) || castHeads.has(h.weight)) continue;
      const half = this.names.fresh(`${h.weight}_fp16`);
      add.push(tensor(half, DT.FLOAT16, [K, N], float16Bits(inits.get(h.weight)!)));
      prologue.push(node('Cast', this.names.fresh(`${h.weight}/Cast`), [half], [h.weight], { to: DT.FLOAT }));
      castHeads.add(h.weight);
    }

    const out: NodeProto[] = [...prologue];
    nodes.forEach((n, i) => out.push(...(before.get(i) ?? []), replaced.get(i) ?? n));
    // 'dq': the DequantizeLinear output takes the weight's name; 'nbits': a weight some other node still reads stays.
    const stillRead = (name: string) =>
      form === 'nbits' && (this.g.node ?? []).some((n, i) => !replaced.has(i) && (n.input ?? []).includes(name));
    let initializer = [
      ...(this.g.initializer ?? []).filter(
        (t) => !castHeads.has(t.name!) && (!drop.has(t.name!) || stillRead(t.name!)),
      ),
      ...add,
    ];
    let opsetImport = this.m.opsetImport;
    let irVersion: number | undefined;
    let body = out;
    if (form === 'dq') {
      ({ nodes: body, axes: initializer } = this.toOpset21(out, initializer));
      opsetImport = setOpset(opsetImport, '', INT4_OPSET);
      irVersion = Math.max(Number(this.m.irVersion ?? 0), INT4_IR_VERSION);
    } else {
      opsetImport = setOpset(opsetImport, 'com.microsoft', 1);
    }
    return { model: withGraph(this.m, { node: body, initializer }, { opsetImport, irVersion }), report };
  }

  /**
   * Opset 17 -> 21: Reduce* `axes` attributes become int64 inputs; any op whose meaning may have
   * changed refuses the stage.
   */
  private toOpset21(nodes: NodeProto[], initializer: TensorProto[]): { nodes: NodeProto[]; axes: TensorProto[] } {
    const from = opsetOf(this.m);
    if (from > INT4_OPSET)
      throw new SetokimError(
        ErrorCodes.QUANT_UNSUPPORTED,
        `stage ${this.stage} is opset ${from}; the INT4 form is written at opset ${INT4_OPSET}`,
      );
    const extra: TensorProto[] = [];
    const body = nodes.map((n) => {
      if (n.domain && n.domain !== 'ai.onnx') return n;
      if (REDUCE_AXES_18.has(n.opType!)) {
        const a = (n.attribute ?? []).find((x) => x.name === 'axes');
        if (!a) return n;
        const name = this.names.fresh(`${n.name}/axes`);
        extra.push(
          tensor(
            name,
            DT.INT64,
            [(a.ints ?? []).length],
            BigInt64Array.from((a.ints ?? []).map((v) => BigInt(Number(v)))),
          ),
        );
        return onnx.NodeProto.create({
          ...n,
          input: [n.input![0]!, name],
          attribute: (n.attribute ?? []).filter((x) => x.name !== 'axes'),
        });
      }
      if (!OPSET_21_SAFE.has(n.opType!)) {
        throw new SetokimError(
          ErrorCodes.QUANT_UNSUPPORTED,
          `stage ${this.stage} cannot be written in the INT4 form: it uses ${n.opType} (node ${n.name}), which ` +
            `this exporter cannot move from opset ${from} to ${INT4_OPSET}`,
        );
      }
      return n;
    });
    return { nodes: body, axes: [...initializer, ...extra] };
  }
}

/** The INT4 values, scales and multipliers a written model holds for `weight` (for checks: 'dq' form). */
export function readInt4Weight(
  m: ModelProto,
  weight: string,
): { q: Int8Array; scales: Float32Array; block: number; K: number; N: number; multipliers?: Float32Array } {
  const g = m.graph!;
  const inits = new Map((g.initializer ?? []).map((t) => [t.name!, t]));
  const dq = (g.node ?? []).find((n) => n.opType === 'DequantizeLinear' && n.output?.[0] === weight);
  if (!dq) throw new SetokimError(ErrorCodes.MODEL_INVALID, `no DequantizeLinear produces ${weight}`);
  const qt = inits.get(dq.input![0]!)!;
  const [K, N] = (qt.dims ?? []).map(Number) as [number, number];
  const block = intAttr(dq, 'block_size', 0);
  const mm = (g.node ?? []).find((n) => n.opType === 'MatMul' && n.input?.[1] === weight);
  const mul = (g.node ?? []).find((n) => n.opType === 'Mul' && n.output?.[0] === mm?.input?.[0]);
  const mInit = mul ? inits.get(mul.input![1]!) : undefined;
  return {
    q: unpackInt4(qt.rawData!, K * N),
    scales: floatValues(inits.get(dq.input![1]!)!),
    block,
    K,
    N,
    multipliers: mInit ? floatValues(mInit) : undefined,
  };
}
