/** The vision-token cache on its own: keys, the byte bound, least recently used out first, counters. */
import t from 'tap';
import { CONFIGS } from '../../tools/export/configs.js';
import { VisionCache, visionKey, visionModelKey, type CachedVision } from '../../src/pipeline/vision-cache.js';

/** An entry of `n` floats of features (the rest small), as the vision path would leave it. */
function entry(n: number, mark = 0): CachedVision {
  return {
    vision: {
      features: new Float32Array(n).fill(mark),
      clusters: { centers: Int32Array.of(0), labels: new Int32Array(4), scores: new Float32Array(4) },
      count: 1,
      tokens: new Float32Array(8),
      embeds: new Float32Array(8),
    },
    geometry: { width: 4, height: 4, side: 4, left: 0, top: 0 },
    maskPng: new Uint8Array(10),
  };
}
const SMALL = 4 + 4 * 4 + 4 * 4 + 8 * 4 + 8 * 4 + 10; // every array but the features

t.test('keys: the same image bytes under the same model and clustering, nothing else', async (t) => {
  const a = CONFIGS.tiny;
  const m = visionModelKey('set-1', 'fp32', 'onnxruntime-cpu', a);
  const img = Uint8Array.of(1, 2, 3);
  t.equal(visionKey(img, m), visionKey(Uint8Array.of(1, 2, 3), m));
  t.not(visionKey(img, m), visionKey(Uint8Array.of(1, 2, 4), m), 'other bytes');
  t.not(visionKey(img, m), visionKey(img, visionModelKey('set-2', 'fp32', 'onnxruntime-cpu', a)), 'another model set');
  t.not(visionKey(img, m), visionKey(img, visionModelKey('set-1', 'int8', 'onnxruntime-cpu', a)), 'another precision');
  t.not(visionKey(img, m), visionKey(img, visionModelKey('set-1', 'fp32', 'tensorrt', a)), 'another backend');
  const other = { ...a, cluster: { ...a.cluster, threshold: a.cluster.threshold + 0.01 } };
  t.not(
    visionKey(img, m),
    visionKey(img, visionModelKey('set-1', 'fp32', 'onnxruntime-cpu', other)),
    'another clustering threshold',
  );
});

t.test('bounded by bytes: the least recently used goes first; hits, misses and bytes are counted', async (t) => {
  const per = 100 * 4 + SMALL;
  const c = new VisionCache(2 * per + 50);
  t.equal(c.get('a'), undefined);
  c.put('a', entry(100, 1));
  c.put('b', entry(100, 2));
  t.equal(c.stats.bytes, 2 * per);
  t.equal(c.get('a')?.vision.features[0], 1, 'a hit, and a is now the most recent');
  c.put('c', entry(100, 3));
  t.equal(c.get('b'), undefined, 'b, the least recently used, was evicted');
  t.equal(c.get('a')?.vision.features[0], 1);
  t.match(c.stats, { hits: 2, misses: 2, entries: 2, evictions: 1, bytes: 2 * per });
  c.put('huge', entry(1000));
  t.equal(c.get('huge'), undefined, 'an entry larger than the whole cache is not kept');
  t.equal(c.stats.entries, 2);
  c.put('a', entry(50, 9));
  t.equal(c.stats.bytes, per + 50 * 4 + SMALL, 'a replaced entry is counted once');
  const off = new VisionCache(0);
  off.put('a', entry(1));
  t.match(off.stats, { entries: 0, bytes: 0 });
  c.clear();
  t.match(c.stats, { entries: 0, bytes: 0 });
});
