/**
 * A model store's engine cache (docs/ENGINES.md "The engine cache"): TensorRT plans kept by what
 * they were built from and for, so that an update which changes some stages rebuilds only those,
 * and a JetPack or TensorRT upgrade (a new target) misses every entry of the old one.
 *
 *   key     sha256 over the canonical JSON of { source: the stage file's sha256, precision, dialect,
 *           target, profiles }: everything that makes two plans differ
 *   layout  <dir>/<target, "/" as "+">/<key>.plan and <key>.plan.json, and the target's timing.cache;
 *           <dir>/.building/ holds builds in progress (whatever is there after a crash is removed
 *           by clearBuilding)
 *
 * Entries are hard-linked into the sets that use them (`<set>/engines/<stage>.<precision>.plan`,
 * where the serving backend looks), so a cached plan takes its space once; where the file system
 * has no hard links they are copied. A plan is renamed into its entry before its manifest, so an
 * entry with a manifest is whole; a damaged entry (missing plan, wrong sha256) is removed on lookup,
 * never served. `prune` keeps only the keys the store's sets still use, of the device's target.
 */
import { copyFile, link, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { fsyncDir, removeDurable } from './durable.js';
import {
  engineManifestPath,
  readEngineManifest,
  sortKeys,
  verifyPlanFile,
  type EngineManifest,
} from './engine-manifest.js';

/** What a plan is built from and for: two plans with the same key are interchangeable. */
export interface EngineCacheKey {
  /** sha256 of the stage file (ONNX) it is built from. */
  source: string;
  precision: string;
  /** The graph's dialect (src/engine/manifest.ts DIALECTS), or DEFAULT_DIALECT for one without. */
  dialect: string;
  target: string;
  profiles: EngineManifest['profiles'];
}

/** Each target directory's TensorRT timing cache (tied to the device, CUDA and TensorRT, like the target). */
export const TIMING_CACHE_FILE = 'timing.cache';

/** The key's dialect of a graph written for every backend (a stage file without a dialect). */
export const DEFAULT_DIALECT = 'any';

/** The key's name: sha256 of its canonical JSON, hex. */
export function engineCacheKey(k: EngineCacheKey): string {
  const canonical = JSON.stringify(sortKeys({ ...k }));
  return createHash('sha256').update(canonical).digest('hex');
}

/** The key a built plan answers to, from its manifest; null when the manifest names no target. */
export function cacheKeyOf(m: EngineManifest): EngineCacheKey | null {
  if (!m.target) return null;
  const dialect = m.dialect ?? DEFAULT_DIALECT;
  return { source: m.source.sha256, precision: m.precision, dialect, target: m.target, profiles: m.profiles };
}

/** A target id as one directory name: `orin-nano-8gb+jp6.2+trt10.3`. */
export const targetDirName = (target: string): string => target.replaceAll('/', '+');

/** A cached plan: where it is and what its manifest says. */
export interface CachedEngine {
  plan: string;
  manifest: EngineManifest;
}

/** Hard-links `from` to `to` (replacing `to`), or copies it where links are not possible. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  await rm(to, { force: true });
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to); // another file system, or one without hard links
  }
}

export class EngineCache {
  constructor(readonly dir: string) {}

  /** The TensorRT timing cache builds for `target` share (its directory is made, for the builder to write into). */
  async timingCache(target: string): Promise<string> {
    await mkdir(join(this.dir, targetDirName(target)), { recursive: true });
    return join(this.dir, targetDirName(target), TIMING_CACHE_FILE);
  }

  /** Where the entry of `key` for `target` keeps its plan (its manifest is `<plan>.json`). */
  entryPlan(key: string, target: string): string {
    return join(this.dir, targetDirName(target), `${key}.plan`);
  }

  /** Where a build writes before its plan is adopted: inside the cache, so adopting is a rename. */
  async buildPlan(key: string): Promise<string> {
    await mkdir(join(this.dir, '.building'), { recursive: true });
    return join(this.dir, '.building', `${key}.plan`);
  }

  /** Removes whatever builds left in progress (a crash, a cancelled build). */
  async clearBuilding(): Promise<void> {
    await removeDurable(join(this.dir, '.building'));
  }

  /** The entry for `key` when it is whole (manifest, plan, sha256); a damaged one is removed. */
  async lookup(key: EngineCacheKey): Promise<CachedEngine | null> {
    const plan = this.entryPlan(engineCacheKey(key), key.target);
    let manifest: EngineManifest;
    try {
      manifest = readEngineManifest(plan);
      await verifyPlanFile(plan, manifest);
    } catch {
      await this.remove(plan);
      return null;
    }
    return { plan, manifest };
  }

  /**
   * Puts a plan with its manifest into the cache: `move` renames it (a build's output in
   * .building), otherwise it is linked (a prebuilt plan that stays where it is). The plan goes in
   * before its manifest. An entry already there is kept. Returns the entry.
   */
  async add(plan: string, manifest: EngineManifest, how: 'move' | 'link'): Promise<CachedEngine> {
    const key = cacheKeyOf(manifest);
    if (!key) throw new Error(`engine ${plan} names no target; it cannot be cached`);
    const known = await this.lookup(key);
    if (known) return known;
    const entry = this.entryPlan(engineCacheKey(key), key.target);
    await mkdir(join(this.dir, targetDirName(key.target)), { recursive: true });
    if (how === 'move') {
      await rename(plan, entry);
      await rename(engineManifestPath(plan), engineManifestPath(entry));
    } else {
      await linkOrCopy(plan, entry);
      await linkOrCopy(engineManifestPath(plan), engineManifestPath(entry));
    }
    await fsyncDir(join(this.dir, targetDirName(key.target)));
    return { plan: entry, manifest };
  }

  /** Makes a cached plan (and its manifest) appear at `dest`, where a set's backend looks for it. */
  async linkInto(e: CachedEngine, dest: string): Promise<void> {
    await linkOrCopy(e.plan, dest);
    await linkOrCopy(engineManifestPath(e.plan), engineManifestPath(dest));
  }

  /**
   * Removes every entry not in `keep` (key names), and every other target's directory: after a
   * JetPack or TensorRT upgrade no old entry can be used again. Returns the plans removed.
   */
  async prune(keep: ReadonlySet<string>, target: string): Promise<string[]> {
    const removed: string[] = [];
    let dirs: string[];
    try {
      dirs = await readdir(this.dir);
    } catch {
      return removed;
    }
    for (const d of dirs) {
      if (d === '.building') continue;
      const full = join(this.dir, d);
      if (d !== targetDirName(target)) {
        removed.push(full);
        await removeDurable(full);
        continue;
      }
      for (const f of await readdir(full)) {
        if (f === TIMING_CACHE_FILE) continue;
        const key = /^([0-9a-f]{64})\.plan(\.json)?$/.exec(f)?.[1];
        if (key && keep.has(key)) continue;
        if (f.endsWith('.plan')) removed.push(join(full, f));
        await rm(join(full, f), { force: true });
      }
      await fsyncDir(full);
    }
    return removed;
  }

  private async remove(plan: string): Promise<void> {
    await rm(engineManifestPath(plan), { force: true });
    await rm(plan, { force: true });
  }
}
