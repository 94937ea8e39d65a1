/**
 * Building blocks as ONNX subgraphs. Each takes value names and returns value names; weights are
 * created in the current scope with seeded values. Linear weights are stored [in, out] (MatMul
 * order), i.e. the transpose of a PyTorch nn.Linear weight.
 *
 * Only ops that TensorRT 10's ONNX parser accepts are used: MatMul, Add, Mul, Div, Sub, Pow, Sqrt,
 * Tanh, Sigmoid, Softmax, ReduceMean, ReduceSum, LayerNormalization, Reshape, Transpose, Concat,
 * Split, Gather, Shape, Range, Cast, Unsqueeze, Where, Greater, Sin, Cos, Conv, Expand.
 */
import { GraphBuilder } from './builder.js';
import { Rng } from './random.js';

/** Large negative additive mask value: exp() underflows to 0, and it still fits in float16. */
export const MASK_NEG = -30000;

export type Init = { std: number } | { value: number };

/** A graph under construction plus the seeded generator its weights come from. */
export class Model {
  readonly g: GraphBuilder;
  constructor(
    name: string,
    private readonly rng: Rng,
  ) {
    this.g = new GraphBuilder(name);
  }

  /** A weight named by its scope; its values depend only on the seed and that name. */
  param(name: string, dims: readonly number[], init: Init): string {
    const n = dims.reduce((a, b) => a * b, 1);
    const data =
      'std' in init ? this.rng.fork(this.g.qualify(name)).uniform(n, init.std) : new Float32Array(n).fill(init.value);
    return this.g.weight(name, data, dims);
  }

  scope<T>(name: string, fn: () => T): T {
    return this.g.scope(name, fn);
  }
}

export interface LinearOptions {
  bias?: boolean;
  /** Weight std; default 1/sqrt(in), which keeps activations near unit scale. */
  std?: number;
}

export function linear(m: Model, x: string, inF: number, outF: number, name: string, opts: LinearOptions = {}): string {
  return m.scope(name, () => {
    const w = m.param('weight', [inF, outF], { std: opts.std ?? 1 / Math.sqrt(inF) });
    const y = m.g.op('MatMul', [x, w]);
    if (opts.bias === false) return y;
    return m.g.op('Add', [y, m.param('bias', [outF], { std: 0.02 })]);
  });
}

/** LayerNormalization (opset 17) over the last axis, with learned scale and bias. */
export function layerNorm(m: Model, x: string, width: number, name: string, eps = 1e-6, affine = true): string {
  return m.scope(name, () => {
    const scale = affine ? m.param('weight', [width], { value: 1 }) : m.g.floats(new Array<number>(width).fill(1));
    const bias = affine ? m.param('bias', [width], { value: 0 }) : m.g.floats(new Array<number>(width).fill(0));
    return m.g.op('LayerNormalization', [x, scale, bias], { axis: -1, epsilon: { float: eps } });
  });
}

/** RMSNorm, decomposed: x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(m: Model, x: string, width: number, name: string, eps: number): string {
  return m.scope(name, () => {
    const sq = m.g.op('Pow', [x, m.g.scalar(2)]);
    const ms = m.g.op('ReduceMean', [sq], { axes: [-1], keepdims: 1 });
    const rms = m.g.op('Sqrt', [m.g.op('Add', [ms, m.g.scalar(eps)])]);
    const normed = m.g.op('Div', [x, rms]);
    return m.g.op('Mul', [normed, m.param('weight', [width], { value: 1 })]);
  });
}

/** GELU, tanh approximation, decomposed: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function gelu(m: Model, x: string): string {
  const g = m.g;
  const cube = g.op('Mul', [g.op('Mul', [x, x]), x]);
  const inner = g.op('Mul', [
    g.op('Add', [x, g.op('Mul', [cube, g.scalar(0.044715)])]),
    g.scalar(Math.sqrt(2 / Math.PI)),
  ]);
  const t = g.op('Add', [g.op('Tanh', [inner]), g.scalar(1)]);
  return g.op('Mul', [g.op('Mul', [x, t]), g.scalar(0.5)]);
}

export function silu(m: Model, x: string): string {
  return m.g.op('Mul', [x, m.g.op('Sigmoid', [x])]);
}

/** Linear, GELU, Linear. */
export function mlp(m: Model, x: string, width: number, hidden: number, name: string, outWidth = width): string {
  return m.scope(name, () => linear(m, gelu(m, linear(m, x, width, hidden, 'fc1')), hidden, outWidth, 'fc2'));
}

/** LLaMA MLP: down(silu(gate(x)) * up(x)), no biases. */
export function swiglu(m: Model, x: string, width: number, inter: number, name: string): string {
  return m.scope(name, () => {
    const gate = silu(m, linear(m, x, width, inter, 'gate_proj', { bias: false }));
    const up = linear(m, x, width, inter, 'up_proj', { bias: false });
    return linear(m, m.g.op('Mul', [gate, up]), inter, width, 'down_proj', { bias: false });
  });
}

/** [b, S, heads*hd] -> [b, heads, S, hd] */
export function splitHeads(m: Model, x: string, heads: number, hd: number): string {
  return m.g.op('Transpose', [m.g.op('Reshape', [x, m.g.ints([0, 0, heads, hd])])], { perm: [0, 2, 1, 3] });
}

/** [b, heads, S, hd] -> [b, S, heads*hd] */
export function mergeHeads(m: Model, x: string, heads: number, hd: number): string {
  return m.g.op('Reshape', [m.g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), m.g.ints([0, 0, heads * hd])]);
}

/**
 * softmax(q k^T / sqrt(hd) + mask) v on [b, h, S, hd] tensors. `mask` is additive (0 or MASK_NEG)
 * and broadcasts to [b, h, Sq, Sk].
 */
export function sdpa(m: Model, q: string, k: string, v: string, hd: number, mask?: string): string {
  const g = m.g;
  let s = g.op('Mul', [
    g.op('MatMul', [q, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]),
    g.scalar(1 / Math.sqrt(hd)),
  ]);
  if (mask) s = g.op('Add', [s, mask]);
  return g.op('MatMul', [g.op('Softmax', [s], { axis: -1 }), v]);
}

/** Multi-head attention with biases (ViT style); `kv` defaults to `x` (self-attention). */
export function attention(
  m: Model,
  x: string,
  width: number,
  heads: number,
  name: string,
  mask?: string,
  kv?: string,
  kvWidth = width,
): string {
  return m.scope(name, () => {
    const hd = width / heads;
    const src = kv ?? x;
    const q = splitHeads(m, linear(m, x, width, width, 'q_proj'), heads, hd);
    const k = splitHeads(m, linear(m, src, kvWidth, width, 'k_proj'), heads, hd);
    const v = splitHeads(m, linear(m, src, kvWidth, width, 'v_proj'), heads, hd);
    return linear(m, mergeHeads(m, sdpa(m, q, k, v, hd, mask), heads, hd), width, width, 'out_proj');
  });
}

/** Pre-LN ViT block: x + attn(LN(x)); x + MLP(LN(x)). */
export function vitBlock(
  m: Model,
  x: string,
  width: number,
  heads: number,
  mlpWidth: number,
  name: string,
  mask?: string,
): string {
  return m.scope(name, () => {
    const h = m.g.op('Add', [x, attention(m, layerNorm(m, x, width, 'norm1'), width, heads, 'attn', mask)]);
    return m.g.op('Add', [h, mlp(m, layerNorm(m, h, width, 'norm2'), width, mlpWidth, 'mlp')]);
  });
}

/**
 * RoPE tables for positions start .. start+T-1 (T: an int64 scalar; start: an int64 scalar or [1], which
 * may be a graph input), rotate-half layout
 * (HF LLaMA): cos/sin are [T, hd] with the hd/2 frequencies repeated twice. inv_freq is computed
 * in the graph as theta^(-2j/hd), so the file holds only exact constants.
 */
export function ropeTables(
  m: Model,
  start: string,
  count: string,
  hd: number,
  theta: number,
): { cos: string; sin: string } {
  const g = m.g;
  const exps = Array.from({ length: hd / 2 }, (_, j) => (-2 * j) / hd);
  const invFreq = g.op('Pow', [g.scalar(theta), g.floats(exps)]); // [hd/2]
  // start + Range(0, count): Range only sees shape-derived bounds (start may be a data input)
  const steps = g.op('Range', [g.ints([0], []), count, g.ints([1], [])]);
  const pos = g.op('Cast', [g.op('Add', [steps, start])], { to: 1 }); // [T] float
  const ang = g.op('Mul', [g.op('Unsqueeze', [pos, g.ints([1])]), g.op('Unsqueeze', [invFreq, g.ints([0])])]); // [T, hd/2]
  const full = g.op('Concat', [ang, ang], { axis: -1 }); // [T, hd]
  return { cos: g.op('Cos', [full]), sin: g.op('Sin', [full]) };
}

/** x * cos + rotate_half(x) * sin on [b, h, T, hd], where rotate_half(x) = [-x2, x1]. */
export function rope(m: Model, x: string, cos: string, sin: string, hd: number): string {
  const g = m.g;
  const [x1, x2] = g.opN('Split', [x, g.ints([hd / 2, hd / 2])], 2, { axis: -1 });
  const rot = g.op('Concat', [g.op('Neg', [x2!]), x1!], { axis: -1 });
  return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rot, sin])]);
}

/** Dimension `axis` of x's shape as an int64 scalar. */
export function dim(m: Model, x: string, axis: number): string {
  return m.g.op('Gather', [m.g.op('Shape', [x]), m.g.ints([axis], [])], { axis: 0 });
}
