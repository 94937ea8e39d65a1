/**
 * `setokim export quantize`: writes FP16, INT8 (Q/DQ) or INT4 weight-only builds of a model set's
 * stages beside the fp32 files and lists them as manifest variants (src/quant, docs/QUANT.md).
 * Calibrates on sample images through the fp32 pipeline, prints per stage the weight bytes before
 * and after and each build's output error against fp32 on held-out inputs, and refuses a stage
 * over --tolerance (QUANT_TOLERANCE).
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { z } from 'zod';
import { group, parseCommandSettings, progressSetting, registerFlags, setting } from '../../src/settings.js';
import { blockSizeSetting, fp16MaxMibSetting, fp16ShareSetting, stagesSetting } from './flags.js';
import {
  BUILD_PRECISIONS,
  checkPrecision,
  DEFAULT_TOLERANCES,
  INT4_STAGES,
  quantizeModelSet,
  type StageResult,
} from '../../src/quant/index.js';
import { busyImage, flatImage } from './sample-images.js';

/** Every flag of `export quantize`, declared once (src/settings.ts). */
const quantizeSettings = group({
  // required, not requiredOption: a missing --models goes through the same check (BAD_ARGUMENT, exit 2)
  models: setting({
    schema: z.string({ error: (i) => (i.input === undefined ? 'required' : undefined) }).min(1),
    required: true,
    flag: '--models <dir>',
    help: 'model set directory (holds manifest.json; required)',
  }),
  precision: setting({
    schema: z.string(),
    default: 'int8',
    flag: '--precision <p>',
    help:
      `${BUILD_PRECISIONS.join(' | ')}: int4w = INT4 weights for ${INT4_STAGES.join(', ')} (two dialects: ONNX ` +
      `Runtime, TensorRT), fp16 elsewhere`,
  }),
  blockSize: blockSizeSetting,
  fp16Share: fp16ShareSetting,
  fp16MaxMib: fp16MaxMibSetting,
  stages: stagesSetting,
  calibrationImages: setting({
    schema: z.number().int().min(1).max(256),
    default: 8,
    flag: '--calibration-images <n>',
    read: 'number',
    help: 'sample images to calibrate on (each asked, and segmented/edited when those stages are quantised)',
  }),
  tolerance: setting({
    schema: z.number().gt(0),
    flag: '--tolerance <r>',
    read: 'number',
    help: `largest max|quantised - fp32| / max|fp32| of any stage output on held-out inputs (default ${Object.entries(
      DEFAULT_TOLERANCES,
    )
      .map(([p, v]) => `${p} ${v}`)
      .join(', ')})`,
  }),
  weightBits: setting({
    schema: z.enum(['7', '8']).transform((b) => Number(b) as 7 | 8),
    default: '7',
    flag: '--weight-bits <b>',
    help:
      'int8: 7: weights in [-63, 63], exact on every backend; 8: [-127, 127], ' +
      'for TensorRT-only sets (ONNX Runtime on x86 without VNNI saturates)',
  }),
  threads: setting({
    schema: z.number().int().positive(),
    flag: '--threads <n>',
    read: 'number',
    help: 'CPU threads per ONNX Runtime session',
  }),
  verify: setting({
    schema: z.boolean(),
    default: true,
    flag: '--no-verify',
    help: 'skip the sha256 check of the fp32 files',
  }),
  progress: progressSetting,
});

/** N seeded sample images: three busy pictures of growing clutter, then a flat one, and again. */
export async function sampleImages(n: number): Promise<Uint8Array[]> {
  const flats = ['#3a7', '#c33', '#246', '#eee'];
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++)
    out.push(
      i % 4 === 3 ? await flatImage(flats[(i >> 2) % flats.length]) : await busyImage(i + 1, 10 + ((i * 17) % 50)),
    );
  return out;
}

const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

export function stageLine(r: StageResult): string {
  if (r.skipped) return `${r.stage}: skipped (${r.skipped})`;
  const ratio = r.weightBytesAfter > 0 ? (r.weightBytesBefore / r.weightBytesAfter).toFixed(2) : '-';
  const builds = r.builds.map((b) => {
    const w = b.worst!;
    const speed = r.fp32Ms !== undefined ? `; ORT CPU ${r.fp32Ms.toFixed(2)} -> ${b.ms.toFixed(2)} ms/run` : '';
    return (
      `${b.file}${b.dialect ? ` (${b.dialect})` : ''}: file ${kib(r.fileBytesBefore)} -> ${kib(b.bytes)}, ` +
      `worst output ${w.output}: max rel error ${w.relError.toExponential(2)}, cosine ${w.cosine.toFixed(6)} ` +
      `on ${r.heldOutSamples} ${r.heldOutDisjoint ? 'held-out' : 'calibration (only one sample)'} inputs${speed}`
    );
  });
  const weights = `weights ${kib(r.weightBytesBefore)} -> ${kib(r.weightBytesAfter)} (${ratio}x)`;
  return `${r.stage}: ${r.summary}, ${weights}; ${builds.join('; ')}`;
}

export function registerQuantizeCommand(exportCmd: Command): void {
  const cmd = exportCmd
    .command('quantize')
    .description(
      "write FP16, INT8 (explicit Q/DQ) or INT4 weight-only builds of a model set's stages, " +
        'checked against fp32 on held-out inputs, as manifest variants',
    );
  registerFlags(cmd, quantizeSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(quantizeSettings, raw, 'export quantize');
    checkPrecision(o.precision); // a bad precision answers before any work
    const multi =
      o.progress && process.stderr.isTTY
        ? new MultiBar(
            { format: '{phase} {bar} {value}/{total} {stage}', hideCursor: true, clearOnComplete: true },
            Presets.shades_classic,
          )
        : null;
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
        blockSize: o.blockSize,
        fp16Share: o.fp16Share,
        fp16MaxMib: o.fp16MaxMib,
        threads: o.threads,
        verify: o.verify,
        onProgress: (e) => {
          if (e.phase === 'stage') {
            const line = stageLine(e.result);
            if (multi)
              lines.push(line); // printed once the bars are gone, so they do not garble it
            else process.stdout.write(line + '\n');
          } else if (e.phase === 'calibrate') {
            bar('calibrate', e.total, { phase: 'calibrate', stage: 'queries' })?.update(e.done);
          } else {
            bar(`${e.phase}:${e.stage}`, e.total, { phase: e.phase, stage: e.stage })?.update(e.done);
          }
        },
      });
    } finally {
      multi?.stop();
      for (const l of lines) process.stdout.write(l + '\n'); // also the stages checked before a refusal
    }
    process.stdout.write(
      `${o.models}: ${o.precision} variants listed in manifest.json; ` +
        `run with \`setokim run --models ${o.models} --precision ${o.precision}\`\n`,
    );
  });
}
