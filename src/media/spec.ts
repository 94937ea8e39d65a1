/**
 * What a video source is, parsed from the one string a user or an operator writes (docs/STREAMS.md):
 *   /dev/video0, v4l2:///dev/video0      a V4L2 camera (USB, or CSI through V4L2)
 *   csi://0                              a Jetson CSI camera through Argus (nvarguscamerasrc)
 *   rtsp://..., rtsps://..., http(s)://..., rtmp://..., udp://..., srt://...   a network stream
 *   /path/video.mp4, file:///path, ./clip.mkv     a file (ends at its end)
 *   test://ball, test://smpte, test://testsrc      a generated test pattern (no device needed)
 * and which media tool reads it: ffmpeg for everything but csi://, GStreamer (gst-launch-1.0) for
 * csi:// and when asked. Bottom layer beside the engine: the pipeline, the agent and the CLI use it.
 */
import path from 'node:path';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { redactUrl } from '../redact.js';

export const MEDIA_TOOLS = ['ffmpeg', 'gstreamer'] as const;
export type MediaTool = (typeof MEDIA_TOOLS)[number];

/** Test patterns, each with its ffmpeg lavfi source and GStreamer videotestsrc pattern. */
export const TEST_PATTERNS = {
  ball: { lavfi: 'testsrc2', gst: 'ball' },
  smpte: { lavfi: 'smptebars', gst: 'smpte' },
  testsrc: { lavfi: 'testsrc', gst: 'smpte' },
  still: { lavfi: 'color=c=0x3060a0', gst: 'solid-color' },
} as const;
export type TestPattern = keyof typeof TEST_PATTERNS;

const NETWORK = /^(rtsps?|https?|rtmps?|udp|tcp|srt):\/\//i;

export type SourceSpec =
  | { kind: 'file'; path: string }
  | { kind: 'url'; url: string; protocol: string }
  | { kind: 'v4l2'; device: string }
  | { kind: 'csi'; sensor: number }
  | { kind: 'test'; pattern: TestPattern };

const V4L2_DEVICE = /^\/dev\/video\d+$/;

function bad(message: string): never {
  throw new SetokimError(ErrorCodes.BAD_ARGUMENT, message);
}

/** Parses a source string; BAD_ARGUMENT says which forms exist. Files are resolved to absolute paths. */
export function parseSource(text: string): SourceSpec {
  const s = text.trim();
  if (!s)
    bad('the video source is empty; give a file, a camera (/dev/video0, csi://0), a URL (rtsp://...) or test://ball');
  if (/^v4l2:\/\//i.test(s)) {
    const device = s.slice('v4l2://'.length);
    if (!V4L2_DEVICE.test(device)) bad(`v4l2 source ${s}: expected v4l2:///dev/videoN`);
    return { kind: 'v4l2', device };
  }
  if (V4L2_DEVICE.test(s)) return { kind: 'v4l2', device: s };
  if (/^csi:\/\//i.test(s)) {
    const sensor = Number(s.slice('csi://'.length));
    if (!Number.isInteger(sensor) || sensor < 0 || sensor > 15)
      bad(`CSI source ${s}: expected csi://N with a sensor id 0-15`);
    return { kind: 'csi', sensor };
  }
  if (/^test:\/\//i.test(s)) {
    const pattern = s.slice('test://'.length);
    if (!Object.hasOwn(TEST_PATTERNS, pattern))
      bad(
        `test source ${s}: use one of ${Object.keys(TEST_PATTERNS)
          .map((p) => `test://${p}`)
          .join(', ')}`,
      );
    return { kind: 'test', pattern: pattern as TestPattern };
  }
  const network = NETWORK.exec(s);
  if (network) {
    try {
      new URL(s);
    } catch {
      bad(`source URL ${redactUrl(s)} does not parse`);
    }
    return { kind: 'url', url: s, protocol: network[1]!.toLowerCase() };
  }
  if (/^file:\/\//i.test(s)) return { kind: 'file', path: path.resolve(decodeURIComponent(new URL(s).pathname)) };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s))
    bad(
      `unsupported source scheme in ${redactUrl(s)}; ` +
        'use a file, /dev/videoN, csi://N, rtsp://, http(s)://, rtmp://, udp://, srt:// or test://',
    );
  return { kind: 'file', path: path.resolve(s) };
}

/** A source as it may be logged or published: URLs without credentials or query. */
export function describeSource(spec: SourceSpec): string {
  switch (spec.kind) {
    case 'file':
      return spec.path;
    case 'url':
      return redactUrl(spec.url);
    case 'v4l2':
      return spec.device;
    case 'csi':
      return `csi://${spec.sensor}`;
    case 'test':
      return `test://${spec.pattern}`;
  }
}

/** A file and a test pattern end; cameras and network streams are live (restarted when they stop). */
export function isLive(spec: SourceSpec): boolean {
  return spec.kind !== 'file';
}

/** The tool that reads a source by default: GStreamer for Argus CSI cameras, ffmpeg otherwise. */
export function defaultTool(spec: SourceSpec): MediaTool {
  return spec.kind === 'csi' ? 'gstreamer' : 'ffmpeg';
}

/** Frame size `WxH`, both sides at least 1 (the pipeline checks what its encoder takes). */
export const FrameSizeSchema = z
  .string()
  .regex(/^\d{1,5}x\d{1,5}$/, 'use WIDTHxHEIGHT, e.g. 384x384')
  .transform((s) => {
    const [w, h] = s.split('x').map(Number) as [number, number];
    return { width: w, height: h };
  })
  .refine((s) => s.width > 0 && s.height > 0, 'both sides must be at least 1 pixel');
export type FrameSize = { width: number; height: number };
