/**
 * Installing a bundle into a ModelStore, as the state machine of docs/FLEET.md:
 *   verify signature -> binding (fleet, expiry, agent version, target: compat.ts)
 *   -> anti-rollback and release jump -> space -> [staging] unpack + hash -> verifyModelSet
 *   -> [staged] rename into the store -> [placed] activate -> [activated] canary query
 *   -> commit (release.json) -> journal removed
 * The journal names the last step finished. Until release.json records the release, the install
 * is not committed: a failure rolls back at once, and a crash is rolled back by recoverStore
 * (which every install runs first). Nothing half-installed stays active.
 */
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { loadManifest, verifyModelSet } from '../engine/manifest.js';
import { ModelStore } from '../engine/modelset.js';
import { ErrorCodes, SetokimError, errorCode } from '../errors.js';
import { openBundle, streamBundle, type ByteProgress } from './bundle.js';
import { checkBinding, checkReleaseJump, type BindingPolicy } from './compat.js';
import { freeBytes, fsyncDir, removeDurable } from '../engine/durable.js';
import { canaryQuery, type CanaryResult, type HealthCheck } from './health.js';
import { clearJournal, JOURNAL_STEPS, lockStore, readJournal, readRelease, stagingRoot, writeJournal, writeRelease, type Journal, type JournalStep } from './journal.js';

/** What an install reports, in order: journal steps plus the checks between them. */
export type InstallStep = 'recovered' | 'verified' | JournalStep | 'healthy' | 'committed' | 'rolled-back';

/** The binding (BindingPolicy: fleet, target, allowUnbound, maxReleaseJump) is checked after the signature. */
export interface InstallOptions extends BindingPolicy {
  bundle: string;
  store: string;
  pubkey: KeyObject;
  /** Free bytes to leave on the store's filesystem after unpacking (default 64 MiB). */
  reserveBytes?: number;
  /** Default: canaryQuery on the new set. */
  health?: HealthCheck;
  /** Called after each step is on disk; awaited (a test may stop the process here). */
  onStep?: (step: InstallStep, detail: string) => void | Promise<void>;
  onProgress?: ByteProgress;
}

export interface InstallResult {
  modelSetId: string;
  release: number;
  previous: string | null;
  health: CanaryResult;
  recovered: RecoverResult;
}

export interface RecoverResult {
  /** none: nothing was in progress; rolled-back: an uncommitted install was undone; completed: a committed one was finished. */
  action: 'none' | 'rolled-back' | 'completed';
  journal: Journal | null;
  active: string | null;
}

export const DEFAULT_RESERVE_BYTES = 64 * 2 ** 20;

const stepIndex = (s: JournalStep) => JOURNAL_STEPS.indexOf(s);

/**
 * Undoes an uncommitted install: the previous set active again (or none, if there was none),
 * the new set's directory and the staging directory gone, then the journal. Safe to repeat.
 * The pointer is put back whatever it names now (the new set, nothing, a lost or unreadable
 * pointer), so a rollback never depends on what the failed install left. A previous set that no
 * longer verifies is not put back (nothing is active then); the rollback still finishes, so the
 * next start is not stuck on it, and then throws to say so.
 */
async function rollBack(root: string, j: Journal): Promise<string | null> {
  const store = new ModelStore(root);
  let damaged: SetokimError | undefined;
  if ((await store.active()) !== j.previous) {
    try {
      if (j.previous) await store.activate(j.previous);
      else await store.deactivate();
    } catch (err) {
      // The old set is damaged too: serve nothing rather than the half-installed one.
      await store.deactivate();
      damaged = new SetokimError(errorCode(err), `rolling back to ${j.previous} failed (${(err as Error).message}); no model set is active now: install a good bundle`, { cause: err });
    }
  }
  // From 'staged' on, the target directory may hold the new set (the rename may have happened
  // before 'placed' was written). It is never the serving set: install refuses that id.
  if (stepIndex(j.step) >= stepIndex('staged')) await removeDurable(store.dirOf(j.modelSetId));
  await removeDurable(join(stagingRoot(root), j.staging));
  await clearJournal(root);
  if (damaged) throw damaged;
  return store.active();
}

async function recoverLocked(root: string): Promise<RecoverResult> {
  const j = await readJournal(root);
  const store = new ModelStore(root);
  if (!j) {
    await removeDurable(stagingRoot(root)); // leftovers of a crash before the journal was written
    return { action: 'none', journal: null, active: await store.active() };
  }
  const committed = await readRelease(root);
  if (committed && committed.release === j.release && committed.modelSetId === j.modelSetId) {
    // Crashed after the commit record and before the journal was removed: the install stands.
    await removeDurable(join(stagingRoot(root), j.staging));
    await clearJournal(root);
    return { action: 'completed', journal: j, active: await store.active() };
  }
  return { action: 'rolled-back', journal: j, active: await rollBack(root, j) };
}

/** Brings a store back to a consistent state after a crash (see recoverLocked); `setokim bundle recover`. */
export async function recoverStore(root: string): Promise<RecoverResult> {
  const unlock = await lockStore(root);
  try {
    return await recoverLocked(root);
  } finally {
    await unlock();
  }
}

export async function installBundle(o: InstallOptions): Promise<InstallResult> {
  const root = o.store;
  const step = async (s: InstallStep, detail: string) => o.onStep?.(s, detail);
  if (o.maxReleaseJump !== undefined && !(Number.isSafeInteger(o.maxReleaseJump) && o.maxReleaseJump >= 1)) {
    const what = `maxReleaseJump ${o.maxReleaseJump}`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${what}: a whole number of releases, at least 1`);
  }
  const unlock = await lockStore(root);
  try {
    const recovered = await recoverLocked(root);
    if (recovered.action !== 'none') await step('recovered', `${recovered.action} release ${recovered.journal?.release} (${recovered.journal?.modelSetId})`);

    const b = await openBundle(o.bundle, o.pubkey);
    const { modelSetId, release } = b.manifest;
    const bound = await checkBinding(b.manifest, o.bundle, o);
    await step('verified', `${modelSetId} release ${release}, signed by ${b.manifest.keyId}, ${bound}`);
    const floor = await readRelease(root);
    if (floor && release <= floor.release) {
      throw new SetokimError(ErrorCodes.ROLLBACK_REFUSED, `${o.bundle}: release ${release} is not newer than release ${floor.release} (${floor.modelSetId}) committed in ${root}; publish a bundle with a higher --release`);
    }
    checkReleaseJump(release, floor?.release ?? null, o.maxReleaseJump, o.bundle);
    const store = new ModelStore(root);
    store.dirOf(modelSetId); // validates the id as a directory name
    const previous = await store.active();
    if (previous === modelSetId) {
      throw new SetokimError(ErrorCodes.UPDATE_CONFLICT, `${modelSetId} is the set serving from ${root}; a new release must carry a new model set id (export it under another id)`);
    }
    const reserve = o.reserveBytes ?? DEFAULT_RESERVE_BYTES;
    const free = await freeBytes(root);
    if (free < b.payloadBytes + reserve) {
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      throw new SetokimError(ErrorCodes.NO_SPACE, `${root}: ${mib(free)} free, the bundle needs ${mib(b.payloadBytes)} plus a reserve of ${mib(reserve)}; remove old model sets from the store or free disk space`);
    }

    const j: Journal = { step: 'staging', release, modelSetId, previous, staging: `${modelSetId}-r${release}`, startedAt: new Date().toISOString() };
    const stagingDir = join(stagingRoot(root), j.staging);
    await writeJournal(root, j);
    let health: CanaryResult;
    try {
      await step('staging', stagingDir); // inside: a throwing onStep rolls back like any failure
      await removeDurable(stagingDir);
      await streamBundle(b, stagingDir, o.onProgress);
      const manifest = await loadManifest(stagingDir);
      if (manifest.id !== modelSetId) throw new SetokimError(ErrorCodes.BUNDLE_INVALID, `${o.bundle}: its manifest.json names set ${manifest.id}, its signed bundle manifest ${modelSetId}; rebuild the bundle`);
      await verifyModelSet(stagingDir, manifest);
      await fsyncDir(stagingDir);
      await writeJournal(root, (j.step = 'staged', j));
      await step('staged', stagingDir);

      const target = store.dirOf(modelSetId);
      await removeDurable(target); // a leftover, never the active set (checked above)
      await rename(stagingDir, target);
      await fsyncDir(root);
      await writeJournal(root, (j.step = 'placed', j));
      await step('placed', target);

      await store.activate(modelSetId);
      await writeJournal(root, (j.step = 'activated', j));
      await step('activated', `${modelSetId} (previous: ${previous ?? 'none'})`);

      try {
        health = await (o.health ?? ((dir) => canaryQuery(dir)))(target);
      } catch (err) {
        throw new SetokimError(ErrorCodes.HEALTH_CHECK_FAILED, `${modelSetId} release ${release} failed its canary query: [${errorCode(err)}] ${(err as Error).message}`, { cause: err });
      }
      await step('healthy', `${health.generatedTokens} tokens in ${health.ms.toFixed(0)} ms on ${health.backend}`);
    } catch (err) {
      const now = await rollBack(root, j);
      await step('rolled-back', `active: ${now ?? 'none'}`);
      if (err instanceof SetokimError && err.code === ErrorCodes.HEALTH_CHECK_FAILED) {
        throw new SetokimError(ErrorCodes.HEALTH_CHECK_FAILED, `${err.message}; rolled back: active set is ${now ?? 'none'}`, { cause: err.cause });
      }
      throw err;
    }
    // The commit point: once release.json names this release, recovery keeps it.
    await writeRelease(root, { release, modelSetId, previous, committedAt: new Date().toISOString() });
    await step('committed', `${modelSetId} release ${release}`);
    await clearJournal(root);
    return { modelSetId, release, previous, health, recovered };
  } finally {
    await unlock();
  }
}
