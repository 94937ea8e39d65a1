/**
 * Test videos made with the Debian ffmpeg (lossless FFV1 in Matroska, so still regions stay
 * bit-identical from frame to frame): the testsrc pattern, and one object moving over a still
 * background. Written into a temp dir that `cleanup` removes.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function ffmpeg(args: string[]): Promise<void> {
  await run('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args]);
}

export interface MovingObject {
  /** Side of the square frame. */
  size: number;
  /** Side of the square object. */
  object: number;
  fps: number;
  /** Seconds the object stands still at the start, then seconds it moves, then still again. */
  stillS: number;
  moveS: number;
  endS: number;
  /** Pixels per second it moves to the right, on the row `y`. */
  speed: number;
  x0: number;
  y: number;
}

export const MOVING: MovingObject = {
  size: 224,
  object: 48,
  fps: 10,
  stillS: 1,
  moveS: 1,
  endS: 1,
  speed: 60,
  x0: 20,
  y: 88,
};

export interface TestVideos {
  dir: string;
  /** ffmpeg's testsrc pattern (moving counter and gradient), `seconds` long. */
  testsrc: string;
  /** A yellow square on a still blue-grey background: still, moving right, still (MOVING). */
  moving: string;
  /** A text file named like a video. */
  notVideo: string;
  /** Audio only. */
  audio: string;
  cleanup: () => Promise<void>;
}

/** The object's left edge at time t (seconds), as the overlay filter computes it. */
export function objectX(m: MovingObject, t: number): number {
  return m.x0 + m.speed * Math.min(Math.max(t - m.stillS, 0), m.moveS);
}

export async function makeTestVideos(o: { seconds?: number; moving?: MovingObject } = {}): Promise<TestVideos> {
  const dir = await mkdtemp(path.join(tmpdir(), 'setokim-videos-'));
  const seconds = o.seconds ?? 2;
  const m = o.moving ?? MOVING;
  const testsrc = path.join(dir, 'testsrc.mkv');
  const moving = path.join(dir, 'moving.mkv');
  const notVideo = path.join(dir, 'notes.mp4');
  const audio = path.join(dir, 'tone.wav');
  await ffmpeg(['-f', 'lavfi', '-i', `testsrc=size=160x120:rate=10`, '-t', String(seconds), '-c:v', 'ffv1', testsrc]);
  const total = m.stillS + m.moveS + m.endS;
  const x = `${m.x0}+${m.speed}*min(max(t-${m.stillS},0),${m.moveS})`;
  await ffmpeg([
    '-f',
    'lavfi',
    '-i',
    `color=c=0x405878:size=${m.size}x${m.size}:rate=${m.fps}`,
    '-f',
    'lavfi',
    '-i',
    `color=c=0xf0d020:size=${m.object}x${m.object}:rate=${m.fps}`,
    '-filter_complex',
    `[0][1]overlay=x='${x}':y=${m.y}:shortest=1`,
    '-t',
    String(total),
    '-c:v',
    'ffv1',
    moving,
  ]);
  await writeFile(notVideo, 'this is not a video, only text\n'.repeat(100));
  await ffmpeg(['-f', 'lavfi', '-i', 'sine=frequency=440:duration=1', audio]);
  return { dir, testsrc, moving, notVideo, audio, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
