import t from 'tap';
import sharp from 'sharp';
import { preprocess, probeImage } from '../../src/pipeline/preprocess.js';
import { SetokimError } from '../../src/errors.js';

const spec = { size: 28, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } as const;

const solid = (w: number, h: number, rgb: [number, number, number], fmt: 'png' | 'jpeg' | 'webp' = 'png') => {
  const image = sharp({
    create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } },
  });
  return image[fmt]({ quality: 100, lossless: fmt === 'webp' } as never).toBuffer();
};

const code = async (p: Promise<unknown>) => {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return err instanceof SetokimError ? err.code : 'other';
  }
};

t.test('a white PNG normalises to +1 everywhere, black to -1, NCHW of the model size', async (t) => {
  const white = await preprocess(await solid(40, 40, [255, 255, 255]), spec);
  t.equal(white.pixels.length, 3 * 28 * 28);
  t.ok(white.pixels.every((v) => Math.abs(v - 1) < 1e-6));
  const black = await preprocess(await solid(40, 40, [0, 0, 0], 'jpeg'), spec);
  t.ok(black.pixels.every((v) => Math.abs(v + 1) < 0.02));
});

t.test('the channel order is R, G, B planes', async (t) => {
  const red = await preprocess(await solid(16, 16, [255, 0, 0], 'webp'), spec);
  const plane = 28 * 28;
  t.ok(Math.abs(red.pixels[0]! - 1) < 1e-6, 'R plane is +1');
  t.ok(Math.abs(red.pixels[plane]! + 1) < 1e-6, 'G plane is -1');
  t.ok(Math.abs(red.pixels[2 * plane]! + 1) < 1e-6, 'B plane is -1');
});

t.test('a wide image is padded top and bottom with the mean colour (0 after normalising)', async (t) => {
  const p = await preprocess(await solid(80, 20, [255, 255, 255]), spec);
  t.same(p.geometry, { width: 80, height: 20, side: 80, left: 0, top: 30 });
  t.same(p.box, { left: 0, top: 10, width: 28, height: 7 }, 'the image region in model pixels');
  const at = (r: number, c: number) => p.pixels[r * 28 + c]!;
  t.ok(Math.abs(at(0, 14)) < 0.01, 'top row is padding');
  t.ok(Math.abs(at(27, 14)) < 0.01, 'bottom row is padding');
  t.ok(Math.abs(at(14, 14) - 1) < 1e-6, 'centre is the image');
});

t.test('EXIF orientation is applied: a 40x20 image tagged 6 (90 degrees) is 20x40', async (t) => {
  const bytes = await sharp({ create: { width: 40, height: 20, channels: 3, background: '#fff' } })
    .withMetadata({ orientation: 6 })
    .jpeg()
    .toBuffer();
  const g = await probeImage(bytes);
  t.equal(g.width, 20);
  t.equal(g.height, 40);
  const p = await preprocess(bytes, spec);
  t.ok(Math.abs(p.pixels[14 * 28 + 0]!) < 0.02, 'left column is padding after rotation');
  t.ok(p.pixels[14 * 28 + 14]! > 0.9, 'centre is the white image');
});

t.test('broken, empty, unsupported and oversized images are BAD_IMAGE', async (t) => {
  t.equal(await code(preprocess(new Uint8Array(0), spec)), 'BAD_IMAGE', 'empty');
  t.equal(await code(preprocess(new TextEncoder().encode('not an image at all'), spec)), 'BAD_IMAGE', 'garbage');
  const png = await solid(64, 64, [10, 20, 30]);
  t.equal(await code(preprocess(png.subarray(0, 40), spec)), 'BAD_IMAGE', 'truncated PNG');
  const gif = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#123' } })
    .gif()
    .toBuffer();
  t.equal(await code(preprocess(gif, spec)), 'BAD_IMAGE', 'GIF is not supported');
  t.equal(
    await code(preprocess(png, spec, { maxBytes: 1 << 20, maxSide: 32, maxPixels: 1e6 })),
    'BAD_IMAGE',
    'oversized',
  );
  try {
    await preprocess(new Uint8Array(0), spec);
  } catch (err) {
    t.match((err as Error).message, /empty/);
  }
});
