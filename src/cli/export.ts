/**
 * `setokim export`: model set tools. `synth` writes a reference model set; `plan` (tools/export/
 * plan.ts) sizes the real architecture for Jetson modules; `engine` (tools/export/engine.ts) builds
 * TensorRT engines. The work lives in tools/export; this file only parses options and shows progress.
 */
import { SingleBar, Presets } from 'cli-progress';
import type { Command } from 'commander';
import { z } from 'zod';
import { SYNTH_CONFIGS } from '../../tools/export/configs.js';
import { synthesize } from '../../tools/export/synth.js';
import { registerPlanCommand } from '../../tools/export/plan.js';
import { registerEngineCommand } from '../../tools/export/engine.js';
import { registerQuantizeCommand } from '../../tools/export/quantize.js';
import { registerEnsureEnginesCommand } from '../../tools/export/ensure-engines.js';
import { group, parseCommandSettings, progressSetting, registerFlags, setting } from '../settings.js';

/** Subcommands of `export`, each registered on the `export` command; a new one goes in this list. */
const exportSubcommands: Array<(exportCmd: Command) => void> = [
  registerSynthCommand,
  registerPlanCommand,
  registerEngineCommand,
  registerQuantizeCommand,
  registerEnsureEnginesCommand,
];

export function registerExport(program: Command): Command {
  const exportCmd = program
    .command('export')
    .description('build model sets: synthesise reference sets, plan a real export');
  for (const register of exportSubcommands) register(exportCmd);
  return exportCmd;
}

/** 'required' when the option is absent, else the schema's own message (or `what`). */
const missingOr = (what?: string) => (iss: { input?: unknown }) => (iss.input === undefined ? 'required' : what);

/** Every flag of `export synth`, declared once (src/settings.ts). */
const synthSettings = group({
  // required, not requiredOption: a missing flag goes through the same check (BAD_ARGUMENT, exit 2)
  config: setting({
    schema: z.enum(SYNTH_CONFIGS, { error: missingOr(`expected ${SYNTH_CONFIGS.join(' or ')}`) }),
    required: true,
    flag: '--config <name>',
    help: `architecture (required): ${SYNTH_CONFIGS.join(' | ')}`,
  }),
  seed: setting({
    schema: z
      .string({ error: missingOr() })
      .regex(/^\d+$/, 'a whole number')
      .transform(Number)
      .pipe(z.number().max(2 ** 32 - 1)),
    required: true,
    flag: '--seed <n>',
    help: 'weight seed (required): 0 .. 2^32-1',
  }),
  out: setting({
    schema: z.string({ error: missingOr() }).min(1),
    required: true,
    flag: '--out <dir>',
    help: 'directory to write the model set into (required)',
  }),
  progress: progressSetting,
});

export function registerSynthCommand(exportCmd: Command): void {
  const synth = exportCmd
    .command('synth')
    .description(
      'write a reference model set (all seven stages as ONNX, seeded weights, manifest.json); one seed gives byte-identical files',
    );
  registerFlags(synth, synthSettings).action(async (raw: Record<string, unknown>) => {
    const opts = parseCommandSettings(synthSettings, raw, 'export synth');
    const bar =
      opts.progress && process.stderr.isTTY
        ? new SingleBar({ format: 'synth {bar} {value}/{total} {stage}', hideCursor: true }, Presets.shades_classic)
        : null;
    let params = 0;
    let bytes = 0;
    const manifest = await synthesize({
      config: opts.config,
      seed: opts.seed,
      out: opts.out,
      onProgress: (e) => {
        if (bar && e.done === 0 && !bar.isActive) bar.start(e.total, 0, { stage: e.stage });
        if (e.bytes === undefined) bar?.update(e.done, { stage: e.stage });
        else {
          params += e.params ?? 0;
          bytes += e.bytes;
          bar?.update(e.done, { stage: e.stage });
        }
      },
    });
    bar?.stop();
    const stages = Object.keys(manifest.stages).length;
    process.stdout.write(
      `${manifest.id}: ${stages} stages, ${(params / 1e6).toFixed(2)} M parameters, ${(bytes / 2 ** 20).toFixed(1)} MiB written to ${opts.out}\n`,
    );
  });
}
