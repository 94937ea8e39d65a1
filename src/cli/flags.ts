/** Command-line options are validated with zod; every bad one becomes a BAD_ARGUMENT naming its flag. */
import { z } from 'zod';
import { STAGES } from '../engine/contract.js';
import { SetokimError } from '../errors.js';

/** `--stages a,b`: stage names, comma-separated; absent means every stage of the set. */
export const StageListFlag = z
  .string()
  .optional()
  .transform((s) => (s ? s.split(',').map((x) => x.trim()) : undefined))
  .pipe(z.array(z.enum(STAGES)).optional());

/** `maxTokens` -> `--max-tokens`, the way commander spelled it on the command line. */
export const flagName = (key: PropertyKey | undefined): string =>
  `--${String(key ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

export function parseFlags<S extends z.ZodType>(schema: S, raw: unknown, command: string): z.infer<S> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const msg = parsed.error.issues.map((i) => `${flagName(i.path[0])}: ${i.message}`).join('; ');
    throw new SetokimError('BAD_ARGUMENT', `${command}: ${msg}`);
  }
  return parsed.data;
}
