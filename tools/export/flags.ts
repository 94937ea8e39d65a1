/** Flags the export commands share. */
import { z } from 'zod';
import { STAGES } from '../../src/engine/contract.js';

/** `--stages a,b`: stage names, comma-separated; absent means every stage of the set. */
export const StageListFlag = z
  .string()
  .optional()
  .transform((s) => (s ? s.split(',').map((x) => x.trim()) : undefined))
  .pipe(z.array(z.enum(STAGES)).optional());
