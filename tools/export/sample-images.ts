/**
 * Encoded sample images with seeded content, for the pipeline's tests and bench/pipeline.ts: a
 * flat colour (few vision tokens) and a busy picture of random shapes (many). Here rather than in
 * test/ so that the bench does not compile a test file into dist.
 */
import sharp from 'sharp';

export async function flatImage(colour = '#3a7', side = 300): Promise<Uint8Array> {
  return new Uint8Array(
    await sharp({ create: { width: side, height: side, channels: 3, background: colour } })
      .png()
      .toBuffer(),
  );
}

/** Random rectangles and circles on white as a JPEG, from a seeded LCG (the same seed gives the same picture). */
export async function busyImage(seed = 5, shapes = 60, width = 300, height = 300): Promise<Uint8Array> {
  let s = seed;
  const rnd = () => (s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  let body = '';
  for (let i = 0; i < shapes; i++) {
    const c = `rgb(${Math.floor(rnd() * 255)},${Math.floor(rnd() * 255)},${Math.floor(rnd() * 255)})`;
    body +=
      rnd() < 0.5
        ? `<rect x="${rnd() * width}" y="${rnd() * height}" width="${20 + rnd() * 80}" height="${20 + rnd() * 80}" fill="${c}"/>`
        : `<circle cx="${rnd() * width}" cy="${rnd() * height}" r="${10 + rnd() * 40}" fill="${c}"/>`;
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"><rect width="${width}" height="${height}" fill="white"/>${body}</svg>`;
  return new Uint8Array(await sharp(Buffer.from(svg)).jpeg({ quality: 90 }).toBuffer());
}
