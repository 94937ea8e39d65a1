/**
 * Checks a run's feeds against a stage's IO signature before any backend sees them, so a wrong
 * tensor fails with one clear BAD_INPUT naming the stage, the tensor, what was expected and what
 * came, instead of a backend's internal message.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Feed, TypedArray } from './backend.js';
import type { DType, Dim, StageSignature, TensorSpec } from './contract.js';

/** The typed array each dtype's host data must use (float16 as raw bits, bool as bytes). */
const ARRAY_OF: Record<DType, string> = {
  float32: 'Float32Array',
  float16: 'Uint16Array',
  int64: 'BigInt64Array',
  int32: 'Int32Array',
  int8: 'Int8Array',
  uint8: 'Uint8Array',
  bool: 'Uint8Array',
};

export function arrayTypeFor(dtype: DType): string {
  return ARRAY_OF[dtype];
}

/** Inclusive bounds for named dimensions (e.g. L: 1..maxTokens, an engine's profile limits). */
export type DimLimits = Record<string, { min: number; max: number }>;

export const formatShape = (shape: readonly Dim[]): string => `[${shape.join(', ')}]`;
const describe = (s: TensorSpec) => `${s.dtype} ${formatShape(s.shape)}`;

/** A dim written as a name (`L`, `batch`); '' and '?'-prefixed names are free (ONNX unnamed dims). */
const isNamed = (d: Dim): d is string => typeof d === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(d);
const isFree = (d: Dim) => d === '' || (typeof d === 'string' && d.startsWith('?'));

/** Evaluates `P+T`-style sums once their names are bound; undefined while any is unbound. */
export function evalDim(d: Dim, bound: Readonly<Record<string, number>>): number | undefined {
  if (typeof d === 'number') return d;
  let sum = 0;
  for (const term of d.split('+').map((t) => t.trim())) {
    if (/^\d+$/.test(term)) sum += Number(term);
    else if (term in bound) sum += bound[term]!;
    else return undefined;
  }
  return sum;
}

const bad = (stage: string, msg: string) => new SetokimError(ErrorCodes.BAD_INPUT, `stage '${stage}': ${msg}`);

function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** Checks a tensor's own consistency: dims are sizes, data matches dtype and element count. */
export function checkTensor(stage: string, name: string, t: Feed): void {
  if (!Array.isArray(t.dims) || t.dims.some((d) => !Number.isInteger(d) || d < 0)) {
    throw bad(stage, `input '${name}' has invalid dims ${JSON.stringify(t.dims)}; dims must be non-negative integers`);
  }
  if (t.location !== 'host') return; // a resident tensor's data stays in its backend
  const want = ARRAY_OF[t.dtype];
  if (!want) throw bad(stage, `input '${name}' has unknown dtype '${t.dtype}'`);
  const got = (t.data as TypedArray | undefined)?.constructor?.name;
  if (got !== want)
    throw bad(stage, `input '${name}' is ${t.dtype}, whose data must be a ${want}, got ${got ?? 'no data'}`);
  const n = elementCount(t.dims);
  if (t.data.length !== n) {
    throw bad(stage, `input '${name}' has ${t.data.length} elements but dims ${formatShape(t.dims)} need ${n}`);
  }
}

/**
 * Checks feeds against a signature: every input present, none unknown, dtype, rank, fixed dims,
 * the same size for a named dim everywhere it appears, and optional limits on named dims.
 * Returns the named dims it bound (e.g. { L: 12 }).
 */
export function checkFeeds(
  stage: string,
  signature: StageSignature,
  feeds: Readonly<Record<string, Feed>>,
  limits: DimLimits = {},
): Record<string, number> {
  const expected = new Map(signature.inputs.map((s) => [s.name, s]));
  for (const name of Object.keys(feeds)) {
    if (!expected.has(name)) {
      throw bad(
        stage,
        `unknown input '${name}'; this stage takes ${[...expected.keys()].map((n) => `'${n}'`).join(', ')}`,
      );
    }
  }
  const bound: Record<string, number> = {};
  const boundBy: Record<string, string> = {};
  for (const spec of signature.inputs) {
    const t = feeds[spec.name];
    if (!t) throw bad(stage, `missing input '${spec.name}' (expected ${describe(spec)})`);
    if (t.dtype !== spec.dtype) {
      throw bad(stage, `input '${spec.name}' must be ${spec.dtype}, got ${t.dtype} (expected ${describe(spec)})`);
    }
    checkTensor(stage, spec.name, t);
    if (t.dims.length !== spec.shape.length) {
      throw bad(
        stage,
        `input '${spec.name}' must have rank ${spec.shape.length} ${formatShape(spec.shape)}, got rank ${t.dims.length} ${formatShape(t.dims)}`,
      );
    }
    spec.shape.forEach((d, axis) => {
      const got = t.dims[axis]!;
      if (typeof d === 'number') {
        if (got !== d) {
          throw bad(
            stage,
            `input '${spec.name}' axis ${axis} must be ${d}, got ${got} (expected ${formatShape(spec.shape)}, got ${formatShape(t.dims)})`,
          );
        }
      } else if (isNamed(d)) {
        if (d in bound && bound[d] !== got) {
          throw bad(
            stage,
            `input '${spec.name}' axis ${axis} is dim '${d}' = ${got}, but '${boundBy[d]}' set '${d}' = ${bound[d]}; inputs must agree on '${d}'`,
          );
        }
        bound[d] = got;
        boundBy[d] ??= spec.name;
        const lim = limits[d];
        if (lim && (got < lim.min || got > lim.max)) {
          throw bad(stage, `input '${spec.name}' dim '${d}' = ${got} is outside ${lim.min}..${lim.max}`);
        }
      }
    });
  }
  // Sums such as 'P+T' on inputs are checked once every name in them is bound.
  for (const spec of signature.inputs) {
    spec.shape.forEach((d, axis) => {
      if (typeof d !== 'string' || isNamed(d) || isFree(d)) return;
      const want = evalDim(d, bound);
      const got = feeds[spec.name]!.dims[axis]!;
      if (want !== undefined && want !== got) {
        throw bad(stage, `input '${spec.name}' axis ${axis} is '${d}' = ${want}, got ${got}`);
      }
    });
  }
  return bound;
}
