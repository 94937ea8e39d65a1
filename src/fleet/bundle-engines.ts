/**
 * `bundle create --engines DIR...`: each DIR holds the engines one target built for this set (what
 * `setokim export engine` writes: `<stage>.<precision>.plan` with `<plan>.json`). Before anything is
 * signed, every engine is checked against the set and against its own target: a bundle never
 * carries an engine its devices would refuse, nor one whose manifest lies about its target.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageName } from '../engine/contract.js';
import {
  readEngineManifest,
  targetContradictions,
  verifyPlanFile,
  type EngineManifest,
} from '../engine/engine-manifest.js';
import { signatureDifference, type Manifest } from '../engine/manifest.js';
import { matchingPatterns } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Compatibility } from './format.js';

/** One target's engines as create lays them out: file names in bundle order, in `dir`. */
export interface EngineDir {
  dir: string;
  target: string;
  names: string[];
}

const bad = (msg: string) => new SetokimError(ErrorCodes.BAD_ARGUMENT, msg);

/** Why an engine cannot serve `set` (a stage it lacks, another export of the stage, another signature), or null. */
export function engineSetMismatch(m: EngineManifest, set: Manifest): string | null {
  const entry = set.stages[m.stage as StageName];
  if (!entry) return `model set ${set.id} has no stage '${m.stage}'`;
  const builds = [entry, ...entry.variants];
  const from = builds.find((b) => b.sha256 === m.source.sha256);
  if (!from) {
    const source = `${m.source.file} (sha256 ${m.source.sha256.slice(0, 12)}...)`;
    return `built from ${source}, not from any file of stage '${m.stage}' in ${set.id}`;
  }
  if (from.precision !== m.precision)
    return `built from the ${from.precision} file, but the manifest says ${m.precision}`;
  if (m.plan !== `${m.stage}.${m.precision}.plan`) return `plan ${m.plan} is not named ${m.stage}.${m.precision}.plan`;
  const diff = signatureDifference(entry.signature, m.io);
  return diff ? `its IO signature differs from the set's (${diff})` : null;
}

/** Reads and checks one engines directory; `names` holds each plan then its manifest, sorted by plan. */
async function readEngineDir(dir: string, set: Manifest, compat: Compatibility): Promise<EngineDir> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch (err) {
    throw bad(`--engines ${dir}: ${(err as Error).message}`);
  }
  const plans = names.filter((n) => n.endsWith('.plan') && names.includes(`${n}.json`));
  if (plans.length === 0)
    throw bad(
      `--engines ${dir}: no <stage>.<precision>.plan with its .plan.json (build them with \`setokim export engine\`)`,
    );
  const targets = new Set<string>();
  const files: string[] = [];
  for (const p of plans) {
    const plan = join(dir, p);
    const m = readEngineManifest(plan);
    const lies = targetContradictions(m);
    if (lies.length) throw bad(`--engines ${dir}: ${p} ${lies.join('; ')}`);
    const mismatch = engineSetMismatch(m, set);
    if (mismatch)
      throw bad(`--engines ${dir}: ${p} does not belong to this set: ${mismatch}; rebuild it from this set`);
    await verifyPlanFile(plan, m);
    targets.add(m.target!);
    files.push(p, `${p}.json`);
  }
  if (targets.size !== 1)
    throw bad(`--engines ${dir}: engines of ${[...targets].join(' and ')}; give one directory per target`);
  const target = [...targets][0]!;
  if (target.split('/')[2] === 'cpu') throw bad(`--engines ${dir}: target ${target} runs no TensorRT`);
  if (matchingPatterns(compat.targets, target).length === 0) {
    throw bad(
      `--engines ${dir}: engines for ${target}, which no --target (${compat.targets.join(', ')}) allows; ` +
        `add --target ${target}`,
    );
  }
  return { dir, target, names: files };
}

/** Every engines directory, checked; two directories of one target are refused. */
export async function readEngineDirs(
  dirs: readonly string[],
  set: Manifest,
  compat: Compatibility,
): Promise<EngineDir[]> {
  const out: EngineDir[] = [];
  for (const d of dirs) {
    const e = await readEngineDir(d, set, compat);
    const twin = out.find((o) => o.target === e.target);
    if (twin) throw bad(`--engines ${twin.dir} and ${d} are both for ${e.target}; give one directory per target`);
    out.push(e);
  }
  return out;
}
