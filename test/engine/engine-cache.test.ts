/**
 * The engine cache: keys (every field counts, a built manifest answers to the key it was built
 * under), entries hard-linked into sets (one copy on disk), damaged entries never served, pruning
 * by the keys still used and by target, and builds left in progress removed.
 */
import t from 'tap';
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { engineManifestFor, profileFromSignature } from '../../src/engine/engine-builder.js';
import { cacheKeyOf, EngineCache, engineCacheKey, type EngineCacheKey } from '../../src/engine/engine-cache.js';
import { writeEngineManifest } from '../../src/engine/engine-manifest.js';
import { ADD_MATMUL_SIGNATURE, addMatMul, tmpDir } from './fixtures.js';

const dir = tmpDir();
const onnx = addMatMul(dir);
const dims = [{ L: { min: 1, opt: 8, max: 16 } }];
const facts = { tensorrt: '10.3.0', cuda: '12.6', sm: '8.7', gpu: 'Orin', l4t: '36.4.3', seconds: 1 };
const TARGET = 'orin-nano-8gb/jp6.2/trt10.3';

/** A plan (real bytes) with its real manifest, as a build leaves it. */
async function built(at: string, bytes: string, target = TARGET, profiles = dims) {
  await mkdir(path.dirname(at), { recursive: true });
  await writeFile(at, bytes);
  const m = await engineManifestFor(
    { stage: 'add_matmul', onnx, plan: at, signature: ADD_MATMUL_SIGNATURE, profiles, precision: 'fp32', target },
    facts,
  );
  await writeEngineManifest(at, m);
  return m;
}

t.test('keys: stable, every field counts, and a manifest answers to the key it was built under', async (t) => {
  const m = await built(path.join(dir, 'k', 'a.plan'), 'plan A');
  const key: EngineCacheKey = {
    source: m.source.sha256,
    precision: 'fp32',
    dialect: 'any',
    target: TARGET,
    profiles: dims.map((d) => profileFromSignature(ADD_MATMUL_SIGNATURE, d)),
  };
  t.same(cacheKeyOf(m), key, 'the key of a built manifest is the key of its request');
  const name = engineCacheKey(key);
  t.match(name, /^[0-9a-f]{64}$/);
  t.equal(engineCacheKey({ ...key, profiles: structuredClone(key.profiles) }), name, 'stable');
  const other = new Set([
    engineCacheKey({ ...key, source: 'f'.repeat(64) }),
    engineCacheKey({ ...key, precision: 'fp16' }),
    engineCacheKey({ ...key, dialect: 'tensorrt' }),
    engineCacheKey({ ...key, target: 'orin-nano-8gb/jp6.1/trt10.3' }),
    engineCacheKey({
      ...key,
      profiles: [profileFromSignature(ADD_MATMUL_SIGNATURE, { L: { min: 1, opt: 8, max: 32 } })],
    }),
  ]);
  t.equal(other.size, 5, 'five fields, five other keys');
  t.notOk(other.has(name));
  t.equal(cacheKeyOf({ ...m, target: undefined }), null, 'no target: not cacheable');
});

t.test('add, lookup, link into a set: one copy on disk; a damaged entry is removed, not served', async (t) => {
  const cache = new EngineCache(path.join(dir, 'cache1'));
  const plan = await cache.buildPlan('x');
  const m = await built(plan, 'plan bytes '.repeat(1000));
  const e = await cache.add(plan, m, 'move');
  t.equal(e.plan, cache.entryPlan(engineCacheKey(cacheKeyOf(m)!), TARGET));
  t.match(e.plan, /orin-nano-8gb\+jp6\.2\+trt10\.3\/[0-9a-f]{64}\.plan$/);
  await t.rejects(stat(plan), { code: 'ENOENT' }, 'moved out of .building');
  const hit = await cache.lookup(cacheKeyOf(m)!);
  t.equal(hit?.plan, e.plan);
  t.same(hit?.manifest, m);

  const dest = path.join(dir, 'set1', 'engines', 'add_matmul.fp32.plan');
  await mkdir(path.dirname(dest), { recursive: true });
  await cache.linkInto(e, dest);
  const [a, b] = [await stat(e.plan), await stat(dest)];
  t.equal(a.ino, b.ino, 'the set holds a hard link to the cached plan, not a copy');
  t.equal(a.nlink, 2);
  t.same(JSON.parse(await readFile(`${dest}.json`, 'utf8')), m);

  // A second add of the same key keeps the first entry.
  const again = await cache.buildPlan('y');
  await built(again, 'plan bytes '.repeat(1000));
  t.equal((await cache.add(again, m, 'link')).plan, e.plan);

  // Damage: an entry whose bytes are not its manifest's (written anew, so the set's link is untouched).
  const damaged = await cache.add(
    await cache.buildPlan('z'),
    await built(await cache.buildPlan('z'), 'other', 'agx-orin-64gb/jp6.1/trt10.3'),
    'move',
  );
  await writeFile(`${damaged.plan}.new`, 'tampered');
  await rename(`${damaged.plan}.new`, damaged.plan);
  t.equal(await cache.lookup(cacheKeyOf(damaged.manifest)!), null, 'a damaged entry is a miss');
  await t.rejects(stat(damaged.plan), { code: 'ENOENT' }, 'and is removed');
  await t.rejects(stat(`${damaged.plan}.json`), { code: 'ENOENT' });
  t.equal(await cache.lookup({ ...cacheKeyOf(m)!, precision: 'fp16' }), null, 'a key never added is a miss');
});

t.test('prune: keeps the keys still used and the timing cache, removes the rest and every other target', async (t) => {
  const cache = new EngineCache(path.join(dir, 'cache2'));
  const keep = await cache.add(await cache.buildPlan('a'), await built(await cache.buildPlan('a'), 'keep me'), 'move');
  const wider = [{ L: { min: 1, opt: 8, max: 64 } }];
  const drop = await cache.add(
    await cache.buildPlan('b'),
    await built(await cache.buildPlan('b'), 'drop me', TARGET, wider),
    'move',
  );
  t.not(drop.plan, keep.plan, 'other profiles: another entry');
  const old = await cache.add(
    await cache.buildPlan('c'),
    await built(await cache.buildPlan('c'), 'old target', 'orin-nano-8gb/jp6.1/trt10.3'),
    'move',
  );
  await writeFile(path.join(path.dirname(keep.plan), 'timing.cache'), 'timing');
  await mkdir(path.join(cache.dir, '.building'), { recursive: true });
  const removed = await cache.prune(
    new Set([engineCacheKey(cacheKeyOf(keep.manifest)!), engineCacheKey(cacheKeyOf(old.manifest)!)]),
    TARGET,
  );
  t.same(removed.sort(), [drop.plan, path.join(cache.dir, 'orin-nano-8gb+jp6.1+trt10.3')].sort());
  t.same(
    (await readdir(path.dirname(keep.plan))).sort(),
    [path.basename(keep.plan), `${path.basename(keep.plan)}.json`, 'timing.cache'].sort(),
  );
  t.same(
    (await readdir(cache.dir)).sort(),
    ['.building', 'orin-nano-8gb+jp6.2+trt10.3'],
    "the old target's directory is gone whatever it held",
  );
  await cache.clearBuilding();
  t.same(await readdir(cache.dir), ['orin-nano-8gb+jp6.2+trt10.3']);
  t.same(await new EngineCache(path.join(dir, 'none')).prune(new Set(), TARGET), [], 'no cache yet: nothing to do');
});
