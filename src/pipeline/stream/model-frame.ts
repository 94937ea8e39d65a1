/**
 * A source frame as the encoder's input: S x S RGB. A source asked for S x S frames (the default:
 * the media tool scales and pads) is used as it is; any other size is padded to a square with the
 * model's mean colour and resized here (sharp), as an image query's preprocessing would, at the
 * cost of a resize per frame. Sizes the encoder cannot take are FRAME_SIZE.
 */
import sharp from 'sharp';
import type { Architecture } from '../../engine/contract.js';
import { ErrorCodes, SetokimError } from '../../errors.js';
import type { Frame } from '../../media/frames.js';
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from '../preprocess.js';

/** The mean colour as 0-255 RGB: the padding of a letterboxed frame. */
export function meanColour(a: Architecture): [number, number, number] {
  return a.image.mean.map((m) => Math.round(m * 255)) as [number, number, number];
}

/** Throws FRAME_SIZE unless frames of width x height can become encoder input. */
export function checkFrameSize(
  a: Architecture,
  width: number,
  height: number,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
): void {
  const p = a.image.patch;
  const problem =
    !Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1
      ? 'is not a size'
      : Math.max(width, height) < p
        ? `is smaller than one ${p} x ${p} patch`
        : Math.max(width, height) > limits.maxSide || width * height > limits.maxPixels
          ? `is over the limit (${limits.maxSide} px a side, ${limits.maxPixels} pixels)`
          : undefined;
  if (problem) {
    throw new SetokimError(
      ErrorCodes.FRAME_SIZE,
      `a ${width}x${height} frame ${problem}; ` +
        `this model set's encoder takes ${a.image.size}x${a.image.size} (the default --size)`,
    );
  }
}

/**
 * The frame's pixels at the model's size, S x S RGB: the source's own buffer when it is that size
 * already (valid until the source's next frame: copy what is kept), else a padded, resized copy.
 */
export async function modelRgb(a: Architecture, f: Frame): Promise<Uint8Array> {
  const S = a.image.size;
  if (f.rgb.byteLength !== f.width * f.height * 3) {
    throw new SetokimError(
      ErrorCodes.FRAME_SIZE,
      `a frame of ${f.rgb.byteLength} bytes is not ${f.width}x${f.height} RGB (${f.width * f.height * 3} bytes)`,
    );
  }
  if (f.width === S && f.height === S) return f.rgb;
  const side = Math.max(f.width, f.height);
  const [r, g, b] = meanColour(a);
  const left = Math.floor((side - f.width) / 2);
  const top = Math.floor((side - f.height) / 2);
  const raw = await sharp(f.rgb, { raw: { width: f.width, height: f.height, channels: 3 } })
    .extend({ left, top, right: side - f.width - left, bottom: side - f.height - top, background: { r, g, b } })
    .resize(S, S, { fit: 'fill', kernel: 'cubic' })
    .raw()
    .toBuffer();
  return new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
}
