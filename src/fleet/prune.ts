/**
 * Pruning after a commit (docs/FLEET.md "Pruning"): the store keeps the set it serves and the one
 * before it (for a rollback); older sets go, and with them every engine cache entry that no set
 * left uses, and the entries of every other target (after a JetPack or TensorRT upgrade none of
 * them can run again). A set is renamed into `.fleet/trash/` before it is removed, so it leaves
 * the store's list at once even if the removal is cut off (recovery empties the trash).
 */
import { mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { engineDir } from '../engine/engine-builder.js';
import { cacheKeyOf, engineCacheKey, EngineCache } from '../engine/engine-cache.js';
import { readEngineManifest } from '../engine/engine-manifest.js';
import { fsyncDir, removeDurable } from '../engine/durable.js';
import { ModelStore } from '../engine/modelset.js';
import { engineCacheDir, trashDir } from './journal.js';

export interface PruneResult {
  /** Set ids removed. */
  sets: string[];
  /** Cached plans (or whole target directories) removed. */
  engines: string[];
}

/** The cache keys of the engines in a set's engines/ directory (unreadable ones are skipped: not cached). */
async function keysOfSet(dir: string): Promise<string[]> {
  const names = await readdir(engineDir(dir)).catch(() => [] as string[]);
  const keys: string[] = [];
  for (const n of names.filter((x) => x.endsWith('.plan'))) {
    try {
      const k = cacheKeyOf(readEngineManifest(join(engineDir(dir), n)));
      if (k) keys.push(engineCacheKey(k));
    } catch {
      // a plan without a readable manifest is never served from the cache either
    }
  }
  return keys;
}

/** Removes the sets of `root` not in `keep`, then cache entries no set left uses and other targets' entries. */
export async function pruneStore(root: string, keep: readonly string[], target: string): Promise<PruneResult> {
  const store = new ModelStore(root);
  const sets: string[] = [];
  for (const id of await store.list()) {
    if (keep.includes(id)) continue;
    await removeSet(root, store, id);
    sets.push(id);
  }
  const used = new Set<string>();
  for (const id of await store.list()) for (const k of await keysOfSet(store.dirOf(id))) used.add(k);
  const engines = await new EngineCache(engineCacheDir(root)).prune(used, target);
  return { sets, engines };
}

async function removeSet(root: string, store: ModelStore, id: string): Promise<void> {
  const trash = trashDir(root);
  await removeDurable(join(trash, id)); // a leftover of an earlier cut-off prune
  await mkdir(trash, { recursive: true });
  await rename(store.dirOf(id), join(trash, id));
  await fsyncDir(root);
  await removeDurable(join(trash, id));
}

/** Empties the trash (a prune cut off by a crash); recovery calls it. */
export const emptyTrash = (root: string) => removeDurable(trashDir(root));
