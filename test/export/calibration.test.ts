/**
 * The clustering threshold is absolute (docs/SETOK.md), so the reference sets are calibrated for it: on
 * the tiny set a flat image must give clearly fewer vision tokens than a busy one. Encoder in ONNX
 * Runtime, then the runtime's own position encoding and DPC-KNN (src/setok).
 */
import t from 'tap';
import { patchGrid } from '../../src/engine/contract.js';
import { addPositionEncoding, cluster } from '../../src/setok/index.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildEncoder } from '../../tools/export/stages/encoder.js';
import { data, f32, session } from './helpers.js';
import { flatImage, shapesImage } from './images.js';

const a = CONFIGS.tiny;
const S = a.image.size;
const G = patchGrid(a);
const C = a.encoder.width;

for (const seed of [1, 2, 3]) {
  t.test(`tiny seed ${seed}: flat image gives few tokens, busy images many`, async (t) => {
    const s = await session(buildEncoder(a, new Rng(seed)));
    t.teardown(() => s.release());
    const tokens = async (px: Float32Array) => {
      const feats = data((await s.run({ pixels: f32(px, [1, 3, S, S]) })).features);
      const x = addPositionEncoding(feats, G, G, C);
      const r = await cluster(x, { n: G * G, dim: C, ...a.cluster });
      return r.centers.length;
    };
    const flat = Math.max(await tokens(flatImage(S)), await tokens(flatImage(S, [-0.9, 0.9, 0])));
    const busy = Math.min(await tokens(shapesImage(S, 20, 5)), await tokens(shapesImage(S, 20, 6)));
    const some = await tokens(shapesImage(S, 4, 1));
    t.ok(flat <= 4, `flat images: ${flat} tokens (<= 4)`);
    t.ok(busy >= 10, `20 random shapes: ${busy} tokens (>= 10)`);
    t.ok(some > flat && some <= busy + 4, `4 shapes: ${some} tokens, between`);
    t.ok(busy <= a.cluster.maxTokens);
  });
}
