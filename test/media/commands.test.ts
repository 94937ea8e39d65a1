/**
 * Source strings and the command lines built from them. The Jetson pipelines (nvarguscamerasrc,
 * nvvidconv) cannot run here: their strings are checked element by element; the generic ones run
 * in source.test.ts.
 */
import t from 'tap';
import { ErrorCodes } from '../../src/errors.js';
import {
  ffmpegCommand,
  fitInside,
  gstCommand,
  gstFrameSize,
  parseSource,
  describeSource,
  FrameSizeSchema,
} from '../../src/media/index.js';

const size = { width: 224, height: 224 };

/** gst-launch argv back to its pipeline elements (without -q). */
const elements = (args: string[]) => args.slice(1).join(' ').split(' ! ');

t.test('source strings', async (t) => {
  t.same(parseSource('/dev/video2'), { kind: 'v4l2', device: '/dev/video2' });
  t.same(parseSource('v4l2:///dev/video0'), { kind: 'v4l2', device: '/dev/video0' });
  t.same(parseSource('csi://1'), { kind: 'csi', sensor: 1 });
  t.same(parseSource('test://ball'), { kind: 'test', pattern: 'ball' });
  t.same(parseSource('rtsp://user:pw@cam.local:554/stream1'), {
    kind: 'url',
    url: 'rtsp://user:pw@cam.local:554/stream1',
    protocol: 'rtsp',
  });
  t.same(parseSource('HTTPS://cam/x.m3u8').kind, 'url');
  t.same(parseSource('/videos/a.mp4'), { kind: 'file', path: '/videos/a.mp4' });
  t.same(parseSource('file:///videos/a%20b.mp4'), { kind: 'file', path: '/videos/a b.mp4' });
  t.match(parseSource('clip.mkv'), { kind: 'file', path: /\/clip\.mkv$/ });
  t.equal(
    describeSource(parseSource('rtsp://user:pw@cam.local/s?token=abc')),
    'rtsp://***@cam.local/s?<redacted>',
    'no credentials in descriptions',
  );
  for (const bad of ['', 'csi://x', 'csi://99', 'test://nope', 'v4l2://video0', 'ftp://host/a.mp4', 'rtsp://[bad']) {
    t.throws(() => parseSource(bad), { code: ErrorCodes.BAD_ARGUMENT }, `refused: '${bad}'`);
  }
  t.same(FrameSizeSchema.parse('640x480'), { width: 640, height: 480 });
  t.notOk(FrameSizeSchema.safeParse('0x10').success);
  t.notOk(FrameSizeSchema.safeParse('64').success);
});

t.test('ffmpeg command lines: sized, rate-limited and letterboxed at the source', async (t) => {
  const file = ffmpegCommand(parseSource('/v/a.mp4'), { size, fps: 5, pad: [127.5, 127.5, 127.5] });
  t.equal(file.tool, 'ffmpeg');
  t.same(
    file.args.slice(file.args.indexOf('-re'), file.args.indexOf('-i') + 2),
    ['-re', '-i', '/v/a.mp4'],
    'a file plays in real time',
  );
  const vf = file.args[file.args.indexOf('-vf') + 1]!;
  t.equal(
    vf,
    'fps=5,scale=224:224:force_original_aspect_ratio=decrease,' +
      'pad=224:224:(ow-iw)/2:(oh-ih)/2:color=0x808080,format=rgb24',
  );
  t.same(file.args.slice(-5), ['-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1']);
  t.ok(file.args.includes('0:v:0'), 'the first video stream, or an error when there is none');

  const offline = ffmpegCommand(parseSource('/v/a.mp4'), { size, realtime: false, startAt: 12.5 });
  t.notOk(offline.args.includes('-re'));
  t.same(
    offline.args.slice(offline.args.indexOf('-ss'), offline.args.indexOf('-ss') + 2),
    ['-ss', '12.500'],
    'a restart resumes',
  );
  t.notOk(offline.args[offline.args.indexOf('-vf') + 1]!.includes('fps='), 'no --fps: the file rate');

  const rtsp = ffmpegCommand(parseSource('rtsp://cam/s'), { size, fps: 2.5 });
  t.ok(rtsp.args.join(' ').includes('-rtsp_transport tcp -i rtsp://cam/s'));
  t.ok(rtsp.args[rtsp.args.indexOf('-vf') + 1]!.startsWith('fps=2500/1000,'));
  t.notOk(rtsp.args.includes('-re'), 'a live stream is never throttled');

  const cam = ffmpegCommand(parseSource('/dev/video0'), { size, fps: 15, capture: { width: 640, height: 480 } });
  t.ok(cam.args.join(' ').includes('-f v4l2 -framerate 15 -video_size 640x480 -i /dev/video0'));

  const test = ffmpegCommand(parseSource('test://still'), { size, fps: 4 });
  t.ok(test.args.join(' ').includes('-f lavfi -i color=c=0x3060a0:size=224x224:rate=4'));
  t.throws(() => ffmpegCommand(parseSource('csi://0'), { size }));
});

t.test('GStreamer pipelines: generic (run here) and Jetson (nvarguscamerasrc, nvvidconv)', async (t) => {
  const test = gstCommand(parseSource('test://ball'), { size, fps: 5 });
  t.equal(test.tool, 'gst-launch-1.0');
  t.equal(test.args[0], '-q', 'quiet: stdout carries frames only');
  t.same(elements(test.args), [
    'videotestsrc pattern=ball is-live=true',
    'videorate drop-only=true',
    'video/x-raw,framerate=5000/1000',
    'videoconvert',
    'videoscale add-borders=true',
    'video/x-raw,format=RGB,width=224,height=224,pixel-aspect-ratio=1/1',
    'fdsink fd=1 sync=true',
  ]);
  t.same(elements(gstCommand(parseSource('/dev/video1'), { size }).args).slice(0, 2), [
    'v4l2src device=/dev/video1',
    'videoconvert',
  ]);
  t.same(elements(gstCommand(parseSource('rtsp://cam/s'), { size }).args).slice(0, 2), [
    'rtspsrc location=rtsp://cam/s latency=100',
    'decodebin',
  ]);
  t.match(
    elements(gstCommand(parseSource('rtsp://cam/s'), { size }).args).at(-1),
    'sync=false',
    'a live stream is not re-timed',
  );
  t.same(elements(gstCommand(parseSource('/v/a.mp4'), { size, realtime: false }).args).slice(0, 2), [
    'filesrc location=/v/a.mp4',
    'decodebin',
  ]);

  // Jetson CSI camera: Argus in NVMM, scaled by nvvidconv to fit the frame with its aspect (16:9).
  const csi = gstCommand(parseSource('csi://0'), {
    size: { width: 384, height: 384 },
    fps: 10,
    capture: { width: 1920, height: 1080 },
    jetson: true,
  });
  t.same(elements(csi.args), [
    'nvarguscamerasrc sensor-id=0',
    'video/x-raw(memory:NVMM),width=1920,height=1080,framerate=10/1',
    'nvvidconv',
    'video/x-raw,format=BGRx,width=384,height=216',
    'videoconvert',
    'video/x-raw,format=RGB,width=384,height=216',
    'fdsink fd=1 sync=true',
  ]);
  t.same(
    gstFrameSize(parseSource('csi://0'), { size: { width: 384, height: 384 } }),
    { width: 384, height: 216 },
    'default capture 1280x720',
  );
  // Jetson USB camera: through NVMM and back, scaled on the VIC.
  t.same(elements(gstCommand(parseSource('/dev/video0'), { size, fps: 15, jetson: true }).args), [
    'v4l2src device=/dev/video0',
    'videorate drop-only=true',
    'video/x-raw,framerate=15000/1000',
    'nvvidconv',
    'video/x-raw(memory:NVMM)',
    'nvvidconv',
    'video/x-raw,format=BGRx,width=224,height=224',
    'videoconvert',
    'video/x-raw,format=RGB,width=224,height=224',
    'fdsink fd=1 sync=true',
  ]);
  t.same(fitInside({ width: 640, height: 480 }, { width: 224, height: 224 }), { width: 224, height: 168 });
  t.same(fitInside({ width: 480, height: 640 }, { width: 384, height: 384 }), { width: 288, height: 384 });
});
