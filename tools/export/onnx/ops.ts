/**
 * The ONNX ops the reference graphs may use: every one is in TensorRT 10's ONNX parser (onnx-tensorrt
 * docs/operators.md; LayerNormalization is native since TensorRT 8.6). Their restrictions are met:
 * Conv weights, Unsqueeze axes, Split sizes and ReduceSum axes are initializers; Range runs on
 * int64 (cast to int32 by the parser), never float. Tests check every stage against this list.
 */
export const TENSORRT_OPS = new Set([
  'Add',
  'Cast',
  'Concat',
  'Conv',
  'Cos',
  'Div',
  'Expand',
  'Gather',
  'Greater',
  'Identity',
  'LayerNormalization',
  'MatMul',
  'Mul',
  'Neg',
  'Pow',
  'Range',
  'ReduceMean',
  'ReduceSum',
  'Reshape',
  'Shape',
  'Sigmoid',
  'Sin',
  'Softmax',
  'Split',
  'Sqrt',
  'Sub',
  'Tanh',
  'Transpose',
  'Unsqueeze',
  'Where',
]);
