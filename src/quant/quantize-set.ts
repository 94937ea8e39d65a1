/**
 * Quantising a model set: calibrate every wanted stage on the fp32 pipeline, rewrite each graph to
 * INT8 Q/DQ, check it against fp32 on held-out feeds, and only when every stage is within the
 * tolerance list the new files as variants in manifest.json. A refused stage leaves the set as it was.
 *
 * Crash safety: a new file never takes a name the manifest on disk lists. It is `<stage>.int8.onnx`,
 * or, when that is the listed build being replaced, `<stage>.int8.<sha256 prefix>.onnx`. Every new
 * file is flushed before the manifest is switched to them in one durable rename (writeFileDurable);
 * only then are the replaced builds removed. At every instant the manifest names whole files that
 * match it; a crash leaves at most unlisted files, which the next run removes.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Backend, Session, Tensor } from '../engine/backend.js';
import { STAGES, type StageName } from '../engine/contract.js';
import { fsyncDir, writeFileDurable, writeFileSynced } from '../engine/durable.js';
import { manifestPath, parseManifest, serializeManifest, sha256Bytes, type Manifest, type Precision, type StageFile } from '../engine/manifest.js';
import { openModelSet } from '../engine/modelset.js';
import { OrtBackend } from '../engine/onnxruntime.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { activationRanges, collectFeeds, splitSamples } from './calibrate.js';
import { accumulate, worstOutput, type OutputError } from './compare.js';
import { activationNames, decodeModel, findTargets, quantizeModel, DEFAULT_MIN_ELEMENTS } from './graph.js';
import type { Feeds } from './record.js';
import { INT8_MAX, REDUCED_MAX } from './weights.js';

/** Largest relative output error (max |int8 - fp32| / max |fp32|) a stage may have by default: the tiny set measures 0.016 (encoder) to 0.084 (detokenizer image) with 8-16 calibration images, so 0.15 leaves ~2x headroom and still refuses a broken stage (a clipped activation measured 1.35). */
export const DEFAULT_TOLERANCE = 0.15;

export interface QuantizeSetOptions {
  dir: string;
  precision: Precision;
  stages?: readonly StageName[];
  /** Encoded calibration images. */
  images: readonly Uint8Array[];
  tolerance?: number;
  minElements?: number;
  /** 7 (default: weights in [-63, 63], safe for ONNX Runtime's x86 kernels, see weights.ts) or 8 ([-127, 127]). */
  weightBits?: 7 | 8;
  samplesPerStage?: number;
  threads?: number;
  verify?: boolean;
  onProgress?: (e: QuantizeProgress) => void;
}

export type QuantizeProgress =
  | { phase: 'calibrate'; done: number; total: number }
  | { phase: 'ranges' | 'check'; stage: StageName; done: number; total: number }
  | { phase: 'stage'; result: StageResult };

export interface StageResult {
  stage: StageName;
  /** Why nothing was written for it (e.g. no MatMul weights: the embed stage is one Gather). */
  skipped?: string;
  file?: string;
  matmuls: number;
  activations: number;
  /** Activations left float because their range varies too much between inputs (calibrate.ts). */
  floatActivations: { name: string; spread: number }[];
  weightBytesBefore: number;
  weightBytesAfter: number;
  fileBytesBefore: number;
  fileBytesAfter: number;
  calibrationSamples: number;
  heldOutSamples: number;
  /** False when the stage had a single sample, which then served both purposes. */
  heldOutDisjoint: boolean;
  errors: OutputError[];
  worst?: OutputError;
  /** Mean ms per held-out run in ONNX Runtime CPU, after one warm-up run each. */
  fp32Ms?: number;
  int8Ms?: number;
}

/** Only int8 is built; the others say what they need. */
export function checkPrecision(p: string): asserts p is 'int8' {
  if (p === 'int8') return;
  if (p === 'int4w')
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      '--precision int4w is not built yet: INT4 weight-only needs blocked DequantizeLinear (block_size, opset 21) and these graphs are opset 17. Use --precision int8.',
    );
  if (p === 'fp16') throw new SetokimError(ErrorCodes.BAD_ARGUMENT, '--precision fp16 is not built yet (it is a cast of the graph, not a quantisation). Use --precision int8.');
  if (p === 'fp32') throw new SetokimError(ErrorCodes.BAD_ARGUMENT, '--precision fp32 is the main file of every stage already. Use --precision int8.');
  throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `--precision ${JSON.stringify(p)}: expected int8 (int4w and fp16 are not built yet)`);
}

/** Every file a manifest names (main files and variants). */
const listedFiles = (m: Manifest) => new Set(Object.values(m.stages).flatMap((e) => [e.file, ...e.variants.map((v) => v.file)]));

/** A name for a new build that the manifest on disk does not list (see the header). */
function newBuildName(stage: StageName, precision: Precision, sha: string, listed: ReadonlySet<string>): string {
  const names = [`${stage}.${precision}.onnx`, `${stage}.${precision}.${sha.slice(0, 12)}.onnx`];
  const free = names.find((n) => !listed.has(n));
  if (!free) throw new SetokimError(ErrorCodes.MODEL_INVALID, `manifest.json lists both ${names.join(' and ')}; remove one of those variants from the manifest (or re-export the set) and quantise again`);
  return free;
}

/** A file this module writes for `stage` at `precision`: a build (plain or hashed name), or a temp file of an older version. */
const isBuildFile = (f: string, stage: StageName, precision: Precision) => {
  const rest = f.startsWith(`${stage}.${precision}.`) ? f.slice(stage.length + precision.length + 2) : undefined;
  return rest !== undefined && /^([0-9a-f]{12}\.)?onnx(\.tmp-\d+)?$/.test(rest);
};

async function timedRuns(s: Session, feeds: readonly Feeds[]): Promise<{ outs: Record<string, Tensor>[]; ms: number }> {
  await s.run(feeds[0]!); // warm-up: first runs allocate
  const t0 = performance.now();
  const outs = [];
  for (const f of feeds) outs.push(await s.run(f));
  return { outs, ms: (performance.now() - t0) / feeds.length };
}

export async function quantizeModelSet(o: QuantizeSetOptions): Promise<StageResult[]> {
  checkPrecision(o.precision);
  const tolerance = o.tolerance ?? DEFAULT_TOLERANCE;
  const set = await openModelSet(path.resolve(o.dir), { verify: o.verify });
  // Each stage once: a stage named twice would be written to the same temp file twice.
  const stages = [...new Set(o.stages ?? STAGES.filter((s) => set.has(s)))];
  for (const s of stages) if (!set.has(s)) throw new SetokimError(ErrorCodes.MODEL_NOT_FOUND, `model set ${set.id} has no ${s} stage; --stages takes: ${STAGES.filter((x) => set.has(x)).join(', ')}`);
  const backend: Backend = new OrtBackend({ threads: o.threads });
  const minElements = o.minElements ?? DEFAULT_MIN_ELEMENTS;

  const fp32 = new Map<StageName, Uint8Array>();
  for (const s of stages) fp32.set(s, new Uint8Array(await readFile(set.stagePath(s))));
  const wanted = stages.filter((s) => findTargets(decodeModel(fp32.get(s)!), minElements).targets.length > 0);
  const recorder = wanted.length
    ? await collectFeeds({ modelsDir: set.dir, stages: wanted, images: o.images, samplesPerStage: o.samplesPerStage, threads: o.threads, verify: false, onQuery: (done, total) => o.onProgress?.({ phase: 'calibrate', done, total }) })
    : undefined;

  const results: StageResult[] = [];
  const listed = listedFiles(set.manifest);
  // New builds, under names the manifest on disk does not list: removed again unless the manifest switches to them.
  const written: { file: string; stage: StageName; entry: StageFile }[] = [];
  try {
    for (const stage of stages) {
      const model = fp32.get(stage)!;
      const base: StageResult = { stage, matmuls: 0, activations: 0, floatActivations: [], weightBytesBefore: 0, weightBytesAfter: 0, fileBytesBefore: model.length, fileBytesAfter: model.length, calibrationSamples: 0, heldOutSamples: 0, heldOutDisjoint: false, errors: [] };
      if (!wanted.includes(stage)) {
        const r = { ...base, skipped: `no MatMul with a 2-D float32 weight of >= ${minElements} values; stays fp32` };
        results.push(r);
        o.onProgress?.({ phase: 'stage', result: r });
        continue;
      }
      const samples = recorder!.samples(stage);
      if (samples.length === 0) throw new SetokimError(ErrorCodes.INTERNAL, `stage ${stage}: the calibration queries never ran it; nothing to calibrate on`);
      const { calibrate, heldOut, disjoint } = splitSamples(samples);
      const signature = set.manifest.stages[stage]!.signature;
      const names = activationNames(findTargets(decodeModel(model), minElements).targets);
      const { ranges, dynamic } = await activationRanges(backend, model, names, calibrate, { stage, signature, threads: o.threads, onSample: (done, total) => o.onProgress?.({ phase: 'ranges', stage, done, total }) });
      const { bytes, report } = quantizeModel(model, ranges, { minElements, weightMax: o.weightBits === 8 ? INT8_MAX : REDUCED_MAX });

      const hash = sha256Bytes(bytes);
      const file = newBuildName(stage, o.precision, hash, listed);
      const final = path.join(set.dir, file);
      written.push({ file: final, stage, entry: { file, format: 'onnx', sha256: hash, bytes: bytes.length, precision: o.precision } });
      await writeFileSynced(final, bytes); // on disk before any manifest names it

      const worst = new Map<string, OutputError>();
      let fp32Ms = 0;
      let int8Ms = 0;
      const ref = await backend.open(set.stagePath(stage), { stage, signature, threads: o.threads });
      try {
        const q = await backend.open(final, { stage: `${stage} (${o.precision})`, signature, threads: o.threads });
        try {
          const a = await timedRuns(ref, heldOut);
          const b = await timedRuns(q, heldOut);
          a.outs.forEach((out, i) => {
            accumulate(worst, out, b.outs[i]!);
            o.onProgress?.({ phase: 'check', stage, done: i + 1, total: heldOut.length });
          });
          fp32Ms = a.ms;
          int8Ms = b.ms;
        } finally {
          await q.dispose();
        }
      } finally {
        await ref.dispose();
      }
      const errors = [...worst.values()];
      const r: StageResult = {
        ...base,
        file,
        matmuls: report.weights.length,
        activations: report.activations.length,
        floatActivations: dynamic,
        weightBytesBefore: report.weights.reduce((n, w) => n + w.bytesBefore, 0),
        weightBytesAfter: report.weights.reduce((n, w) => n + w.bytesAfter, 0),
        fileBytesAfter: bytes.length,
        calibrationSamples: calibrate.length,
        heldOutSamples: heldOut.length,
        heldOutDisjoint: disjoint,
        errors,
        worst: worstOutput(errors),
        fp32Ms,
        int8Ms,
      };
      results.push(r);
      o.onProgress?.({ phase: 'stage', result: r });
      if (!r.worst || r.worst.relError > tolerance) {
        throw new SetokimError(
          ErrorCodes.QUANT_TOLERANCE,
          `stage ${stage}: ${o.precision} output ${r.worst?.output ?? '?'} is off by ${r.worst?.relError.toPrecision(3)} of its range (cosine ${r.worst?.cosine.toFixed(5)}) on ${heldOut.length} held-out inputs, over the tolerance ${tolerance}; nothing was written. Raise --tolerance, calibrate on more images, or leave the stage out with --stages`,
        );
      }
    }
    // Every stage passed: the new files' names are on disk, then one durable switch of the manifest to them.
    const m = structuredClone(set.manifest);
    for (const w of written) {
      const e = m.stages[w.stage]!;
      e.variants = [...e.variants.filter((v) => v.precision !== w.entry.precision), w.entry];
    }
    parseManifest(m, manifestPath(set.dir));
    await fsyncDir(set.dir);
    await writeFileDurable(manifestPath(set.dir), serializeManifest(m));
    const quantised = written.map((w) => w.stage);
    written.length = 0;
    await removeUnlisted(set.dir, m, quantised, o.precision);
  } finally {
    for (const w of written) await rm(w.file, { force: true });
  }
  return results;
}

/** Removes the builds of `stages` the manifest no longer lists: the ones just replaced, and leftovers of a run cut off before its switch. */
async function removeUnlisted(dir: string, m: Manifest, stages: readonly StageName[], precision: Precision): Promise<void> {
  const keep = listedFiles(m);
  const stale = (await readdir(dir)).filter((f) => !keep.has(f) && stages.some((s) => isBuildFile(f, s, precision)));
  for (const f of stale) await rm(path.join(dir, f), { force: true });
  if (stale.length) await fsyncDir(dir);
}
