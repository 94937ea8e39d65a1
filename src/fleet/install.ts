/**
 * Installing a bundle into a ModelStore, as the state machine of docs/FLEET.md:
 *   verify signature -> binding (fleet, expiry, agent version, target: compat.ts)
 *   -> anti-rollback and release jump -> space -> [staging] unpack (the set and this target's
 *   engines) + hash -> verifyModelSet -> [staged] -> [building-engines] check, reuse or build an
 *   engine per stage (engines.ts) -> rename into the store -> [placed] activate -> [activated]
 *   canary query on the backend that will serve -> commit (release.json) -> journal removed -> prune
 * The journal names the last step finished. Until release.json records the release, the install
 * is not committed: a failure rolls back at once, and a crash is rolled back by recoverStore
 * (which every install runs first). Nothing half-installed stays active, and the set that serves
 * keeps serving until `placed` (engine builds included).
 */
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { EngineCache } from '../engine/engine-cache.js';
import { loadManifest, verifyModelSet, type Manifest } from '../engine/manifest.js';
import { ModelStore } from '../engine/modelset.js';
import { ErrorCodes, SetokimError, errorCode } from '../errors.js';
import {
  engineGroupFor,
  openBundle,
  streamBundle,
  unpackedBytes,
  type ByteProgress,
  type OpenedBundle,
} from './bundle.js';
import { checkBinding, checkReleaseJump, type BindingPolicy } from './compat.js';
import { freeBytes, fsyncDir, removeDurable } from '../engine/durable.js';
import { detectEngineEnvironment, runsEngines, type EngineEnvironment } from './engine-env.js';
import { EnginePreparation, type EngineProgress, type EnginesResult } from './engines.js';
import { canaryQuery, type CanaryResult, type HealthCheck } from './health.js';
import {
  clearJournal,
  engineCacheDir,
  JOURNAL_STEPS,
  lockStore,
  readJournal,
  readRelease,
  stagingRoot,
  writeJournal,
  writeRelease,
  type Journal,
  type JournalStep,
} from './journal.js';
import { emptyTrash, pruneStore } from './prune.js';

/** What an install reports, in order: journal steps plus the checks between them. */
export type InstallStep =
  'recovered' | 'verified' | JournalStep | 'engines-ready' | 'healthy' | 'committed' | 'pruned' | 'rolled-back';

/** How an install prepares engines (docs/FLEET.md "Engines"). */
export interface EngineInstallOptions {
  /** Default: this device (detectEngineEnvironment: its target, TensorRT, the real builder, /proc/meminfo). */
  env?: EngineEnvironment;
  /** Each build's time limit (default 2 h); past it the build is cancelled and the install rolls back. */
  buildTimeoutMs?: number;
  /** How long a cancelled build may take to stop (default 60 s). */
  cancelGraceMs?: number;
  /** Builder workspace limit (default 1 GiB). */
  workspaceBytes?: number;
  /** Each build's progress (the install's steps report only its start and end). */
  onProgress?: (p: EngineProgress) => void;
  /** Aborting cancels the build under way (e.g. an update job's time limit); the install rolls back. */
  signal?: AbortSignal;
}

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
  /** Engines for this device's target (default: detected); false: no engine step (ONNX Runtime serves). */
  engines?: EngineInstallOptions | false;
}

export interface InstallResult {
  modelSetId: string;
  release: number;
  previous: string | null;
  health: CanaryResult;
  recovered: RecoverResult;
  /** What the engine step did (null: no engine step). */
  engines: EnginesResult | null;
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
      damaged = new SetokimError(
        errorCode(err),
        `rolling back to ${j.previous} failed (${(err as Error).message}); no model set is active now: install a good bundle`,
        { cause: err },
      );
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
  await new EngineCache(engineCacheDir(root)).clearBuilding(); // a build cut off: never a cache entry
  await emptyTrash(root); // a prune cut off
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

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** One install, as its named steps; `installBundle` runs them under the store's lock. */
class Installation {
  private readonly store: ModelStore;
  private readonly step: (s: InstallStep, detail: string) => Promise<void>;
  private b!: OpenedBundle;
  private env: EngineEnvironment | null = null;
  private previous: string | null = null;
  private j!: Journal;
  private engines: EnginesResult | null = null;

  constructor(private readonly o: InstallOptions) {
    this.store = new ModelStore(o.store);
    this.step = async (s, detail) => o.onStep?.(s, detail);
  }

  private get root(): string {
    return this.o.store;
  }

  /** The device's target when it runs engines (whose group is unpacked), else null. */
  private get engineTarget(): string | null {
    return this.env && runsEngines(this.env.target) ? this.env.target : null;
  }

  async run(): Promise<InstallResult> {
    const recovered = await recoverLocked(this.root);
    if (recovered.action !== 'none')
      await this.step(
        'recovered',
        `${recovered.action} release ${recovered.journal?.release} (${recovered.journal?.modelSetId})`,
      );
    await this.verify();
    await this.checkStore();
    const { release, modelSetId } = this.b.manifest;
    this.j = {
      step: 'staging',
      release,
      modelSetId,
      previous: this.previous,
      staging: `${modelSetId}-r${release}`,
      startedAt: new Date().toISOString(),
    };
    await writeJournal(this.root, this.j);
    let health: CanaryResult;
    try {
      const manifest = await this.stage();
      await this.prepareEngines(manifest);
      await this.place();
      health = await this.canary();
    } catch (err) {
      const now = await rollBack(this.root, this.j);
      await this.step('rolled-back', `active: ${now ?? 'none'}`);
      if (err instanceof SetokimError && err.code === ErrorCodes.HEALTH_CHECK_FAILED) {
        throw new SetokimError(
          ErrorCodes.HEALTH_CHECK_FAILED,
          `${err.message}; rolled back: active set is ${now ?? 'none'}`,
          { cause: err.cause },
        );
      }
      throw err;
    }
    await this.commit();
    return { modelSetId, release, previous: this.previous, health, recovered, engines: this.engines };
  }

  /** Signature, then the binding (against the device's target), anti-rollback and the release jump. */
  private async verify(): Promise<void> {
    const o = this.o;
    this.b = await openBundle(o.bundle, o.pubkey);
    const { modelSetId, release, keyId } = this.b.manifest;
    this.env = o.engines === false ? null : (o.engines?.env ?? (await detectEngineEnvironment()));
    const target = o.device?.target ?? this.env?.target;
    const bound = await checkBinding(this.b.manifest, o.bundle, {
      ...o,
      device: { ...o.device, ...(target ? { target } : {}) },
    });
    await this.step('verified', `${modelSetId} release ${release}, signed by ${keyId}, ${bound}`);
    const floor = await readRelease(this.root);
    if (floor && release <= floor.release) {
      throw new SetokimError(
        ErrorCodes.ROLLBACK_REFUSED,
        `${o.bundle}: release ${release} is not newer than release ${floor.release} (${floor.modelSetId}) ` +
          `committed in ${this.root}; publish a bundle with a higher --release`,
      );
    }
    checkReleaseJump(release, floor?.release ?? null, o.maxReleaseJump, o.bundle);
  }

  /** The serving set is never overwritten; the set and this target's engines must fit with the reserve. */
  private async checkStore(): Promise<void> {
    const { modelSetId } = this.b.manifest;
    this.store.dirOf(modelSetId); // validates the id as a directory name
    this.previous = await this.store.active();
    if (this.previous === modelSetId) {
      throw new SetokimError(
        ErrorCodes.UPDATE_CONFLICT,
        `${modelSetId} is the set serving from ${this.root}; a new release must carry a new model set id ` +
          '(export it under another id)',
      );
    }
    const reserve = this.o.reserveBytes ?? DEFAULT_RESERVE_BYTES;
    const free = await freeBytes(this.root);
    const needed = unpackedBytes(this.b, this.engineTarget);
    if (free < needed + reserve) {
      throw new SetokimError(
        ErrorCodes.NO_SPACE,
        `${this.root}: ${mib(free)} free, the bundle needs ${mib(needed)} plus a reserve of ${mib(reserve)}; ` +
          'remove old model sets from the store or free disk space',
      );
    }
  }

  private get stagingDir(): string {
    return join(stagingRoot(this.root), this.j.staging);
  }

  private async journal(step: JournalStep, detail: string): Promise<void> {
    await writeJournal(this.root, ((this.j.step = step), this.j));
    await this.step(step, detail);
  }

  /** Unpacks the set (and this target's engines) into staging, hashing every byte; the set must verify. */
  private async stage(): Promise<Manifest> {
    const dir = this.stagingDir;
    await this.step('staging', dir); // inside: a throwing onStep rolls back like any failure
    await removeDurable(dir);
    await streamBundle(this.b, dir, this.o.onProgress, this.engineTarget);
    const manifest = await loadManifest(dir);
    const { modelSetId } = this.b.manifest;
    if (manifest.id !== modelSetId)
      throw new SetokimError(
        ErrorCodes.BUNDLE_INVALID,
        `${this.o.bundle}: its manifest.json names set ${manifest.id}, its signed bundle manifest ` +
          `${modelSetId}; rebuild the bundle`,
      );
    await verifyModelSet(dir, manifest);
    await fsyncDir(dir);
    await this.journal('staged', dir);
    return manifest;
  }

  /** The engine step (engines.ts) on the staged set: on a TensorRT target, journalled as building-engines. */
  private async prepareEngines(manifest: Manifest): Promise<void> {
    const env = this.env;
    if (!env) return;
    const eo = this.o.engines || {};
    const group = this.engineTarget ? engineGroupFor(this.b, this.engineTarget) : undefined;
    if (this.engineTarget)
      await this.journal(
        'building-engines',
        `${env.target}: ${group ? `${group.files.length / 2} prebuilt engines` : 'no prebuilt engines'} in the bundle`,
      );
    this.engines = await new EnginePreparation(this.stagingDir, manifest, group, {
      env,
      cache: new EngineCache(engineCacheDir(this.root)),
      reserveBytes: this.o.reserveBytes ?? DEFAULT_RESERVE_BYTES,
      ...(eo.buildTimeoutMs !== undefined ? { buildTimeoutMs: eo.buildTimeoutMs } : {}),
      ...(eo.cancelGraceMs !== undefined ? { cancelGraceMs: eo.cancelGraceMs } : {}),
      ...(eo.workspaceBytes !== undefined ? { workspaceBytes: eo.workspaceBytes } : {}),
      ...(eo.onProgress ? { onProgress: eo.onProgress } : {}),
      ...(eo.signal ? { signal: eo.signal } : {}),
    }).run();
    const e = this.engines;
    const what = (['prebuilt', 'reused', 'built'] as const).map((k) => `${k} ${e[k].join(', ') || 'none'}`);
    if (e.backend) await this.step('engines-ready', `${env.target}: ${what.join('; ')}`);
    await fsyncDir(this.stagingDir);
  }

  /** Renames the staged set into the store and activates it: from here the store's pointer names it. */
  private async place(): Promise<void> {
    const { modelSetId } = this.b.manifest;
    const target = this.store.dirOf(modelSetId);
    await removeDurable(target); // a leftover, never the active set (checked above)
    await rename(this.stagingDir, target);
    await fsyncDir(this.root);
    await this.journal('placed', target);
    await this.store.activate(modelSetId);
    await this.journal('activated', `${modelSetId} (previous: ${this.previous ?? 'none'})`);
  }

  /** The canary query on the backend that will serve: tensorrt once engines were prepared. */
  private async canary(): Promise<CanaryResult> {
    const { modelSetId, release } = this.b.manifest;
    const backend = this.engines?.backend ?? undefined;
    const fail = (why: string, cause?: unknown) =>
      new SetokimError(
        ErrorCodes.HEALTH_CHECK_FAILED,
        `${modelSetId} release ${release} failed its canary query: ${why}`,
        { cause },
      );
    let health: CanaryResult;
    try {
      health = await (this.o.health ?? ((dir, ctx) => canaryQuery(dir, ctx)))(
        this.store.dirOf(modelSetId),
        backend ? { backend } : {},
      );
    } catch (err) {
      throw fail(`[${errorCode(err)}] ${(err as Error).message}`, err);
    }
    if (backend && health.backend !== backend)
      throw fail(`it ran on ${health.backend}, not on ${backend}, which is to serve it: the engines did not load`);
    await this.step('healthy', `${health.generatedTokens} tokens in ${health.ms.toFixed(0)} ms on ${health.backend}`);
    return health;
  }

  /** The commit point (release.json), then the journal goes, then older sets and unused engines. */
  private async commit(): Promise<void> {
    const { modelSetId, release } = this.b.manifest;
    await writeRelease(this.root, {
      release,
      modelSetId,
      previous: this.previous,
      committedAt: new Date().toISOString(),
    });
    await this.step('committed', `${modelSetId} release ${release}`);
    await clearJournal(this.root);
    // Past the commit point: a failed prune is reported, never undone or thrown.
    const keep = [modelSetId, ...(this.previous ? [this.previous] : [])];
    const pruned = await pruneStore(this.root, keep, this.env?.target ?? '').then(
      (p) =>
        p.sets.length || p.engines.length
          ? `sets ${p.sets.join(', ') || 'none'}; ${p.engines.length} cached engines`
          : null,
      (err: Error) => `pruning failed (the rest stays in the store): ${err.message}`,
    );
    if (pruned) await this.step('pruned', pruned).catch(() => undefined);
  }
}

export async function installBundle(o: InstallOptions): Promise<InstallResult> {
  if (o.maxReleaseJump !== undefined && !(Number.isSafeInteger(o.maxReleaseJump) && o.maxReleaseJump >= 1)) {
    const what = `maxReleaseJump ${o.maxReleaseJump}`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${what}: a whole number of releases, at least 1`);
  }
  const unlock = await lockStore(o.store);
  try {
    return await new Installation(o).run();
  } finally {
    await unlock();
  }
}
