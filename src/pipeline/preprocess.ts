/**
 * Image bytes -> the encoder's input: decode (JPEG, PNG, WebP) with sharp, apply the EXIF
 * orientation, pad to square with the mean colour (SigLIP/LLaVA expand2square), resize to the
 * model's side, normalise with its mean/std into NCHW float32. Every failure is a BAD_IMAGE.
 */
import sharp, { type Metadata } from 'sharp';
import { ErrorCodes, SetokimError } from '../errors.js';

export interface ImageSpec {
  size: number; // square side the encoder expects
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

export interface ImageLimits {
  maxBytes: number;
  maxSide: number; // longest side, after orientation
  maxPixels: number;
}

export const DEFAULT_IMAGE_LIMITS: ImageLimits = { maxBytes: 32 << 20, maxSide: 8192, maxPixels: 40_000_000 };

const FORMATS = new Set(['jpeg', 'png', 'webp']);

/** Where the original image sits inside the padded square (original pixel units). */
export interface Geometry {
  width: number; // oriented original size
  height: number;
  side: number; // max(width, height)
  left: number; // padding before the image in the square
  top: number;
}

export interface Preprocessed {
  pixels: Float32Array; // [1, 3, size, size]
  rgb: Uint8Array; // the padded, resized square as interleaved RGB, size x size (for pictures)
  size: number;
  geometry: Geometry;
  /** The image's region inside the size x size square (model pixels), the rest is padding. */
  box: { left: number; top: number; width: number; height: number };
}

function bad(message: string, cause?: unknown): SetokimError {
  return new SetokimError(ErrorCodes.BAD_IMAGE, message, cause === undefined ? undefined : { cause });
}

/** Reads the header only: format and oriented size, checked against the limits. */
export async function probeImage(bytes: Uint8Array, limits: ImageLimits = DEFAULT_IMAGE_LIMITS): Promise<Geometry> {
  if (bytes.byteLength === 0) throw bad('the image is empty (0 bytes); send JPEG, PNG or WebP bytes');
  if (bytes.byteLength > limits.maxBytes)
    throw bad(`the image is ${bytes.byteLength} bytes, over the ${limits.maxBytes}-byte limit; send a smaller file`);
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw bad(`cannot read the image (${(err as Error).message}); send a valid JPEG, PNG or WebP file`, err);
  }
  if (!meta.format || !FORMATS.has(meta.format))
    throw bad(`unsupported image format '${meta.format ?? 'unknown'}'; send JPEG, PNG or WebP`);
  if (!meta.width || !meta.height) throw bad('the image has no dimensions; send a valid JPEG, PNG or WebP file');
  const swap = (meta.orientation ?? 1) >= 5; // orientations 5..8 turn the image by 90 degrees
  const width = swap ? meta.height : meta.width;
  const height = swap ? meta.width : meta.height;
  if (Math.max(width, height) > limits.maxSide || width * height > limits.maxPixels)
    throw bad(
      `the image is ${width}x${height}, over the limit (${limits.maxSide} px a side, ${limits.maxPixels} pixels); resize it first`,
    );
  const side = Math.max(width, height);
  return { width, height, side, left: Math.floor((side - width) / 2), top: Math.floor((side - height) / 2) };
}

export async function preprocess(
  bytes: Uint8Array,
  spec: ImageSpec,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
): Promise<Preprocessed> {
  const geometry = await probeImage(bytes, limits);
  const S = spec.size;
  const bg = {
    r: Math.round(spec.mean[0] * 255),
    g: Math.round(spec.mean[1] * 255),
    b: Math.round(spec.mean[2] * 255),
  };
  // sharp resizes before it extends, so pad by the scaled amounts: the same as pad-then-resize.
  const scale = S / geometry.side;
  const w = Math.max(1, Math.round(geometry.width * scale));
  const h = Math.max(1, Math.round(geometry.height * scale));
  const left = Math.floor((S - w) / 2);
  const top = Math.floor((S - h) / 2);
  let raw: Buffer;
  try {
    raw = await sharp(bytes, { limitInputPixels: false })
      .rotate()
      .flatten({ background: bg })
      .resize(w, h, { fit: 'fill', kernel: 'cubic' })
      .extend({ left, top, right: S - w - left, bottom: S - h - top, background: bg })
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer();
  } catch (err) {
    throw bad(`cannot decode the image (${(err as Error).message}); the file may be truncated or corrupt`, err);
  }
  if (raw.length !== S * S * 3)
    throw bad(`decoding gave ${raw.length} bytes, expected ${S * S * 3}; the file may be corrupt`);
  const rgb = new Uint8Array(raw.buffer, raw.byteOffset, raw.length);
  return { pixels: normalizePixels(rgb, spec), rgb, size: S, geometry, box: { left, top, width: w, height: h } };
}

/** Interleaved RGB of spec.size x spec.size -> the encoder's NCHW float input (mean/std per channel). */
export function normalizePixels(rgb: Uint8Array, spec: ImageSpec): Float32Array {
  const plane = spec.size * spec.size;
  const pixels = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const m = spec.mean[c]!;
    const inv = 1 / spec.std[c]!;
    const out = c * plane;
    for (let i = 0; i < plane; i++) pixels[out + i] = (rgb[i * 3 + c]! / 255 - m) * inv;
  }
  return pixels;
}
