/**
 * The FP16 rewrite: weights and activations in float16, float32 only where accuracy needs it,
 * every change of type an explicit Cast, so a strongly typed TensorRT network and ONNX Runtime read
 * the same graph. Graph inputs and outputs stay float32 (docs/CONTRACT.md): a float32 input is cast
 * once where fp16 nodes read it, an output computed in fp16 is cast back under its own name.
 *
 * Which node runs in which type (decided per node, in graph order):
 * - FP32_OPS (LayerNormalization, Softmax, ReduceMean, Pow, Sqrt, Sin, Cos) run in float32: norm
 *   statistics (x^2 overflows float16 past |x| = 256), softmax, and trigonometric tables;
 * - the inputs of Sin and Cos are computed in float32 back to their sources (a timestep of 1000 or a
 *   RoPE position of 2047 in float16 is off by up to half a radian);
 * - MatMul, Conv, Gather and DequantizeLinear read weights: always float16;
 * - a node whose float inputs are all constants (or derived only from constants and shapes: the
 *   causal mask, RoPE tables) stays float32, and its consumers cast what they need;
 * - any other node runs in float16 when one of its float inputs is a float16 activation (or a graph
 *   input), in float32 when they come from float32 nodes (the eps add between ReduceMean and Sqrt).
 * Initializers read by float16 nodes are stored float16; one read by both kinds is stored twice.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  DT,
  FLOAT16_MAX,
  floatValues,
  Names,
  node,
  onnx,
  tensor,
  withGraph,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx-model.js';
import { opRule, outputType, type OpRule } from './op-types.js';

/** Ops that always run in float32 (their float inputs are cast up). */
export const FP32_OPS: ReadonlySet<string> = new Set([
  'LayerNormalization',
  'Softmax',
  'ReduceMean',
  'Pow',
  'Sqrt',
  'Sin',
  'Cos',
]);
/** Ops whose float inputs are computed in float32 back to their sources. */
const FP32_CONES = new Set(['Sin', 'Cos']);
/** Ops that read weights: always float16, even when every input is a constant (an embedding table). */
const WEIGHT_OPS = new Set(['MatMul', 'Conv', 'Gather', 'DequantizeLinear']);
/** Cheap ops a float32 cone may pass back through. */
const CONE_OPS = new Set([
  'Mul',
  'Add',
  'Sub',
  'Div',
  'Neg',
  'Unsqueeze',
  'Reshape',
  'Concat',
  'Transpose',
  'Cast',
  'Identity',
  'Expand',
]);

const isFloat = (t: number | undefined) => t === DT.FLOAT || t === DT.FLOAT16;
/**
 * Where a float value comes from: a constant (initializer or derived from constants), a graph input,
 * or a node's result in float16 / float32.
 */
type Origin = 'const' | 'input' | 'f16' | 'f32';

export interface Fp16Report {
  /** Nodes left in float32, by op. */
  fp32Nodes: Record<string, number>;
  fp16Nodes: number;
  casts: number;
  /** Float initializer bytes before and after. */
  weightBytesBefore: number;
  weightBytesAfter: number;
  /** Non-zero weights that float16 rounds to zero. */
  flushedToZero: number;
}

interface NodePlan {
  mode: 'fp16' | 'fp32';
  /** The float type each input must have (undefined: leave as is). */
  want: (number | undefined)[];
  outTypes: number[];
}

/** Rewrites a decoded model to float16 (see the header); `stage` names it in errors. */
export function toFloat16(m: ModelProto, stage = 'model'): { model: ModelProto; report: Fp16Report } {
  return new Float16Rewrite(m, stage).run();
}

class Float16Rewrite {
  private readonly g;
  private readonly nodes;
  private readonly inits;
  private readonly names;
  private readonly type = new Map<string, number>();
  private readonly origin = new Map<string, Origin>();
  private readonly forced32 = new Set<number>();
  private readonly plans: NodePlan[] = [];
  private readonly report: Fp16Report = {
    fp32Nodes: {},
    fp16Nodes: 0,
    casts: 0,
    weightBytesBefore: 0,
    weightBytesAfter: 0,
    flushedToZero: 0,
  };

  constructor(
    private readonly m: ModelProto,
    private readonly stage: string,
  ) {
    this.g = m.graph!;
    this.nodes = this.g.node ?? [];
    this.inits = new Map((this.g.initializer ?? []).map((t) => [t.name!, t]));
    this.names = new Names(m);
  }

  run(): { model: ModelProto; report: Fp16Report } {
    this.seedTypes();
    this.markFp32Cones();
    this.nodes.forEach((n, i) => this.plans.push(this.plan(n, i)));
    return { model: this.emit(), report: this.report };
  }

  /** Types and origins of graph inputs and initializers. */
  private seedTypes(): void {
    for (const v of this.g.input ?? []) {
      const t = v.type?.tensorType?.elemType ?? 0;
      this.type.set(v.name!, t);
      if (isFloat(t)) this.origin.set(v.name!, 'input');
    }
    for (const [name, t] of this.inits) {
      this.type.set(name, t.dataType!);
      if (isFloat(t.dataType!)) this.origin.set(name, 'const');
    }
  }

  /** Nodes feeding Sin/Cos through cheap ops run in float32 (back to graph inputs, constants or weight ops). */
  private markFp32Cones(): void {
    const producer = new Map<string, number>();
    this.nodes.forEach((n, i) => (n.output ?? []).forEach((o) => producer.set(o, i)));
    const stack = this.nodes.flatMap((n, i) => (FP32_CONES.has(n.opType!) ? [i] : []));
    while (stack.length) {
      const i = stack.pop()!;
      for (const x of this.nodes[i]!.input ?? []) {
        const p = producer.get(x);
        if (p === undefined || this.forced32.has(p) || !CONE_OPS.has(this.nodes[p]!.opType!)) continue;
        this.forced32.add(p);
        stack.push(p);
      }
    }
  }

  private ruleOf(n: NodeProto): OpRule {
    const r = opRule(n);
    if (!r || (n.domain && n.domain !== 'ai.onnx') || n.opType === 'QuantizeLinear') {
      throw new SetokimError(
        ErrorCodes.QUANT_UNSUPPORTED,
        `stage ${this.stage} cannot be built in fp16: it uses ${n.domain ? n.domain + '.' : ''}${n.opType} ` +
          `(node ${n.name}), whose float16 typing this exporter does not know`,
      );
    }
    return r;
  }

  private plan(n: NodeProto, i: number): NodePlan {
    const r = this.ruleOf(n);
    const inputs = n.input ?? [];
    const floatIdx = (r.float === 'all' ? inputs.map((_, j) => j) : r.float).filter(
      (j) => inputs[j] && isFloat(this.type.get(inputs[j]!)),
    );
    const origins = floatIdx.map((j) => this.origin.get(inputs[j]!) ?? 'f32');
    let mode: NodePlan['mode'];
    let out: Origin;
    if (n.opType === 'Cast') {
      const from = this.origin.get(inputs[0]!);
      mode = from === 'f16' || (from === 'input' && !this.forced32.has(i)) ? 'fp16' : 'fp32';
      out = from === 'const' || from === undefined ? 'const' : mode === 'fp16' ? 'f16' : 'f32';
    } else if (FP32_OPS.has(n.opType!) || this.forced32.has(i)) {
      mode = 'fp32';
      out = origins.every((o) => o === 'const') ? 'const' : 'f32';
    } else if (WEIGHT_OPS.has(n.opType!) && floatIdx.length > 0) {
      mode = 'fp16';
      out = 'f16';
    } else if (origins.every((o) => o === 'const')) {
      mode = 'fp32';
      out = 'const';
    } else {
      mode = origins.some((o) => o === 'f16' || o === 'input') ? 'fp16' : 'fp32';
      out = mode === 'fp16' ? 'f16' : 'f32';
    }
    const dtype = mode === 'fp16' ? DT.FLOAT16 : DT.FLOAT;
    const want = inputs.map((_, j) => (floatIdx.includes(j) ? dtype : undefined));
    const outTypes = (n.output ?? []).map(() => this.outType(n, r, dtype));
    (n.output ?? []).forEach((o, k) => {
      this.type.set(o, outTypes[k]!);
      if (isFloat(outTypes[k])) this.origin.set(o, out);
    });
    if (mode === 'fp32' && out !== 'const')
      this.report.fp32Nodes[n.opType!] = (this.report.fp32Nodes[n.opType!] ?? 0) + 1;
    if (mode === 'fp16') this.report.fp16Nodes++;
    return { mode, want, outTypes };
  }

  private outType(n: NodeProto, r: OpRule, dtype: number): number {
    return outputType(n, r, (i) => this.type.get(n.input?.[i] ?? ''), dtype);
  }

  /** The new graph: casts before the nodes that need them, initializers in the types their readers want. */
  private emit(): ModelProto {
    const out: NodeProto[] = [];
    const casts = new Map<string, string>(); // `${value}:${type}` -> cast output
    const graphOutputs = new Map((this.g.output ?? []).map((v) => [v.name!, v.type?.tensorType?.elemType ?? 0]));
    const current = new Map(this.type); // the type each value has in the new graph (initializers may change)
    const renamed = new Map<string, string>();
    // An initializer any float16 node reads is stored float16 (once); float32 readers get a Cast of it.
    const newInits: TensorProto[] = [];
    for (const [name, type] of this.storedTypes()) {
      newInits.push(this.convert(this.inits.get(name)!, name, type));
      current.set(name, type);
    }

    const castAs = (value: string, type: number): string => {
      const key = `${value}:${type}`;
      let c = casts.get(key);
      if (!c) {
        c = this.names.fresh(`${value}/${type === DT.FLOAT16 ? 'fp16' : 'fp32'}`);
        out.push(node('Cast', this.names.fresh(`${value}/Cast`), [value], [c], { to: type }));
        this.report.casts++;
        casts.set(key, c);
      }
      return c;
    };

    this.nodes.forEach((n, i) => {
      const p = this.plans[i]!;
      const input = (n.input ?? []).map((x0, j) => {
        const x = renamed.get(x0) ?? x0;
        const want = p.want[j];
        if (want === undefined || !x) return x;
        return current.get(x) === want ? x : castAs(x, want);
      });
      let output = [...(n.output ?? [])];
      const post: NodeProto[] = [];
      output = output.map((o, k) => {
        const declared = graphOutputs.get(o);
        const t = p.outTypes[k]!;
        current.set(o, t);
        if (declared === undefined || declared === t) return o;
        const inner = this.names.fresh(`${o}/${t === DT.FLOAT16 ? 'fp16' : 'fp32'}`);
        renamed.set(o, inner);
        current.set(inner, t);
        post.push(node('Cast', this.names.fresh(`${o}/Cast`), [inner], [o], { to: declared }));
        this.report.casts++;
        return inner;
      });
      const attribute = n.opType === 'Cast' ? this.castAttributes(n, p) : n.attribute;
      out.push(onnx.NodeProto.create({ ...n, input, output, attribute }), ...post);
    });

    const replaced = new Set(newInits.map((t) => t.name!));
    const initializer = [...(this.g.initializer ?? []).filter((t) => !replaced.has(t.name!)), ...newInits];
    for (const t of this.g.initializer ?? []) if (isFloat(t.dataType!)) this.report.weightBytesBefore += bytesOf(t);
    for (const t of initializer) if (isFloat(t.dataType!)) this.report.weightBytesAfter += bytesOf(t);
    // value_info would describe the old types: dropped (ONNX Runtime and TensorRT infer them).
    return withGraph(this.m, { node: out, initializer, valueInfo: [] });
  }

  /** The float32 initializers some float16 node reads: they are stored float16. */
  private storedTypes(): Map<string, number> {
    const out = new Map<string, number>();
    this.nodes.forEach((n, i) =>
      (n.input ?? []).forEach((x, j) => {
        if (this.plans[i]!.want[j] === DT.FLOAT16 && this.inits.get(x)?.dataType === DT.FLOAT) out.set(x, DT.FLOAT16);
      }),
    );
    return out;
  }

  private castAttributes(n: NodeProto, p: NodePlan): NodeProto['attribute'] {
    return (n.attribute ?? []).map((a) => (a.name === 'to' && isFloat(Number(a.i)) ? { ...a, i: p.outTypes[0]! } : a));
  }

  /** `src` as an initializer named `name` of float type `type`; refuses values float16 cannot hold. */
  private convert(src: TensorProto, name: string, type: number): TensorProto {
    const values = floatValues(src);
    if (type === DT.FLOAT16) {
      let worst = 0;
      for (const v of values) {
        const a = Math.abs(v);
        if (a > worst) worst = a;
        if (a !== 0 && a < 2 ** -25) this.report.flushedToZero++;
      }
      if (!(worst <= FLOAT16_MAX)) {
        throw new SetokimError(
          ErrorCodes.QUANT_UNSUPPORTED,
          `stage ${this.stage} cannot be built in fp16: initializer ${src.name} holds ${worst.toPrecision(3)}, ` +
            `beyond float16's largest value ${FLOAT16_MAX}`,
        );
      }
    }
    return tensor(name, type, (src.dims ?? []).map(Number), values);
  }
}

const bytesOf = (t: TensorProto) => (t.rawData?.length ?? 0) || (t.floatData?.length ?? 0) * 4;
