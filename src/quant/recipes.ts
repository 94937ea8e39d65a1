/**
 * What `export quantize` builds of one stage at each precision (docs/QUANT.md):
 *
 * - int8:  explicit Q/DQ (graph.ts), activations calibrated; one file for every backend.
 * - fp16:  the float16 rewrite (fp16.ts); one file for every backend.
 * - int4w: the stages in INT4_STAGES get INT4 weights (AWQ-searched, then GPTQ: int4.ts / awq.ts / gptq.ts;
 *          the MatMuls measured most sensitive keep float16 within a byte budget: sensitivity.ts)
 *          in two dialects of blocked DequantizeLinear: float32 compute for ONNX Runtime, float16 compute
 *          for TensorRT; every other stage is its float16 graph, for TensorRT only (ONNX Runtime
 *          keeps serving its fp32 file: float16 is no faster on a CPU).
 */
import type { Backend } from '../engine/backend.js';
import type { StageName, StageSignature } from '../engine/contract.js';
import type { Dialect } from '../engine/manifest.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { activationRanges } from './calibrate.js';
import { planInt4 } from './awq.js';
import { toFloat16, type Fp16Report } from './fp16.js';
import { activationNames, findTargets, quantizeModel, DEFAULT_MIN_ELEMENTS } from './graph.js';
import { Int4Rewrite, selectInt4, type Int4Form } from './int4-graph.js';
import { BLOCK_SIZES, DEFAULT_BLOCK_SIZE, type BlockSize } from './int4.js';
import { encodeModel, type ModelProto } from './onnx-model.js';
import { DEFAULT_FP16_SHARE, SensitivityPass } from './sensitivity.js';
import type { Feeds } from './record.js';
import { INT8_MAX, REDUCED_MAX } from './weights.js';

export const BUILD_PRECISIONS = ['fp16', 'int8', 'int4w'] as const;
export type BuildPrecision = (typeof BUILD_PRECISIONS)[number];

/**
 * Stages int4w stores with INT4 weights (the rest: float16). See docs/QUANT.md for the merger and
 * detokenizer measurements.
 */
export const INT4_STAGES: readonly StageName[] = ['llm'];
/** The outputs an INT4 stage's sensitivity is measured on (sensitivity.ts): what it answers with. */
const ANSWER_OUTPUTS: Partial<Record<StageName, readonly string[]>> = { llm: ['logits'] };
/**
 * The ONNX Runtime dialect's INT4 form: DequantizeLinear + MatMul, which ONNX Runtime fuses into its
 * MatMulNBits kernel (at its session default accuracy level 4: int8 activations inside the GEMM).
 * bench/quant.ts --dialects measured it 16-20% faster per decode step than writing com.microsoft
 * MatMulNBits (accuracy level 4) directly, and 20-30% faster than level 0 (bench/RESULTS.md).
 */
export const ORT_INT4_FORM: Int4Form = 'dq';

/** One stage's fp32 graph, decoded once, and its recorded feeds. */
export interface StageInput {
  stage: StageName;
  model: ModelProto;
  signature: StageSignature;
  /** Feeds for calibration (the held-out ones are checked by the caller). */
  calibrate: readonly Feeds[];
}

export interface RecipeContext {
  backend: Backend;
  threads?: number;
  onProgress?: (phase: 'ranges' | 'awq' | 'sensitivity', done: number, total: number) => void;
}

export interface Built {
  builds: { bytes: Uint8Array; dialect?: Dialect }[];
  /** What was built, in words (the CLI prints it). */
  summary: string;
  weightBytesBefore: number;
  weightBytesAfter: number;
}

export interface Recipe {
  readonly precision: BuildPrecision;
  /** Why the stage has nothing to build at this precision; undefined when it has. */
  nothingToBuild(stage: StageName, model: ModelProto): string | undefined;
  /** The stage's builds (one per dialect), from its fp32 graph and calibration feeds. */
  build(input: StageInput, ctx: RecipeContext): Promise<Built>;
}

export class Int8Recipe implements Recipe {
  readonly precision = 'int8';
  constructor(private readonly o: { minElements?: number; weightBits?: 7 | 8 }) {}

  nothingToBuild(_stage: StageName, model: ModelProto): string | undefined {
    const min = this.o.minElements ?? DEFAULT_MIN_ELEMENTS;
    return findTargets(model, min).targets.length === 0
      ? `no MatMul with a 2-D float32 weight of >= ${min} values; stays fp32`
      : undefined;
  }

  async build(input: StageInput, ctx: RecipeContext): Promise<Built> {
    const minElements = this.o.minElements ?? DEFAULT_MIN_ELEMENTS;
    const names = activationNames(findTargets(input.model, minElements).targets);
    const { ranges, dynamic } = await activationRanges(ctx.backend, input.model, names, input.calibrate, {
      stage: input.stage,
      signature: input.signature,
      threads: ctx.threads,
      onSample: (d, t) => ctx.onProgress?.('ranges', d, t),
    });
    const { bytes, report } = quantizeModel(input.model, ranges, {
      minElements,
      weightMax: this.o.weightBits === 8 ? INT8_MAX : REDUCED_MAX,
    });
    const spreads = dynamic.map((a) => `${a.name} range varies ${a.spread.toFixed(0)}x`).join(', ');
    const float = dynamic.length ? ` (${dynamic.length} left float: ${spreads})` : '';
    return {
      builds: [{ bytes }],
      summary: `${report.weights.length} MatMuls, ${report.activations.length} activations int8${float}`,
      weightBytesBefore: report.weights.reduce((n, w) => n + w.bytesBefore, 0),
      weightBytesAfter: report.weights.reduce((n, w) => n + w.bytesAfter, 0),
    };
  }
}

const fp32Summary = (r: Fp16Report) => {
  const ops = Object.entries(r.fp32Nodes)
    .map(([op, n]) => `${n} ${op}`)
    .join(', ');
  const flushed = r.flushedToZero ? `, ${r.flushedToZero} weights below float16's range read as 0` : '';
  return `fp16, float32 kept for ${ops || 'nothing'}, ${r.casts} casts${flushed}`;
};

export class Fp16Recipe implements Recipe {
  readonly precision = 'fp16';

  nothingToBuild(): string | undefined {
    return undefined;
  }

  async build(input: StageInput): Promise<Built> {
    const { model, report } = toFloat16(input.model, input.stage);
    return {
      builds: [{ bytes: encodeModel(model) }],
      summary: fp32Summary(report),
      weightBytesBefore: report.weightBytesBefore,
      weightBytesAfter: report.weightBytesAfter,
    };
  }
}

export class Int4wRecipe implements Recipe {
  readonly precision = 'int4w';
  private readonly block: BlockSize;
  private readonly fp16Share: number;
  private readonly fp16MaxMib?: number;

  constructor(o: { blockSize?: number; fp16Share?: number; fp16MaxMib?: number }) {
    const b = o.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!(BLOCK_SIZES as readonly number[]).includes(b))
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `--block-size ${b}: expected one of ${BLOCK_SIZES.join(', ')}`);
    this.block = b as BlockSize;
    this.fp16Share = o.fp16Share ?? DEFAULT_FP16_SHARE;
    this.fp16MaxMib = o.fp16MaxMib;
    if (!(this.fp16Share >= 0 && this.fp16Share <= 1))
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `--fp16-share ${this.fp16Share}: expected a share from 0 to 1`);
  }

  nothingToBuild(): string | undefined {
    return undefined;
  }

  async build(input: StageInput, ctx: RecipeContext): Promise<Built> {
    if (!INT4_STAGES.includes(input.stage)) {
      const { model, report } = toFloat16(input.model, input.stage);
      return {
        builds: [{ bytes: encodeModel(model), dialect: 'tensorrt' }],
        summary: `${fp32Summary(report)} (not an INT4 stage)`,
        weightBytesBefore: report.weightBytesBefore,
        weightBytesAfter: report.weightBytesAfter,
      };
    }
    const selection = selectInt4(input.model, this.block);
    if (selection.groups.size === 0) {
      throw new SetokimError(
        ErrorCodes.QUANT_UNSUPPORTED,
        `stage ${input.stage} cannot be built at int4w: no MatMul takes INT4 weights ` +
          `(${selection.skipped.map((s) => s.node + ': ' + s.why).join('; ') || 'no 2-D float32 MatMul weight'})`,
      );
    }
    const int4 = await planInt4(ctx.backend, input.model, selection, input.calibrate, {
      stage: input.stage,
      signature: input.signature,
      threads: ctx.threads,
      onProgress: (p, d, t) => ctx.onProgress?.(p === 'awq' ? 'awq' : 'ranges', d, t),
    });
    const { plan, kept } = await new SensitivityPass(ctx.backend, input.model, int4.plan, input.calibrate, {
      stage: input.stage,
      signature: input.signature,
      threads: ctx.threads,
      share: this.fp16Share,
      maxMib: this.fp16MaxMib,
      outputs: ANSWER_OUTPUTS[input.stage],
      form: ORT_INT4_FORM,
      onProgress: (d, t) => ctx.onProgress?.('sensitivity', d, t),
    }).run();
    const awq = int4.awq.filter((a) => plan.selection.groups.has(a.activation)); // the groups still INT4
    const rewrite = new Int4Rewrite(input.model, plan, input.stage);
    const ort = rewrite.write(ORT_INT4_FORM, { headsFp16: true });
    const trt = toFloat16(rewrite.write('dq', { headsFp16: false }).model, input.stage);
    const r = ort.report;
    const blocks = [...new Set(r.weights.map((w) => w.block))].join('/');
    const scaled = awq.filter((a) => a.alpha > 0);
    const heads = r.heads.map((h) => `${h.name} fp16`).join(', ');
    const skipped = selection.skipped.length
      ? `; ${selection.skipped.length} MatMuls left float (${selection.skipped.map((s) => s.why).join('; ')})`
      : '';
    const alphas = scaled.length ? `, alpha ${scaled.map((a) => a.alpha).join('/')}` : '';
    const gptq = awq.filter((a) => a.gptq).length;
    const size = (b: number) => (b < 2 ** 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
    const groups = kept.map(
      (k) => `${k.activation} (${k.matmuls} MatMul${k.matmuls > 1 ? 's' : ''}, +${size(k.extraBytes)})`,
    );
    const sensitive = kept.length ? `; fp16 where INT4 moved the output most: ${groups.join(', ')}` : '';
    return {
      builds: [
        { bytes: encodeModel(ort.model), dialect: 'onnxruntime' },
        { bytes: encodeModel(trt.model), dialect: 'tensorrt' },
      ],
      summary:
        `${r.weights.length} MatMuls INT4 (block ${blocks}; AWQ scales on ${scaled.length} of ${awq.length} inputs` +
        `${alphas}; GPTQ on ${gptq} of ${awq.length}), ${heads || 'no output head'}${sensitive}${skipped}`,
      weightBytesBefore: [...r.weights, ...r.heads, ...r.kept].reduce((n, w) => n + w.bytesBefore, 0),
      weightBytesAfter: [...r.weights, ...r.heads, ...r.kept].reduce((n, w) => n + w.bytesAfter, 0),
    };
  }
}

export function recipeFor(
  precision: BuildPrecision,
  o: { minElements?: number; weightBits?: 7 | 8; blockSize?: number; fp16Share?: number; fp16MaxMib?: number },
): Recipe {
  if (precision === 'int8') return new Int8Recipe(o);
  if (precision === 'fp16') return new Fp16Recipe();
  return new Int4wRecipe(o);
}
