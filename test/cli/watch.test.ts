/**
 * `setokim watch` on the `tiny` set with videos made by the Debian ffmpeg: JSON events (token ids,
 * answers, the end with its counts), the latest token-mask picture on disk, the human output, and
 * one clear error line with its exit status for sources that do not work.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import t from 'tap';
import { runCli } from '../helpers/cli.js';
import { MOVING, makeTestVideos, type TestVideos } from '../helpers/videos.js';
import { tinySet } from '../pipeline/fixtures.js';

/** What the checks read of a `watch --json` line. */
interface JsonLine {
  type: string;
  frame: number;
  count: number;
  ids: number[];
  trigger?: string;
  file?: string;
}

let models: string;
let videos: TestVideos;
let work: string;
t.before(async () => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  models = set.dir;
  videos = await makeTestVideos({ seconds: 1 });
  t.teardown(videos.cleanup);
  work = await mkdtemp(path.join(tmpdir(), 'setokim-watch-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
});

t.test('--json: one event per line, token ids, answers, the picture, ends with the file', async (t) => {
  const out = path.join(work, 'latest.png');
  const r = await runCli([
    'watch',
    '--models',
    models,
    '--source',
    videos.moving,
    '--prompt',
    'What moves?',
    '--no-realtime',
    '--max-tokens',
    '3',
    '--json',
    '--out',
    out,
    '--mask-every',
    '0',
    '--no-verify',
  ]);
  t.equal(r.status, 0, r.err);
  const events = r.out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as JsonLine);
  t.equal(events[0]!.type, 'started');
  const end = events.at(-1)!;
  t.match(end, {
    type: 'ended',
    reason: 'source-ended',
    stats: { received: (MOVING.stillS + MOVING.moveS + MOVING.endS) * MOVING.fps, dropped: 0 },
    file: out,
  });
  const tokens = events.filter((e) => e.type === 'tokens');
  t.ok(tokens.length >= 5, `${tokens.length} token events`);
  for (const e of tokens) {
    t.ok(Array.isArray(e.ids) && e.ids.length === e.count, 'token events carry their ids');
    t.equal(e.file, out, 'each wrote the picture');
    t.notOk('maskPng' in e, 'no bytes in the JSON');
  }
  t.ok(
    tokens.slice(1).every((e) => e.frame > 10 && e.frame <= 20),
    'token changes only while the object moves',
  );
  const answers = events.filter((e) => e.type === 'answer');
  t.ok(answers.length >= 2 && answers[0]!.trigger === 'first');
  t.equal((await sharp(out).metadata()).width, 448, 'the latest token-mask picture');
});

t.test('human output: token changes on stderr, answers on stdout, a summary', async (t) => {
  const r = await runCli([
    'watch',
    '--models',
    models,
    '--source',
    videos.moving,
    '--prompt',
    'What moves?',
    '--no-realtime',
    '--max-tokens',
    '2',
    '--out',
    path.join(work, 'h.png'),
    '--no-verify',
  ]);
  t.equal(r.status, 0, r.err);
  t.match(r.err, /\[watching .*moving\.mkv through ffmpeg, 224x224 frames\]/);
  t.match(r.err, /\[frame 0: \d+ tokens \(\+\d+ -0\), 256 patches relabelled in rows 0-15, columns 0-15, \d+ ms\]/);
  t.match(r.err, /\[frame 1\d: \d+ tokens .* in rows [5-9]-[5-9]/);
  t.match(r.out, /^\[answer 1\] /);
  t.match(
    r.err,
    new RegExp(
      String.raw`\[source-ended: 30 frames \(\d+ processed, \d+ unchanged, 0 dropped, 0 failed\), ` +
        String.raw`0 restarts, \d+ answers; wrote .*h\.png\]`,
    ),
  );
});

t.test('sources that do not work: one coded line, exit 2', async (t) => {
  const cases: [string[], RegExp][] = [
    [['--source', path.join(work, 'missing.mp4')], /\[SOURCE_UNAVAILABLE\]: video source .*missing\.mp4/],
    [['--source', videos.notVideo], /\[SOURCE_NOT_VIDEO\]: video source .*notes\.mp4.*give a video file/],
    [['--source', videos.moving, '--size', '8x8'], /\[FRAME_SIZE\]: a 8x8 frame is smaller than one 14 x 14 patch/],
    [['--source', videos.moving, '--size', 'big'], /\[BAD_ARGUMENT\]: .*--size.*WIDTHxHEIGHT/],
    [['--source', 'ftp://host/x.mp4'], /\[BAD_ARGUMENT\]: unsupported source scheme/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(['watch', '--models', models, '--no-verify', '--out', path.join(work, 'e.png'), ...args]);
    t.equal(r.status, 2, args.join(' '));
    t.match(r.err, message);
  }
});
