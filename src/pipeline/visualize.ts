/**
 * Pictures the pipeline emits: the token-mask view (each vision token's patches in one colour over
 * the model's input, with borders between tokens, like the paper's token visualisation), binary
 * masks upsampled from the patch grid to the original image, and RGB images from [-1, 1] tensors.
 */
import sharp from 'sharp';
import type { Geometry } from './preprocess.js';

/** A distinct, deterministic colour per token (golden-ratio hue walk). */
export function tokenColour(index: number): [number, number, number] {
  const h = (index * 0.618033988749895) % 1;
  const s = 0.75;
  const v = 0.95;
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s);
  const q = v * (1 - f * s);
  const t = v * (1 - (1 - f) * s);
  const [r, g, b] = [
    [v, t, p],
    [q, v, p],
    [p, v, t],
    [p, q, v],
    [t, p, v],
    [v, p, q],
  ][i % 6]!;
  return [Math.round(r! * 255), Math.round(g! * 255), Math.round(b! * 255)];
}

/**
 * Token masks over the model input `rgb` (size x size, RGB), cropped to `box` (the image without
 * its padding; default the whole square). labels[n] is the token of patch n on a grid x grid
 * raster of `patch`-pixel patches (pixels past the last whole patch belong to the last one). The
 * picture is scaled by an integer factor so its longer side is at least 256 px.
 */
export async function tokenMaskPng(
  rgb: Uint8Array,
  size: number,
  labels: Int32Array | readonly number[],
  grid: number,
  patch: number,
  box = { left: 0, top: 0, width: size, height: size },
  alpha = 0.55,
): Promise<{ png: Uint8Array; width: number; height: number }> {
  const scale = Math.max(1, Math.ceil(256 / Math.max(box.width, box.height)));
  const W = box.width * scale;
  const H = box.height * scale;
  const out = new Uint8Array(W * H * 3);
  // Model pixel and patch index of every output column and row: the loop below only indexes.
  const mx = Int32Array.from({ length: W }, (_, x) => box.left + Math.floor(x / scale));
  const my = Int32Array.from({ length: H }, (_, y) => box.top + Math.floor(y / scale));
  const col = mx.map((v) => Math.min(grid - 1, Math.floor(v / patch)));
  const row = my.map((v) => Math.min(grid - 1, Math.floor(v / patch)) * grid);
  let maxLabel = 0;
  for (let i = 0; i < grid * grid; i++) maxLabel = Math.max(maxLabel, labels[i]!);
  const colours = Array.from({ length: maxLabel + 1 }, (_, l) => tokenColour(l).map((c) => alpha * c));
  const keep = 1 - alpha;
  for (let y = 0; y < H; y++) {
    const r = row[y]!;
    const below = y + 1 < H ? row[y + 1]! : -1;
    for (let x = 0; x < W; x++) {
      const c = col[x]!;
      const l = labels[r + c]!;
      const border = (x + 1 < W && labels[r + col[x + 1]!] !== l) || (below >= 0 && labels[below + c] !== l);
      const o = (y * W + x) * 3;
      if (border) {
        out[o] = out[o + 1] = out[o + 2] = 255;
        continue;
      }
      const tint = colours[l]!;
      const i = (my[y]! * size + mx[x]!) * 3;
      out[o] = Math.round(keep * rgb[i]! + tint[0]!);
      out[o + 1] = Math.round(keep * rgb[i + 1]! + tint[1]!);
      out[o + 2] = Math.round(keep * rgb[i + 2]! + tint[2]!);
    }
  }
  const png = await sharp(out, { raw: { width: W, height: H, channels: 3 } })
    .png({ compressionLevel: 3 })
    .toBuffer();
  return { png: new Uint8Array(png), width: W, height: H };
}

/**
 * A binary mask PNG (0 / 255, one channel) at the original image size, from grid x grid logits:
 * sigmoid, bilinear upsampling to the padded square, crop the padding, threshold at 0.5.
 * `coverage` is the part of the square side the patch grid covers (grid * patch / size: the
 * encoder drops the pixels past the last whole patch); the last row and column extend over them.
 */
export async function maskPng(
  logits: Float32Array,
  offset: number,
  grid: number,
  geometry: Geometry,
  coverage = 1,
): Promise<{ png: Uint8Array; width: number; height: number }> {
  const prob = new Uint8Array(grid * grid);
  for (let i = 0; i < prob.length; i++) prob[i] = Math.round(255 / (1 + Math.exp(-logits[offset + i]!)));
  // Upsample on the square at a bounded size, then crop and bring to the original size.
  const work = Math.min(geometry.side, 2048);
  const k = work / geometry.side;
  const cw = Math.max(1, Math.min(work, Math.round(geometry.width * k)));
  const ch = Math.max(1, Math.min(work, Math.round(geometry.height * k)));
  const cl = Math.min(work - cw, Math.round(geometry.left * k));
  const ct = Math.min(work - ch, Math.round(geometry.top * k));
  const covered = Math.max(1, Math.min(work, Math.round(work * coverage)));
  const square = await sharp(prob, { raw: { width: grid, height: grid, channels: 1 } })
    .resize(covered, covered, { kernel: 'linear', fit: 'fill' })
    .extend({ right: work - covered, bottom: work - covered, extendWith: 'copy' })
    .toColourspace('b-w') // raw output is sRGB otherwise
    .raw()
    .toBuffer();
  const png = await sharp(square, { raw: { width: work, height: work, channels: 1 } })
    .extract({ left: cl, top: ct, width: cw, height: ch })
    .resize(geometry.width, geometry.height, { kernel: 'nearest', fit: 'fill' })
    .threshold(128)
    .toColourspace('b-w')
    .png()
    .toBuffer();
  return { png: new Uint8Array(png), width: geometry.width, height: geometry.height };
}

/** An RGB PNG from a [1, 3, R, R] image in [-1, 1]. */
export async function imagePng(
  chw: Float32Array,
  side: number,
): Promise<{ png: Uint8Array; width: number; height: number }> {
  const plane = side * side;
  const out = new Uint8Array(plane * 3);
  for (let i = 0; i < plane; i++)
    for (let c = 0; c < 3; c++) {
      const v = chw[c * plane + i]!;
      out[i * 3 + c] = Math.max(0, Math.min(255, Math.round(((Number.isFinite(v) ? v : 0) + 1) * 127.5)));
    }
  const png = await sharp(out, { raw: { width: side, height: side, channels: 3 } })
    .png()
    .toBuffer();
  return { png: new Uint8Array(png), width: side, height: side };
}
