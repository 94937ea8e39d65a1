/**
 * Quantising a model set at one precision (recipes.ts says what each stage becomes): read and decode
 * each stage once, calibrate on the fp32 pipeline, build each stage, check every build against fp32
 * on held-out feeds, and only when every build is within the tolerance list the new files as
 * variants in manifest.json. A refused stage leaves the set as it was.
 *
 * Crash safety: a new file never takes a name the manifest on disk lists. It is
 * `<stage>.<precision>[.trt].onnx`, or, when that is the listed build being replaced,
 * `<stage>.<precision>[.trt].<sha256 prefix>.onnx` (`.trt` marks the TensorRT dialect). Every new
 * file is flushed before the manifest is switched to them in one durable rename (writeFileDurable);
 * only then are the replaced builds removed. At every instant the manifest names whole files that
 * match it; a crash leaves at most unlisted files, which the next run removes.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Backend, Session, Tensor } from '../engine/backend.js';
import { STAGES, type StageName, type StageSignature } from '../engine/contract.js';
import { fsyncDir, writeFileDurable, writeFileSynced } from '../engine/durable.js';
import {
  manifestPath,
  parseManifest,
  serializeManifest,
  sha256Bytes,
  type Dialect,
  type Manifest,
  type Precision,
  type StageFile,
} from '../engine/manifest.js';
import { openModelSet, type ModelSet } from '../engine/modelset.js';
import { OrtBackend } from '../engine/onnxruntime.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { collectFeeds, splitSamples } from './calibrate.js';
import { accumulate, worstOutput, type OutputError } from './compare.js';
import { decodeModel, type ModelProto } from './onnx-model.js';
import { BUILD_PRECISIONS, recipeFor, type BuildPrecision, type Built, type Recipe } from './recipes.js';
import type { Feeds, FeedRecorder } from './record.js';

/**
 * Largest relative output error (max |quantised - fp32| / max |fp32|) a build may have by default,
 * per precision, ~2x what the tiny and small sets measure (docs/QUANT.md), so a broken stage is
 * still refused (a clipped int8 activation measured 1.35, a float16 overflow is Infinity):
 * int8 0.016 (encoder) to 0.084 (detokenizer image); fp16 at most 0.002; int4w 0.18 (LLM logits).
 */
export const DEFAULT_TOLERANCES: Readonly<Record<BuildPrecision, number>> = { int8: 0.15, fp16: 0.01, int4w: 0.35 };
/** The int8 default, which `--tolerance` has always meant. */
export const DEFAULT_TOLERANCE = DEFAULT_TOLERANCES.int8;

export interface QuantizeSetOptions {
  dir: string;
  precision: BuildPrecision;
  stages?: readonly StageName[];
  /** Encoded calibration images. */
  images: readonly Uint8Array[];
  tolerance?: number;
  minElements?: number;
  /**
   * int8: 7 (default: weights in [-63, 63], safe for ONNX Runtime's x86 kernels, see weights.ts) or 8
   * ([-127, 127]).
   */
  weightBits?: 7 | 8;
  /** int4w: rows per INT4 block (32, 64 or 128; default 128). */
  blockSize?: number;
  /** int4w: share of the all-INT4 weight bytes the most sensitive MatMuls may add as float16 (sensitivity.ts). */
  fp16Share?: number;
  /** int4w: the most those float16 MatMuls may add, MiB. */
  fp16MaxMib?: number;
  samplesPerStage?: number;
  threads?: number;
  verify?: boolean;
  onProgress?: (e: QuantizeProgress) => void;
}

export type QuantizeProgress =
  | { phase: 'calibrate'; done: number; total: number }
  | { phase: 'ranges' | 'awq' | 'sensitivity' | 'check'; stage: StageName; done: number; total: number }
  | { phase: 'stage'; result: StageResult };

/** One file written for a stage, checked against fp32. */
export interface BuildResult {
  file: string;
  dialect?: Dialect;
  bytes: number;
  errors: OutputError[];
  worst?: OutputError;
  /** Mean ms per held-out run in ONNX Runtime CPU, after one warm-up run. */
  ms: number;
}

export interface StageResult {
  stage: StageName;
  precision: BuildPrecision;
  /** Why nothing was written for it (e.g. no MatMul weights: the embed stage is one Gather). */
  skipped?: string;
  summary?: string;
  builds: BuildResult[];
  weightBytesBefore: number;
  weightBytesAfter: number;
  fileBytesBefore: number;
  calibrationSamples: number;
  heldOutSamples: number;
  /** False when the stage had a single sample, which then served both purposes. */
  heldOutDisjoint: boolean;
  /** The fp32 file's mean ms per held-out run, measured beside the builds. */
  fp32Ms?: number;
}

/** The precisions `export quantize` builds; the others say why not. */
export function checkPrecision(p: string): asserts p is BuildPrecision {
  if ((BUILD_PRECISIONS as readonly string[]).includes(p)) return;
  if (p === 'fp32')
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `--precision fp32 is the main file of every stage already; build one of ${BUILD_PRECISIONS.join(', ')}`,
    );
  throw new SetokimError(
    ErrorCodes.BAD_ARGUMENT,
    `--precision ${JSON.stringify(p)}: expected one of ${BUILD_PRECISIONS.join(', ')}`,
  );
}

/** Every file a manifest names (main files and variants). */
const listedFiles = (m: Manifest) =>
  new Set(Object.values(m.stages).flatMap((e) => [e.file, ...e.variants.map((v) => v.file)]));
const dialectTag = (d?: Dialect) => (d === 'tensorrt' ? '.trt' : '');

/** A name for a new build that the manifest on disk does not list (see the header). */
function newBuildName(
  stage: StageName,
  precision: Precision,
  dialect: Dialect | undefined,
  sha: string,
  listed: ReadonlySet<string>,
): string {
  const base = `${stage}.${precision}${dialectTag(dialect)}`;
  const names = [`${base}.onnx`, `${base}.${sha.slice(0, 12)}.onnx`];
  const free = names.find((n) => !listed.has(n));
  if (!free)
    throw new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `manifest.json lists both ${names.join(' and ')}; remove one of those variants from the manifest (or ` +
        `re-export the set) and quantise again`,
    );
  return free;
}

/**
 * A file this module writes for `stage` at `precision` (either dialect, plain or hashed name), or a
 * temp file of an older version.
 */
const isBuildFile = (f: string, stage: StageName, precision: Precision) => {
  const rest = f.startsWith(`${stage}.${precision}.`) ? f.slice(stage.length + precision.length + 2) : undefined;
  return rest !== undefined && /^(trt\.)?([0-9a-f]{12}\.)?onnx(\.tmp-\d+)?$/.test(rest);
};

async function timedRuns(s: Session, feeds: readonly Feeds[]): Promise<{ outs: Record<string, Tensor>[]; ms: number }> {
  await s.run(feeds[0]!); // warm-up: first runs allocate
  const t0 = performance.now();
  const outs = [];
  for (const f of feeds) outs.push(await s.run(f));
  return { outs, ms: (performance.now() - t0) / feeds.length };
}

interface StageModel {
  bytes: Uint8Array;
  model: ModelProto;
  signature: StageSignature;
}

/** One run of `export quantize`: the named steps of `run()`, in order. */
class SetQuantizer {
  private readonly recipe: Recipe;
  private readonly tolerance: number;
  private readonly backend: Backend;
  private set!: ModelSet;
  private stages: StageName[] = [];
  private readonly models = new Map<StageName, StageModel>();
  private readonly skipped = new Map<StageName, string>();
  private recorder?: FeedRecorder;
  private listed = new Set<string>();
  /** New builds, under names the manifest on disk does not list: removed again unless the manifest switches to them. */
  private readonly written: { file: string; stage: StageName; entry: StageFile }[] = [];
  private readonly results: StageResult[] = [];

  constructor(private readonly o: QuantizeSetOptions) {
    checkPrecision(o.precision);
    this.recipe = recipeFor(o.precision, o);
    this.tolerance = o.tolerance ?? DEFAULT_TOLERANCES[o.precision];
    this.backend = new OrtBackend({ threads: o.threads });
  }

  async run(): Promise<StageResult[]> {
    await this.openSet();
    await this.readStages();
    await this.calibrate();
    try {
      for (const stage of this.stages) await this.quantizeStage(stage);
      await this.switchManifest();
    } finally {
      for (const w of this.written) await rm(w.file, { force: true });
    }
    return this.results;
  }

  /** Opens (and by default verifies) the set; each named stage once, every stage when none is named. */
  private async openSet(): Promise<void> {
    this.set = await openModelSet(path.resolve(this.o.dir), { verify: this.o.verify });
    this.stages = [...new Set(this.o.stages ?? STAGES.filter((s) => this.set.has(s)))];
    for (const s of this.stages) {
      if (!this.set.has(s))
        throw new SetokimError(
          ErrorCodes.MODEL_NOT_FOUND,
          `model set ${this.set.id} has no ${s} stage; --stages takes: ` +
            `${STAGES.filter((x) => this.set.has(x)).join(', ')}`,
        );
    }
    this.listed = listedFiles(this.set.manifest);
  }

  /**
   * Reads and decodes each stage's fp32 file once; a stage named in --stages with nothing to build
   * refuses the run here.
   */
  private async readStages(): Promise<void> {
    for (const stage of this.stages) {
      const bytes = new Uint8Array(await readFile(this.set.stagePath(stage)));
      const model = decodeModel(bytes);
      this.models.set(stage, { bytes, model, signature: this.set.manifest.stages[stage]!.signature });
      const why = this.recipe.nothingToBuild(stage, model);
      if (!why) continue;
      if (this.o.stages)
        throw new SetokimError(
          ErrorCodes.QUANT_UNSUPPORTED,
          `stage ${stage} cannot be built at ${this.o.precision}: ${why}; leave it out of --stages`,
        );
      this.skipped.set(stage, why);
    }
  }

  /** The fp32 pipeline answers the calibration queries; what each built stage receives is recorded. */
  private async calibrate(): Promise<void> {
    const wanted = this.stages.filter((s) => !this.skipped.has(s));
    if (wanted.length === 0) return;
    this.recorder = await collectFeeds({
      modelsDir: this.set.dir,
      stages: wanted,
      images: this.o.images,
      samplesPerStage: this.o.samplesPerStage,
      threads: this.o.threads,
      verify: false,
      onQuery: (done, total) => this.o.onProgress?.({ phase: 'calibrate', done, total }),
    });
  }

  private async quantizeStage(stage: StageName): Promise<void> {
    const m = this.models.get(stage)!;
    const base: StageResult = {
      stage,
      precision: this.o.precision,
      builds: [],
      weightBytesBefore: 0,
      weightBytesAfter: 0,
      fileBytesBefore: m.bytes.length,
      calibrationSamples: 0,
      heldOutSamples: 0,
      heldOutDisjoint: false,
    };
    const why = this.skipped.get(stage);
    if (why) return this.report({ ...base, skipped: why });
    const samples = this.recorder!.samples(stage);
    if (samples.length === 0)
      throw new SetokimError(
        ErrorCodes.INTERNAL,
        `stage ${stage}: the calibration queries never ran it; nothing to calibrate on`,
      );
    const { calibrate, heldOut, disjoint } = splitSamples(samples);
    const built = await this.recipe.build(
      { stage, model: m.model, signature: m.signature, calibrate },
      {
        backend: this.backend,
        threads: this.o.threads,
        onProgress: (phase, done, total) => this.o.onProgress?.({ phase, stage, done, total }),
      },
    );
    const files = await this.writeBuilds(stage, built);
    const { builds, fp32Ms } = await this.check(stage, files, heldOut);
    const r: StageResult = {
      ...base,
      summary: built.summary,
      builds,
      fp32Ms,
      weightBytesBefore: built.weightBytesBefore,
      weightBytesAfter: built.weightBytesAfter,
      calibrationSamples: calibrate.length,
      heldOutSamples: heldOut.length,
      heldOutDisjoint: disjoint,
    };
    this.report(r);
    for (const b of builds) {
      if (b.worst && b.worst.relError <= this.tolerance) continue;
      throw new SetokimError(
        ErrorCodes.QUANT_TOLERANCE,
        `stage ${stage}: ${this.o.precision}${b.dialect ? ' (' + b.dialect + ')' : ''} output ${b.worst?.output ?? '?'} ` +
          `is off by ${b.worst?.relError.toPrecision(3)} of its range (cosine ${b.worst?.cosine.toFixed(5)}) ` +
          `on ${heldOut.length} held-out inputs, over the tolerance ${this.tolerance}; nothing was written. ` +
          'Raise --tolerance, calibrate on more images, or leave the stage out with --stages',
      );
    }
  }

  private report(r: StageResult): void {
    this.results.push(r);
    this.o.onProgress?.({ phase: 'stage', result: r });
  }

  /** Each build under a name the manifest does not list, flushed before any manifest could name it. */
  private async writeBuilds(stage: StageName, built: Built): Promise<{ file: string; entry: StageFile }[]> {
    const out = [];
    for (const b of built.builds) {
      const hash = sha256Bytes(b.bytes);
      const file = newBuildName(stage, this.o.precision, b.dialect, hash, this.listed);
      const entry: StageFile = {
        file,
        format: 'onnx',
        sha256: hash,
        bytes: b.bytes.length,
        precision: this.o.precision,
        ...(b.dialect ? { dialect: b.dialect } : {}),
      };
      const final = path.join(this.set.dir, file);
      this.written.push({ file: final, stage, entry });
      await writeFileSynced(final, b.bytes);
      out.push({ file: final, entry });
    }
    return out;
  }

  /** The fp32 file and every build on the held-out feeds in ONNX Runtime, side by side. */
  private async check(
    stage: StageName,
    files: { file: string; entry: StageFile }[],
    heldOut: readonly Feeds[],
  ): Promise<{ builds: BuildResult[]; fp32Ms: number }> {
    const signature = this.models.get(stage)!.signature;
    const ref = await this.backend.open(this.set.stagePath(stage), { stage, signature, threads: this.o.threads });
    try {
      const a = await timedRuns(ref, heldOut);
      const builds: BuildResult[] = [];
      for (const f of files) {
        const q = await this.backend.open(f.file, {
          stage: `${stage} (${f.entry.file})`,
          signature,
          threads: this.o.threads,
        });
        try {
          const b = await timedRuns(q, heldOut);
          const worst = new Map<string, OutputError>();
          a.outs.forEach((out, i) => {
            accumulate(worst, out, b.outs[i]!);
            this.o.onProgress?.({ phase: 'check', stage, done: i + 1, total: heldOut.length });
          });
          const errors = [...worst.values()];
          builds.push({
            file: f.entry.file,
            dialect: f.entry.dialect,
            bytes: f.entry.bytes,
            errors,
            worst: worstOutput(errors),
            ms: b.ms,
          });
        } finally {
          await q.dispose();
        }
      }
      return { builds, fp32Ms: a.ms };
    } finally {
      await ref.dispose();
    }
  }

  /** Every stage passed: the new files' names are on disk, then one durable switch of the manifest to them. */
  private async switchManifest(): Promise<void> {
    const m = structuredClone(this.set.manifest);
    const built = new Set(this.written.map((w) => w.stage));
    for (const s of built) {
      const e = m.stages[s]!;
      e.variants = [
        ...e.variants.filter((v) => v.precision !== this.o.precision),
        ...this.written.filter((w) => w.stage === s).map((w) => w.entry),
      ];
    }
    parseManifest(m, manifestPath(this.set.dir));
    await fsyncDir(this.set.dir);
    await writeFileDurable(manifestPath(this.set.dir), serializeManifest(m));
    this.written.length = 0;
    await this.removeUnlisted(m, [...built]);
  }

  /**
   * Removes the builds of `stages` the manifest no longer lists: the ones just replaced, and leftovers
   * of a run cut off before its switch.
   */
  private async removeUnlisted(m: Manifest, stages: readonly StageName[]): Promise<void> {
    const keep = listedFiles(m);
    const stale = (await readdir(this.set.dir)).filter(
      (f) => !keep.has(f) && stages.some((s) => isBuildFile(f, s, this.o.precision)),
    );
    for (const f of stale) await rm(path.join(this.set.dir, f), { force: true });
    if (stale.length) await fsyncDir(this.set.dir);
  }
}

export async function quantizeModelSet(o: QuantizeSetOptions): Promise<StageResult[]> {
  return new SetQuantizer(o).run();
}
