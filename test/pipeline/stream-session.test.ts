/**
 * Streams through the real `tiny` pipeline (ONNX Runtime) from videos made by the Debian ffmpeg:
 * token ids stay as they were on still frames and change only where the object moves; answers to
 * the standing prompt come on the first frame and on changes, through Pipeline.run with the
 * frame's vision tokens; frames are dropped (and counted) under a slow pipeline; a killed tool is
 * restarted; memory stays flat over thousands of frames.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import sharp from 'sharp';
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import { FrameSource } from '../../src/media/index.js';
import { createPipeline, type LocalPipeline } from '../../src/pipeline/index.js';
import {
  FrameVision,
  StreamSession,
  checkFrameSize,
  meanColour,
  type StreamEvent,
} from '../../src/pipeline/stream/index.js';
import { MOVING, makeTestVideos, type TestVideos } from '../helpers/videos.js';
import { collect, tinySet } from './fixtures.js';

type Ev<K extends StreamEvent['type']> = Extract<StreamEvent, { type: K }>;
const of = <K extends StreamEvent['type']>(events: StreamEvent[], type: K) =>
  events.filter((e): e is Ev<K> => e.type === type);

let p: LocalPipeline;
let videos: TestVideos;
let S: number;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  p = await createPipeline({ modelsDir: set.dir, threads: 1, maxInFlight: 2 });
  t.teardown(() => p.close());
  videos = await makeTestVideos({ seconds: 2 });
  t.teardown(videos.cleanup);
  S = p.models.arch.image.size;
});

function source(file: string, o: Partial<ConstructorParameters<typeof FrameSource>[0]> = {}): FrameSource {
  return new FrameSource({
    source: file,
    size: { width: S, height: S },
    realtime: false,
    pad: meanColour(p.models.arch),
    ...o,
  });
}

async function run(session: StreamSession): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  session.on('event', (e) => events.push(e));
  await session.run();
  return events;
}

t.test('a moving object on a still background: ids stay, tokens change only where it moves', async (t) => {
  const session = new StreamSession({
    pipeline: p,
    source: source(videos.moving),
    prompt: 'What moves?',
    generation: { maxTokens: 4 },
    maskEveryMs: 0,
  });
  const events = await run(session);
  const tokens = of(events, 'tokens');
  const end = of(events, 'ended')[0]!;
  const frames = (MOVING.stillS + MOVING.moveS + MOVING.endS) * MOVING.fps;
  t.match(end, { reason: 'source-ended', stats: { received: frames, delivered: frames, dropped: 0, failed: 0 } });
  // The object moves from frame 10 (t = 1 s) to frame 20: still frames run nothing.
  t.equal(end.stats.processed + end.stats.unchanged, frames);
  t.ok(end.stats.unchanged >= 18, `still frames skipped: ${end.stats.unchanged}`);
  t.same(
    tokens.map((e) => e.frame).filter((f) => f > 0 && (f <= 10 || f > 20)),
    [],
    'no token event on a still frame',
  );
  t.equal(tokens[0]!.frame, 0);
  t.same(tokens[0]!.added, tokens[0]!.ids, 'the first frame adds every token');
  // Background tokens: those of frame 0 whose patches lie outside the object's rows (6-9) keep their ids.
  const grid = 16;
  const rows = [Math.floor(MOVING.y / 14), Math.floor((MOVING.y + MOVING.object - 1) / 14)];
  const moving = tokens.slice(1);
  t.ok(moving.length >= 5, `${moving.length} token events while it moves`);
  for (const e of moving) {
    t.ok(
      e.region && e.region.row0 >= rows[0]! - 1 && e.region.row1 <= rows[1]! + 1,
      `frame ${e.frame}: relabelled rows ${e.region?.row0}-${e.region?.row1} around the object (${rows.join('-')})`,
    );
    const cols = [
      Math.floor(MOVING.x0 / 14) - 1,
      Math.ceil((MOVING.x0 + MOVING.speed * MOVING.moveS + MOVING.object) / 14),
    ];
    t.ok(
      e.region!.col0 >= cols[0]! && e.region!.col1 <= cols[1]!,
      `frame ${e.frame}: columns ${e.region!.col0}-${e.region!.col1} on its path`,
    );
    t.ok(e.relabelled <= 4 * 6 + 8, `frame ${e.frame}: ${e.relabelled} patches relabelled of ${grid * grid}`);
    t.ok(e.changedPatches < 32, `frame ${e.frame}: ${e.changedPatches} patches re-encoded`);
    t.ok(e.kept.length >= 2, 'the background keeps its tokens');
  }
  const background = tokens[0]!.ids.filter((id) => moving.every((e) => e.kept.includes(id)));
  t.ok(background.length >= 2, `background ids ${background} kept in every event`);
  // Answers: the first frame, then changes, through the normal query path with the frame's tokens.
  const answers = of(events, 'answer');
  t.ok(answers.length >= 2, `${answers.length} answers`);
  t.match(answers[0], { answer: 1, frame: 0, trigger: 'first', generatedTokens: 4 });
  t.ok(answers.slice(1).every((a) => a.trigger === 'change' && a.frame > 10));
  t.ok(
    answers.every(
      (a) =>
        a.visionTokens >= 1 &&
        a.text ===
          of(events, 'text')
            .filter((x) => x.answer === a.answer)
            .map((x) => x.delta)
            .join(''),
    ),
  );
  t.equal(end.stats.answers, answers.length);
  t.equal(p.kv.used, p.kv.cached, 'every answer released its KV cache (prefix-cache holds aside)');
  const png = await sharp(end.maskPng!).metadata();
  t.same([png.format, png.width], ['png', 448], 'the latest token-mask picture');
  t.ok(tokens[0]!.maskPng, 'masks on token events');
});

t.test('testsrc: a frame repeated at the source (still) runs nothing and keeps every id', async (t) => {
  // --fps 20 over a 10 fps video: every frame twice, the second identical to the first.
  const session = new StreamSession({ pipeline: p, source: source(videos.testsrc, { fps: 20 }) });
  const events = await run(session);
  const end = of(events, 'ended')[0]!;
  t.equal(end.stats.received, 40);
  t.ok(end.stats.unchanged >= 19, `${end.stats.unchanged} repeated frames ran nothing`);
  const tokens = of(events, 'tokens');
  t.ok(tokens.length >= 2 && tokens.every((e) => e.frame % 2 === 0), 'token events only on new pictures');
});

t.test("RunOptions.vision: an ask on a frame's tokens needs no image and skips the image path", async (t) => {
  const src = source(videos.moving);
  src.start();
  const frame = (await src.next())!;
  const vision = new FrameVision(p.models);
  const tokens = (await vision.process(frame, new AbortController().signal))!;
  await src.stop();
  vision.close();
  const ev = await collect(
    p.run({ id: 'v', task: 'ask', prompt: 'hi', generation: { maxTokens: 3 } }, { vision: tokens.vision }),
  );
  t.same(
    ev.map((e) => e.type).filter((x, i, a) => a[i - 1] !== x),
    ['accepted', 'text', 'done'],
  );
  const done = ev.at(-1) as Extract<(typeof ev)[number], { type: 'done' }>;
  t.equal(done.visionTokens, tokens.vision.count);
  t.equal(done.stages.encoder, undefined, 'no encoder run');
  const refused = await collect(p.run({ id: 's', task: 'segment', prompt: 'x' }, { vision: tokens.vision }));
  t.match(refused.at(-1), { type: 'error', code: ErrorCodes.BAD_ARGUMENT, message: /serve 'ask' and 'describe'/ });

  // The prefix cache keys a frame's tokens by their embeddings: the same tokens again prefill only the question.
  type Done = Extract<(typeof ev)[number], { type: 'done' }>;
  const ask = async (id: string, v: typeof tokens.vision) => {
    const events = await collect(p.run({ id, task: 'ask', prompt: 'hi', generation: { maxTokens: 3 } }, { vision: v }));
    const text = events.flatMap((e) => (e.type === 'text' ? [e.delta] : [])).join('');
    return { text, done: events.at(-1) as Done };
  };
  const hitsBefore = p.cacheStats().prefix.hits;
  const again = await ask('v2', tokens.vision);
  t.equal(p.cacheStats().prefix.hits, hitsBefore + 1, 'a prefix-cache hit');
  t.ok(again.done.cachedTokens! > tokens.vision.count, `${again.done.cachedTokens} rows from the prefix cache`);
  t.equal(again.done.promptTokens, done.promptTokens);
  t.equal(again.text, ev.flatMap((e) => (e.type === 'text' ? [e.delta] : [])).join(''), 'the same answer');
  const embeds = Float32Array.from(tokens.vision.embeds, (x, i) => (i === 0 ? x + 1 : x));
  const other = await ask('v3', { ...tokens.vision, embeds });
  t.equal(other.done.cachedTokens, 0, 'other tokens: no cached rows');
  const inConversation = await collect(
    p.run({ id: 'c', task: 'ask', prompt: 'x', conversation: 'frames' }, { vision: tokens.vision }),
  );
  t.match(inConversation.at(-1), { type: 'error', code: ErrorCodes.BAD_ARGUMENT, message: /in a conversation/ });
});

t.test('an artificially slow pipeline drops frames at the source and counts them', async (t) => {
  const session = new StreamSession({
    pipeline: p,
    source: source(videos.testsrc, { realtime: true, fps: 10 }),
    onFrame: () => sleep(300),
  });
  const events = await run(session);
  const { stats } = of(events, 'ended')[0]!;
  t.equal(stats.received, 20);
  t.ok(stats.dropped >= 10, `dropped ${stats.dropped}`);
  t.equal(stats.received, stats.delivered + stats.dropped, 'no frame waits in a queue');
  t.equal(stats.processed + stats.unchanged + stats.failed, stats.delivered);
});

t.test('a source killed mid-stream is restarted and reported; the stream goes on', async (t) => {
  const src = new FrameSource({
    source: 'test://ball',
    size: { width: S, height: S },
    fps: 10,
    restart: { minDelayMs: 50 },
  });
  const session = new StreamSession({ pipeline: p, source: src });
  const events: StreamEvent[] = [];
  let killed = false;
  session.on('event', (e) => {
    events.push(e);
    if (e.type === 'tokens' && !killed) {
      killed = true;
      process.kill(src.pid!, 'SIGKILL');
    }
    if (e.type === 'tokens' && src.stats.restarts > 0 && e.frame > 3) session.stop();
  });
  const end = await session.run();
  t.match(of(events, 'source')[0], { state: 'restarting', attempt: 1, reason: /SIGKILL/ });
  t.equal(end.reason, 'stopped');
  t.equal(end.stats.restarts, 1);
});

t.test('a frame size the encoder cannot take is FRAME_SIZE, before anything starts', async (t) => {
  t.throws(() => checkFrameSize(p.models.arch, 8, 8), {
    code: ErrorCodes.FRAME_SIZE,
    message: /smaller than one 14 x 14 patch.*224x224/,
  });
  t.throws(() => checkFrameSize(p.models.arch, 9000, 10), { code: ErrorCodes.FRAME_SIZE, message: /over the limit/ });
  checkFrameSize(p.models.arch, 640, 360);
  t.throws(() => new StreamSession({ pipeline: p, source: source(videos.moving, { size: { width: 8, height: 8 } }) }), {
    code: ErrorCodes.FRAME_SIZE,
  });
  // Other sizes are padded and resized to the encoder's (as an image query's preprocessing).
  const session = new StreamSession({
    pipeline: p,
    source: source(videos.moving, { size: { width: 96, height: 64 } }),
  });
  const end = (await run(session)).at(-1) as Ev<'ended'>;
  t.match(end, { reason: 'source-ended', stats: { failed: 0 } });
  t.ok(end.stats.processed >= 1);
});

t.test('memory stays flat over thousands of frames', async (t) => {
  // 2000 frames: the object jumps every 2 s (20 frames), still in between.
  const file = path.join(videos.dir, 'long.mkv');
  await promisify(execFile)('ffmpeg', [
    '-hide_banner',
    '-loglevel',
    'error',
    '-y',
    '-f',
    'lavfi',
    '-i',
    'color=c=0x405878:size=112x112:rate=10',
    '-f',
    'lavfi',
    '-i',
    'color=c=0xf0d020:size=24x24:rate=10',
    '-filter_complex',
    "[0][1]overlay=x='10+20*mod(floor(t/2),4)':y=40:shortest=1",
    '-t',
    '200',
    '-c:v',
    'ffv1',
    file,
  ]);
  const session = new StreamSession({ pipeline: p, source: source(file) });
  const rss: number[] = [];
  let frames = 0;
  session.on('event', (e) => {
    if (e.type === 'tokens' && ++frames % 10 === 0) rss.push(process.memoryUsage().rss);
  });
  const end = await session.run();
  t.equal(end.stats.received, 2000);
  t.ok(
    end.stats.processed >= 95 && end.stats.unchanged >= 1850,
    `processed ${end.stats.processed}, still ${end.stats.unchanged}`,
  );
  const mb = (b: number) => (b / 2 ** 20).toFixed(1);
  const settled = rss.slice(2); // after the first ~30 processed frames
  const growth = settled.at(-1)! - Math.min(...settled.slice(0, 3));
  t.ok(rss.length >= 8, `${rss.length} samples`);
  t.ok(
    growth < 24 * 2 ** 20,
    `RSS ${mb(settled[0]!)} -> ${mb(settled.at(-1)!)} MB over ${end.stats.received} frames (growth ${mb(growth)} MB)`,
  );
});
