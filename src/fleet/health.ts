/**
 * The health check after activation: open the set the way serving does (pipeline, ONNX Runtime
 * or TensorRT) and run one canary query that must answer. Deserialising is not enough: a graph
 * can load and still fail on its first run (docs/ENGINES.md: one canary inference before traffic).
 */
import sharp from 'sharp';
import { ErrorCodes, SetokimError } from '../errors.js';
import { createPipeline } from '../pipeline/index.js';

export interface CanaryOptions {
  /** JPEG, PNG or WebP bytes; default: a generated 96x96 gradient. */
  image?: Uint8Array;
  timeoutMs?: number;
  /** Only this backend (as `setokim run --backend`). */
  backend?: string;
}

export interface CanaryResult {
  ms: number;
  visionTokens: number;
  generatedTokens: number;
  backend: string;
}

/** What the install tells its health check: the backend that will serve the set (tensorrt once engines were prepared). */
export interface HealthContext {
  backend?: string;
}

export type HealthCheck = (dir: string, ctx: HealthContext) => Promise<CanaryResult>;

async function defaultImage(): Promise<Uint8Array> {
  const w = 96;
  const px = Buffer.alloc(w * w * 3);
  for (let y = 0; y < w; y++) for (let x = 0; x < w; x++) px.set([x * 2, y * 2, (x + y) % 256], (y * w + x) * 3);
  return new Uint8Array(
    await sharp(px, { raw: { width: w, height: w, channels: 3 } })
      .png()
      .toBuffer(),
  );
}

/** Opens the set in `dir` and asks it to describe one image (4 greedy tokens); throws why it did not answer. */
export async function canaryQuery(dir: string, o: CanaryOptions = {}): Promise<CanaryResult> {
  const t0 = performance.now();
  const image = o.image ?? (await defaultImage());
  const pipeline = await createPipeline({
    modelsDir: dir,
    backend: o.backend,
    maxInFlight: 1,
    maxTokens: 4,
    verify: false,
  });
  const ac = new AbortController();
  const timeoutMs = o.timeoutMs ?? 120_000;
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    for await (const e of pipeline.run(
      { id: 'canary', task: 'describe', image, generation: { maxTokens: 4, temperature: 0 } },
      { signal: ac.signal },
    )) {
      if (e.type === 'error') {
        const why =
          e.code === ErrorCodes.CANCELLED && ac.signal.aborted ? `no answer within ${timeoutMs} ms` : e.message;
        throw new SetokimError(e.code, why);
      }
      if (e.type === 'done') {
        if (e.generatedTokens < 1)
          throw new SetokimError(ErrorCodes.MODEL_INVALID, 'the canary query generated no token');
        return {
          ms: performance.now() - t0,
          visionTokens: e.visionTokens,
          generatedTokens: e.generatedTokens,
          backend: pipeline.info.backend,
        };
      }
    }
    throw new SetokimError(ErrorCodes.INTERNAL, 'the canary query ended without an answer');
  } finally {
    clearTimeout(timer);
    await pipeline.close();
  }
}
