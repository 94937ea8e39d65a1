/** generate / edit: the `<target>` hidden states -> diffusion head -> detokenizer -> PNG. */
import { tensor } from '../../engine/backend.js';
import type { Architecture } from '../../engine/contract.js';
import type { Prng } from '../sampler.js';
import type { GatedStage, RequestContext } from '../scheduler.js';
import { timed } from '../scheduler.js';
import { imagePng } from '../visualize.js';
import { sampleTokens } from './diffusion.js';

export async function renderImage(
  a: Architecture,
  stages: { diffusion: GatedStage; detokenizer: GatedStage },
  targets: readonly Float32Array[],
  rng: Prng,
  ctx: RequestContext,
): Promise<{ png: Uint8Array; width: number; height: number; tokens: number }> {
  const L = targets.length;
  const tokens = await sampleTokens(a, stages.diffusion, targets, rng, ctx);
  const out = await stages.detokenizer.run(ctx, { tokens: tensor('float32', tokens, [1, L, a.merger.tokenWidth]) });
  const R = a.detokenizer.imageSize;
  const pic = await timed(ctx, 'png', () => imagePng(out.image!.data as Float32Array, R));
  return { ...pic, tokens: L };
}
