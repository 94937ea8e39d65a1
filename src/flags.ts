/**
 * Command-line options are validated with zod; every bad one becomes a BAD_ARGUMENT naming its flag.
 * Bottom layer (beside errors.ts): the CLI and tools/export both parse their flags with it.
 */
import { z } from 'zod';
import { ErrorCodes, SetokimError } from './errors.js';

/** `maxTokens` -> `--max-tokens`, the way commander spelled it on the command line. */
export const flagName = (key: PropertyKey | undefined): string =>
  `--${String(key ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

export function parseFlags<S extends z.ZodType>(schema: S, raw: unknown, command: string): z.infer<S> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const msg = parsed.error.issues.map((i) => `${flagName(i.path[0])}: ${i.message}`).join('; ');
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${command}: ${msg}`);
  }
  return parsed.data;
}
