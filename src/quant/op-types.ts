/**
 * How each ONNX op the stage graphs (and their quantised builds) use is typed: which inputs share
 * the node's float type, and where its output type comes from. The float16 rewrite (fp16.ts) and
 * the TensorRT support check (tensorrt-support.ts) both read it; an op missing here is one neither
 * knows how to handle.
 */
import { DT, type NodeProto } from './onnx-model.js';

export type OutRule = 'same' | 'bool' | 'int64' | 'cast' | { input: number };

export interface OpRule {
  /** Indices of the inputs that share the node's float type ('all': every input). */
  float: number[] | 'all';
  out: OutRule;
  /** The inputs whose type TensorRT's support matrix constrains (default: `float`, or input 0 when that is empty). */
  data?: number[];
}

const rule = (float: OpRule['float'], out: OutRule = 'same', data?: number[]): OpRule => ({
  float,
  out,
  ...(data ? { data } : {}),
});

export const OP_RULES: Readonly<Record<string, OpRule>> = {
  Add: rule('all'),
  Sub: rule('all'),
  Mul: rule('all'),
  Div: rule('all'),
  Pow: rule('all'),
  MatMul: rule('all'),
  Conv: rule('all'),
  LayerNormalization: rule('all'),
  Softmax: rule([0]),
  ReduceMean: rule([0]),
  ReduceSum: rule([0]),
  Sqrt: rule([0]),
  Sin: rule([0]),
  Cos: rule([0]),
  Neg: rule([0]),
  Sigmoid: rule([0]),
  Tanh: rule([0]),
  Identity: rule([0]),
  Reshape: rule([0]),
  Transpose: rule([0]),
  Unsqueeze: rule([0]),
  Expand: rule([0]),
  Split: rule([0]),
  Concat: rule('all'),
  Gather: rule([0]),
  Where: rule([1, 2], { input: 1 }),
  Range: rule('all'),
  Greater: rule('all', 'bool'),
  Shape: rule([], 'int64', [0]),
  Cast: rule([], 'cast', [0]),
  DequantizeLinear: rule([1], { input: 1 }, [0]),
  QuantizeLinear: rule([0, 1], { input: 2 }, [0]),
  'com.microsoft.MatMulNBits': rule([0, 2], { input: 0 }, [0]),
};

/** The rule of a node (its domain-qualified op outside the default domain), or undefined. */
export function opRule(n: NodeProto): OpRule | undefined {
  const key = n.domain && n.domain !== 'ai.onnx' ? `${n.domain}.${n.opType}` : n.opType!;
  return OP_RULES[key];
}

export const isFloatType = (t: number | undefined) => t === DT.FLOAT || t === DT.FLOAT16 || t === DT.BFLOAT16;

/**
 * The element type of every value of a graph, inferred forward in node order from the graph
 * inputs and initializers with OP_RULES (nodes of unknown ops leave their outputs untyped).
 */
export function inferTypes(g: {
  input?: { name?: string | null; type?: { tensorType?: { elemType?: number | null } | null } | null }[] | null;
  initializer?: { name?: string | null; dataType?: number | null }[] | null;
  node?: NodeProto[] | null;
}): Map<string, number> {
  const type = new Map<string, number>();
  for (const v of g.input ?? []) type.set(v.name!, v.type?.tensorType?.elemType ?? 0);
  for (const t of g.initializer ?? []) type.set(t.name!, t.dataType ?? 0);
  for (const n of g.node ?? []) {
    const r = opRule(n);
    if (!r) continue;
    (n.output ?? []).forEach((o) =>
      type.set(
        o,
        outputType(n, r, (i) => type.get(n.input?.[i] ?? '')),
      ),
    );
  }
  return type;
}

/** A node's output type by its rule, given its inputs' types (`float` overrides the result for float outputs). */
export function outputType(
  n: NodeProto,
  r: OpRule,
  inputType: (i: number) => number | undefined,
  float?: number,
): number {
  if (r.out === 'bool') return DT.BOOL;
  if (r.out === 'int64') return DT.INT64;
  if (r.out === 'cast') {
    const to = Number((n.attribute ?? []).find((a) => a.name === 'to')?.i ?? 0);
    return isFloatType(to) && float !== undefined ? float : to;
  }
  const t =
    inputType(r.out === 'same' ? 0 : r.out.input) ??
    (r.out !== 'same' && n.opType === 'QuantizeLinear' ? DT.UINT8 : undefined);
  return isFloatType(t) && float !== undefined ? float : (t ?? 0);
}
