import t from 'tap';
import { capabilities, loadNative } from '../../src/engine/native.js';

t.test('the addon loads and reports compiled features apart from present hardware', async (t) => {
  const addon = loadNative();
  t.type(addon.capabilities, 'function');
  const caps = capabilities();
  t.type(caps.compiled.cuda, 'boolean');
  t.type(caps.compiled.tensorrt, 'boolean');
  t.ok(['avx512', 'avx2', 'neon', 'sse2', 'scalar'].includes(caps.compiled.simd), caps.compiled.simd);
  t.ok(Array.isArray(caps.present.gpus));
  // A build without CUDA can never see a GPU; a machine without GPUs says why.
  if (!caps.compiled.cuda) t.equal(caps.present.gpus.length, 0);
  if (caps.present.gpus.length === 0) t.type(caps.present.gpuProbeError, 'string');
  if (caps.compiled.cuda) t.match(caps.compiled.cudaVersion, /^\d+\.\d+/);
  // Expectations of the machine CI runs on may be pinned from outside.
  if (process.env.SETOKIM_EXPECT_CUDA) t.equal(caps.compiled.cuda, process.env.SETOKIM_EXPECT_CUDA === '1');
  if (process.env.SETOKIM_EXPECT_GPUS) t.equal(caps.present.gpus.length, Number(process.env.SETOKIM_EXPECT_GPUS));
});
