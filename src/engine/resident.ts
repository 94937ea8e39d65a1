/**
 * Resident tensors: state that stays in a session's backend memory between runs (ONNX Runtime:
 * the stage's worker thread; TensorRT: GPU memory), named by a handle, as ONNX Runtime's IOBinding
 * keeps values on the device. A run takes a handle as a feed without sending the data, and can
 * write an output's rows into a resident tensor (a KV cache row at the write position) instead of
 * returning it. The checks here run on the JavaScript side for every backend, before the backend
 * sees a request; the backends trust what passes.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import type { DType, StageSignature } from './contract.js';
import { evalDim, formatShape } from './signature.js';

/** A tensor held in a session's backend memory. Fed only to the session that allocated it. */
export interface ResidentTensor {
  readonly location: 'resident';
  readonly dtype: DType;
  readonly dims: readonly number[];
  readonly bytes: number;
  /** False once released, or lost with its backend (a worker that died). */
  readonly alive: boolean;
}

/** A run's output written into a resident tensor at `offset` along `axis`, not returned. */
export interface RowWrite {
  into: ResidentTensor;
  axis: number;
  offset: number;
}

/** `rows` rows along `axis` from one resident tensor to another of the same session. */
export interface RowCopy {
  from: ResidentTensor;
  to: ResidentTensor;
  axis: number;
  rows: number;
  fromOffset?: number;
  toOffset?: number;
}

export interface ResidentSpec {
  dtype: DType;
  dims: readonly number[];
}

const ELEMENT_BYTES: Record<DType, number> = { float32: 4, float16: 2, int64: 8, int32: 4, int8: 1, uint8: 1, bool: 1 };

export const elementBytes = (dtype: DType): number => ELEMENT_BYTES[dtype];

const badArg = (stage: string, msg: string) => new SetokimError(ErrorCodes.BAD_ARGUMENT, `stage '${stage}': ${msg}`);

/** One handle as its registry keeps it. */
class Handle implements ResidentTensor {
  readonly location = 'resident' as const;
  state: 'live' | 'released' | 'lost' = 'live';
  constructor(
    readonly owner: ResidentRegistry,
    readonly id: number,
    readonly dtype: DType,
    readonly dims: readonly number[],
    readonly bytes: number,
  ) {}
  get alive(): boolean {
    return this.state === 'live';
  }
}

/**
 * The resident tensors of one session as its TypeScript side knows them: ids for the backend,
 * sizes, and which are still alive. Backends keep the data; this keeps the books.
 */
export class ResidentRegistry {
  private nextId = 1;
  private readonly live = new Map<number, Handle>();
  private heldBytes = 0;
  /** Why the handles were lost (the backend died), for the error a later use gets. */
  private lostBecause: string | undefined;

  constructor(private readonly stage: string) {}

  get bytes(): number {
    return this.heldBytes;
  }

  get count(): number {
    return this.live.size;
  }

  /** New handles for `specs` (checked: known dtypes, whole non-negative dims). */
  create(specs: readonly ResidentSpec[]): (ResidentTensor & { id: number })[] {
    for (const s of specs) {
      if (!(s.dtype in ELEMENT_BYTES))
        throw badArg(this.stage, `cannot allocate a resident tensor of dtype '${s.dtype}'`);
      if (!Array.isArray(s.dims) || s.dims.some((d) => !Number.isInteger(d) || d < 0)) {
        throw badArg(this.stage, `a resident tensor needs whole non-negative dims, got ${JSON.stringify(s.dims)}`);
      }
    }
    return specs.map((s) => {
      const bytes = s.dims.reduce((a, b) => a * b, 1) * ELEMENT_BYTES[s.dtype];
      const h = new Handle(this, this.nextId++, s.dtype, [...s.dims], bytes);
      this.live.set(h.id, h);
      this.heldBytes += bytes;
      return h;
    });
  }

  /** The backend id of a live handle of this session; BAD_ARGUMENT (or why it was lost) otherwise. */
  idOf(t: ResidentTensor, what: string): number {
    const h = t as Handle;
    if (!(h instanceof Handle) || h.owner !== this) {
      throw badArg(
        this.stage,
        `${what} is a resident tensor of another session; feed it to the session that allocated it`,
      );
    }
    if (h.state === 'released') throw badArg(this.stage, `${what} was released`);
    if (h.state === 'lost') {
      throw new SetokimError(
        ErrorCodes.BACKEND_CRASHED,
        `stage '${this.stage}': ${what} was lost with its backend (${this.lostBecause ?? 'it stopped'})`,
      );
    }
    return h.id;
  }

  /**
   * New handles for `specs`, given to the backend by `allocate` (their ids, dtypes and dims); when it
   * fails the handles are dropped again and its error goes on.
   */
  async allocate(
    specs: readonly ResidentSpec[],
    allocate: (tensors: { handle: number; dtype: DType; dims: number[] }[]) => Promise<unknown>,
  ): Promise<ResidentTensor[]> {
    const handles = this.create(specs);
    try {
      await allocate(handles.map((h) => ({ handle: h.id, dtype: h.dtype, dims: [...h.dims] })));
    } catch (err) {
      for (const h of handles) this.drop(h);
      throw err;
    }
    return handles;
  }

  /** Marks a handle released; returns its id, or undefined when it was not live (idempotent). */
  drop(t: ResidentTensor): number | undefined {
    const h = t as Handle;
    if (!(h instanceof Handle) || h.owner !== this || h.state !== 'live') return undefined;
    h.state = 'released';
    this.live.delete(h.id);
    this.heldBytes -= h.bytes;
    return h.id;
  }

  /** The backend lost every resident tensor (a worker died, the session was disposed). */
  loseAll(reason: string): void {
    this.lostBecause = reason;
    for (const h of this.live.values()) h.state = 'lost';
    this.live.clear();
    this.heldBytes = 0;
  }
}

function checkRows(
  stage: string,
  what: string,
  dims: readonly number[],
  to: ResidentTensor,
  axis: number,
  offset: number,
): void {
  if (!Number.isInteger(axis) || axis < 0 || axis >= to.dims.length) {
    throw badArg(stage, `${what}: axis ${axis} is not an axis of ${formatShape(to.dims)}`);
  }
  if (dims.length !== to.dims.length || dims.some((d, i) => i !== axis && d !== to.dims[i])) {
    throw badArg(
      stage,
      `${what}: rows of ${formatShape(dims)} do not fit ${formatShape(to.dims)} along axis ${axis}` +
        ' (every other dim must match)',
    );
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + dims[axis]! > to.dims[axis]!) {
    throw badArg(
      stage,
      `${what}: ${dims[axis]} rows at offset ${offset} overrun the ${to.dims[axis]} rows of axis ${axis}`,
    );
  }
}

/**
 * Checks a run's row writes against the stage's outputs, whose shapes follow from the dims the
 * feeds bound: a named output, the same dtype, and rows that fit the target at the offset. An
 * output whose shape cannot be worked out here (no signature) is checked by the backend.
 */
export function checkRowWrites(
  stage: string,
  signature: StageSignature | undefined,
  bound: Readonly<Record<string, number>>,
  writes: Readonly<Record<string, RowWrite>>,
  outputNames: readonly string[],
): void {
  for (const [name, w] of Object.entries(writes)) {
    const spec = signature?.outputs.find((o) => o.name === name);
    if (!outputNames.includes(name)) {
      if (!spec) throw badArg(stage, `cannot write output '${name}': the stage has no such output`);
      // The signature promises it, the graph lacks it: the model set is not what it claims.
      throw new SetokimError(
        ErrorCodes.MODEL_INVALID,
        `stage '${stage}': the graph has no output '${name}' though its signature declares it; re-export the model set`,
      );
    }
    if (!spec) {
      if (!Number.isInteger(w.offset) || w.offset < 0)
        throw badArg(stage, `output '${name}': offset ${w.offset} is not a row index`);
      continue;
    }
    if (spec.dtype !== w.into.dtype)
      throw badArg(
        stage,
        `output '${name}' is ${spec.dtype}; it cannot be written into a ${w.into.dtype} resident tensor`,
      );
    const dims = spec.shape.map((d) => evalDim(d, bound));
    if (dims.some((d) => d === undefined)) continue;
    checkRows(stage, `output '${name}'`, dims as number[], w.into, w.axis, w.offset);
  }
}

/** The row writes as backends take them: handle numbers of `registry`. */
export function wireRowWrites(
  registry: ResidentRegistry,
  writes: Readonly<Record<string, RowWrite>>,
): Record<string, WireRowWrite> {
  return Object.fromEntries(
    Object.entries(writes).map(([name, w]) => {
      const handle = registry.idOf(w.into, `the target of output '${name}'`);
      return [name, { handle, axis: w.axis, offset: w.offset }];
    }),
  );
}

/** A run's output written into a resident tensor (by its handle id) at `offset` along `axis`, as the backends take it. */
export interface WireRowWrite {
  handle: number;
  axis: number;
  offset: number;
}

/** A row copy as the backends take it: handle ids, offsets filled in. */
export interface WireRowCopy {
  from: number;
  to: number;
  axis: number;
  rows: number;
  fromOffset: number;
  toOffset: number;
}

/** Checks `copies` (checkRowCopies) and turns them into the backends' form. */
export function wireRowCopies(registry: ResidentRegistry, stage: string, copies: readonly RowCopy[]): WireRowCopy[] {
  checkRowCopies(stage, copies);
  return copies.map((c, i) => ({
    from: registry.idOf(c.from, `the source of copy ${i}`),
    to: registry.idOf(c.to, `the target of copy ${i}`),
    axis: c.axis,
    rows: c.rows,
    fromOffset: c.fromOffset ?? 0,
    toOffset: c.toOffset ?? 0,
  }));
}

/** Checks copies between resident tensors: same dtype, every dim but `axis` equal, rows in range. */
export function checkRowCopies(stage: string, copies: readonly RowCopy[]): void {
  copies.forEach((c, i) => {
    const what = `copy ${i}`;
    if (c.from.dtype !== c.to.dtype)
      throw badArg(stage, `${what}: ${c.from.dtype} rows cannot go into a ${c.to.dtype} tensor`);
    if (!Number.isInteger(c.rows) || c.rows < 0)
      throw badArg(stage, `${what}: rows must be a whole number, got ${c.rows}`);
    const from = c.fromOffset ?? 0;
    const rows = c.from.dims.map((d, k) => (k === c.axis ? c.rows : d));
    checkRows(stage, `${what} (source)`, rows, c.from, c.axis, from);
    checkRows(stage, `${what} (target)`, rows, c.to, c.axis, c.toOffset ?? 0);
  });
}
