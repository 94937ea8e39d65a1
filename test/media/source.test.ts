/**
 * FrameSource with the real Debian ffmpeg and GStreamer: frames of the asked size, bounded
 * delivery (drops counted under a slow consumer, none when a file is read at the consumer's pace),
 * a killed tool restarted, a stream that goes away given up with SOURCE_LOST, and the errors of
 * sources that never open.
 */
import { createReadStream } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { FrameSource, type Frame, type SourceEvent } from '../../src/media/index.js';
import { makeTestVideos, type TestVideos } from '../helpers/videos.js';

let videos: TestVideos;
t.before(async () => {
  videos = await makeTestVideos({ seconds: 2 });
});
t.teardown(() => videos.cleanup());

async function drain(src: FrameSource, each?: (f: Frame) => Promise<void> | void): Promise<Frame[]> {
  const out: Frame[] = [];
  for (;;) {
    const f = await src.next();
    if (!f) return out;
    out.push({ ...f, rgb: f.rgb.slice() });
    await each?.(f);
  }
}

function events(src: FrameSource): SourceEvent[] {
  const seen: SourceEvent[] = [];
  src.on('event', (e) => seen.push(e));
  return seen;
}

t.test('a file, read at the consumer pace: every frame, sized by ffmpeg, then the end', async (t) => {
  const src = new FrameSource({ source: videos.testsrc, size: { width: 64, height: 48 }, fps: 5, realtime: false });
  const seen = events(src);
  src.start();
  await src.ready();
  t.equal(src.stats.delivered, 0, 'ready() takes no frame');
  const frames = await drain(src);
  t.equal(frames.length, 10, '2 s at --fps 5');
  t.ok(frames.every((f) => f.width === 64 && f.height === 48 && f.rgb.length === 64 * 48 * 3));
  t.same(
    frames.map((f) => f.index),
    [...Array(10).keys()],
  );
  // testsrc is 160x120 (4:3) into 64x48 (4:3): no padding; its frames differ from one another.
  t.not(Buffer.compare(frames[0]!.rgb, frames[1]!.rgb), 0);
  t.same(src.stats, { received: 10, delivered: 10, dropped: 0, restarts: 0 });
  t.same(
    seen.map((e) => e.type),
    ['started', 'ended'],
  );
  t.equal(await src.next(), undefined, 'stays ended');
});

t.test('stop() while the tool waits on a paused pipe returns (no hang, no leftover process)', async (t) => {
  const src = new FrameSource({ source: videos.testsrc, size: { width: 160, height: 120 }, realtime: false });
  src.start();
  t.ok(await src.next(), 'a frame; the rest of the file waits behind the paused pipe');
  await sleep(200);
  const pid = src.pid!;
  await src.stop();
  t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the tool is gone');
  t.equal(await src.next(), undefined);
});

t.test('letterboxing uses the padding colour at the source', async (t) => {
  const src = new FrameSource({
    source: videos.testsrc,
    size: { width: 64, height: 64 },
    fps: 2,
    realtime: false,
    pad: [10, 200, 30],
  });
  src.start();
  const [first] = await drain(src);
  // 160x120 into 64x64: 64x48 of picture, 8 rows of padding above and below.
  t.same([...first!.rgb.subarray(0, 3)], [10, 200, 30], 'top-left pixel is padding');
  t.same([...first!.rgb.subarray((63 * 64 + 63) * 3, (63 * 64 + 63) * 3 + 3)], [10, 200, 30], 'bottom-right too');
});

t.test('a slow consumer of a real-time source: older frames are dropped and counted, never queued', async (t) => {
  const src = new FrameSource({ source: videos.testsrc, size: { width: 32, height: 24 }, fps: 10 });
  src.start();
  const frames = await drain(src, async () => {
    await sleep(250); // an artificially slow pipeline: 4 frames/s against 10 delivered
  });
  const s = src.stats;
  t.equal(s.received, 20, 'the tool delivered every frame of 2 s at 10 fps');
  t.ok(s.dropped >= 8, `dropped ${s.dropped}`);
  t.equal(s.delivered, frames.length);
  t.equal(s.received, s.delivered + s.dropped, 'each frame was delivered or dropped: nothing waits');
  t.ok(
    frames.every((f, i) => i === 0 || f.index > frames[i - 1]!.index),
    'the newest frame wins',
  );
});

t.test('a tool killed mid-stream is restarted with backoff, and the frames go on', async (t) => {
  const src = new FrameSource({
    source: 'test://ball',
    size: { width: 32, height: 32 },
    fps: 20,
    restart: { minDelayMs: 100 },
  });
  const seen = events(src);
  src.start();
  const first = await src.next();
  t.ok(first, 'frames flow');
  const pid = src.pid!;
  process.kill(pid, 'SIGKILL');
  let after = 0;
  while (after < 5) {
    const f = await src.next();
    if (!f) break;
    if (src.pid !== pid) after++;
  }
  await src.stop();
  t.equal(after, 5, 'frames from the new process');
  const restarting = seen.find((e) => e.type === 'restarting');
  t.match(restarting, { type: 'restarting', attempt: 1, delayMs: 100, reason: /ffmpeg stopped \(signal SIGKILL\)/ });
  t.equal(src.stats.restarts, 1);
  t.same(seen.filter((e) => e.type === 'started').length, 2);
});

t.test('a killed file source resumes where it was, not from the start', async (t) => {
  const src = new FrameSource({
    source: videos.testsrc,
    size: { width: 32, height: 24 },
    fps: 10,
    restart: { minDelayMs: 20 },
  });
  src.start();
  const frames: number[] = [];
  for (;;) {
    const f = await src.next();
    if (!f) break;
    frames.push(f.index);
    if (frames.length === 8) process.kill(src.pid!, 'SIGKILL');
  }
  t.equal(src.stats.restarts, 1);
  t.ok(
    src.stats.received >= 18 && src.stats.received <= 22,
    `about the 20 frames of the file once (${src.stats.received})`,
  );
});

/** An HTTP server that streams a file once, then is gone: a network camera that disappears. */
async function vanishingStream(file: string): Promise<{ url: string; close: () => Promise<void> }> {
  let served = 0;
  const server: Server = createServer((req, res) => {
    if (served++ > 0) {
      req.socket.destroy(); // later connections: refused at the HTTP level
      return;
    }
    res.writeHead(200, { 'content-type': 'video/x-matroska' });
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/cam.mkv`, close: () => new Promise((r) => server.close(() => r())) };
}

t.test('a stream that goes away: restarted, then given up with SOURCE_LOST', async (t) => {
  const cam = await vanishingStream(videos.testsrc);
  t.teardown(cam.close);
  const src = new FrameSource({
    source: cam.url,
    size: { width: 32, height: 24 },
    restart: { attempts: 2, minDelayMs: 30 },
  });
  const seen = events(src);
  src.start();
  const got: Frame[] = [];
  const error = await drain(src, (f) => void got.push(f)).catch((e: unknown) => e);
  t.ok(got.length > 0, `frames flowed first (${got.length})`);
  t.match(error, { code: ErrorCodes.SOURCE_LOST, message: /did not come back after 2 restarts/ });
  t.same(
    seen.filter((e) => e.type === 'restarting').map((e) => (e as { attempt: number }).attempt),
    [1, 2],
  );
  t.match(seen.at(-1), { type: 'failed', code: ErrorCodes.SOURCE_LOST });
});

t.test('sources that never open fail at once with a code (no retries)', async (t) => {
  const cases: [string, string][] = [
    [`${videos.dir}/missing.mp4`, ErrorCodes.SOURCE_UNAVAILABLE],
    [videos.notVideo, ErrorCodes.SOURCE_NOT_VIDEO],
    [videos.audio, ErrorCodes.SOURCE_NOT_VIDEO],
    ['rtsp://127.0.0.1:9/none', ErrorCodes.SOURCE_UNAVAILABLE],
  ];
  for (const [source, code] of cases) {
    const src = new FrameSource({ source, size: { width: 32, height: 32 }, restart: { minDelayMs: 10 } });
    src.start();
    await t.rejects(src.ready(), { code }, 'ready() tells before any frame is asked for');
    const err = await src.next().catch((e: unknown) => e);
    t.match(err, { code, message: /video source / }, `${source.split('/').pop()}: ${code}`);
    t.equal(src.stats.restarts, 0);
  }
});

t.test('a missing media tool is MEDIA_TOOL_MISSING', async (t) => {
  const path = process.env.PATH;
  process.env.PATH = videos.dir; // no ffmpeg there
  t.teardown(() => void (process.env.PATH = path));
  const src = new FrameSource({ source: 'test://ball', size: { width: 32, height: 32 } });
  src.start();
  t.match(await src.next().catch((e: unknown) => e), {
    code: ErrorCodes.MEDIA_TOOL_MISSING,
    message: /ffmpeg is not installed/,
  });
});

t.test('a live source that goes silent is killed and counted as stalled', async (t) => {
  const server = createServer(() => undefined); // accepts and never answers
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  server.on('connection', (s) => t.teardown(() => s.destroy()));
  const src = new FrameSource({
    source: `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`,
    size: { width: 32, height: 32 },
    stallMs: 300,
  });
  src.start();
  t.match(await src.next().catch((e: unknown) => e), {
    code: ErrorCodes.SOURCE_UNAVAILABLE,
    message: /no frame for 300 ms/,
  });
});

t.test('GStreamer: the videotestsrc pipeline runs here and delivers RGB frames', async (t) => {
  const src = new FrameSource({
    source: 'test://ball',
    tool: 'gstreamer',
    size: { width: 48, height: 32 },
    fps: 20,
    jetson: false,
  });
  src.start();
  const frames: Frame[] = [];
  while (frames.length < 4) {
    const f = await src.next();
    if (!f) break;
    frames.push({ ...f, rgb: f.rgb.slice() });
  }
  await src.stop();
  t.equal(frames.length, 4);
  t.ok(frames.every((f) => f.rgb.length === 48 * 32 * 3));
  t.ok(
    frames.some((f) => f.rgb.some((v) => v > 0)),
    'the ball is drawn',
  );
  t.equal(await src.next(), undefined, 'stopped');
});
