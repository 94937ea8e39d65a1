import t from 'tap';
import { ClusterStream, nativeClusterFn } from '../../src/setok/index.js';
import { clusterReference } from '../../src/setok/reference.js';
import { assignIds } from '../../src/setok/tracking.js';
import { SetokimError } from '../../src/errors.js';
import { plantedFeatures, rng } from './helpers.js';

const hasNative = !!nativeClusterFn();
const backends = (['reference', 'native'] as const).filter((b) => b === 'reference' || hasNative);

const rows = 10;
const cols = 12;
const dim = 24;
const n = rows * cols;
const params = { n, dim, k: 8, threshold: 0.45, fallback: 16 };

/** A scene of 3 vertical bands; `shift` moves the band boundaries right by whole columns. */
function frame(shift: number, seed: number): Float32Array {
  const base = plantedFeatures(rows, cols + 6, dim, 3, 5, 0.05);
  const x = new Float32Array(n * dim);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const src = r * (cols + 6) + Math.max(0, c - shift + 3);
      x.set(base.subarray(src * dim, src * dim + dim), (r * cols + c) * dim);
    }
  }
  const rand = rng(seed);
  if (seed) for (let i = 0; i < 4; i++) x[Math.floor(rand() * n) * dim] += 0.01; // a few changed patches
  return x;
}

for (const backend of backends) {
  t.test(`${backend}: every frame equals clustering it alone; ids persist`, async (t) => {
    const stream = new ClusterStream(params, { backend });
    const frames = [frame(0, 0), frame(0, 0), frame(0, 1), frame(1, 2), frame(1, 2), frame(3, 3)];
    let prevIds: Int32Array | undefined;
    let prevCentres = 0;
    for (let f = 0; f < frames.length; f++) {
      const got = await stream.push(frames[f]!);
      const want = clusterReference(frames[f]!, params);
      t.same(Array.from(got.centers), Array.from(want.centers), `frame ${f} centres`);
      t.same(Array.from(got.labels), Array.from(want.labels), `frame ${f} labels`);
      t.same(Array.from(got.scores), Array.from(want.scores), `frame ${f} scores`);
      t.equal(got.frame, f);
      t.equal(got.ids.length, got.centers.length);
      t.equal(new Set(got.ids).size, got.ids.length, 'ids are unique within a frame');
      if (f === 0) t.equal(got.changedPatches, n);
      if (f === 1) {
        t.equal(got.changedPatches, 0, 'identical frame: nothing recomputed');
        t.same(got.ids, prevIds, 'identical frame keeps every id');
      }
      if (f === 2) t.ok(got.changedPatches > 0 && got.changedPatches <= 4, `${got.changedPatches} changed`);
      if (f === 3 && prevIds) {
        // the bands moved by one column: the same three objects, so the same three ids
        t.equal(got.centers.length, prevCentres);
        t.same([...got.ids].sort(), [...prevIds].sort(), 'moved regions keep their ids');
      }
      prevIds = got.ids;
      prevCentres = got.centers.length;
    }
    stream.close();
    await t.rejects(stream.push(frames[0]!), { code: 'BAD_ARGUMENT' });
  });

  t.test(`${backend}: a bad frame rejects and the stream goes on`, async (t) => {
    const stream = new ClusterStream(params, { backend });
    const a = frame(0, 0);
    const first = await stream.push(a);
    const bad = a.slice();
    bad[5] = NaN;
    const err = await stream.push(bad).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof SetokimError && err.code === 'BAD_INPUT', String(err));
    await t.rejects(stream.push(new Float32Array(3)), { code: 'BAD_INPUT' });
    const again = await stream.push(a);
    t.equal(again.changedPatches, 0, 'the cache survived the bad frame');
    t.same(again.ids, first.ids);
    stream.close();
  });

  t.test(`${backend}: concurrent pushes are processed in order`, async (t) => {
    const stream = new ClusterStream(params, { backend });
    const xs = [frame(0, 0), frame(2, 5), frame(0, 0)];
    const results = await Promise.all(xs.map((x) => stream.push(x)));
    t.same(
      results.map((r) => r.frame),
      [0, 1, 2],
    );
    for (let i = 0; i < xs.length; i++)
      t.same(Array.from(results[i]!.labels), Array.from(clusterReference(xs[i]!, params).labels));
    stream.close();
  });
}

t.test('native stream memory stays bounded over many frames', { skip: !hasNative && 'addon not built' }, async (t) => {
  const stream = new ClusterStream({ n: 729, dim: 256, k: 32, threshold: 0.55, fallback: 64 }, { backend: 'native' });
  const x = plantedFeatures(27, 27, 256, 5, 1, 0.3);
  const rand = rng(9);
  const rss: number[] = [];
  for (let f = 0; f < 120; f++) {
    for (let m = 0; m < 30; m++) x[Math.floor(rand() * x.length)] += 0.05;
    await stream.push(x);
    if (f === 20 || f === 119) rss.push(process.memoryUsage().rss);
  }
  t.ok(
    rss[1]! - rss[0]! < 32 * 1024 * 1024,
    `rss grew ${((rss[1]! - rss[0]!) / 1048576).toFixed(1)} MiB over 100 frames`,
  );
  stream.close();
});

t.test('bad stream options throw BAD_INPUT', async (t) => {
  t.throws(() => new ClusterStream({ ...params, n: -5 }), { code: 'BAD_INPUT' });
  t.throws(() => new ClusterStream({ ...params, k: params.n + 1 }), { code: 'BAD_INPUT' });
  t.throws(() => new ClusterStream({ ...params, dim: 0 }), { code: 'BAD_INPUT' });
});

t.test('id assignment: most overlap wins, one previous id per token, fresh ids otherwise', async (t) => {
  let next = 100;
  const fresh = () => next++;
  const prev = { labels: Int32Array.from([0, 0, 0, 1, 1, 2]), ids: Int32Array.from([7, 8, 9]) };
  // new token 0 overlaps old 0 by 3; new 1 overlaps old 1 by 2 and old 2 by 1
  t.same(Array.from(assignIds(Int32Array.from([0, 0, 0, 1, 1, 1]), 2, prev, fresh)), [7, 8]);
  // both new tokens overlap old 0 most: the larger overlap keeps 7, the other takes its next best (9)
  t.same(Array.from(assignIds(Int32Array.from([0, 0, 1, 1, 1, 1]), 2, prev, fresh)), [7, 8]);
  // a token that overlaps nothing unclaimed gets a fresh id
  t.same(
    Array.from(
      assignIds(
        Int32Array.from([0, 0, 0, 0, 0, 1]),
        3,
        { labels: Int32Array.from([0, 0, 0, 0, 0, 0]), ids: Int32Array.from([5]) },
        fresh,
      ),
    ),
    [5, 100, 101],
  );
  t.same(Array.from(assignIds(Int32Array.from([0, 1]), 2, undefined, fresh)), [102, 103], 'first frame: all fresh');
});
