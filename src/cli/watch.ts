/**
 * `setokim watch`: a camera, stream or video file through the pipeline, locally (no broker). Prints
 * the standing prompt's answers as they stream and the token changes as they happen (--json: one
 * JSON event per line, token events with their ids), keeps the latest token-mask picture in a file,
 * and ends when a file ends (Ctrl-C ends a live source). docs/STREAMS.md.
 */
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { FrameSizeSchema, FrameSource, MEDIA_TOOLS } from '../media/index.js';
import { openModelSet } from '../engine/modelset.js';
import { createPipeline } from '../pipeline/index.js';
import { DEFAULT_GATE, StreamSession, checkFrameSize, meanColour, type StreamEvent } from '../pipeline/stream/index.js';
import { generationSettings, modelsSetting, runtimeSettings } from '../pipeline/settings.js';
import { group, parseCommandSettings, registerFlags, setting, type OutputOf } from '../settings.js';

const watchSettings = group({
  models: modelsSetting({ required: true }),
  source: setting({
    schema: z.string().min(1),
    required: true,
    flag: '--source <src>',
    help: 'a video file, a camera (/dev/video0, csi://0), a stream URL (rtsp://, http://) or test://ball',
  }),
  prompt: setting({
    schema: z.string().min(1),
    flag: '--prompt <text>',
    help: 'standing prompt, answered on the first frame and when the scene changes',
  }),
  every: setting({
    schema: z.number().positive(),
    flag: '--every <s>',
    read: 'number',
    help: 'also answer every S seconds',
  }),
  change: setting({
    schema: z.number().min(0).max(1),
    default: 0.25,
    flag: '--change <f>',
    read: 'number',
    help: 'fraction of patches with another token id that counts as a scene change',
  }),
  fps: setting({
    schema: z.number().positive().max(240),
    flag: '--fps <n>',
    read: 'number',
    help: 'frames per second taken from the source (rate-limited by the media tool)',
  }),
  size: setting({
    schema: FrameSizeSchema,
    flag: '--size <WxH>',
    help: "frame size delivered by the source (default: the encoder's input, letterboxed by the tool)",
  }),
  tool: setting({
    schema: z.enum(MEDIA_TOOLS),
    flag: '--tool <tool>',
    help: 'ffmpeg or gstreamer (default: gstreamer for csi://, else ffmpeg)',
  }),
  realtime: setting({
    schema: z.boolean(),
    default: true,
    flag: '--no-realtime',
    help: 'read a file as fast as the pipeline takes it (every frame, none dropped) instead of at its own rate',
  }),
  gate: setting({
    schema: z.number(),
    default: DEFAULT_GATE,
    flag: '--gate <levels>',
    read: 'number',
    help: 'a patch whose pixels changed by at most this (mean, 0-255) keeps its features; < 0: off',
  }),
  out: setting({
    schema: z.string().min(1),
    default: 'watch.tokens.png',
    flag: '--out <png>',
    help: 'the latest token-mask picture',
  }),
  maskEvery: setting({
    schema: z.number().min(0),
    default: 1,
    flag: '--mask-every <s>',
    read: 'number',
    help: 'write the token-mask picture at most every S seconds',
  }),
  json: setting({
    schema: z.boolean(),
    default: false,
    flag: '--json',
    help: 'one JSON event per line (token events with their ids)',
  }),
  maxTokens: generationSettings.maxTokens,
  ...runtimeSettings,
});
type WatchOpts = OutputOf<typeof watchSettings>;

export function registerWatch(program: Command): void {
  const cmd = program
    .command('watch')
    .description(
      'watch a camera, stream or video file: token changes as they happen, ' +
        'a standing prompt answered on scene changes (docs/STREAMS.md)',
    );
  registerFlags(cmd, watchSettings).action(async (raw: Record<string, unknown>) => {
    await watch(parseCommandSettings(watchSettings, raw, 'watch'));
  });
}

/** Replaces `file` whole (a viewer never sees half a picture). */
async function replaceFile(file: string, data: Uint8Array): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}

async function watch(o: WatchOpts): Promise<void> {
  // What can fail fast does, before the model set loads: the source string, the frame size, and
  // whether the source opens at all (its first frame waits for the stream).
  const a = (await openModelSet(path.resolve(o.models), { verify: false })).architecture;
  const size = o.size ?? { width: a.image.size, height: a.image.size };
  checkFrameSize(a, size.width, size.height);
  const source = new FrameSource({
    source: o.source,
    size,
    pad: meanColour(a),
    ...(o.fps ? { fps: o.fps } : {}),
    ...(o.tool ? { tool: o.tool } : {}),
    realtime: o.realtime,
    stallMs: 15_000,
  });
  source.start();
  try {
    await source.ready();
  } catch (err) {
    await source.stop();
    throw err;
  }
  const out = path.resolve(o.out);
  const pipeline = await createPipeline({
    modelsDir: o.models,
    backend: o.backend,
    threads: o.threads,
    maxInFlight: 2,
    verify: o.verify,
  }).catch(async (err: unknown) => {
    await source.stop();
    throw err;
  });
  let session: StreamSession;
  try {
    session = new StreamSession({
      pipeline,
      source,
      id: 'watch',
      change: o.change,
      gate: o.gate,
      maskEveryMs: o.maskEvery * 1000,
      ...(o.prompt ? { prompt: o.prompt } : {}),
      ...(o.every ? { everyMs: o.every * 1000 } : {}),
      ...(o.maxTokens ? { generation: { maxTokens: o.maxTokens } } : {}),
    });
  } catch (err) {
    await source.stop();
    await pipeline.close();
    throw err;
  }
  const printer = new WatchPrinter(o.json, out);
  const onSigint = (): void => session.stop();
  process.once('SIGINT', onSigint);
  // Events are printed in order; a picture write never holds up the frames.
  let writing: Promise<void> = Promise.resolve();
  session.on('event', (e) => {
    const png = e.type === 'tokens' || e.type === 'ended' ? e.maskPng : undefined;
    if (png) writing = writing.then(() => replaceFile(out, png));
    printer.print(e, !!png);
  });
  let end;
  try {
    end = await session.run();
    await writing;
  } finally {
    process.off('SIGINT', onSigint);
    await pipeline.close();
  }
  if (end.reason === 'failed') {
    const fatal = printer.fatal;
    throw new SetokimError(fatal?.code ?? ErrorCodes.INTERNAL, fatal?.message ?? 'the stream failed');
  }
}

/** How watch shows events: answers on stdout, the rest on stderr; or every event as a JSON line. */
class WatchPrinter {
  fatal: Extract<StreamEvent, { type: 'error' }> | undefined;
  private answerOpen = false;

  constructor(
    private readonly json: boolean,
    private readonly picture: string,
  ) {}

  print(e: StreamEvent, wrotePicture: boolean): void {
    if (e.type === 'error' && e.fatal) this.fatal = e;
    if (this.json) {
      const line = JSON.stringify(e, (_k, v) => (v instanceof Uint8Array ? undefined : v));
      process.stdout.write(
        (wrotePicture ? line.replace(/}$/, `,"file":${JSON.stringify(this.picture)}}`) : line) + '\n',
      );
      return;
    }
    switch (e.type) {
      case 'started':
        return this.err(`[watching ${e.source} through ${e.tool}, ${e.width}x${e.height} frames]`);
      case 'tokens': {
        const where = e.region
          ? ` in rows ${e.region.row0}-${e.region.row1}, columns ${e.region.col0}-${e.region.col1}`
          : '';
        return this.err(
          `[frame ${e.frame}: ${e.count} tokens (+${e.added.length} -${e.removed.length}), ` +
            `${e.relabelled} patches relabelled${where}, ${e.latencyMs.toFixed(0)} ms]`,
        );
      }
      case 'text':
        if (!this.answerOpen) process.stdout.write(`[answer ${e.answer}] `);
        this.answerOpen = true;
        return void process.stdout.write(e.delta);
      case 'answer':
        this.answerOpen = false;
        return void process.stdout.write(`\n`);
      case 'source':
        return this.err(`[source ${e.state}: attempt ${e.attempt} in ${e.delayMs} ms: ${e.reason}]`);
      case 'error':
        return this.err(`[${e.fatal ? 'error' : 'warning'} ${e.code}: ${e.message}]`);
      case 'ended': {
        const s = e.stats;
        this.err(
          `[${e.reason}: ${s.received} frames (${s.processed} processed, ${s.unchanged} unchanged, ` +
            `${s.dropped} dropped, ${s.failed} failed), ${s.restarts} restarts, ${s.answers} answers` +
            `${wrotePicture ? `; wrote ${this.picture}` : ''}]`,
        );
      }
    }
  }

  private err(line: string): void {
    if (this.answerOpen) process.stdout.write('\n');
    this.answerOpen = false;
    process.stderr.write(line + '\n');
  }
}
