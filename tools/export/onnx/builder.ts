/**
 * A small ONNX graph builder: nodes, initializers and named inputs/outputs, serialised with
 * onnx-proto (static protobufjs code generated from ONNX's own onnx.proto).
 *
 * Output is deterministic: node and value names come from a counter in call order, initializers
 * are written as little-endian raw_data in creation order, and nothing depends on time or host.
 */
import onnxProto from 'onnx-proto';
import type { Dim, DType } from '../../../src/engine/contract.js';

const { onnx } = onnxProto;
export type OnnxModel = InstanceType<typeof onnx.ModelProto>;

export const OPSET = 17;
export const IR_VERSION = 8;

const DATA_TYPE: Record<DType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  int8: onnx.TensorProto.DataType.INT8,
  uint8: onnx.TensorProto.DataType.UINT8,
  bool: onnx.TensorProto.DataType.BOOL,
};

export type AttrValue = number | number[] | string | { float: number } | { floats: number[] };

type ValueInfo = ReturnType<typeof onnx.ValueInfoProto.create>;
type NodeProto = ReturnType<typeof onnx.NodeProto.create>;
type TensorProto = ReturnType<typeof onnx.TensorProto.create>;

function valueInfo(name: string, dtype: DType, shape: readonly Dim[]): ValueInfo {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: DATA_TYPE[dtype],
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

/** Integers become INT attributes, other numbers FLOAT; use {float} to force a float. */
function attribute(name: string, v: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { name, type: T.INT, i: v } : { name, type: T.FLOAT, f: v };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  return { name, type: T.FLOAT, f: v.float };
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function rawBytes(data: Float32Array | BigInt64Array | Uint8Array): Uint8Array {
  // ONNX raw_data is little-endian: copy as is on little-endian hosts, swap through a DataView otherwise.
  if (LITTLE_ENDIAN_HOST) return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  const out = new Uint8Array(data.length * data.BYTES_PER_ELEMENT);
  const view = new DataView(out.buffer);
  if (data instanceof Float32Array) data.forEach((x, i) => view.setFloat32(i * 4, x, true));
  else if (data instanceof BigInt64Array) data.forEach((x, i) => view.setBigInt64(i * 8, x, true));
  else out.set(data);
  return out;
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly names = new Set<string>();
  private readonly scopes: string[] = [];
  private counter = 0;
  private readonly scalars = new Map<string, string>();

  constructor(readonly name: string) {}

  /** Runs fn with names prefixed by `scope/`, so weights read like `layer3/attn/q.weight`. */
  scope<T>(scope: string, fn: () => T): T {
    this.scopes.push(scope);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  /** The full name `base` gets in the current scope. */
  qualify(base: string): string {
    return [...this.scopes, base].join('/');
  }

  private fresh(base: string): string {
    const name = this.qualify(base);
    if (this.names.has(name)) throw new Error(`duplicate ONNX value name ${name}`);
    this.names.add(name);
    return name;
  }

  input(name: string, dtype: DType, shape: readonly Dim[]): string {
    if (this.names.has(name)) throw new Error(`duplicate ONNX value name ${name}`);
    this.names.add(name);
    this.inputs.push(valueInfo(name, dtype, shape));
    return name;
  }

  /** Declares `value` as graph output `name` (through an Identity so any value can be an output). */
  output(name: string, value: string, dtype: DType, shape: readonly Dim[]): void {
    if (this.names.has(name)) throw new Error(`duplicate ONNX value name ${name}`);
    this.names.add(name);
    this.nodes.push(
      onnx.NodeProto.create({ opType: 'Identity', input: [value], output: [name], name: `${name}/Identity` }),
    );
    this.outputs.push(valueInfo(name, dtype, shape));
  }

  /** A float32 initializer (a weight). */
  weight(name: string, data: Float32Array, dims: readonly number[]): string {
    return this.tensor(name, 'float32', data, dims);
  }

  tensor(
    name: string,
    dtype: 'float32' | 'int64' | 'bool',
    data: Float32Array | BigInt64Array | Uint8Array,
    dims: readonly number[],
  ): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`initializer ${name}: ${data.length} values for dims [${dims}]`);
    const full = this.fresh(name);
    this.initializers.push(
      onnx.TensorProto.create({ name: full, dims: [...dims], dataType: DATA_TYPE[dtype], rawData: rawBytes(data) }),
    );
    return full;
  }

  /** An int64 constant, shared by value (shapes, axes, indices). dims [] is a scalar. */
  ints(values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.shared(`i64:${dims}:${values}`, () =>
      this.tensor(`const_i64_${this.counter++}`, 'int64', BigInt64Array.from(values.map(BigInt)), dims),
    );
  }

  /** A float32 constant, shared by value. dims [] is a scalar. */
  floats(values: readonly number[], dims: readonly number[] = [values.length]): string {
    return this.shared(`f32:${dims}:${values}`, () =>
      this.tensor(`const_f32_${this.counter++}`, 'float32', Float32Array.from(values), dims),
    );
  }

  scalar(value: number): string {
    return this.floats([value], []);
  }

  private shared(key: string, make: () => string): string {
    let name = this.scalars.get(key);
    if (!name) {
      // shared constants live at the root scope whatever scope asks first
      const saved = this.scopes.splice(0);
      try {
        name = make();
      } finally {
        this.scopes.push(...saved);
      }
      this.scalars.set(key, name);
    }
    return name;
  }

  /** Adds one node and returns its single output. */
  op(opType: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}): string {
    return this.opN(opType, inputs, 1, attrs)[0]!;
  }

  /** Adds one node with `outputs` outputs. An empty input name is an omitted optional input. */
  opN(opType: string, inputs: readonly string[], outputs: number, attrs: Record<string, AttrValue> = {}): string[] {
    const id = this.counter++;
    const node = this.fresh(`${opType}_${id}`);
    const outs = Array.from({ length: outputs }, (_, i) => this.fresh(`${opType}_${id}_out${i}`));
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        name: node,
        input: [...inputs],
        output: outs,
        attribute: Object.keys(attrs)
          .sort()
          .map((k) => attribute(k, attrs[k]!)),
      }),
    );
    return outs;
  }

  model(docString = ''): OnnxModel {
    return onnx.ModelProto.create({
      irVersion: IR_VERSION,
      opsetImport: [{ domain: '', version: OPSET }],
      producerName: 'setokim-edge',
      producerVersion: '1',
      docString,
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
  }

  /** Serialised ModelProto bytes. */
  encode(docString = ''): Uint8Array {
    return onnx.ModelProto.encode(this.model(docString)).finish();
  }

  /** Number of float parameters in the initializers (constants included). */
  parameterCount(): number {
    let n = 0;
    for (const t of this.initializers) if (t.dataType === DATA_TYPE.float32) n += (t.rawData?.length ?? 0) / 4;
    return n;
  }
}
