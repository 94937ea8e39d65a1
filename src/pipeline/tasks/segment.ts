/**
 * segment: the mask decoder over the (position-encoded) patch features, the merger's vision tokens
 * and the LLM hidden state at a `<target>` position (the referring query): one mask per vision
 * token and the referring mask, each upsampled to the original image and written as PNG.
 */
import { tensor } from '../../engine/backend.js';
import { patchGrid, type Architecture } from '../../engine/contract.js';
import type { Geometry } from '../preprocess.js';
import type { GatedStage, RequestContext } from '../scheduler.js';
import { timed } from '../scheduler.js';
import type { VisionTokens } from '../vision.js';
import { maskPng } from '../visualize.js';

export interface MaskPicture {
  index: number;
  referring: boolean;
  png: Uint8Array;
  width: number;
  height: number;
}

export async function segmentMasks(
  a: Architecture,
  maskDecoder: GatedStage,
  vision: VisionTokens,
  prompt: Float32Array,
  geometry: Geometry,
  ctx: RequestContext,
): Promise<MaskPicture[]> {
  const G = patchGrid(a);
  const L = vision.count;
  const out = await maskDecoder.run(ctx, {
    features: tensor('float32', vision.features, [1, G * G, a.encoder.width]),
    tokens: tensor('float32', vision.tokens, [1, L, a.merger.tokenWidth]),
    prompt: tensor('float32', prompt, [1, 1, a.llm.hidden]),
  });
  const tokenMasks = out.token_masks!.data as Float32Array;
  const referring = out.referring_mask!.data as Float32Array;
  const coverage = (G * a.image.patch) / a.image.size;
  return timed(ctx, 'png', async () => {
    const pics: MaskPicture[] = [];
    // The referring mask first: it is the answer; the token masks explain it.
    pics.push({ index: 0, referring: true, ...(await maskPng(referring, 0, G, geometry, coverage)) });
    for (let l = 0; l < L; l++)
      pics.push({ index: l, referring: false, ...(await maskPng(tokenMasks, l * G * G, G, geometry, coverage)) });
    return pics;
  });
}
