/**
 * The store's update state, under `<root>/.fleet/` (ModelStore lists only top-level set
 * directories, so nothing here is mistaken for a model set):
 *   journal.json   the install in progress and the last step it finished (absent when idle)
 *   release.json   the last committed release: the anti-rollback floor, and the commit record
 *   staging/       where a bundle is unpacked before it is renamed into the store
 *   lock           pid of the process installing or recovering
 * Both JSON files are written with write-temp + fsync + rename, so a crash leaves old or new.
 */
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ModelSetId } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { removeDurable, writeFileDurable } from '../engine/durable.js';

/** Steps an install records, in order; recovery undoes whatever an uncommitted one did. */
export const JOURNAL_STEPS = ['staging', 'staged', 'placed', 'activated'] as const;
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
    throw new SetokimError(ErrorCodes.MODEL_INVALID, `${path}: the store's ${what} is not JSON (${(err as Error).message}); it was edited by hand: restore it or remove the store`, { cause: err });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new SetokimError(ErrorCodes.MODEL_INVALID, `${path}: the store's ${what} is not valid (${parsed.error.issues[0]?.message}); it was edited by hand: restore it or remove the store`);
  return parsed.data;
}

export const readJournal = (root: string) => readJson(journalPath(root), JournalSchema, 'update journal');
export const writeJournal = (root: string, j: Journal) => writeFileDurable(journalPath(root), JSON.stringify(j) + '\n');
export const clearJournal = (root: string) => removeDurable(journalPath(root));
export const readRelease = (root: string) => readJson(releasePath(root), ReleaseSchema, 'release record');
export const writeRelease = (root: string, r: ReleaseState) => writeFileDurable(releasePath(root), JSON.stringify(r) + '\n');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * One installer per store. A lock left by a process that died (power loss, kill -9) is taken
 * over: its pid is no longer running. Returns the release function.
 */
export async function lockStore(root: string): Promise<() => Promise<void>> {
  // The first write into the store: a store this user may not write (not run as its owner, a
  // path through a file) is a usage error with a stable code, not an internal error.
  const unwritable = (err: unknown) =>
    new SetokimError(ErrorCodes.BAD_ARGUMENT, `${root}: cannot write the model store (${(err as Error).message}); run as the user that owns it, or pass another --store`, { cause: err });
  await mkdir(fleetDir(root), { recursive: true }).catch((err: unknown) => {
    throw unwritable(err);
  });
  const path = lockPath(root);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw unwritable(err);
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
        throw new SetokimError(ErrorCodes.UPDATE_CONFLICT, `${root}: process ${pid} is installing or recovering this store; wait for it to finish`);
      }
      await rm(path, { force: true }); // stale: its owner is gone
    }
  }
  throw new SetokimError(ErrorCodes.UPDATE_CONFLICT, `${root}: could not take the store's lock ${path}; another installer keeps taking it`);
}
