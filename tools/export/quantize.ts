/**
 * `setokim export quantize`: writes INT8 Q/DQ builds of a model set's stages beside the fp32 files
 * and lists them as manifest variants (src/quant, docs/QUANT.md). Calibrates on sample images
 * through the fp32 pipeline, prints per stage the weight bytes before and after and the output
 * error against fp32 on held-out inputs, and refuses a stage over --tolerance (QUANT_TOLERANCE).
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { z } from 'zod';
import { STAGES } from '../../src/engine/contract.js';
import { parseFlags } from '../../src/flags.js';
import { StageListFlag } from './flags.js';
import { checkPrecision, DEFAULT_TOLERANCE, quantizeModelSet, type StageResult } from '../../src/quant/index.js';
import { busyImage, flatImage } from './sample-images.js';

const QuantizeOptions = z.object({
  models: z.string({ error: (i) => (i.input === undefined ? 'required' : undefined) }).min(1),
  precision: z.string().default('int8'),
  stages: StageListFlag,
  calibrationImages: z.coerce.number().int().min(1).max(256).default(8),
  tolerance: z.coerce.number().gt(0).default(DEFAULT_TOLERANCE),
  weightBits: z.enum(['7', '8']).default('7').transform((b) => Number(b) as 7 | 8),
  threads: z.coerce.number().int().positive().optional(),
  verify: z.boolean().default(true),
  progress: z.boolean().default(true),
});

/** N seeded sample images: three busy pictures of growing clutter, then a flat one, and again. */
export async function sampleImages(n: number): Promise<Uint8Array[]> {
  const flats = ['#3a7', '#c33', '#246', '#eee'];
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) out.push(i % 4 === 3 ? await flatImage(flats[(i >> 2) % flats.length]) : await busyImage(i + 1, 10 + ((i * 17) % 50)));
  return out;
}

const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

export function stageLine(r: StageResult): string {
  if (r.skipped) return `${r.stage}: skipped (${r.skipped})`;
  const w = r.worst!;
  const ratio = r.weightBytesAfter > 0 ? (r.weightBytesBefore / r.weightBytesAfter).toFixed(2) : '-';
  const speed = r.fp32Ms !== undefined && r.int8Ms !== undefined ? `; ORT CPU ${r.fp32Ms.toFixed(2)} -> ${r.int8Ms.toFixed(2)} ms/run` : '';
  const float = r.floatActivations.length ? ` (${r.floatActivations.length} left float: ${r.floatActivations.map((a) => `${a.name} range varies ${a.spread.toFixed(0)}x`).join(', ')})` : '';
  return (
    `${r.stage}: ${r.file} ${r.matmuls} MatMuls, ${r.activations} activations int8${float}, weights ${kib(r.weightBytesBefore)} -> ${kib(r.weightBytesAfter)} (${ratio}x), ` +
    `file ${kib(r.fileBytesBefore)} -> ${kib(r.fileBytesAfter)}; ` +
    `worst output ${w.output}: max rel error ${w.relError.toExponential(2)}, cosine ${w.cosine.toFixed(6)} ` +
    `on ${r.heldOutSamples} ${r.heldOutDisjoint ? 'held-out' : 'calibration (only one sample)'} inputs${speed}`
  );
}

export function registerQuantizeCommand(exportCmd: Command): void {
  exportCmd
    .command('quantize')
    .description('write INT8 (explicit Q/DQ) builds of a model set\'s stages, calibrated on sample images, as manifest variants')
    // not requiredOption: a missing --models goes through the zod check (BAD_ARGUMENT, exit 2)
    .option('--models <dir>', 'model set directory (holds manifest.json; required)')
    .option('--precision <p>', 'int8 (int4w and fp16 are not built yet)', 'int8')
    .option('--stages <list>', `comma-separated stages (default: every stage in the set): ${STAGES.join(', ')}`)
    .option('--calibration-images <n>', 'sample images to calibrate on (each asked, and segmented/edited when those stages are quantised)', '8')
    .option('--tolerance <r>', `largest max|int8 - fp32| / max|fp32| of any stage output on held-out inputs`, String(DEFAULT_TOLERANCE))
    .option('--weight-bits <b>', '7: weights in [-63, 63], exact on every backend (default); 8: [-127, 127], for TensorRT-only sets (ONNX Runtime on x86 without VNNI saturates)', '7')
    .option('--threads <n>', 'CPU threads per ONNX Runtime session')
    .option('--no-verify', 'skip the sha256 check of the fp32 files')
    .option('--no-progress', 'no progress bars (also off when stderr is not a terminal)')
    .action(async (raw: unknown) => {
      const o = parseFlags(QuantizeOptions, raw, 'export quantize');
      checkPrecision(o.precision); // int4w / fp16 answer before any work
      const multi = o.progress && process.stderr.isTTY ? new MultiBar({ format: '{phase} {bar} {value}/{total} {stage}', hideCursor: true, clearOnComplete: true }, Presets.shades_classic) : null;
      const bars = new Map<string, SingleBar>();
      const bar = (key: string, total: number, payload: object) => {
        let b = bars.get(key);
        if (!b && multi) bars.set(key, (b = multi.create(total, 0, payload)));
        return b;
      };
      const lines: string[] = [];
      try {
        await quantizeModelSet({
          dir: o.models,
          precision: o.precision,
          stages: o.stages,
          images: await sampleImages(o.calibrationImages),
          tolerance: o.tolerance,
          weightBits: o.weightBits,
          threads: o.threads,
          verify: o.verify,
          onProgress: (e) => {
            if (e.phase === 'stage') {
              const line = stageLine(e.result);
              if (multi) lines.push(line); // printed once the bars are gone, so they do not garble it
              else process.stdout.write(line + '\n');
            } else if (e.phase === 'calibrate') {
              bar('calibrate', e.total, { phase: 'calibrate', stage: 'queries' })?.update(e.done);
            } else {
              bar(`${e.phase}:${e.stage}`, e.total, { phase: e.phase === 'ranges' ? 'ranges' : 'check', stage: e.stage })?.update(e.done);
            }
          },
        });
      } finally {
        multi?.stop();
        for (const l of lines) process.stdout.write(l + '\n'); // also the stages checked before a refusal
      }
      process.stdout.write(`${o.models}: ${o.precision} variants listed in manifest.json; run with \`setokim run --models ${o.models} --precision ${o.precision}\`\n`);
    });
}
