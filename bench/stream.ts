/**
 * Stream benchmark, everything measured side by side in one run:
 *  1. ClusterStream against clustering each frame from scratch at SeTok's size (729 x 1152, k 64)
 *     when 1%, 5%, 10% and 50% of the patches change per frame: pushes and from-scratch calls alternate
 *     frame by frame (same load), which of the two goes first alternating too (the first reads a frame
 *     just written), wall and process CPU per frame, and every frame's result compared;
 *  2. end to end through StreamSession (FrameSource -> encoder -> ClusterStream -> merger -> token
 *     events) on the `tiny` and `small` sets, from videos made with ffmpeg: a picture that changes
 *     everywhere on every frame (testsrc, pixel gate off: every stage on every frame) and one object
 *     moving over a still background (the gate on): frames/s, time per stage, and the latency from a
 *     frame's arrival to its token event.
 * Run: npx tsx bench/stream.ts [--frames N] [--configs tiny,small]   (addon built: npm run build:native;
 *      `--configs ''`: part 1 only)
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { FrameSource } from '../src/media/index.js';
import { createPipeline } from '../src/pipeline/index.js';
import { StreamSession, meanColour, type StreamEvent } from '../src/pipeline/stream/index.js';
import { ClusterStream, cluster } from '../src/setok/index.js';
import { plantedFeatures, rng } from '../test/setok/helpers.js';
import { benchSet } from './sets.js';

const { values: args } = parseArgs({
  options: { frames: { type: 'string', default: '24' }, configs: { type: 'string', default: 'tiny,small' } },
});
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const quantile = (xs: number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))]!;
const f = (v: number, d = 2) => v.toFixed(d);

console.log(
  `# stream benchmark: ${os.cpus().length} cores (${os.cpus()[0]?.model}), ` +
    `load ${os.loadavg()[0]!.toFixed(1)}, node ${process.version}`,
);

// 1. ClusterStream vs from scratch.
{
  const n = 729,
    C = 1152;
  const p = { n, dim: C, k: 64, threshold: 0.55, fallback: 64 };
  const frames = Number(args.frames);
  console.log(
    `\n## ClusterStream vs clustering each frame from scratch, ${n} x ${C} (k 64), ` +
      `median of ${frames} frames, alternating`,
  );
  console.log(
    'changed | rows changed | from scratch wall / cpu ms | stream wall / cpu ms | ' +
      'faster: wall (paired) / cpu | identical',
  );
  for (const fraction of [0.01, 0.05, 0.1, 0.5]) {
    const r = rng(5);
    let x = plantedFeatures(27, 27, C, 5, 21, 0.5);
    const stream = new ClusterStream(p, { backend: 'native' });
    await stream.push(x);
    await cluster(x, p);
    const sw: number[] = [],
      sc: number[] = [],
      fw: number[] = [],
      fc: number[] = [],
      paired: number[] = [],
      changed: number[] = [];
    let same = true;
    for (let i = 0; i < frames; i++) {
      x = x.slice(); // a new frame (the previous one is the stream's until its push resolved)
      for (let m = 0; m < Math.round(n * fraction); m++) {
        const row = Math.floor(r() * n);
        for (let c = 0; c < C; c++) x[row * C + c] = x[row * C + c]! + (r() * 2 - 1) * 0.05;
      }
      // Which goes first alternates: the first call reads a frame this thread has just written.
      const timed = async <T>(f: () => Promise<T>): Promise<{ r: T; wall: number; cpu: number }> => {
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        const r = await f();
        const wall = performance.now() - t0;
        const c = process.cpuUsage(c0);
        return { r, wall, cpu: (c.user + c.system) / 1000 };
      };
      const frame = x;
      const pushOnce = () => timed(() => stream.push(frame));
      const scratchOnce = () => timed(() => cluster(frame, p));
      let pushed: Awaited<ReturnType<typeof pushOnce>>, scratch: Awaited<ReturnType<typeof scratchOnce>>;
      if (i % 2 === 0) [pushed, scratch] = [await pushOnce(), await scratchOnce()];
      else [scratch, pushed] = [await scratchOnce(), await pushOnce()];
      const { r: s, wall: sWall } = pushed;
      const { r: full, wall: fWall } = scratch;
      sc.push(pushed.cpu);
      fc.push(scratch.cpu);
      sw.push(sWall);
      fw.push(fWall);
      paired.push(fWall / sWall);
      changed.push(s.changedPatches);
      same &&=
        full.labels.join() === s.labels.join() &&
        full.centers.join() === s.centers.join() &&
        Buffer.compare(Buffer.from(full.scores.buffer), Buffer.from(s.scores.buffer)) === 0;
    }
    stream.close();
    console.log(
      [
        `${fraction * 100}%`.padStart(7),
        String(median(changed)).padStart(12),
        `${f(median(fw)).padStart(12)} / ${f(median(fc)).padStart(6)}`,
        `${f(median(sw)).padStart(10)} / ${f(median(sc)).padStart(6)}`,
        `${f(median(fw) / median(sw))}x (${f(median(paired))}x) / ${f(median(fc) / median(sc))}x`,
        same,
      ].join(' | '),
    );
  }
}

// 2. End to end (`--configs ''` stops after part 1).
const configs = args.configs!.split(',').filter(Boolean) as ('tiny' | 'small')[];
if (configs.length === 0) process.exit(0);
const work = await mkdtemp(path.join(os.tmpdir(), 'setokim-stream-bench-'));
const ffmpeg = (a: string[]) => promisify(execFile)('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...a]);
const everywhere = path.join(work, 'testsrc.mkv');
const moving = path.join(work, 'moving.mkv');
await ffmpeg(['-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10', '-t', '12', '-c:v', 'ffv1', everywhere]);
await ffmpeg([
  '-f',
  'lavfi',
  '-i',
  'color=c=0x405878:size=384x384:rate=10',
  '-f',
  'lavfi',
  '-i',
  'color=c=0xf0d020:size=64x64:rate=10',
  '-filter_complex',
  "[0][1]overlay=x='20+30*t':y=150:shortest=1",
  '-t',
  '10',
  '-c:v',
  'ffv1',
  moving,
]);

/** A run's frame-to-event latency, median and 90th percentile. */
const latency = (r: Run) => `${f(quantile(r.latency, 0.5), 0)} / ${f(quantile(r.latency, 0.9), 0)} ms`;

interface Run {
  frames: number;
  processed: number;
  seconds: number;
  stages: Record<string, number[]>;
  latency: number[];
}

async function session(
  models: string,
  file: string,
  o: { gate: number; frames: number; realtime?: boolean; fps?: number },
): Promise<Run> {
  const pipeline = await createPipeline({ modelsDir: models, maxInFlight: 1, verify: false });
  try {
    const a = pipeline.models.arch;
    const source = new FrameSource({
      source: file,
      size: { width: a.image.size, height: a.image.size },
      realtime: o.realtime ?? false,
      pad: meanColour(a),
      ...(o.fps ? { fps: o.fps } : {}),
    });
    const stages: Record<string, number[]> = {};
    const latency: number[] = [];
    let seen = 0;
    const s = new StreamSession({ pipeline, source, gate: o.gate });
    // Per-stage times from FrameVision, through the session's frames.
    const vision = (
      s as unknown as {
        vision: { process: (...x: unknown[]) => Promise<{ times: Record<string, number> } | undefined> };
      }
    ).vision;
    const process = vision.process.bind(vision);
    vision.process = async (...x) => {
      const r = await process(...x);
      if (r) for (const [k, v] of Object.entries(r.times)) (stages[k] ??= []).push(v);
      return r;
    };
    s.on('event', (e: StreamEvent) => {
      if (e.type === 'tokens') latency.push(e.latencyMs);
      if (e.type === 'tokens' && ++seen === 1) t0 = performance.now(); // from the first (warm) frame on
    });
    let t0 = performance.now();
    let stopAt = 0;
    s.on('event', (e) => {
      if (e.type !== 'tokens' && e.type !== 'started') return;
      if (++stopAt >= o.frames + 1) s.stop();
    });
    const end = await s.run();
    const seconds = (performance.now() - t0) / 1000;
    return {
      frames: end.stats.delivered - 1,
      processed: end.stats.processed - 1,
      seconds,
      stages,
      latency: latency.slice(1),
    };
  } finally {
    await pipeline.close();
  }
}

for (const config of configs) {
  const models = await benchSet(config);
  const frames = config === 'small' ? 8 : 40;
  console.log(`\n## end to end on ${config} (ONNX Runtime CPU, one session per stage), median ms per processed frame`);
  console.log('video | frames | processed | frames/s | encoder | cluster | merger | latency frame -> event p50 / p90');
  for (const [what, file, gate] of [
    ['changes everywhere (testsrc, gate off)', everywhere, -1],
    ['one moving object (gate on)', moving, 2],
  ] as const) {
    const r = await session(models, file, { gate, frames });
    const st = (k: string) => (r.stages[k]?.length ? f(median(r.stages[k]!), 1) : '-');
    console.log(
      [
        what,
        r.frames,
        r.processed,
        f(r.frames / r.seconds, 1),
        st('encoder'),
        st('cluster'),
        st('merger'),
        latency(r),
      ].join(' | '),
    );
  }
  // A live source at 5 fps: frames the pipeline cannot keep up with are dropped, latency stays bounded.
  const live = await session(models, moving, { gate: 2, frames: config === 'small' ? 6 : 20, realtime: true, fps: 5 });
  console.log(
    ['one moving object, read in real time at 5 fps', live.frames, live.processed, f(live.frames / live.seconds, 1)]
      .concat(['', '', '', latency(live)])
      .join(' | '),
  );
}
await rm(work, { recursive: true, force: true });
