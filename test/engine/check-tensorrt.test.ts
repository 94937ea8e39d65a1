/**
 * scripts/check-tensorrt.sh: usage errors, the version it reports, a non-zero exit on compile
 * errors. Real TensorRT headers are not part of a clone; set SETOKIM_TRT_INCLUDES to a
 * colon-separated list of TensorRT include folders to run the full check here too.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../../src/engine/native.js';
import { tmpDir } from './fixtures.js';

const run = promisify(execFile);
const script = path.join(packageRoot(), 'scripts', 'check-tensorrt.sh');

async function check(args: string[]): Promise<{ status: number; out: string }> {
  try {
    const r = await run('bash', [script, ...args], { maxBuffer: 1 << 24 });
    return { status: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { status: e.code ?? -1, out: (e.stdout ?? '') + (e.stderr ?? '') };
  }
}

const cudaInclude = process.env.CUDA_INCLUDE ?? '/usr/local/cuda/include';

t.test('usage and folder errors exit 2', async (t) => {
  const none = await check([]);
  t.equal(none.status, 2);
  t.match(none.out, /usage: npm run check:tensorrt -- \/path\/to\/TensorRT\/include/);
  const missing = await check(['/definitely/not/here']);
  t.equal(missing.status, 2);
  t.match(missing.out, /no such folder: \/definitely\/not\/here/);
  const notTrt = await check([tmpDir()]);
  t.equal(notTrt.status, 2);
  t.match(notTrt.out, /has no NvInferVersion\.h: give TensorRT's include folder/);
});

t.test(
  'headers that do not compile fail the check, naming the version',
  { skip: !existsSync(path.join(cudaInclude, 'cuda_runtime_api.h')) && `no CUDA headers at ${cudaInclude}` },
  async (t) => {
    const inc = path.join(tmpDir(), 'include');
    mkdirSync(inc);
    writeFileSync(
      path.join(inc, 'NvInferVersion.h'),
      '#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 3\n#define NV_TENSORRT_PATCH 0\n',
    );
    writeFileSync(path.join(inc, 'NvOnnxParser.h'), '#error "not a real parser header"\n');
    const r = await check([inc]);
    t.equal(r.status, 1, 'non-zero on compile errors');
    t.match(r.out, /check-tensorrt: TensorRT 10\.3\.0 headers at /);
    t.match(r.out, /FAIL native\/trt\/tensorrt\/engine\.cc/);
    t.match(r.out, /TensorRT 10\.3\.0: \d+ of \d+ files failed/);
  },
);

const real = (process.env.SETOKIM_TRT_INCLUDES ?? '').split(':').filter(Boolean);
t.test(
  'the sources compile against real TensorRT headers',
  { skip: real.length === 0 && 'set SETOKIM_TRT_INCLUDES to TensorRT include folders' },
  async (t) => {
    const r = await check(real);
    t.equal(r.status, 0, r.out.slice(-3000));
    t.equal((r.out.match(/: all \d+ files compile/g) ?? []).length, real.length);
  },
);
