/**
 * The store's update state, under `<root>/.fleet/` (ModelStore lists only top-level set
 * directories, so nothing here is mistaken for a model set):
 *   journal.json   the install in progress and the last step it finished (absent when idle)
 *   release.json   the last committed release: the anti-rollback floor, and the commit record
 *   staging/       where a bundle is unpacked before it is renamed into the store
 *   engines/       the engine cache (src/engine/engine-cache.ts): plans by (stage file, precision,
 *                  dialect, target, profiles), hard-linked into the sets that use them
 *   trash/         sets being pruned: renamed here first, so a set disappears from the store at once
 *   lock           flock(2)ed by the process installing or recovering (its pid inside, for messages)
 * Both JSON files are written with write-temp + fsync + rename, so a crash leaves old or new.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelSetId } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { removeDurable, writeFileDurable } from '../engine/durable.js';
import { FileLock } from '../engine/file-lock.js';

/**
 * Steps an install records, in order; recovery undoes whatever an uncommitted one did. An install
 * cut off in `building-engines` is rolled back like the others; the engines it finished stay in
 * the engine cache, so the next install of that release builds only the rest.
 */
export const JOURNAL_STEPS = ['staging', 'staged', 'building-engines', 'placed', 'activated'] as const;
export type JournalStep = (typeof JOURNAL_STEPS)[number];

export const JournalSchema = z.strictObject({
  step: z.enum(JOURNAL_STEPS),
  release: z.number().int().positive(),
  modelSetId: ModelSetId,
  /** The set that was active before this install (null: none); recovery activates it again. */
  previous: ModelSetId.nullable(),
  /** Directory name under .fleet/staging. */
  staging: z.string().regex(/^[A-Za-z0-9._-]+$/),
  startedAt: z.iso.datetime(),
});
export type Journal = z.infer<typeof JournalSchema>;

export const ReleaseSchema = z.strictObject({
  release: z.number().int().positive(),
  modelSetId: ModelSetId,
  previous: ModelSetId.nullable(),
  committedAt: z.iso.datetime(),
});
export type ReleaseState = z.infer<typeof ReleaseSchema>;

export const fleetDir = (root: string) => join(root, '.fleet');
export const journalPath = (root: string) => join(fleetDir(root), 'journal.json');
export const releasePath = (root: string) => join(fleetDir(root), 'release.json');
export const stagingRoot = (root: string) => join(fleetDir(root), 'staging');
export const engineCacheDir = (root: string) => join(fleetDir(root), 'engines');
export const trashDir = (root: string) => join(fleetDir(root), 'trash');
const lockPath = (root: string) => join(fleetDir(root), 'lock');

async function readJson<T>(path: string, schema: z.ZodType<T>, what: string): Promise<T | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${path}: the store's ${what} is not JSON (${(err as Error).message}); it was edited by hand: restore it or remove the store`,
      { cause: err },
    );
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success)
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${path}: the store's ${what} is not valid (${parsed.error.issues[0]?.message}); it was edited by hand: restore it or remove the store`,
    );
  return parsed.data;
}

export const readJournal = (root: string) => readJson(journalPath(root), JournalSchema, 'update journal');
export const writeJournal = (root: string, j: Journal) => writeFileDurable(journalPath(root), JSON.stringify(j) + '\n');
export const clearJournal = (root: string) => removeDurable(journalPath(root));
export const readRelease = (root: string) => readJson(releasePath(root), ReleaseSchema, 'release record');
export const writeRelease = (root: string, r: ReleaseState) =>
  writeFileDurable(releasePath(root), JSON.stringify(r) + '\n');

/** The note a lock holder writes into the lock file, for messages only (src/engine/file-lock.ts). */
const LockNote = z.object({ pid: z.number().int().positive(), since: z.string() });

function holderText(note: string | null): string {
  let json: unknown = null;
  try {
    json = JSON.parse(note ?? '');
  } catch {
    // empty (being written) or not ours: the lock is held all the same
  }
  const holder = LockNote.safeParse(json);
  return holder.success ? `process ${holder.data.pid} (since ${holder.data.since})` : 'another process';
}

/**
 * One installer per store: an exclusive flock(2) on `<store>/.fleet/lock` (src/engine/file-lock.ts),
 * held until the returned function is called or the process dies; the kernel drops it with the
 * process, so neither a crash nor a power loss leaves a lock behind, and a pid written in the file
 * (by an older version too) never blocks. The function releases this call's lock only; calling
 * it again does nothing.
 */
export async function lockStore(root: string): Promise<() => Promise<void>> {
  // The first write into the store: a store this user may not write (not run as its owner, a
  // path through a file) is a usage error with a stable code, not an internal error.
  const unwritable = (err: unknown) =>
    new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `${root}: cannot write the model store (${(err as Error).message}); run as the user that owns it, or pass another --store`,
      { cause: err },
    );
  await mkdir(fleetDir(root), { recursive: true }).catch((err: unknown) => {
    throw unwritable(err);
  });
  const path = lockPath(root);
  const note = JSON.stringify({ pid: process.pid, since: new Date().toISOString() }) + '\n';
  const got = await FileLock.tryAcquire(path, note).catch((err: unknown) => {
    throw err instanceof SetokimError ? err : unwritable(err);
  });
  if (got instanceof FileLock) return () => got.release();
  const who = `${holderText(got.note)} is installing or recovering this store (it holds ${path})`;
  throw new SetokimError(ErrorCodes.UPDATE_CONFLICT, `${root}: ${who}; wait for it to finish`);
}
