/**
 * `setokim export engine`: builds TensorRT engines (.plan + manifest) for a model set's stages on
 * this machine, a Jetson or a build machine of the same module and JetPack (docs/ENGINES.md).
 * Without TensorRT it stops at once with BACKEND_UNAVAILABLE and says why.
 */
import { SingleBar, Presets } from 'cli-progress';
import type { Command } from 'commander';
import path from 'node:path';
import { z } from 'zod';
import { SetokimError } from '../../src/errors.js';
import { STAGES, type StageName } from '../../src/engine/contract.js';
import { buildEngine, engineDir, stageDimProfiles } from '../../src/engine/engine-builder.js';
import { PRECISIONS, type Precision } from '../../src/engine/manifest.js';
import { openModelSet, type ModelSet } from '../../src/engine/modelset.js';
import { detectTarget } from '../../src/engine/target.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { group, parseCommandSettings, progressSetting, registerFlags, setting } from '../../src/settings.js';
import { stagesSetting } from './flags.js';
import { ErrorCodes } from '../../src/errors.js';

/** The builder's workspace limit by default: TensorRT's tactic scratch memory (unified memory on a Jetson). */
export const DEFAULT_WORKSPACE_MB = 1024;

/** Every flag of `export engine`, declared once (src/settings.ts). */
const engineSettings = group({
  // required, not requiredOption: a missing --model is BAD_ARGUMENT (exit 2) like every other bad flag
  model: setting({
    schema: z.string({ error: (i) => (i.input === undefined ? 'required' : undefined) }).min(1),
    required: true,
    flag: '--model <dir>',
    help: 'model set directory (holds manifest.json; required)',
  }),
  stages: stagesSetting,
  precision: setting({
    schema: z.enum(PRECISIONS),
    flag: '--precision <p>',
    help: `which build of each stage (${PRECISIONS.join(' | ')}; default: the main file)`,
  }),
  maxTokens: setting({
    schema: z.number().int().positive(),
    flag: '--max-tokens <n>',
    read: 'number',
    help: 'largest vision-token count L the engines accept (default: the architecture maxTokens)',
  }),
  maxContext: setting({
    schema: z.number().int().positive(),
    flag: '--max-context <n>',
    read: 'number',
    help: 'largest LLM context (default: the architecture maxContext)',
  }),
  workspaceMb: setting({
    schema: z.number().int().positive(),
    default: DEFAULT_WORKSPACE_MB,
    flag: '--workspace-mb <n>',
    read: 'number',
    help: 'builder workspace limit in MiB; lower it on 8 GB boards',
  }),
  timingCache: setting({
    schema: z.string(),
    flag: '--timing-cache <file>',
    help: 'timing cache to reuse and update (default: <out>/timing.cache)',
  }),
  out: setting({ schema: z.string(), flag: '--out <dir>', help: 'where to write engines (default: <model>/engines)' }),
  progress: progressSetting,
});

/**
 * What each stage's engine is built from: its build at `precision` in the TensorRT dialect (or the
 * main file), and where the plan goes.
 */
export function engineSources(
  set: ModelSet,
  stages: readonly StageName[] | undefined,
  precision: Precision | undefined,
  out: string,
): { stage: StageName; onnx: string; precision: Precision; plan: string }[] {
  return (stages ?? STAGES.filter((s) => set.has(s))).map((stage) => {
    if (!set.has(stage))
      throw new SetokimError(ErrorCodes.MODEL_NOT_FOUND, `model set ${set.id} has no ${stage} stage`);
    const onnx = set.stagePath(stage, precision, 'tensorrt'); // the TensorRT dialect where a precision has two
    const built = set.variants(stage).find((v) => path.join(set.dir, v.file) === onnx)!.precision;
    return { stage, onnx, precision: built, plan: path.join(out, `${stage}.${built}.plan`) };
  });
}

export function registerEngineCommand(exportCmd: Command): void {
  const cmd = exportCmd
    .command('engine')
    .description(
      'build TensorRT engines for a model set on this device (a plan only runs on the TensorRT and GPU that built it)',
    );
  registerFlags(cmd, engineSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(engineSettings, raw, 'export engine');
    const why = tensorrtUnavailableReason();
    if (why) {
      throw new SetokimError(
        ErrorCodes.BACKEND_UNAVAILABLE,
        `export engine needs TensorRT and a GPU: ${why}. Run it on the Jetson that will serve the engines ` +
          '(`setokim doctor` shows what this build and machine have); ONNX Runtime serves the set without engines.',
      );
    }
    const set = await openModelSet(o.model);
    // Recorded in every manifest: `bundle create --engines` ships engines per target (docs/FLEET.md).
    const target = await detectTarget();
    const out = o.out ?? engineDir(set.dir);
    const timingCache = o.timingCache ?? path.join(out, 'timing.cache');
    for (const { stage, onnx, precision, plan } of engineSources(set, o.stages, o.precision, out)) {
      const bar =
        o.progress && process.stderr.isTTY
          ? new SingleBar(
              { format: `${stage} {bar} {value}/{total} {phase}`, hideCursor: true },
              Presets.shades_classic,
            )
          : null;
      let lastPhase = '';
      const m = await buildEngine({
        stage,
        onnx,
        plan,
        signature: set.manifest.stages[stage]!.signature,
        profiles: stageDimProfiles(stage, set.architecture, { maxTokens: o.maxTokens, maxContext: o.maxContext }),
        precision,
        target: target.id,
        jetpack: target.jetson?.jetpack ?? null,
        workspaceBytes: o.workspaceMb * 1024 * 1024,
        timingCache,
        onProgress: (phase, step, steps) => {
          if (bar) {
            if (!bar.isActive) bar.start(Math.max(steps, 1), step, { phase });
            bar.setTotal(Math.max(steps, 1));
            bar.update(step, { phase });
          } else if (phase !== lastPhase) {
            process.stderr.write(`${stage}: ${phase}\n`);
          }
          lastPhase = phase;
        },
      }).finally(() => bar?.stop());
      process.stdout.write(
        `${stage}: ${path.relative(process.cwd(), plan)} (${(m.bytes / 2 ** 20).toFixed(1)} MiB, TensorRT ` +
          `${m.tensorrt}, SM ${m.sm}, ${m.builder.seconds.toFixed(1)} s)\n`,
      );
    }
  });
}
