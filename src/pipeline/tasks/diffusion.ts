/**
 * Samples vision tokens with the diffusion head: a deterministic DDIM loop (eta = 0) over the
 * config's steps on a cosine schedule, every `<target>` token in one batch, each conditioned on
 * the LLM hidden state at its position. The starting noise comes from the request's seeded PRNG,
 * so the same seed gives the same image.
 */
import { tensor } from '../../engine/backend.js';
import type { Architecture } from '../../engine/contract.js';
import type { Prng } from '../sampler.js';
import type { GatedStage, RequestContext } from '../scheduler.js';
import { throwIfAborted } from '../scheduler.js';

const S = 0.008; // the improved-DDPM cosine offset
const ALPHA_BAR_MIN = 1e-4; // keeps x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) finite at t = 1

/** Cumulative signal level at time t in [0, 1]: 1 at t = 0, ~0 at t = 1. */
export function alphaBar(t: number): number {
  const f = (u: number) => Math.cos(((u + S) / (1 + S)) * (Math.PI / 2)) ** 2;
  return Math.min(1, Math.max(ALPHA_BAR_MIN, f(t) / f(0)));
}

/** cond: one [H] row per token. Returns the tokens [B, D]. */
export async function sampleTokens(
  a: Architecture,
  diffusion: GatedStage,
  cond: readonly Float32Array[],
  rng: Prng,
  ctx: RequestContext,
): Promise<Float32Array> {
  const B = cond.length;
  const D = a.merger.tokenWidth;
  const H = a.llm.hidden;
  const steps = a.diffusion.steps;
  const c = new Float32Array(B * H);
  cond.forEach((row, i) => c.set(row, i * H));
  const x = new Float32Array(B * D);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  const tBuf = new Float32Array(B);
  for (let i = steps; i >= 1; i--) {
    throwIfAborted(ctx.signal);
    const t = i / steps;
    const ab = alphaBar(t);
    const abPrev = i === 1 ? 1 : alphaBar((i - 1) / steps);
    tBuf.fill(t);
    const out = await diffusion.run(ctx, {
      x: tensor('float32', x, [B, D]),
      t: tensor('float32', tBuf, [B]),
      cond: tensor('float32', c, [B, H]),
    });
    const eps = out.eps!.data as Float32Array;
    const sa = Math.sqrt(ab);
    const sn = Math.sqrt(1 - ab);
    const saPrev = Math.sqrt(abPrev);
    const snPrev = Math.sqrt(1 - abPrev);
    for (let j = 0; j < x.length; j++) {
      const x0 = (x[j]! - sn * eps[j]!) / sa;
      x[j] = saPrev * x0 + snPrev * eps[j]!;
    }
  }
  return x;
}
