/**
 * What every graph rewrite here shares: decoding and encoding a ModelProto (onnx-proto), reading a
 * float initializer, building initializers and nodes, fresh value names, float16 bit conversion.
 *
 * Rewrites never mutate the decoded model they are given: they build a new ModelProto that shares
 * the untouched initializers (and their bytes) by reference, so a stage is decoded once and every
 * precision is built from that one decoded model.
 */
import onnxProto from 'onnx-proto';
import { ErrorCodes, SetokimError } from '../errors.js';

export const { onnx } = onnxProto;
export type ModelProto = InstanceType<typeof onnx.ModelProto>;
export type GraphProto = onnxProto.onnx.IGraphProto;
export type TensorProto = onnxProto.onnx.ITensorProto;
export type NodeProto = onnxProto.onnx.INodeProto;
export type AttributeProto = onnxProto.onnx.IAttributeProto;

/** TensorProto data types; onnx-proto predates UINT4 and INT4 (ONNX 1.16, IR version 10). */
export const DT = { ...onnx.TensorProto.DataType, UINT4: 21, INT4: 22 } as const;
const ATTR = onnx.AttributeProto.AttributeType;

export const decodeModel = (bytes: Uint8Array): ModelProto => onnx.ModelProto.decode(bytes);
export const encodeModel = (m: ModelProto): Uint8Array => onnx.ModelProto.encode(m).finish();

export const elements = (dims: readonly (number | { toNumber(): number })[]) =>
  dims.reduce<number>((a, d) => a * Number(d), 1);

/** The version of `domain` the model imports (0 when it does not). */
export function opsetOf(m: ModelProto, domain = ''): number {
  const o = (m.opsetImport ?? []).find((x) => (x.domain ?? '') === domain || (domain === '' && x.domain === 'ai.onnx'));
  return o ? Number(o.version) : 0;
}

/**
 * A copy of `m` with some graph fields replaced and, optionally, other opset imports and IR version.
 * Everything not replaced (initializers included) is shared with `m`, not copied.
 */
export function withGraph(
  m: ModelProto,
  graph: Partial<GraphProto>,
  top: { opsetImport?: ModelProto['opsetImport']; irVersion?: number } = {},
): ModelProto {
  return onnx.ModelProto.create({
    ...m,
    ...(top.irVersion !== undefined ? { irVersion: top.irVersion } : {}),
    opsetImport: top.opsetImport ?? m.opsetImport,
    graph: onnx.GraphProto.create({ ...m.graph!, ...graph }),
  });
}

/** `imports` with `domain` set to `version` (added when absent). */
export function setOpset(
  imports: ModelProto['opsetImport'],
  domain: string,
  version: number,
): ModelProto['opsetImport'] {
  const rest = (imports ?? []).filter((o) => (o.domain ?? '') !== domain && !(domain === '' && o.domain === 'ai.onnx'));
  return [{ domain, version }, ...rest];
}

/** Whether this host stores numbers little-endian (x86-64 and aarch64 do): raw_data is then a plain copy. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A float32 or float16 initializer's values as float32 (raw_data little-endian, float_data or int32_data). */
export function floatValues(t: TensorProto): Float32Array {
  const n = elements(t.dims ?? []);
  const width = t.dataType === DT.FLOAT16 ? 2 : 4;
  if (t.dataType !== DT.FLOAT && t.dataType !== DT.FLOAT16)
    throw new SetokimError(ErrorCodes.INTERNAL, `initializer ${t.name}: data type ${t.dataType} is not a float`);
  if (t.rawData && t.rawData.length > 0) {
    if (t.rawData.length !== n * width)
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `initializer ${t.name}: ${t.rawData.length} bytes for ${n} values of ${width} bytes`,
      );
    const out = new Float32Array(n);
    if (width === 4 && LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(t.rawData); // the bytes as they are (a copy, not a view of the file)
      return out;
    }
    const view = new DataView(t.rawData.buffer, t.rawData.byteOffset, t.rawData.byteLength);
    if (width === 4) for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
    else for (let i = 0; i < n; i++) out[i] = fromFloat16Bits(view.getUint16(i * 2, true));
    return out;
  }
  const out =
    width === 4 ? Float32Array.from(t.floatData ?? []) : Float32Array.from(t.int32Data ?? [], fromFloat16Bits);
  // Neither raw_data nor the typed field holds them: external data (a model over 2 GB), not read here.
  if (out.length !== n)
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `initializer ${t.name}: ${out.length} values stored for ${n}; weights in external data files are not ` +
        `supported: export the stage with its weights inside the .onnx file`,
    );
  return out;
}

/** ONNX raw_data is little-endian on any host. */
function littleEndian(data: Float32Array | Uint16Array | BigInt64Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  const out = new Uint8Array(data.byteLength);
  const view = new DataView(out.buffer);
  if (data instanceof Float32Array) data.forEach((x, i) => view.setFloat32(i * 4, x, true));
  else if (data instanceof Uint16Array) data.forEach((x, i) => view.setUint16(i * 2, x, true));
  else data.forEach((x, i) => view.setBigInt64(i * 8, x, true));
  return out;
}

/** An initializer. Float16 data is given as float values (rounded here) or as bits; int4 as packed bytes (int4Pack). */
export function tensor(
  name: string,
  dataType: number,
  dims: readonly number[],
  data: Float32Array | Uint16Array | Int8Array | Uint8Array | BigInt64Array,
): TensorProto {
  let raw: Uint8Array;
  if (dataType === DT.FLOAT16 && data instanceof Float32Array) raw = littleEndian(toFloat16Array(data));
  else if (data instanceof Float32Array || data instanceof Uint16Array || data instanceof BigInt64Array)
    raw = littleEndian(data);
  else raw = new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  return onnx.TensorProto.create({ name, dims: [...dims], dataType, rawData: raw });
}

export type AttrValue = number | number[] | string | { float: number };

export function node(
  opType: string,
  name: string,
  input: readonly string[],
  output: readonly string[],
  attrs: Record<string, AttrValue> = {},
  domain?: string,
): NodeProto {
  const attribute = Object.entries(attrs).map(([k, v]): AttributeProto => {
    if (typeof v === 'string') return { name: k, type: ATTR.STRING, s: new TextEncoder().encode(v) };
    if (Array.isArray(v)) return { name: k, type: ATTR.INTS, ints: v };
    if (typeof v === 'number') return { name: k, type: ATTR.INT, i: v };
    return { name: k, type: ATTR.FLOAT, f: v.float };
  });
  return onnx.NodeProto.create({
    opType,
    name,
    input: [...input],
    output: [...output],
    attribute,
    ...(domain ? { domain } : {}),
  });
}

/** An INT (or INTS) attribute of a node, or `fallback`. */
export function intAttr(n: NodeProto, name: string, fallback: number): number {
  const a = (n.attribute ?? []).find((x) => x.name === name);
  return a ? Number(a.i) : fallback;
}

/** Fresh value and node names: every name the model already uses, plus the ones handed out. */
export class Names {
  private readonly used = new Set<string>();

  constructor(m: ModelProto) {
    const g = m.graph!;
    for (const n of g.node ?? []) {
      if (n.name) this.used.add(n.name);
      for (const x of [...(n.input ?? []), ...(n.output ?? [])]) this.used.add(x);
    }
    for (const t of g.initializer ?? []) this.used.add(t.name!);
    for (const v of [...(g.input ?? []), ...(g.output ?? [])]) this.used.add(v.name!);
  }

  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }
}

// float16 (IEEE binary16) bits, round to nearest even, as TensorRT and ONNX Runtime convert.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The binary16 bits nearest to x (ties to even); overflow gives +-Infinity, NaN stays NaN. */
export function toFloat16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // may carry into the exponent: still correct (up to Infinity)
  return sign | h;
}

export function fromFloat16Bits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** x rounded to the nearest float16 value. */
export const roundToFloat16 = (x: number): number => fromFloat16Bits(toFloat16Bits(x));

export function toFloat16Array(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = toFloat16Bits(values[i]!);
  return out;
}

/** The largest finite float16. */
export const FLOAT16_MAX = 65504;
/** The smallest positive (subnormal) float16. */
export const FLOAT16_MIN_POSITIVE = 2 ** -24;
