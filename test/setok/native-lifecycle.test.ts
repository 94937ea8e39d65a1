// The native clustering's life cycle around the event loop (Napi::AsyncWorker on libuv's pool): a
// pending call keeps the process alive and a settled one does not; Workers (worker_threads)
// cluster too, and a Worker torn down with a call in flight takes nothing else down.
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { cluster, nativeClusterFn } from '../../src/setok/index.js';
import { clusterReference } from '../../src/setok/reference.js';
import { childEnv } from '../helpers/child-env.js';
import { plantedFeatures, randomFeatures } from './helpers.js';

const addon = process.env.SETOKIM_ADDON ?? path.resolve('build/Release/setokim.node');
const skip = (!nativeClusterFn() || !existsSync(addon)) && 'addon not built';

// Runs `code` in a fresh node process; resolves with its exit code and output.
function runNode(code: string, timeoutMs: number): Promise<{ code: number | null; out: string; killed: boolean }> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      ['-e', code],
      { env: childEnv({ ADDON: addon }), timeout: timeoutMs },
      (err, stdout, stderr) => {
        resolve({
          code: child.exitCode,
          out: stdout + stderr,
          killed: !!err && (err as { killed?: boolean }).killed === true,
        });
      },
    );
  });
}

t.test('a pending clustering keeps the process alive; a settled one lets it exit', { skip }, async (t) => {
  const r = await runNode(
    `const a = require(process.env.ADDON);
     const x = new Float32Array(256 * 64).map((_, i) => Math.sin(i * 0.37));
     a.setokCluster(x, 256, 64, 64, 0.55, 64, 0).then((r) => console.log('settled', r.labels.length));`,
    20_000,
  );
  t.notOk(r.killed, 'exited by itself once nothing was pending');
  t.equal(r.code, 0, r.out);
  t.match(r.out, /settled 256/, 'the promise settled before exit');
});

t.test('a Worker clusters alongside the main thread and gets the reference result', { skip }, async (t) => {
  const x = plantedFeatures(12, 12, 32, 4, 9, 0.3);
  const p = { n: 144, dim: 32, k: 12, threshold: 0.4, fallback: 8, maxTokens: 0 };
  const worker = new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
     const a = require(workerData.addon);
     const { x, p } = workerData;
     Promise.all([1, 2, 3].map(() => a.setokCluster(x, p.n, p.dim, p.k, p.threshold, p.fallback, 0)))
       .then((rs) => parentPort.postMessage(rs.map((r) => Array.from(r.labels))));`,
    { eval: true, workerData: { addon, x, p } },
  );
  const [got, ours] = await Promise.all([
    new Promise<number[][]>((resolve, reject) => worker.once('message', resolve).once('error', reject)),
    cluster(x, p), // the main thread clusters meanwhile
  ]);
  const want = Array.from(clusterReference(x, p).labels);
  for (const labels of got) t.same(labels, want, 'worker result equals the reference');
  t.same(Array.from(ours.labels), want, 'main thread result equals the reference');
  await worker.terminate();
});

t.test('a Worker terminated with a clustering in flight takes nothing else down', { skip }, async (t) => {
  const big = randomFeatures(729, 1152, 3);
  const worker = new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
     const a = require(workerData.addon);
     for (let i = 0; i < 4; i++) a.setokCluster(workerData.big, 729, 1152, 64, 0.55, 64, 0);
     parentPort.postMessage('queued');`,
    { eval: true, workerData: { addon, big } },
  );
  await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
  const exit = await worker.terminate(); // its environment goes while its jobs are queued or running
  t.type(exit, 'number', 'the worker stopped');
  // The dead Worker's jobs finish or are dropped; this thread keeps clustering.
  const x = randomFeatures(64, 8, 4);
  const p = { n: 64, dim: 8, k: 6, threshold: 0.3, fallback: 4, maxTokens: 0 };
  const got = await cluster(x, p);
  t.same(Array.from(got.labels), Array.from(clusterReference(x, p).labels), 'the main thread still clusters');
});
