/**
 * The command lines that turn a source into raw RGB frames on stdout, sized and rate-limited by the
 * tool itself (the runtime never rescales a frame it can have delivered at the right size):
 *   ffmpeg -i SOURCE -map 0:v:0 -vf fps=F,scale=W:H (aspect kept),pad=W:H (the model's mean colour)
 *          -f rawvideo -pix_fmt rgb24 pipe:1
 *   gst-launch-1.0 -q SOURCE ! videorate ! videoconvert ! videoscale ! video/x-raw,format=RGB,... ! fdsink
 * On a Jetson the GStreamer pipelines scale and convert with nvvidconv (the VIC engine, not the
 * CPU): nvarguscamerasrc for CSI cameras, v4l2src for USB ones. Pure functions of their inputs.
 */
import type { FrameSize, SourceSpec } from './spec.js';
import { TEST_PATTERNS } from './spec.js';

export interface CommandOptions {
  /** Frame size on stdout. */
  size: FrameSize;
  /** Frames per second at the source (omitted: the source's own rate). */
  fps?: number;
  /** Files and test patterns: deliver at their own rate, as a camera would (default true). */
  realtime?: boolean;
  /** Where to start reading a file, in seconds (a restart resumes where the last run stopped). */
  startAt?: number;
  /** Padding colour for letterboxing (ffmpeg), RGB 0-255: the encoder's mean. */
  pad?: readonly [number, number, number];
  /** Capture size asked of a camera (V4L2 -video_size, nvarguscamerasrc caps). */
  capture?: FrameSize;
  /** GStreamer on a Jetson: nvvidconv (hardware) for scaling and conversion. */
  jetson?: boolean;
}

export interface MediaCommand {
  tool: 'ffmpeg' | 'gst-launch-1.0';
  args: string[];
}

const hex = (pad: readonly [number, number, number]) =>
  `0x${pad
    .map((c) =>
      Math.max(0, Math.min(255, Math.round(c)))
        .toString(16)
        .padStart(2, '0'),
    )
    .join('')}`;

/** ffmpeg's frame rate filter argument: integer rates as such, others as a fraction of 1000. */
function rate(fps: number): string {
  return Number.isInteger(fps) ? String(fps) : `${Math.round(fps * 1000)}/1000`;
}

export function ffmpegCommand(spec: SourceSpec, o: CommandOptions): MediaCommand {
  const { width: W, height: H } = o.size;
  const realtime = o.realtime ?? true;
  const input: string[] = [];
  switch (spec.kind) {
    case 'file':
      if (realtime) input.push('-re');
      if (o.startAt) input.push('-ss', o.startAt.toFixed(3));
      input.push('-i', spec.path);
      break;
    case 'url':
      // Live network input: no input buffering (latency), RTSP over TCP (no lost UDP packets).
      input.push('-fflags', 'nobuffer', '-flags', 'low_delay');
      if (spec.protocol.startsWith('rtsp')) input.push('-rtsp_transport', 'tcp');
      input.push('-i', spec.url);
      break;
    case 'v4l2':
      input.push('-f', 'v4l2');
      if (o.fps) input.push('-framerate', rate(o.fps));
      if (o.capture) input.push('-video_size', `${o.capture.width}x${o.capture.height}`);
      input.push('-i', spec.device);
      break;
    case 'test': {
      const src = TEST_PATTERNS[spec.pattern].lavfi;
      const sep = src.includes('=') ? ':' : '=';
      if (realtime) input.push('-re');
      input.push('-f', 'lavfi', '-i', `${src}${sep}size=${W}x${H}:rate=${rate(o.fps ?? 30)}`);
      break;
    }
    case 'csi':
      throw new Error('csi:// sources are read through GStreamer (nvarguscamerasrc); ffmpegCommand was called for one');
  }
  const filters = [
    ...(o.fps ? [`fps=${rate(o.fps)}`] : []),
    `scale=${W}:${H}:force_original_aspect_ratio=decrease`,
    `pad=${W}:${H}:(ow-iw)/2:(oh-ih)/2:color=${hex(o.pad ?? [128, 128, 128])}`,
    'format=rgb24',
  ];
  return {
    tool: 'ffmpeg',
    args: [
      '-hide_banner',
      '-loglevel',
      'error',
      '-nostdin',
      ...input,
      '-map',
      '0:v:0',
      '-an',
      '-sn',
      '-dn',
      '-vf',
      filters.join(','),
      '-f',
      'rawvideo',
      '-pix_fmt',
      'rgb24',
      'pipe:1',
    ],
  };
}

/** `a ! b ! c` as gst-launch-1.0 argv: each element and caps string one argument, `!` between. */
function chain(...parts: string[][]): string[] {
  const out: string[] = [];
  for (const p of parts) {
    if (out.length) out.push('!');
    out.push(...p);
  }
  return out;
}

/** The largest size with the capture's aspect that fits in the frame (the rest is padded later). */
export function fitInside(capture: FrameSize, frame: FrameSize): FrameSize {
  const scale = Math.min(frame.width / capture.width, frame.height / capture.height);
  // Even sides: nvvidconv and most converters want them.
  const even = (v: number) => Math.max(2, 2 * Math.round(v / 2));
  return {
    width: Math.min(frame.width, even(capture.width * scale)),
    height: Math.min(frame.height, even(capture.height * scale)),
  };
}

/** The frame size a GStreamer pipeline for `spec` delivers (a Jetson CSI camera keeps its aspect). */
export function gstFrameSize(spec: SourceSpec, o: CommandOptions): FrameSize {
  if (spec.kind === 'csi') return fitInside(o.capture ?? { width: 1280, height: 720 }, o.size);
  return o.size;
}

export function gstCommand(spec: SourceSpec, o: CommandOptions): MediaCommand {
  const realtime = o.realtime ?? true;
  const out = gstFrameSize(spec, o);
  const fps = o.fps ? `${Math.round(o.fps * 1000)}/1000` : undefined;
  const rgb = `video/x-raw,format=RGB,width=${out.width},height=${out.height}`;
  const sink = ['fdsink', 'fd=1', `sync=${realtime && spec.kind !== 'url' ? 'true' : 'false'}`];
  const limit = fps ? [['videorate', 'drop-only=true'], [`video/x-raw,framerate=${fps}`]] : [];
  let source: string[][];
  switch (spec.kind) {
    case 'csi': {
      const cap = o.capture ?? { width: 1280, height: 720 };
      const capFps = `${Math.round(o.fps ?? 30)}/1`;
      // Argus delivers NV12 in NVMM memory; nvvidconv scales it and converts to BGRx in hardware.
      return {
        tool: 'gst-launch-1.0',
        args: [
          '-q',
          ...chain(
            ['nvarguscamerasrc', `sensor-id=${spec.sensor}`],
            [`video/x-raw(memory:NVMM),width=${cap.width},height=${cap.height},framerate=${capFps}`],
            ['nvvidconv'],
            [`video/x-raw,format=BGRx,width=${out.width},height=${out.height}`],
            ['videoconvert'],
            [rgb],
            sink,
          ),
        ],
      };
    }
    case 'v4l2':
      source = [['v4l2src', `device=${spec.device}`]];
      if (o.capture) source.push([`video/x-raw,width=${o.capture.width},height=${o.capture.height}`]);
      break;
    case 'file':
      source = [['filesrc', `location=${spec.path}`], ['decodebin']];
      break;
    case 'url':
      source = spec.protocol.startsWith('rtsp')
        ? [['rtspsrc', `location=${spec.url}`, 'latency=100'], ['decodebin']]
        : [['uridecodebin', `uri=${spec.url}`]];
      break;
    case 'test':
      source = [['videotestsrc', `pattern=${TEST_PATTERNS[spec.pattern].gst}`, ...(realtime ? ['is-live=true'] : [])]];
      break;
  }
  if (o.jetson) {
    // Into NVMM and out again: the second nvvidconv scales and converts on the VIC engine.
    return {
      tool: 'gst-launch-1.0',
      args: [
        '-q',
        ...chain(
          ...source,
          ...limit,
          ['nvvidconv'],
          ['video/x-raw(memory:NVMM)'],
          ['nvvidconv'],
          [`video/x-raw,format=BGRx,width=${out.width},height=${out.height}`],
          ['videoconvert'],
          [rgb],
          sink,
        ),
      ],
    };
  }
  return {
    tool: 'gst-launch-1.0',
    args: [
      '-q',
      ...chain(
        ...source,
        ...limit,
        ['videoconvert'],
        ['videoscale', 'add-borders=true'],
        [`${rgb},pixel-aspect-ratio=1/1`],
        sink,
      ),
    ],
  };
}
