import t from 'tap';
import { spawnSync } from 'node:child_process';
import { formatDoctor } from '../../src/cli/doctor.js';
import { detectTarget } from '../../src/engine/target.js';
import { childEnv } from '../helpers/child-env.js';

const cli = new URL('../../bin/setokim.js', import.meta.url).pathname;

t.test('doctor prints compiled features and present GPUs', async (t) => {
  const r = spawnSync(process.execPath, [cli, 'doctor', '--json'], { encoding: 'utf8', env: childEnv() });
  t.equal(r.status, 0, r.stderr);
  const caps = JSON.parse(r.stdout);
  t.type(caps.compiled.cuda, 'boolean');
  // ONNX Runtime CPU runs everywhere; TensorRT only with the addon built for it and a GPU.
  t.ok(caps.backends.includes('onnxruntime-cpu'), caps.backends.join(','));
  if (!caps.compiled.tensorrt || caps.present.gpus.length === 0) t.notOk(caps.backends.includes('tensorrt'));
  const text = formatDoctor(caps, caps.backends);
  t.match(text, caps.compiled.cuda ? /CUDA kernels\s+yes/ : /CUDA kernels\s+no/);
  if (caps.present.gpus.length === 0) t.match(text, /GPUs\s+none/);
  t.match(text, /inference backends:\s+.*onnxruntime-cpu/);
  // The target this device's bundles and engines must be built for (src/engine/target.ts).
  t.equal(caps.target.id, (await detectTarget()).id);
  t.match(caps.target.id, /^[a-z0-9._-]+\/[a-z0-9._-]+\/[a-z0-9._-]+$/);
  if (!caps.compiled.tensorrt && caps.target.jetson === null) t.match(caps.target.id, /^[a-z0-9_]+\/none\/cpu$/);
  const human = spawnSync(process.execPath, [cli, 'doctor'], { encoding: 'utf8', env: childEnv() });
  t.equal(human.status, 0, human.stderr);
  t.match(human.stdout, new RegExp(`target:\\s+${caps.target.id.replace(/[.]/g, '\\.')} \\(`));
});

t.test('formatDoctor names a GPU when one is present', async (t) => {
  const text = formatDoctor(
    {
      compiled: {
        cuda: true,
        cudaVersion: '12.6',
        cudaArchitectures: '87',
        tensorrt: true,
        tensorrtVersion: '10.3.0',
        simd: 'neon',
      },
      present: {
        gpus: [{ index: 0, name: 'Orin', computeCapability: '8.7', totalMemoryBytes: 8 * 2 ** 30 }],
        cudaDriverVersion: 12060,
        gpuProbeError: null,
        tensorrtLibraryVersion: '10.3.0',
      },
    },
    ['tensorrt', 'onnxruntime-cpu'],
  );
  t.match(text, /\[0\] Orin, sm 8\.7, 8\.0 GiB/);
  t.match(text, /inference backends:\s+tensorrt, onnxruntime-cpu/);
  t.notMatch(text, /target:/, 'no target line unless one was detected');
});

t.test('unknown subcommands fail with usage help, not a stack trace', async (t) => {
  const r = spawnSync(process.execPath, [cli, 'nope'], { encoding: 'utf8', env: childEnv() });
  t.not(r.status, 0);
  t.notMatch(r.stderr, /at .*\.js:\d+/);
});
