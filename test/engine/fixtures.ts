/**
 * Tiny ONNX graphs for the engine tests, written with onnx-proto (ONNX's own schema), so each test
 * knows exactly what the graph computes and can compute the expected numbers itself.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import type { StageSignature } from '../../src/engine/contract.js';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;

type Dim = number | string;

function valueInfo(name: string, elemType: number, shape: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

function floatInit(name: string, dims: number[], values: Float32Array) {
  return onnx.TensorProto.create({ name, dataType: FLOAT, dims, rawData: new Uint8Array(values.buffer.slice(0)) });
}

function node(opType: string, inputs: string[], outputs: string[]) {
  return onnx.NodeProto.create({ opType, input: inputs, output: outputs, name: `${opType}_${outputs[0]}` });
}

function model(graph: Parameters<typeof onnx.GraphProto.create>[0]): Uint8Array {
  return onnx.ModelProto.encode(
    onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'setokim-edge-tests',
      opsetImport: [{ domain: '', version: 17 }],
      graph: onnx.GraphProto.create(graph),
    }),
  ).finish();
}

export const tmpDir = (): string => mkdtempSync(path.join(tmpdir(), 'setokim-engine-'));

/** The weight of the Add/MatMul graph: W[i][j] = (i + 1) * 0.5 - j. */
export const W_IN = 4;
export const W_OUT = 3;
export const weight = (): Float32Array => {
  const w = new Float32Array(W_IN * W_OUT);
  for (let i = 0; i < W_IN; i++) for (let j = 0; j < W_OUT; j++) w[i * W_OUT + j] = (i + 1) * 0.5 - j;
  return w;
};

/** z = (x + y) @ W: x, y float32 [1, L, 4] with L dynamic, z float32 [1, L, 3]. */
export const ADD_MATMUL_SIGNATURE: StageSignature = {
  inputs: [
    { name: 'x', dtype: 'float32', shape: [1, 'L', W_IN] },
    { name: 'y', dtype: 'float32', shape: [1, 'L', W_IN] },
  ],
  outputs: [{ name: 'z', dtype: 'float32', shape: [1, 'L', W_OUT] }],
};

export function addMatMul(dir: string): string {
  const file = path.join(dir, 'add_matmul.onnx');
  writeFileSync(
    file,
    model({
      name: 'add_matmul',
      node: [node('Add', ['x', 'y'], ['s']), node('MatMul', ['s', 'W'], ['z'])],
      initializer: [floatInit('W', [W_IN, W_OUT], weight())],
      input: [valueInfo('x', FLOAT, [1, 'L', W_IN]), valueInfo('y', FLOAT, [1, 'L', W_IN])],
      output: [valueInfo('z', FLOAT, [1, 'L', W_OUT])],
    }),
  );
  return file;
}

/** The plain-TypeScript reference for addMatMul. */
export function addMatMulRef(x: Float32Array, y: Float32Array, L: number): Float32Array {
  const w = weight();
  const z = new Float32Array(L * W_OUT);
  for (let l = 0; l < L; l++)
    for (let j = 0; j < W_OUT; j++) {
      let acc = 0;
      for (let i = 0; i < W_IN; i++) acc += (x[l * W_IN + i]! + y[l * W_IN + i]!) * w[i * W_OUT + j]!;
      z[l * W_OUT + j] = acc;
    }
  return z;
}

/** ids + 1 on int64 [1, T], plus the same ids cast to float32: checks BigInt64 both ways. */
export function int64Graph(dir: string): string {
  const file = path.join(dir, 'ids.onnx');
  writeFileSync(
    file,
    model({
      name: 'ids',
      node: [
        node('Add', ['input_ids', 'one'], ['next_ids']),
        onnx.NodeProto.create({
          opType: 'Cast',
          input: ['input_ids'],
          output: ['as_float'],
          name: 'cast',
          attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: FLOAT }],
        }),
      ],
      initializer: [onnx.TensorProto.create({ name: 'one', dataType: INT64, dims: [1], int64Data: [1] })],
      input: [valueInfo('input_ids', INT64, [1, 'T'])],
      output: [valueInfo('next_ids', INT64, [1, 'T']), valueInfo('as_float', FLOAT, [1, 'T'])],
    }),
  );
  return file;
}

/** A chain of `depth` MatMuls of [n, n]: enough work (tens of ms) to see whether the event loop stalls. */
export function heavyGraph(dir: string, n = 384, depth = 12): string {
  const file = path.join(dir, 'heavy.onnx');
  const w = new Float32Array(n * n).map((_, i) => ((i % 7) - 3) / n);
  const nodes = [];
  let prev = 'a';
  for (let k = 0; k < depth; k++) {
    const out = k === depth - 1 ? 'out' : `h${k}`;
    nodes.push(node('MatMul', [prev, 'W'], [out]));
    prev = out;
  }
  writeFileSync(
    file,
    model({
      name: 'heavy',
      node: nodes,
      initializer: [floatInit('W', [n, n], w)],
      input: [valueInfo('a', FLOAT, [n, n])],
      output: [valueInfo('out', FLOAT, [n, n])],
    }),
  );
  return file;
}

/** A file that is not an ONNX graph at all. */
export function notOnnx(dir: string): string {
  const file = path.join(dir, 'broken.onnx');
  writeFileSync(file, 'this is not a protobuf model\n');
  return file;
}

/**
 * A KV-cache-shaped graph: `total` = the sum over the rows of `cache` [1, S, 4] plus the sum over
 * the rows of `x` [1, T, 4] (both [1, 1, 4]); `rows` = 2 x, the rows a caller appends to the cache.
 */
export const CACHE_SIGNATURE: StageSignature = {
  inputs: [
    { name: 'cache', dtype: 'float32', shape: [1, 'S', W_IN] },
    { name: 'x', dtype: 'float32', shape: [1, 'T', W_IN] },
  ],
  outputs: [
    { name: 'total', dtype: 'float32', shape: [1, 1, W_IN] },
    { name: 'rows', dtype: 'float32', shape: [1, 'T', W_IN] },
  ],
};

export function cacheGraph(dir: string): string {
  const file = path.join(dir, 'cache.onnx');
  const reduce = (x: string, out: string) =>
    onnx.NodeProto.create({
      opType: 'ReduceSum',
      input: [x, 'axis1'],
      output: [out],
      name: `sum_${out}`,
      attribute: [{ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 1 }],
    });
  writeFileSync(
    file,
    model({
      name: 'cache',
      node: [
        reduce('cache', 'a'),
        reduce('x', 'b'),
        node('Add', ['a', 'b'], ['total']),
        node('Mul', ['x', 'two'], ['rows']),
      ],
      initializer: [
        onnx.TensorProto.create({ name: 'axis1', dataType: INT64, dims: [1], int64Data: [1] }),
        floatInit('two', [], Float32Array.of(2)),
      ],
      input: [valueInfo('cache', FLOAT, [1, 'S', W_IN]), valueInfo('x', FLOAT, [1, 'T', W_IN])],
      output: [valueInfo('total', FLOAT, [1, 1, W_IN]), valueInfo('rows', FLOAT, [1, 'T', W_IN])],
    }),
  );
  return file;
}
