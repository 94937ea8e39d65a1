/** Flags the export commands share, each declared once (src/settings.ts). */
import { z } from 'zod';
import { STAGES } from '../../src/engine/contract.js';
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
