/**
 * The build's CUDA and TensorRT tiers, checked at CMake configure time (fast: no compile). Without
 * cmake-js the addon target is skipped, which does not change how the tiers resolve.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../../src/engine/native.js';

const run = promisify(execFile);
const root = packageRoot();

/** Runs `cmake -S root -B tmp ...args` and returns its status and combined output. */
async function configure(args: string[], env: Record<string, string> = {}): Promise<{ ok: boolean; out: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'setokim-cmake-'));
  // The environment must not choose the tiers for us (cmake reads SETOKIM_* from it).
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(SETOKIM_CUDA|SETOKIM_TENSORRT|TENSORRT_ROOT)$/.test(k)),
  );
  try {
    const r = await run('cmake', ['-S', root, '-B', dir, ...args], { env: { ...clean, ...env }, maxBuffer: 1 << 24 });
    return { ok: true, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: (e.stdout ?? '') + (e.stderr ?? '') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Where CMake finds TensorRT without TENSORRT_ROOT (cmake/SetokimTensorRT.cmake); there the
// "TensorRT missing" configure would succeed, so that check is skipped.
const systemTrt = [
  '/usr/include/aarch64-linux-gnu',
  '/usr/include/x86_64-linux-gnu',
  '/usr/local/tensorrt/include',
].find((d) => existsSync(path.join(d, 'NvInfer.h')));

const haveCmake = await run('cmake', ['--version']).then(
  () => true,
  () => false,
);

t.test('CMake tiers', { skip: !haveCmake && 'cmake is not installed' }, async (t) => {
  // Both configures at once: the TensorRT=ON one probes for CUDA, which takes seconds.
  const [trtOn, trtHeadersOnly, cudaOff] = await Promise.all([
    configure(['-DSETOKIM_TENSORRT=ON']),
    (() => {
      // TensorRT headers without libraries (what check:tensorrt uses) are not enough to build.
      const fake = mkdtempSync(path.join(tmpdir(), 'setokim-fake-trt-'));
      mkdirSync(path.join(fake, 'include'));
      writeFileSync(path.join(fake, 'include', 'NvInfer.h'), '// headers only\n');
      t.teardown(() => rmSync(fake, { recursive: true, force: true }));
      return configure(['-DSETOKIM_TENSORRT=ON', '-DSETOKIM_CUDA=OFF'], { TENSORRT_ROOT: fake });
    })(),
    configure(['-DSETOKIM_CUDA=OFF']),
  ]);

  t.test(
    'SETOKIM_TENSORRT=ON without TensorRT fails and names TENSORRT_ROOT',
    { skip: systemTrt && `TensorRT is installed in ${systemTrt}` },
    async (t) => {
      t.equal(trtOn.ok, false, 'configure fails');
      t.match(trtOn.out, /SETOKIM_TENSORRT=ON but TensorRT .* was not found/s);
      t.match(trtOn.out, /TENSORRT_ROOT/);
    },
  );

  t.test(
    'TensorRT headers without its libraries still fail with the same advice',
    { skip: systemTrt && `TensorRT is installed in ${systemTrt}` },
    async (t) => {
      t.equal(trtHeadersOnly.ok, false);
      t.match(trtHeadersOnly.out, /libnvinfer/);
      t.match(trtHeadersOnly.out, /TENSORRT_ROOT/);
    },
  );

  t.test('SETOKIM_CUDA=OFF configures and says CUDA=OFF in the summary', async (t) => {
    t.equal(cudaOff.ok, true, cudaOff.out.slice(-2000));
    const summary = cudaOff.out.split('\n').find((l) => l.includes('setokim: CUDA='));
    t.ok(summary, 'summary line present');
    t.match(summary, /setokim: CUDA=OFF \(OFF\)/);
    t.match(summary, /TensorRT=OFF/);
  });
});
