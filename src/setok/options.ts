/** Validation of the clustering inputs at the API edge (zod); everything below trusts them. */
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { ClusterParams } from './reference.js';

export const ClusterOptionsSchema = z
  .object({
    n: z.number().int().min(1).max(16384), // two n x n float matrices must fit in memory
    dim: z.number().int().min(1),
    k: z.number().int().min(1),
    threshold: z.number().finite(),
    fallback: z.number().int().min(1),
    maxTokens: z.number().int().min(0).optional(),
  })
  .strict();

export type ClusterOptions = z.input<typeof ClusterOptionsSchema>;

function bad(message: string): never {
  throw new SetokimError(ErrorCodes.BAD_INPUT, message);
}

/** Checks the options alone; returns normalised params. Throws BAD_INPUT. */
export function validateOptions(options: unknown): ClusterParams {
  const parsed = ClusterOptionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    bad(
      `cluster: option ${issue.path.join('.') || '(options)'}: ${issue.message}. Expected { n, dim, k, threshold, fallback, maxTokens? } with positive integers and a finite threshold.`,
    );
  }
  const p = parsed.data;
  if (p.k > p.n)
    bad(
      `cluster: k = ${p.k} nearest neighbours need at least k patches, got n = ${p.n}; lower k or pass more patches.`,
    );
  return { n: p.n, dim: p.dim, k: p.k, threshold: p.threshold, fallback: p.fallback, maxTokens: p.maxTokens ?? 0 };
}

/** Checks options and the feature array's length; returns normalised params. Throws BAD_INPUT. */
export function validateCluster(features: unknown, options: unknown): ClusterParams {
  if (!(features instanceof Float32Array))
    bad('cluster: features must be a Float32Array of n x dim values (row-major).');
  const p = validateOptions(options);
  if (features.length !== p.n * p.dim) {
    bad(
      `cluster: features has ${features.length} values but n x dim = ${p.n} x ${p.dim} = ${p.n * p.dim}; pass a row-major n x dim array.`,
    );
  }
  return p;
}

/** NaN or Inf anywhere makes distances meaningless: refuse with the first bad position. */
export function checkFinite(features: Float32Array, dim: number): void {
  for (let i = 0; i < features.length; i++) {
    if (!Number.isFinite(features[i]!)) {
      bad(
        `cluster: features[${Math.floor(i / dim)}][${i % dim}] is ${features[i]}; features must be finite (check the encoder output).`,
      );
    }
  }
}

export function validatePositionEncoding(features: unknown, rows: unknown, cols: unknown, dim: unknown): void {
  if (!(features instanceof Float32Array))
    bad('addPositionEncoding: features must be a Float32Array of rows*cols x dim values.');
  const Int = z.number().int().min(1);
  for (const [name, v] of [
    ['rows', rows],
    ['cols', cols],
    ['dim', dim],
  ] as const) {
    if (!Int.safeParse(v).success) bad(`addPositionEncoding: ${name} must be a positive integer, got ${String(v)}.`);
  }
  const want = (rows as number) * (cols as number) * (dim as number);
  if (features.length !== want)
    bad(`addPositionEncoding: features has ${features.length} values, expected rows*cols*dim = ${want}.`);
}

/** Native errors carry a code property; give them the SetokimError shape. */
export function asSetokimError(err: unknown): SetokimError {
  if (err instanceof SetokimError) return err;
  const e = err as { code?: string; message?: string };
  const code = e?.code === ErrorCodes.BAD_INPUT ? ErrorCodes.BAD_INPUT : ErrorCodes.INTERNAL;
  return new SetokimError(code, e?.message ?? String(err), { cause: err });
}
