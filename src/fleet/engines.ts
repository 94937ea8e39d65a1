/**
 * The engine step of an install (docs/FLEET.md "Engines"), run on the staged set after it verified
 * and before it is placed and activated. On a TensorRT target every stage gets an engine in
 * `<set>/engines/<stage>.<precision>.plan`, where the serving backend looks for it:
 *   1. check   each prebuilt engine of the bundle's group for this target: its manifest names this
 *              target and agrees with it, belongs to this set's stage file, runs on this machine
 *              (TensorRT, GPU, CUDA, L4T) and its plan's sha256 is its manifest's; then it is cached
 *   2. reuse   a stage without one takes the engine cache's entry for (stage file sha256, precision,
 *              dialect, target, profiles), when whole and compatible
 *   3. plan    what is left is built from the stage's ONNX graph; a stage without one is ENGINE_MISSING
 *   4. preflight  host memory, CMA and disk against the builder's peak (engine-env.ts)
 *   5. build   one stage at a time through the EngineBuilder, with a time limit, into the cache
 * On a CPU target nothing is built; every stage must have its ONNX graph (ONNX Runtime serves).
 * Any refusal throws; the install rolls back. Engines already cached stay for the next try.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageName } from '../engine/contract.js';
import { STAGES } from '../engine/contract.js';
import {
  DEFAULT_WORKSPACE_BYTES,
  engineDir,
  profileFromSignature,
  stageDimProfiles,
} from '../engine/engine-builder.js';
import {
  DEFAULT_DIALECT,
  EngineCache,
  cacheKeyOf,
  engineCacheKey,
  type CachedEngine,
  type EngineCacheKey,
} from '../engine/engine-cache.js';
import {
  incompatibilities,
  readEngineManifest,
  targetContradictions,
  verifyPlanFile,
} from '../engine/engine-manifest.js';
import { removeDurable } from '../engine/durable.js';
import type { Manifest, StageFile } from '../engine/manifest.js';
import { ErrorCodes, SetokimError, errorCode } from '../errors.js';
import { engineSetMismatch } from './bundle-engines.js';
import { preflightBuilds, runsEngines, type EngineEnvironment } from './engine-env.js';
import type { EngineGroup } from './format.js';

/** A build's progress, for the install's step reports, the update/state topic and stderr. */
export interface EngineProgress {
  stage: string;
  /** 1-based: the stage's place among the builds, and how many there are. */
  index: number;
  count: number;
  phase: string;
  step: number;
  steps: number;
}

export interface EngineStepOptions {
  env: EngineEnvironment;
  cache: EngineCache;
  /** Each build's time limit (default DEFAULT_BUILD_TIMEOUT_MS): past it the build is cancelled. */
  buildTimeoutMs?: number;
  workspaceBytes?: number;
  /**
   * How long a timed-out build may take to stop (default 60 s): TensorRT stops at its next progress
   * step; a builder that does not is left behind (its output goes to the cache's .building, which is
   * removed) and the install rolls back all the same.
   */
  cancelGraceMs?: number;
  /** Free disk to leave after the plans (the install's reserve). */
  reserveBytes?: number;
  onProgress?: (p: EngineProgress) => void;
  /** Aborting cancels the build under way and fails the step with the signal's reason (the install rolls back). */
  signal?: AbortSignal;
}

/** What the step did, per stage. */
export interface EnginesResult {
  /** The backend that will serve the set: tensorrt when every stage has an engine, null on a CPU target. */
  backend: string | null;
  prebuilt: string[];
  reused: string[];
  built: string[];
}

/** Two hours: a 7B LLM stage builds in tens of minutes on an Orin; a hung build must not hold the update for ever. */
export const DEFAULT_BUILD_TIMEOUT_MS = 2 * 3_600_000;
export const DEFAULT_CANCEL_GRACE_MS = 60_000;

/** `work`, or a rejection `graceMs` after `signal` aborted if `work` has not settled by then. */
function untilAbortedPlus<T>(work: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const late = new Promise<never>((_, reject) => {
    onAbort = () => (timer = setTimeout(() => reject(signal.reason as Error), graceMs));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([work, late]).finally(() => {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort!);
  });
}

interface Build {
  stage: StageName;
  file: StageFile;
  key: EngineCacheKey;
}

const incompatible = (msg: string) => new SetokimError(ErrorCodes.ENGINE_INCOMPATIBLE, msg);

export class EnginePreparation {
  private readonly result: EnginesResult = { backend: null, prebuilt: [], reused: [], built: [] };
  private readonly dir: string;

  /** `setDir`: the staged set; `group`: the bundle's engines for this target (unpacked into `setDir/engines`). */
  constructor(
    private readonly setDir: string,
    private readonly set: Manifest,
    private readonly group: EngineGroup | undefined,
    private readonly o: EngineStepOptions,
  ) {
    this.dir = engineDir(setDir);
  }

  async run(): Promise<EnginesResult> {
    if (!runsEngines(this.o.env.target)) {
      this.requireOnnx();
      await removeDurable(this.dir); // engines of a format-2 bundle: no use without TensorRT
      return this.result;
    }
    if (!this.group) await removeDurable(this.dir); // only engines signed for this target are taken
    await mkdir(this.dir, { recursive: true });
    await mkdir(this.o.cache.dir, { recursive: true });
    const have = await this.checkPrebuilt();
    const builds: Build[] = [];
    for (const stage of STAGES) {
      const file = this.mainFile(stage);
      if (!file || have.has(this.planName(stage, file))) continue;
      const key = this.keyOf(stage, file);
      if (await this.reuse(stage, file, key)) continue;
      if (file.format === 'tensorrt' && this.fits(join(this.setDir, file.file))) continue; // the stage file is a plan for here
      if (file.format !== 'onnx') throw this.missing(stage, file);
      builds.push({ stage, file, key });
    }
    await preflightBuilds(
      builds.map((b) => ({ stage: b.stage, weightBytes: b.file.bytes, precision: b.file.precision })),
      this.set.architecture,
      this.o.env,
      { dir: this.o.cache.dir, workspaceBytes: this.workspace, reserveBytes: this.o.reserveBytes ?? 0 },
    );
    for (const [i, b] of builds.entries()) await this.build(b, i + 1, builds.length);
    this.result.backend = 'tensorrt';
    return this.result;
  }

  private get workspace(): number {
    return this.o.workspaceBytes ?? DEFAULT_WORKSPACE_BYTES;
  }

  private mainFile(stage: StageName): StageFile | undefined {
    const e = this.set.stages[stage];
    // The main file, as the serving pipeline opens it (stage-source.ts): never of one dialect.
    return e && { file: e.file, format: e.format, sha256: e.sha256, bytes: e.bytes, precision: e.precision };
  }

  private planName = (stage: string, f: StageFile) => `${stage}.${f.precision}.plan`;

  /** On a CPU target, ONNX Runtime serves: every stage needs its ONNX graph. */
  private requireOnnx(): void {
    for (const stage of STAGES) {
      const f = this.mainFile(stage);
      if (f && f.format !== 'onnx') throw this.missing(stage, f);
    }
  }

  private missing(stage: string, f: StageFile): SetokimError {
    const has = this.group ? `engines for ${this.group.target} only` : 'no engines for it';
    return new SetokimError(
      ErrorCodes.ENGINE_MISSING,
      `stage '${stage}' of ${this.set.id} is a ${f.format} file (${f.file}) with no ONNX graph to build from, and ` +
        `the bundle has ${has} (this device is ${this.o.env.target}); ` +
        'publish the bundle with --engines for this target',
    );
  }

  /** Whether a plan's manifest names this target truthfully and the plan runs on this machine. */
  private fits(plan: string): boolean {
    try {
      const m = readEngineManifest(plan);
      const machine = this.o.env.machine;
      return !targetContradictions(m, this.o.env.target).length && !!machine && !incompatibilities(m, machine).length;
    } catch {
      return false; // no manifest, or one that does not read
    }
  }

  /** Step 1: every engine of the group is checked and cached; returns the plan names it holds. */
  private async checkPrebuilt(): Promise<Set<string>> {
    const names = new Set<string>();
    if (!this.group) return names;
    for (const name of (await readdir(this.dir)).filter((n) => n.endsWith('.plan')).sort()) {
      const plan = join(this.dir, name);
      const m = readEngineManifest(plan);
      const where = `prebuilt engine ${name} for ${this.group.target}`;
      const lies = targetContradictions(m, this.o.env.target);
      if (lies.length)
        throw incompatible(
          `${where} lies about its target: ${lies.join('; ')}; rebuild it on a ${this.o.env.target} device`,
        );
      const mismatch = engineSetMismatch(m, this.set);
      if (mismatch) throw incompatible(`${where} does not belong to ${this.set.id}: ${mismatch}`);
      const why = this.o.env.machine ? incompatibilities(m, this.o.env.machine) : ['TensorRT is not loaded'];
      if (why.length) throw incompatible(`${where} cannot run on this device: ${why.join('; ')}`);
      await verifyPlanFile(plan, m);
      await this.o.cache.add(plan, m, 'link');
      names.add(name);
      this.result.prebuilt.push(m.stage);
    }
    return names;
  }

  /** The cache key a stage's engine is built under on this device (default profiles from the architecture). */
  private keyOf(stage: StageName, f: StageFile): EngineCacheKey {
    const sig = this.set.stages[stage]!.signature;
    const profiles = stageDimProfiles(stage, this.set.architecture).map((p) => profileFromSignature(sig, p));
    const dialect = f.dialect ?? DEFAULT_DIALECT;
    return { source: f.sha256, precision: f.precision, dialect, target: this.o.env.target, profiles };
  }

  /** Step 2: a whole, compatible cache entry is linked into the set. */
  private async reuse(stage: StageName, f: StageFile, key: EngineCacheKey): Promise<boolean> {
    const hit = await this.o.cache.lookup(key);
    if (!hit || !this.o.env.machine || incompatibilities(hit.manifest, this.o.env.machine).length) return false;
    await this.o.cache.linkInto(hit, join(this.dir, this.planName(stage, f)));
    this.result.reused.push(stage);
    return true;
  }

  /** Step 5: one build, cancelled past the time limit, adopted into the cache, linked into the set. */
  private async build(b: Build, index: number, count: number): Promise<void> {
    const { stage, file } = b;
    const name = engineCacheKey(b.key);
    const plan = await this.o.cache.buildPlan(name);
    const timeoutMs = this.o.buildTimeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS;
    const ac = new AbortController();
    const timeout = new SetokimError(
      ErrorCodes.ENGINE_BUILD_TIMEOUT,
      `building the ${stage} engine took more than ${Number((timeoutMs / 1000).toPrecision(3))} s ` +
        `on ${this.o.env.target}; it was cancelled`,
    );
    const timer = setTimeout(() => ac.abort(timeout), timeoutMs);
    const outer = this.o.signal;
    const onOuter = () => ac.abort(outer!.reason);
    if (outer?.aborted) onOuter();
    outer?.addEventListener('abort', onOuter, { once: true });
    const report = (phase: string, step: number, steps: number) =>
      this.o.onProgress?.({ stage, index, count, phase, step, steps });
    report('start', 0, 0);
    let entry: CachedEngine;
    try {
      const building = this.o.env.builder.build({
        stage,
        onnx: join(this.setDir, file.file),
        plan,
        signature: this.set.stages[stage]!.signature,
        profiles: stageDimProfiles(stage, this.set.architecture),
        precision: file.precision,
        ...(file.dialect ? { dialect: file.dialect } : {}),
        target: this.o.env.target,
        workspaceBytes: this.workspace,
        timingCache: await this.o.cache.timingCache(this.o.env.target),
        jetpack: this.o.env.jetpack,
        signal: ac.signal,
        onProgress: report,
      });
      const m = await untilAbortedPlus(building, ac.signal, this.o.cancelGraceMs ?? DEFAULT_CANCEL_GRACE_MS);
      const got = cacheKeyOf(m);
      if (!got || engineCacheKey(got) !== name)
        throw new Error(
          "the builder's manifest does not describe the requested build " +
            `(${stage}, ${file.precision}, ${this.o.env.target})`,
        );
      await verifyPlanFile(plan, m);
      entry = await this.o.cache.add(plan, m, 'move');
    } catch (err) {
      if (ac.signal.aborted) throw ac.signal.reason instanceof Error ? ac.signal.reason : timeout;
      const why = `[${errorCode(err)}] ${(err as Error)?.message ?? String(err)}`;
      throw new SetokimError(
        ErrorCodes.ENGINE_BUILD_FAILED,
        `building the ${stage} engine on ${this.o.env.target} failed: ${why}`,
        { cause: err },
      );
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onOuter);
      await this.o.cache.clearBuilding();
    }
    await mkdir(this.dir, { recursive: true });
    await this.o.cache.linkInto(entry, join(this.dir, this.planName(stage, file)));
    report('done', 1, 1);
    this.result.built.push(stage);
  }
}
