/**
 * A model set on disk: a directory with manifest.json and one file per stage (plus quantised
 * variants). `openModelSet` verifies it before anything runs; `ModelStore` keeps several versioned
 * sets side by side under one root (`<root>/<id>/`) with an `active` pointer that a fleet update
 * switches atomically, so a failed download never replaces the set that is serving.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';
import { removeDurable, writeFileDurable } from './durable.js';
import type { Architecture, StageName } from './contract.js';
import {
  loadManifest,
  MANIFEST_FILE,
  ModelSetId,
  verifyModelSet,
  verifyStageFile,
  type Dialect,
  type Manifest,
  type Precision,
  type StageFile,
} from './manifest.js';

export interface OpenOptions {
  /** Check size, sha256 and ONNX structure of every file (default true; false trusts the disk). */
  verify?: boolean;
}

export class ModelSet {
  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
  ) {}

  static async open(dir: string, opts: OpenOptions = {}): Promise<ModelSet> {
    const manifest = await loadManifest(dir);
    if (opts.verify !== false) await verifyModelSet(dir, manifest);
    return new ModelSet(dir, manifest);
  }

  get id(): string {
    return this.manifest.id;
  }

  get architecture(): Architecture {
    return this.manifest.architecture;
  }

  has(stage: StageName): boolean {
    return this.manifest.stages[stage] !== undefined;
  }

  /** Every build of a stage: the main file first, then its variants. */
  variants(stage: StageName): StageFile[] {
    const e = this.manifest.stages[stage];
    if (!e) return [];
    const { file, format, sha256, bytes, precision } = e;
    return [{ file, format, sha256, bytes, precision }, ...e.variants];
  }

  /**
   * The build a backend opens at a precision: the variant of that precision written for `target`,
   * else one written for every backend (no dialect); undefined when there is none. No precision:
   * the main file.
   */
  pick(stage: StageName, precision?: Precision, target: Dialect = 'onnxruntime'): StageFile | undefined {
    const all = this.variants(stage);
    if (!precision) return all[0];
    const of = all.filter((v) => v.precision === precision);
    return of.find((v) => v.dialect === target) ?? of.find((v) => v.dialect === undefined);
  }

  /** Absolute path of a stage's file, at a given precision (default: the main file), for a backend's dialect. */
  stagePath(stage: StageName, precision?: Precision, target: Dialect = 'onnxruntime'): string {
    const all = this.variants(stage);
    if (all.length === 0) {
      throw new SetokimError(
        ErrorCodes.MODEL_NOT_FOUND,
        `model set ${this.id} (${this.dir}) has no ${stage} stage; use a set exported with it`,
      );
    }
    const pick = this.pick(stage, precision, target);
    if (!pick) {
      const has = all.map((v) => (v.dialect ? `${v.precision} (${v.dialect})` : v.precision)).join(', ');
      throw new SetokimError(
        ErrorCodes.MODEL_NOT_FOUND,
        `model set ${this.id} has no ${precision} build of ${stage} for ${target} (has: ${has}); ` +
          'quantise it first or pick another precision',
      );
    }
    return join(this.dir, pick.file);
  }

  /** Re-checks one file (e.g. before loading a variant that was skipped at open). */
  async verify(stage: StageName, precision?: Precision, target: Dialect = 'onnxruntime'): Promise<void> {
    const path = this.stagePath(stage, precision, target);
    const f = this.variants(stage).find((v) => join(this.dir, v.file) === path)!;
    await verifyStageFile(this.dir, f);
  }
}

export const openModelSet = (dir: string, opts?: OpenOptions) => ModelSet.open(dir, opts);

const ACTIVE_FILE = 'active';

/** Versioned model sets under one root: `<root>/<id>/manifest.json`, and `<root>/active` naming one. */
export class ModelStore {
  constructor(readonly root: string) {}

  dirOf(id: string): string {
    const ok = ModelSetId.safeParse(id);
    if (!ok.success) {
      const why = ok.error.issues[0]?.message;
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `model set id ${JSON.stringify(id)}: ${why}`);
    }
    return join(this.root, id);
  }

  /** Ids of the directories that hold a manifest, sorted. */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    const ids: string[] = [];
    for (const n of names.sort()) {
      if (
        await stat(join(this.root, n, MANIFEST_FILE)).then(
          (s) => s.isFile(),
          () => false,
        )
      )
        ids.push(n);
    }
    return ids;
  }

  /** The active set's id, or null when none was activated. */
  async active(): Promise<string | null> {
    try {
      return (await readFile(join(this.root, ACTIVE_FILE), 'utf8')).trim() || null;
    } catch {
      return null;
    }
  }

  /**
   * Verifies the set fully, then points `active` at it: write + rename, synced, so after power loss it
   * names the old set or the new one.
   */
  async activate(id: string): Promise<ModelSet> {
    const set = await ModelSet.open(this.dirOf(id));
    if (set.id !== id)
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `${this.dirOf(id)}: manifest id ${set.id} does not match its directory ${id}`,
      );
    await writeFileDurable(join(this.root, ACTIVE_FILE), `${id}\n`);
    return set;
  }

  /** No set active any more (a rolled-back install that had none before, or a damaged old set), durably. */
  async deactivate(): Promise<void> {
    await removeDurable(join(this.root, ACTIVE_FILE));
  }

  async openActive(opts?: OpenOptions): Promise<ModelSet> {
    const id = await this.active();
    if (!id)
      throw new SetokimError(
        ErrorCodes.MODEL_NOT_FOUND,
        `${this.root}: no active model set; install one and activate it`,
      );
    return ModelSet.open(this.dirOf(id), opts);
  }
}
