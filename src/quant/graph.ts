/**
 * The INT8 graph rewrite, on an onnx-proto ModelProto (opset 13+; the reference sets are opset 17):
 *
 *   weight:     W (float32 [K, N] initializer)  ->  W_q (int8) , W_scale [N], W_zero_point [N] (int8 0)
 *               DequantizeLinear(W_q, W_scale, W_zero_point, axis=1) -> W  (the original name)
 *   activation: x -> QuantizeLinear(x, s, 0) -> DequantizeLinear(., s, 0) -> x/dequantized -> MatMul
 *
 * This is the explicit Q/DQ form: ONNX Runtime CPU runs it as is (fusing DQ->MatMul into integer
 * kernels where it can) and TensorRT builds it strongly typed, running the MatMul in INT8 because
 * both of its inputs come out of DequantizeLinear. Graph inputs and outputs keep their names, dtypes
 * and shapes, so the stage contract holds. Only MatMul is rewritten: the reference graphs have no
 * Gemm (nn.Linear exports as MatMul + Add at opset 17), and a MatMul between two activations
 * (attention scores) stays float.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  DT,
  decodeModel,
  elements,
  encodeModel,
  floatValues,
  Names,
  node,
  onnx,
  opsetOf,
  tensor,
  withGraph,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx-model.js';
import { activationScale, quantizeColumns, REDUCED_MAX } from './weights.js';

export { decodeModel, encodeModel, floatValues } from './onnx-model.js';

/** Weights smaller than this stay float: a few KiB saved is not worth the DequantizeLinear. */
export const DEFAULT_MIN_ELEMENTS = 1024;
/** The lowest opset with per-axis DequantizeLinear. */
export const MIN_OPSET = 13;

export interface QuantTarget {
  /** Index of the MatMul in graph.node. */
  node: number;
  /** Its activation input (input 0) and weight initializer (input 1). */
  activation: string;
  weight: string;
  dims: [number, number];
}

export interface WeightReport {
  name: string;
  dims: [number, number];
  bytesBefore: number;
  /** int8 values + float32 scales + int8 zero points. */
  bytesAfter: number;
}

export interface QuantizeReport {
  weights: WeightReport[];
  /** Activations given a QuantizeLinear -> DequantizeLinear pair, with their calibrated range. */
  activations: { name: string; range: number; scale: number }[];
  /** MatMuls left in float and why. */
  skipped: { node: string; why: string }[];
}

/** The MatMuls whose weight is a 2-D float32 initializer of at least `minElements` values. */
export function findTargets(
  m: ModelProto,
  minElements = DEFAULT_MIN_ELEMENTS,
): { targets: QuantTarget[]; skipped: QuantizeReport['skipped'] } {
  const g = m.graph!;
  const inits = new Map((g.initializer ?? []).map((t) => [t.name!, t]));
  const graphInputs = new Set((g.input ?? []).map((v) => v.name!));
  const targets: QuantTarget[] = [];
  const skipped: QuantizeReport['skipped'] = [];
  (g.node ?? []).forEach((n, i) => {
    if (n.opType !== 'MatMul') return;
    const [a, b] = n.input ?? [];
    const w = b ? inits.get(b) : undefined;
    const label = n.name || `MatMul #${i}`;
    // activation x activation (attention) or constant A: not a weight MatMul
    if (!a || !b || !w || inits.has(a)) return;
    if (graphInputs.has(b)) return void skipped.push({ node: label, why: `${b} is also a graph input (overridable)` });
    if (w.dataType !== DT.FLOAT) return void skipped.push({ node: label, why: `${b} is not float32` });
    const dims = (w.dims ?? []).map(Number);
    if (dims.length !== 2) return void skipped.push({ node: label, why: `${b} is ${dims.length}-D, not 2-D` });
    if (elements(dims) < minElements)
      return void skipped.push({ node: label, why: `${b} has ${elements(dims)} values (< ${minElements})` });
    targets.push({ node: i, activation: a, weight: b, dims: [dims[0]!, dims[1]!] });
  });
  return { targets, skipped };
}

/** The distinct activation tensors that calibration must measure. */
export const activationNames = (targets: readonly QuantTarget[]): string[] => [
  ...new Set(targets.map((t) => t.activation)),
];

/** A copy of the model with extra float32 graph outputs (for calibration: the activations' values). */
export function withOutputs(model: Uint8Array | ModelProto, names: readonly string[]): Uint8Array {
  const m = model instanceof Uint8Array ? decodeModel(model) : model;
  const have = new Set((m.graph!.output ?? []).map((o) => o.name!));
  const extra = names
    .filter((n) => !have.has(n))
    .map((name) => onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: DT.FLOAT } } }));
  return encodeModel(withGraph(m, { output: [...(m.graph!.output ?? []), ...extra] }));
}

/**
 * Rewrites a model to INT8 Q/DQ. `ranges` holds the calibrated max |x| of every activation
 * `findTargets` names; a MatMul whose activation has no range keeps a float activation (weight-only
 * int8, reported). Weights use [-63, 63] unless `weightMax` says 127 (see REDUCED_MAX in weights.ts).
 */
export function quantizeModel(
  model: Uint8Array | ModelProto,
  ranges: ReadonlyMap<string, number>,
  opts: { minElements?: number; weightMax?: number } = {},
): { bytes: Uint8Array; report: QuantizeReport } {
  const m = model instanceof Uint8Array ? decodeModel(model) : model;
  const opset = opsetOf(m);
  if (opset < MIN_OPSET)
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `opset ${opset}: per-channel DequantizeLinear needs opset ${MIN_OPSET} or later; re-export the stage at opset 17`,
    );
  const g = m.graph!;
  const { targets, skipped } = findTargets(m, opts.minElements);
  const report: QuantizeReport = { weights: [], activations: [], skipped };
  const names = new Names(m);
  const fresh = (base: string) => names.fresh(base);

  const inits = new Map((g.initializer ?? []).map((t) => [t.name!, t]));
  const newInits: TensorProto[] = [];
  const weightNodes: NodeProto[] = [];
  const drop = new Set<string>();
  for (const t of targets) {
    if (drop.has(t.weight)) continue; // a weight shared by two MatMuls is dequantised once
    const [K, N] = t.dims;
    const qw = quantizeColumns(floatValues(inits.get(t.weight)!), K, N, t.weight, opts.weightMax ?? REDUCED_MAX);
    const qName = fresh(`${t.weight}_quantized`);
    const sName = fresh(`${t.weight}_scale`);
    const zName = fresh(`${t.weight}_zero_point`);
    newInits.push(
      tensor(qName, DT.INT8, [K, N], qw.q),
      tensor(sName, DT.FLOAT, [N], qw.scales),
      tensor(zName, DT.INT8, [N], new Int8Array(N)),
    );
    weightNodes.push(
      node('DequantizeLinear', fresh(`${t.weight}/DequantizeLinear`), [qName, sName, zName], [t.weight], { axis: 1 }),
    );
    drop.add(t.weight);
    report.weights.push({ name: t.weight, dims: t.dims, bytesBefore: K * N * 4, bytesAfter: K * N + N * 4 + N });
  }

  // One QuantizeLinear -> DequantizeLinear pair per quantised MatMul, just before it (after the
  // activation's producer). ONNX Runtime fuses Q -> DQ -> MatMul <- DQ into an integer MatMul only
  // when the pair has that one consumer: a pair shared by q/k/v or gate/up stayed unfused and
  // dequantised the weights on every run (LLM decode 6.8x slower than fp32 on the small set).
  // TensorRT reads either form; both quantise with the same scale.
  const inserts = new Map<number, NodeProto[]>(); // node index -> its Q and DQ
  const rewired = new Map<number, string>(); // node index -> its dequantised activation
  const reported = new Set<string>();
  for (const t of targets) {
    const range = ranges.get(t.activation);
    if (range === undefined) {
      report.skipped.push({
        node: g.node![t.node]!.name || `MatMul #${t.node}`,
        why: `no calibration range for ${t.activation}`,
      });
      continue;
    }
    const scale = activationScale(range);
    const sName = fresh(`${t.activation}_scale`);
    const zName = fresh(`${t.activation}_zero_point`);
    const qOut = fresh(`${t.activation}_quantized`);
    const dq = fresh(`${t.activation}_dequantized`);
    newInits.push(tensor(sName, DT.FLOAT, [], new Float32Array([scale])), tensor(zName, DT.INT8, [], new Int8Array(1)));
    inserts.set(t.node, [
      node('QuantizeLinear', fresh(`${t.activation}/QuantizeLinear`), [t.activation, sName, zName], [qOut]),
      node('DequantizeLinear', fresh(`${t.activation}/DequantizeLinear`), [qOut, sName, zName], [dq]),
    ]);
    rewired.set(t.node, dq);
    if (!reported.has(t.activation)) report.activations.push({ name: t.activation, range, scale });
    reported.add(t.activation);
  }

  const nodes: NodeProto[] = [...weightNodes];
  (g.node ?? []).forEach((n, i) => {
    nodes.push(...(inserts.get(i) ?? []));
    const dq = rewired.get(i);
    nodes.push(dq ? onnx.NodeProto.create({ ...n, input: [dq, ...(n.input ?? []).slice(1)] }) : n);
  });
  const initializer = [...(g.initializer ?? []).filter((t) => !drop.has(t.name!)), ...newInits];
  return { bytes: encodeModel(withGraph(m, { node: nodes, initializer })), report };
}

/** Counts of each op type (tests and reports). */
export function opCounts(model: Uint8Array | ModelProto): Record<string, number> {
  const out: Record<string, number> = {};
  for (const n of (model instanceof Uint8Array ? decodeModel(model) : model).graph!.node ?? [])
    out[n.opType!] = (out[n.opType!] ?? 0) + 1;
  return out;
}
