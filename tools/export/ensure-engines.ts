/**
 * `setokim export ensure-engines`: what setokim-engines.service runs before the agent, on first boot
 * and on every boot after (docs/FLASHING.md). It builds the TensorRT engines this machine lacks for
 * the set it serves (a store's active set, or --model) and leaves the ones that still fit alone: a
 * plan is rebuilt when it is missing, its manifest is unreadable, it was built for another
 * TensorRT, GPU, CUDA or L4T (a JetPack upgrade), for another stage signature, or from another
 * ONNX file. Without TensorRT it builds nothing, says why, and succeeds: the agent then serves the
 * set on ONNX Runtime.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import type { StageName } from '../../src/engine/contract.js';
import { STAGES } from '../../src/engine/contract.js';
import {
  buildEngine,
  enginePlanPath,
  stageDimProfiles,
  type BuildEngineOptions,
} from '../../src/engine/engine-builder.js';
import {
  incompatibilities,
  machineInfo,
  readEngineManifest,
  type EngineManifest,
  type MachineInfo,
} from '../../src/engine/engine-manifest.js';
import { PRECISIONS, signatureDifference, type Precision } from '../../src/engine/manifest.js';
import { ModelStore, openModelSet, type ModelSet } from '../../src/engine/modelset.js';
import { loadNative } from '../../src/engine/native.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { group, parseCommandSettings, registerFlags, setting } from '../../src/settings.js';

export interface EngineCheck {
  stage: StageName;
  plan: string;
  /** Why the plan must be built, or null when the one on disk fits this machine and set. */
  rebuild: string | null;
}

/** For each stage of the set: its plan path and whether (and why) it must be built here. */
export function checkEngines(set: ModelSet, machine: MachineInfo, precision?: Precision): EngineCheck[] {
  return STAGES.filter((s) => set.has(s)).map((stage) => {
    const onnx = set.stagePath(stage, precision);
    const build = set.variants(stage).find((v) => path.join(set.dir, v.file) === onnx)!;
    const plan = enginePlanPath(set.dir, stage, build.precision);
    return { stage, plan, rebuild: whyRebuild(set, stage, plan, build.sha256, machine) };
  });
}

function whyRebuild(
  set: ModelSet,
  stage: StageName,
  plan: string,
  onnxSha256: string,
  machine: MachineInfo,
): string | null {
  if (!existsSync(plan)) return 'no engine yet';
  let m: EngineManifest;
  try {
    m = readEngineManifest(plan);
  } catch (err) {
    return (err as Error).message;
  }
  const why = incompatibilities(m, machine);
  if (why.length) return why.join('; ');
  const diff = signatureDifference(set.manifest.stages[stage]!.signature, m.io);
  if (diff) return `built for another stage signature (${diff})`;
  if (m.source.sha256 !== onnxSha256) {
    const [had, has] = [m.source.sha256.slice(0, 12), onnxSha256.slice(0, 12)];
    return `built from another ${m.source.file} (sha256 ${had}, the set has ${has})`;
  }
  return null;
}

export interface EnsureOptions {
  set: ModelSet;
  precision?: Precision;
  workspaceBytes?: number;
  /** Why TensorRT cannot build here (tensorrtUnavailableReason), or undefined when it can. */
  unavailable: string | undefined;
  /** This machine's TensorRT, GPUs, CUDA and L4T (used only when TensorRT is available). */
  machine?: () => MachineInfo;
  /** The engine builder: buildEngine on a device; tests pass a TensorRtBuilderTestDouble. */
  build?: (o: BuildEngineOptions) => Promise<EngineManifest>;
  log: (line: string) => void;
}

export interface EnsureResult {
  built: StageName[];
  kept: StageName[];
  /** Set when nothing could be built here, with the reason. */
  skipped?: string;
}

export async function ensureEngines(o: EnsureOptions): Promise<EnsureResult> {
  if (o.unavailable) return { built: [], kept: [], skipped: `TensorRT cannot build engines here: ${o.unavailable}` };
  const machine = (o.machine ?? (() => machineInfo(loadNative().capabilities())))();
  const build = o.build ?? buildEngine;
  const result: EnsureResult = { built: [], kept: [] };
  for (const c of checkEngines(o.set, machine, o.precision)) {
    if (c.rebuild === null) {
      result.kept.push(c.stage);
      continue;
    }
    o.log(`${c.stage}: building ${path.basename(c.plan)} (${c.rebuild})`);
    const onnx = o.set.stagePath(c.stage, o.precision);
    const m = await build({
      stage: c.stage,
      onnx,
      plan: c.plan,
      signature: o.set.manifest.stages[c.stage]!.signature,
      profiles: stageDimProfiles(c.stage, o.set.architecture),
      precision: o.set.variants(c.stage).find((v) => path.join(o.set.dir, v.file) === onnx)!.precision,
      ...(o.workspaceBytes ? { workspaceBytes: o.workspaceBytes } : {}),
      timingCache: path.join(path.dirname(c.plan), 'timing.cache'),
    });
    o.log(`${c.stage}: built in ${m.builder.seconds.toFixed(1)} s (TensorRT ${m.tensorrt}, SM ${m.sm})`);
    result.built.push(c.stage);
  }
  return result;
}

/** Every flag of `export ensure-engines`, declared once (src/settings.ts): one of --store and --model. */
const ensureSettings = group(
  {
    store: setting({
      schema: z.string().min(1),
      flag: '--store <dir>',
      help: "model store: its active set (what the agent serves); setokim-engines.service's choice",
    }),
    model: setting({
      schema: z.string().min(1),
      flag: '--model <dir>',
      help: 'a model set directory instead of a store',
    }),
    precision: setting({
      schema: z.enum(PRECISIONS),
      flag: '--precision <p>',
      help: `which build of each stage (${PRECISIONS.join(' | ')}; default: the main file, as the agent serves)`,
    }),
    workspaceMb: setting({
      schema: z.number().int().positive(),
      flag: '--workspace-mb <n>',
      read: 'number',
      help: 'builder workspace limit in MiB (default 1024; lower on 8 GB boards)',
    }),
  },
  {
    refine: (s) =>
      s.refine((o) => !(o as { store?: string }).store !== !(o as { model?: string }).model, {
        message: 'give --store (its active set) or --model, one of them',
        path: ['store'],
      }),
  },
);

export function registerEnsureEnginesCommand(exportCmd: Command): void {
  const cmd = exportCmd
    .command('ensure-engines')
    .description(
      'build the TensorRT engines this machine is missing for a set (first boot, after a JetPack upgrade); ' +
        'without TensorRT build nothing and say why',
    );
  registerFlags(cmd, ensureSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(ensureSettings, raw, 'export ensure-engines');
    const say = (line: string) => process.stdout.write(`ensure-engines: ${line}\n`);
    let dir = o.model;
    if (o.store) {
      const id = await new ModelStore(o.store).active();
      if (!id) {
        say(`built nothing: ${o.store} has no active model set yet (install a bundle first)`);
        return;
      }
      dir = new ModelStore(o.store).dirOf(id);
    }
    const set = await openModelSet(dir!, { verify: false }); // the agent verifies the set when it opens it
    const r = await ensureEngines({
      set,
      ...(o.precision ? { precision: o.precision } : {}),
      ...(o.workspaceMb ? { workspaceBytes: o.workspaceMb * 2 ** 20 } : {}),
      unavailable: tensorrtUnavailableReason(),
      log: say,
    });
    if (r.skipped) say(`built nothing for ${set.id}: ${r.skipped}. The agent serves the set on ONNX Runtime.`);
    else
      say(
        `${set.id}: built ${r.built.length ? r.built.join(', ') : 'nothing'}; ` +
          (r.kept.length ? `${r.kept.join(', ')} already fit this machine` : 'none was there'),
      );
  });
}
