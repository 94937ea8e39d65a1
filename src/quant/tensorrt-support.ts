/**
 * Checks an ONNX graph against TensorRT's ONNX parser support matrix (tensorrt-support.json, rows
 * of onnx-tensorrt's docs/operators.md with their sources): the opset, every op and its data types,
 * custom-domain ops, and the restrictions the docs state (`x_zero_point` must be zero, `axes` must
 * be an initializer, ...) plus the block-quantisation rules of the parser's Q/DQ importer.
 *
 * A finding is an error when the parser refuses the graph by the record, and a warning when the
 * graph steps outside what the record documents but the parser's code does not refuse it (an
 * opset above the documented range: the importer has no upper check).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { packageRoot } from '../engine/native.js';
import {
  DT,
  elements,
  floatValues,
  intAttr,
  opsetOf,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx-model.js';
import { inferTypes, opRule } from './op-types.js';

const RULES = [
  'zero_point_zero',
  'scale_positive',
  'block_int4_2d_constant',
  'int4_even',
  'axes_initializer',
  'only_first_output',
] as const;
type Rule = (typeof RULES)[number];

const OpRowSchema = z.object({
  supported: z.boolean().default(true),
  types: z.array(z.string()).default([]),
  restrictions: z.array(z.string()).default([]),
  rules: z.array(z.enum(RULES)).default([]),
});
const VersionSchema = z.object({
  sources: z.array(z.string()).min(1),
  opset: z.object({ min: z.number().int(), max: z.number().int(), note: z.string() }),
  customOps: z.record(z.string(), z.array(z.string())),
  ops: z.record(z.string(), OpRowSchema),
});
const MatrixSchema = z.object({ about: z.string(), versions: z.record(z.string(), VersionSchema) });
export type SupportMatrix = z.infer<typeof MatrixSchema>;

export const MATRIX_FILE = path.join('src', 'quant', 'tensorrt-support.json');

let cached: SupportMatrix | undefined;
/** The matrix, read from the package (the JSON ships under src/, beside this module's source). */
export function supportMatrix(): SupportMatrix {
  cached ??= MatrixSchema.parse(JSON.parse(readFileSync(path.join(packageRoot(), MATRIX_FILE), 'utf8')));
  return cached;
}

export interface SupportFinding {
  severity: 'error' | 'warning';
  node?: string;
  message: string;
}

/** TensorRT's names for ONNX element types (operators.md's "Supported Types"). */
const TYPE_NAMES: Record<number, string> = {
  [DT.FLOAT]: 'FP32',
  [DT.FLOAT16]: 'FP16',
  [DT.BFLOAT16]: 'BF16',
  [DT.INT32]: 'INT32',
  [DT.INT64]: 'INT64',
  [DT.INT8]: 'INT8',
  [DT.UINT8]: 'UINT8',
  [DT.BOOL]: 'BOOL',
  [DT.INT4]: 'INT4',
  [DT.DOUBLE]: 'DOUBLE',
  17: 'FP8',
  23: 'FP4',
};
const typeName = (t: number | undefined) => (t === undefined ? 'unknown' : (TYPE_NAMES[t] ?? `type ${t}`));
/** Types a TensorRT network input or output may have (quantised types only inside the network). */
const IO_TYPES = new Set(['FP32', 'FP16', 'BF16', 'INT32', 'INT64', 'UINT8', 'BOOL']);

/** Every finding for `m` against TensorRT `version` ('10.3', '11.1'). */
export function checkTensorRtSupport(m: ModelProto, version: string): SupportFinding[] {
  const v = supportMatrix().versions[version];
  if (!v)
    throw new RangeError(
      `no TensorRT ${version} in ${MATRIX_FILE}; it holds ${Object.keys(supportMatrix().versions).join(', ')}`,
    );
  return new SupportCheck(m, version, v).run();
}

class SupportCheck {
  private readonly out: SupportFinding[] = [];
  private readonly g;
  private readonly inits: Map<string, TensorProto>;
  private readonly types: Map<string, number>;

  constructor(
    private readonly m: ModelProto,
    private readonly version: string,
    private readonly v: z.infer<typeof VersionSchema>,
  ) {
    this.g = m.graph!;
    this.inits = new Map((this.g.initializer ?? []).map((t) => [t.name!, t]));
    this.types = inferTypes(this.g);
  }

  run(): SupportFinding[] {
    this.checkOpset();
    this.checkIo();
    for (const n of this.g.node ?? []) this.checkNode(n);
    return this.out;
  }

  private add(severity: SupportFinding['severity'], message: string, n?: NodeProto): void {
    this.out.push({
      severity,
      message: `TensorRT ${this.version}: ${message}`,
      ...(n ? { node: n.name || n.opType! } : {}),
    });
  }

  private checkOpset(): void {
    const opset = opsetOf(this.m);
    if (opset < this.v.opset.min) this.add('error', `opset ${opset} is below ${this.v.opset.min}`);
    else if (opset > this.v.opset.max)
      this.add(
        'warning',
        `opset ${opset} is above the documented ${this.v.opset.min}-${this.v.opset.max} (${this.v.opset.note}); ` +
          `the parser does not refuse a newer opset`,
      );
  }

  private checkIo(): void {
    for (const io of [...(this.g.input ?? []), ...(this.g.output ?? [])]) {
      const t = typeName(io.type?.tensorType?.elemType ?? undefined);
      if (!IO_TYPES.has(t))
        this.add(
          'error',
          `graph input/output ${io.name} is ${t}; a network's IO is one of ${[...IO_TYPES].join(', ')}`,
        );
    }
  }

  private checkNode(n: NodeProto): void {
    const domain = n.domain && n.domain !== 'ai.onnx' ? n.domain : '';
    if (domain) {
      if (!(this.v.customOps[domain] ?? []).includes(n.opType!))
        this.add('error', `${domain}.${n.opType} is not an op its ONNX parser imports`, n);
      return;
    }
    const row = this.v.ops[n.opType!];
    if (!row) return this.add('error', `${n.opType} is not in the recorded support matrix (${MATRIX_FILE})`, n);
    if (!row.supported) return this.add('error', `${n.opType} is not supported`, n);
    this.checkTypes(n, row.types);
    for (const r of row.rules) this.checkRule(r, n);
  }

  private checkTypes(n: NodeProto, allowed: readonly string[]): void {
    const r = opRule(n);
    const inputs = n.input ?? [];
    const idx = r?.data ?? (r?.float === 'all' ? inputs.map((_, i) => i) : r?.float.length ? r.float : [0]);
    const seen = idx.filter((i) => inputs[i]).map((i) => typeName(this.types.get(inputs[i]!)));
    if (n.opType === 'Cast') seen.push(typeName(this.types.get(n.output![0]!)));
    for (const t of new Set(seen))
      if (!allowed.includes(t)) this.add('error', `${n.opType} on ${t}: it takes ${allowed.join(', ')}`, n);
  }

  private checkRule(rule: Rule, n: NodeProto): void {
    const input = (i: number) => n.input?.[i] || undefined;
    switch (rule) {
      case 'zero_point_zero': {
        const zp = input(2);
        if (!zp) return;
        const t = this.inits.get(zp);
        if (!t)
          return this.add('error', `${n.opType} zero point ${zp} is not an initializer; it must be a constant zero`, n);
        if ((t.rawData ?? []).some((b) => b !== 0) || (t.int32Data ?? []).some((x) => x !== 0))
          this.add('error', `${n.opType} zero point ${zp} is not zero`, n);
        return;
      }
      case 'scale_positive': {
        const s = this.inits.get(input(1) ?? '');
        if (s && floatValues(s).some((x) => !(x > 0)))
          this.add('error', `${n.opType} scale ${s.name} has a value <= 0 (or NaN): scales must all be positive`, n);
        return;
      }
      case 'block_int4_2d_constant':
        return this.checkBlocked(n);
      case 'int4_even': {
        const x = this.inits.get(input(0) ?? '');
        if (x?.dataType === DT.INT4 && elements(x.dims ?? []) % 2 !== 0)
          this.add('error', `${n.opType}: INT4 ${x.name} has an odd number of elements`, n);
        return;
      }
      case 'axes_initializer': {
        const axes = input(1);
        if (axes && !this.inits.has(axes))
          this.add('error', `${n.opType} axes ${axes} is computed; it must be an initializer`, n);
        return;
      }
      case 'only_first_output':
        if ((n.output ?? []).filter(Boolean).length > 1)
          this.add('error', `${n.opType}: only the first output is supported`, n);
        return;
    }
  }

  /**
   * A scale of the input's rank is block quantisation: a 2-D INT4 constant, one blocked axis, an
   * integer block that block_size (when given) agrees with.
   */
  private checkBlocked(n: NodeProto): void {
    const x = this.inits.get(n.input?.[0] ?? '');
    const s = this.inits.get(n.input?.[1] ?? '');
    const sDims = (s?.dims ?? []).map(Number);
    if (!s || sDims.length < 2) return; // per-tensor or per-axis
    if (!x)
      return this.add(
        'error',
        `${n.opType}: a blocked scale needs its data to be a constant (weights), ${n.input?.[0]} is computed`,
        n,
      );
    const xDims = (x.dims ?? []).map(Number);
    if (x.dataType !== DT.INT4 || xDims.length !== 2)
      return this.add(
        'error',
        `${n.opType}: block quantisation is for 2-D INT4 weights, ${x.name} is ${xDims.length}-D ` +
          `${typeName(x.dataType ?? undefined)}`,
        n,
      );
    if (sDims.length !== 2)
      return this.add('error', `${n.opType}: scale ${s.name} has rank ${sDims.length}, its data rank 2`, n);
    const blocked = [0, 1].filter((a) => sDims[a] !== xDims[a]);
    if (blocked.length !== 1)
      return this.add(
        'error',
        `${n.opType}: exactly one axis may be blocked (scale [${sDims}] for data [${xDims}])`,
        n,
      );
    const a = blocked[0]!;
    if (xDims[a]! % sDims[a]! !== 0)
      return this.add(
        'error',
        `${n.opType}: ${xDims[a]} rows in ${sDims[a]} blocks is not an integer block (TensorRT infers the block ` +
          `from the shapes)`,
        n,
      );
    const block = xDims[a]! / sDims[a]!;
    const declared = intAttr(n, 'block_size', 0);
    if (declared && declared !== block)
      this.add(
        'error',
        `${n.opType}: block_size ${declared} but the shapes give ${block}: TensorRT would read other blocks than ` +
          `ONNX Runtime`,
        n,
      );
    if (intAttr(n, 'axis', 1) !== a && intAttr(n, 'axis', 1) !== a - 2)
      this.add('error', `${n.opType}: axis ${intAttr(n, 'axis', 1)} is not the blocked axis ${a}`, n);
  }
}
