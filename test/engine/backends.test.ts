/**
 * Runs the shared backend suite against every backend this machine has. ONNX Runtime CPU always
 * runs; TensorRT runs where the addon was built with it and a GPU is present, and is skipped with
 * the reason otherwise.
 */
import t from 'tap';
import path from 'node:path';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { TensorRtBackend, tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { buildEngine } from '../../src/engine/engine-builder.js';
import { backendSuite } from './backend-suite.js';

t.test('onnxruntime-cpu', async (t) => {
  backendSuite(t, { backend: new OrtBackend(), prepare: async (onnx) => onnx, tolerance: 1e-5 });
});

const trtReason = tensorrtUnavailableReason();
t.test('tensorrt', { skip: trtReason ? `TensorRT is not available here: ${trtReason}` : false }, async (t) => {
  backendSuite(t, {
    backend: new TensorRtBackend(),
    prepare: async (onnx, signature, maxDims) => {
      const plan = onnx.replace(/\.onnx$/, '.plan');
      await buildEngine({ stage: path.basename(onnx, '.onnx'), onnx, plan, signature, maxDims, precision: 'fp32' });
      return plan;
    },
    tolerance: 2e-2, // TF32 matmuls on Ampere and later
  });
});
