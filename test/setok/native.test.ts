import t, { type Test } from 'tap';
import { addPositionEncoding, cluster, nativeClusterFn } from '../../src/setok/index.js';
import { clusterReference, type ClusterParams, type ClusterResult } from '../../src/setok/reference.js';
import { SetokimError } from '../../src/errors.js';
import { loadNative } from '../../src/engine/native.js';
import { plantedFeatures, randomFeatures, repeatedFeatures } from './helpers.js';

const native = nativeClusterFn();

function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return (
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ) === 0
  );
}

async function expectEqual(t: Test, name: string, x: Float32Array, p: ClusterParams): Promise<ClusterResult> {
  const want = clusterReference(x, p);
  const got = await cluster(x, p);
  t.same(Array.from(got.centers), Array.from(want.centers), `${name}: centres`);
  t.ok(sameBits(got.labels, want.labels), `${name}: labels identical`);
  t.ok(sameBits(got.scores, want.scores), `${name}: scores identical to the bit`);
  return got;
}

t.test('the addon provides the native clustering', async (t) => {
  t.type(native, 'function', 'build the addon with `npm run build:native`');
});

t.test('native CPU equals the TypeScript reference exactly', { skip: !native && 'addon not built' }, async (t) => {
  await expectEqual(t, 'random 200x64', randomFeatures(200, 64, 1), {
    n: 200,
    dim: 64,
    k: 16,
    threshold: 0.3,
    fallback: 20,
  });
  await expectEqual(t, 'random, fallback', randomFeatures(150, 37, 2), {
    n: 150,
    dim: 37,
    k: 7,
    threshold: 10,
    fallback: 9,
  });
  await expectEqual(t, 'random, capped', randomFeatures(150, 37, 2), {
    n: 150,
    dim: 37,
    k: 7,
    threshold: 0,
    fallback: 9,
    maxTokens: 11,
  });
  const planted = await expectEqual(t, 'planted regions', plantedFeatures(12, 12, 48, 4, 5, 0.1), {
    n: 144,
    dim: 48,
    k: 12,
    threshold: 0.5,
    fallback: 64,
  });
  t.equal(planted.centers.length, 4, 'one centre per planted region');
  await expectEqual(t, 'repeated rows (ties)', repeatedFeatures(300, 32, 7, 9), {
    n: 300,
    dim: 32,
    k: 20,
    threshold: 0.2,
    fallback: 64,
  });
  await expectEqual(t, 'repeated rows, fallback', repeatedFeatures(100, 8, 3, 4), {
    n: 100,
    dim: 8,
    k: 5,
    threshold: 5,
    fallback: 10,
  });
  const real = { n: 729, dim: 1152, k: 64, threshold: 0.55, fallback: 64 };
  const img = addPositionEncoding(plantedFeatures(27, 27, 1152, 5, 21, 0.5), 27, 27, 1152);
  const r = await expectEqual(t, 'real size 729x1152, planted + position encoding', img, real);
  t.ok(r.centers.length >= 5 && r.centers.length < 64, `${r.centers.length} centres`);
  await expectEqual(t, 'real size 729x1152, random (fallback)', randomFeatures(729, 1152, 3), real);
});

t.test('a maxTokens cap that is not reached changes nothing', { skip: !native && 'addon not built' }, async (t) => {
  const x = randomFeatures(120, 16, 6);
  const p = { n: 120, dim: 16, k: 8, threshold: 0.2, fallback: 8 };
  const free = await cluster(x, p);
  const capped = await cluster(x, { ...p, maxTokens: free.centers.length });
  t.same(capped, free);
  const tight = await cluster(x, { ...p, maxTokens: 2 });
  t.equal(tight.centers.length, 2);
  const best = Array.from(free.centers)
    .sort((a, b) => free.scores[b]! - free.scores[a]! || a - b)
    .slice(0, 2)
    .sort((a, b) => a - b);
  t.same(Array.from(tight.centers), best, 'the two best scores, in index order');
});

t.test('clustering runs off the JavaScript thread', { skip: !native && 'addon not built' }, async (t) => {
  const x = randomFeatures(729, 1152, 8);
  // One call first: the first one in a process also loads the addon and compiles the JS path,
  // which is not what this measures.
  await cluster(randomFeatures(16, 8, 1), { n: 16, dim: 8, k: 4, threshold: 0.55, fallback: 4 });
  const t0 = performance.now();
  const pending = cluster(x, { n: 729, dim: 1152, k: 64, threshold: 0.55, fallback: 64 });
  const syncMs = performance.now() - t0;
  let ticks = 0;
  let done = false;
  void pending.then(() => (done = true));
  while (!done) {
    await new Promise((r) => setImmediate(r));
    ticks++;
  }
  const totalMs = performance.now() - t0;
  t.ok(syncMs < totalMs / 2, `call returned after ${syncMs.toFixed(1)} of ${totalMs.toFixed(1)} ms`);
  t.ok(ticks > 1, `the event loop turned ${ticks} times while clustering`);
});

t.test('bad input rejects with BAD_INPUT, never crashes', async (t) => {
  const x = randomFeatures(10, 4, 1);
  const p = { n: 10, dim: 4, k: 3, threshold: 0.5, fallback: 4 };
  const bad = async (features: Float32Array, o: object, re: RegExp) => {
    const err = await cluster(features, o as typeof p).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof SetokimError, `rejects with a SetokimError (${String(err)})`);
    t.equal((err as SetokimError).code, 'BAD_INPUT');
    t.match((err as SetokimError).message, re);
  };
  await bad(x, { ...p, k: 11 }, /k = 11 .*n = 10/);
  await bad(new Float32Array(0), { ...p, dim: 0, n: 10 }, /dim/);
  await bad(x, { ...p, n: 9 }, /40 values but n x dim/);
  const withNaN = x.slice();
  withNaN[6] = NaN;
  await bad(withNaN, p, /features\[1\]\[2\] is NaN/);
  const withInf = x.slice();
  withInf[39] = -Infinity;
  await bad(withInf, p, /features\[9\]\[3\]/);
  await bad(x, { ...p, threshold: NaN }, /threshold/);
  await bad(Array.from(x) as unknown as Float32Array, p, /Float32Array/);
});

t.test('the raw binding also refuses bad data with a code', { skip: !native && 'addon not built' }, async (t) => {
  const addon = loadNative();
  const x = randomFeatures(10, 4, 1);
  await t.rejects(addon.setokCluster!(x, 10, 4, 11, 0.5, 4, 0), { code: 'BAD_INPUT' });
  await t.rejects(addon.setokCluster!(x, 10, 0, 3, 0.5, 4, 0), { code: 'BAD_INPUT' });
  await t.rejects(addon.setokCluster!(x, 11, 4, 3, 0.5, 4, 0), { code: 'BAD_INPUT' });
  x[3] = NaN;
  await t.rejects(addon.setokCluster!(x, 10, 4, 3, 0.5, 4, 0), { code: 'BAD_INPUT', message: /NaN/ });
});

t.test('addPositionEncoding adds the reference table and validates', async (t) => {
  const f = new Float32Array(2 * 3 * 8).fill(1);
  const out = addPositionEncoding(f, 2, 3, 8);
  t.equal(out[0], 1); // sin 0
  t.equal(out[1], 2); // cos 0
  const p = (1 * 3 + 2) * 8; // row 1, col 2; ch = 4
  t.equal(out[p + 0], Math.fround(1 + Math.fround(Math.sin(1))));
  t.equal(out[p + 4], Math.fround(1 + Math.fround(Math.sin(2))));
  t.equal(f[1], 1, 'input untouched');
  t.throws(() => addPositionEncoding(f, 2, 2, 8), { code: 'BAD_INPUT' });
});

t.test(
  'concurrent calls with different shapes all give the reference result',
  { skip: !native && 'addon not built' },
  async (t) => {
    const cases = [
      { x: randomFeatures(120, 16, 21), p: { n: 120, dim: 16, k: 8, threshold: 0.3, fallback: 8 } },
      { x: plantedFeatures(10, 10, 24, 3, 22, 0.1), p: { n: 100, dim: 24, k: 10, threshold: 0.5, fallback: 8 } },
      { x: repeatedFeatures(90, 12, 6, 23), p: { n: 90, dim: 12, k: 5, threshold: 0.2, fallback: 8, maxTokens: 4 } },
    ];
    const all = [...cases, ...cases, ...cases];
    const got = await Promise.all(all.map((c) => cluster(c.x, c.p)));
    for (let i = 0; i < all.length; i++) {
      const want = clusterReference(all[i]!.x, { maxTokens: 0, ...all[i]!.p });
      t.same(Array.from(got[i]!.labels), Array.from(want.labels), `call ${i}`);
      t.same(Array.from(got[i]!.centers), Array.from(want.centers), `call ${i} centres`);
    }
  },
);
