import t from 'tap';
import sharp from 'sharp';
import { imagePng, maskPng, tokenColour, tokenMaskPng } from '../../src/pipeline/visualize.js';

t.test('token colours are distinct for the first tokens', async (t) => {
  const seen = new Set(Array.from({ length: 32 }, (_, i) => tokenColour(i).join()));
  t.equal(seen.size, 32);
});

t.test('the token-mask PNG colours each token and draws borders between tokens', async (t) => {
  const size = 28;
  const grid = 2;
  const rgb = new Uint8Array(size * size * 3).fill(128);
  const labels = [0, 1, 0, 1]; // left column token 0, right column token 1
  const { png, width, height } = await tokenMaskPng(rgb, size, labels, grid, 14);
  t.equal(width, 280, 'scaled by an integer factor to >= 256');
  t.equal(height, 280);
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  t.equal(info.width, 280);
  const px = (x: number, y: number) => Array.from(data.subarray((y * 280 + x) * 3, (y * 280 + x) * 3 + 3));
  const expect = (l: number) => tokenColour(l).map((c) => Math.round(0.45 * 128 + 0.55 * c));
  t.same(px(20, 20), expect(0));
  t.same(px(260, 260), expect(1));
  t.same(px(139, 50), [255, 255, 255], 'border between the columns');
  t.same(px(20, 139), expect(0), 'no border inside one token');
});

t.test('the token-mask PNG can leave out the padding', async (t) => {
  const size = 28;
  const rgb = new Uint8Array(size * size * 3).fill(0);
  const labels = [0, 0, 1, 1]; // top row token 0, bottom row token 1
  const { png, width, height } = await tokenMaskPng(rgb, size, labels, 2, 14, {
    left: 0,
    top: 7,
    width: 28,
    height: 14,
  });
  t.same([width, height], [280, 140]);
  const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const px = (x: number, y: number) => Array.from(data.subarray((y * 280 + x) * 3, (y * 280 + x) * 3 + 3));
  const tint = (l: number) => tokenColour(l).map((c) => Math.round(0.55 * c));
  t.same(px(10, 10), tint(0), 'top of the box is in token 0');
  t.same(px(10, 130), tint(1), 'bottom of the box is in token 1');
  t.same(px(10, 69), [255, 255, 255], 'border at model row 14 (output row 70)');
});

t.test('a mask is upsampled to the original size with the padding cropped', async (t) => {
  // 2x2 grid on a 100x50 image padded to 100x100 (top 25): the top half of the grid is mostly padding.
  const logits = Float32Array.from([-10, -10, 10, 10]);
  const g = { width: 100, height: 50, side: 100, left: 0, top: 25 };
  const { png, width, height } = await maskPng(logits, 0, 2, g);
  t.equal(width, 100);
  t.equal(height, 50);
  t.equal((await sharp(png).metadata()).channels, 1);
  const { data } = await sharp(png).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  t.equal(data.length, 100 * 50);
  t.equal(data[5 * 100 + 50], 0, 'upper part of the image is off');
  t.equal(data[45 * 100 + 50], 255, 'lower part is on');
  t.ok(
    data.every((v) => v === 0 || v === 255),
    'binary',
  );
});

t.test('a grid that covers part of the square extends its last row and column over the rest', async (t) => {
  // 2x2 grid covering the top-left 60% of a 100 px square; only the bottom-right cell is on.
  const logits = Float32Array.from([-10, -10, -10, 10]);
  const g = { width: 100, height: 100, side: 100, left: 0, top: 0 };
  const { png } = await maskPng(logits, 0, 2, g, 0.6);
  const { data } = await sharp(png).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  t.equal(data[10 * 100 + 10], 0, 'top-left off');
  t.equal(data[50 * 100 + 50], 255, 'inside the last cell on');
  t.equal(data[95 * 100 + 95], 255, 'past the grid: the last cell extends');
  t.equal(data[20 * 100 + 95], 0, 'right edge of the first row stays off');
});

t.test('imagePng maps [-1, 1] to [0, 255] per channel', async (t) => {
  const chw = new Float32Array(3 * 4);
  chw.fill(1, 0, 4); // R = 1
  chw.fill(-1, 4, 8); // G = -1
  chw.fill(0, 8, 12); // B = 0
  const { png } = await imagePng(chw, 2);
  const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  t.same(Array.from(data.subarray(0, 3)), [255, 0, 128]);
});
