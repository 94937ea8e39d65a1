/** Synthetic test images (normalised NCHW in [-1, 1]) with seeded content. */
import { Rng } from '../../tools/export/onnx/random.js';

export function flatImage(size: number, rgb: [number, number, number] = [0.2, -0.4, 0.6]): Float32Array {
  const px = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++) px.fill(rgb[c]!, c * size * size, (c + 1) * size * size);
  return px;
}

/** `count` random axis-aligned rectangles and discs of random colours over a random background. */
export function shapesImage(size: number, count: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const col = () => [rng.next() * 2 - 1, rng.next() * 2 - 1, rng.next() * 2 - 1];
  const px = flatImage(size, col() as [number, number, number]);
  for (let s = 0; s < count; s++) {
    const c = col();
    const cx = rng.next() * size;
    const cy = rng.next() * size;
    const r = (0.08 + rng.next() * 0.2) * size;
    const disc = rng.next() < 0.5;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const inside = disc
          ? (x - cx) ** 2 + (y - cy) ** 2 < r * r
          : Math.abs(x - cx) < r && Math.abs(y - cy) < r * 0.7;
        if (inside) for (let ch = 0; ch < 3; ch++) px[ch * size * size + y * size + x] = c[ch]!;
      }
    }
  }
  return px;
}

/** Uniform per-pixel noise. */
export function noiseImage(size: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: 3 * size * size }, () => rng.next() * 2 - 1);
}
