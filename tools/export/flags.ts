/** Flags the export commands share, each declared once (src/settings.ts). */
import { z } from 'zod';
import { STAGES } from '../../src/engine/contract.js';
import { BLOCK_SIZES, DEFAULT_BLOCK_SIZE, DEFAULT_FP16_MAX_MIB, DEFAULT_FP16_SHARE } from '../../src/quant/index.js';
import { setting } from '../../src/settings.js';

/** `--stages a,b`: stage names, comma-separated; absent means every stage of the set (engine and quantize). */
export const stagesSetting = setting({
  schema: z
    .string()
    .transform((s) => (s ? s.split(',').map((x) => x.trim()) : undefined))
    .pipe(z.array(z.enum(STAGES)).optional()),
  flag: '--stages <list>',
  help: `comma-separated stages (default: every stage in the set): ${STAGES.join(', ')}`,
});

/** `--block-size k`: int4w's rows per INT4 scale (quantize and plan). */
export const blockSizeSetting = setting({
  schema: z
    .enum(BLOCK_SIZES.map(String) as [string, ...string[]], {
      error: (i) => `expected one of ${BLOCK_SIZES.join(', ')}, got ${JSON.stringify(i.input)}`,
    })
    .transform(Number),
  default: String(DEFAULT_BLOCK_SIZE),
  flag: '--block-size <k>',
  help:
    `int4w: input rows per INT4 scale (${BLOCK_SIZES.join(' | ')}); a weight whose K it does not divide takes ` +
    `the largest half that does`,
});

/** int4w's float16 budget for the most sensitive MatMuls (src/quant/sensitivity.ts; quantize and plan). */
export const fp16ShareSetting = setting({
  schema: z.number().min(0).max(1),
  default: DEFAULT_FP16_SHARE,
  flag: '--fp16-share <s>',
  read: 'number',
  help:
    "int4w: the MatMuls whose INT4 weights move the LLM's logits most (measured on the calibration inputs) " +
    'stay float16, at most this share of its INT4 weights (0: all INT4; docs/QUANT.md)',
});

export const fp16MaxMibSetting = setting({
  schema: z.number().min(0),
  default: DEFAULT_FP16_MAX_MIB,
  flag: '--fp16-max-mib <n>',
  read: 'number',
  help: 'int4w: the most those float16 MatMuls may add to the LLM, MiB',
});
