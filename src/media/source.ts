/**
 * FrameSource: a camera, stream or file read by a media tool in a child process, as raw RGB frames.
 *  - Sized and rate-limited by the tool (commands.ts), never rescaled here.
 *  - Bounded: `latest` (live sources, and files played in real time) keeps only the newest frame
 *    the consumer has not taken; an older one is dropped and counted. `all` (a file read as fast
 *    as it is consumed) pauses the tool's pipe instead, so nothing is dropped and nothing queues.
 *  - Restarted: a tool that exits or stalls after frames flowed is started again with exponential
 *    backoff (reported as `restarting`); `attempts` failures in a row without a frame end the
 *    source with SOURCE_LOST. A source that never delivers a frame fails at once with what the tool
 *    said (SOURCE_UNAVAILABLE, SOURCE_NOT_VIDEO, MEDIA_TOOL_MISSING): a wrong URL does not retry.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { ErrorCodes, SetokimError, type ErrorCode } from '../errors.js';
import { ffmpegCommand, gstCommand, gstFrameSize, type CommandOptions, type MediaCommand } from './commands.js';
import { FrameAssembler, FramePool, type Frame } from './frames.js';
import {
  defaultTool,
  describeSource,
  isLive,
  parseSource,
  type FrameSize,
  type MediaTool,
  type SourceSpec,
} from './spec.js';

export interface RestartPolicy {
  /** Failures in a row without a frame before the source is given up (SOURCE_LOST). */
  attempts: number;
  minDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RESTART: RestartPolicy = { attempts: 5, minDelayMs: 500, maxDelayMs: 10_000 };

export interface FrameSourceOptions extends Omit<CommandOptions, 'startAt' | 'jetson'> {
  source: string | SourceSpec;
  tool?: MediaTool;
  /** `latest`: drop older frames when the consumer is busy; `all`: pause the tool. Default: `all`
   * for a file not played in real time, `latest` otherwise. */
  keep?: 'latest' | 'all';
  restart?: Partial<RestartPolicy>;
  /** A live source silent this long (ms) is killed and restarted (a hung camera or stream). */
  stallMs?: number;
  /** GStreamer pipelines with nvvidconv; default: this machine is a Jetson (/etc/nv_tegra_release). */
  jetson?: boolean;
}

export type SourceEvent =
  | { type: 'started'; run: number; tool: string; pid: number | undefined }
  | { type: 'restarting'; attempt: number; delayMs: number; reason: string }
  | { type: 'ended' }
  | { type: 'failed'; code: ErrorCode; message: string };

export interface SourceStats {
  /** Frames the tool delivered. */
  received: number;
  /** Frames handed to the consumer. */
  delivered: number;
  /** Frames dropped because the consumer was still busy with an earlier one. */
  dropped: number;
  /** Tool processes started again after one stopped. */
  restarts: number;
}

export function isJetson(): boolean {
  return existsSync('/etc/nv_tegra_release');
}

const STDERR_KEEP = 4096;

/** The Debian packages that provide each tool (for the message when one is missing). */
const PACKAGES: Record<MediaCommand['tool'], string> = {
  ffmpeg: 'ffmpeg',
  'gst-launch-1.0': 'gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good',
};

/** What a tool's error output means, as one coded error that names the source. */
export function classifyFailure(tool: string, stderr: string, source: string, exit: string): SetokimError {
  const said =
    stderr.trim().split('\n').filter(Boolean).slice(-3).join(' | ') || `${tool} exited (${exit}) without a message`;
  const has = (re: RegExp) => re.test(stderr);
  let code: ErrorCode = ErrorCodes.SOURCE_UNAVAILABLE;
  let hint = 'check the path, the URL, the network or the camera';
  if (has(/no element "([^"]+)"|No such element or plugin/i)) {
    code = ErrorCodes.MEDIA_TOOL_MISSING;
    hint = 'install the GStreamer plugin that provides it (on a Jetson: the L4T multimedia packages)';
  } else if (
    has(
      new RegExp(
        [
          'Invalid data found when processing input',
          'does not contain any stream',
          'matches no streams',
          'moov atom not found',
          'Could not determine type of stream',
          'not a video',
          'no video stream',
          'Could not find codec parameters',
        ].join('|'),
        'i',
      ),
    )
  ) {
    code = ErrorCodes.SOURCE_NOT_VIDEO;
    hint = 'give a video file or stream (a container with a video track)';
  }
  return new SetokimError(code, `video source ${source}: ${said}; ${hint}`);
}

export class FrameSource extends EventEmitter<{ event: [SourceEvent] }> {
  readonly spec: SourceSpec;
  readonly tool: MediaTool;
  /** The size of every frame delivered. */
  readonly frameSize: FrameSize;
  readonly description: string;
  private readonly o: FrameSourceOptions;
  private readonly keep: 'latest' | 'all';
  private readonly policy: RestartPolicy;
  private readonly pool: FramePool;
  private readonly assembler: FrameAssembler;
  private child: ChildProcess | undefined;
  private stderr = '';
  private runs = 0;
  private failuresInRow = 0;
  private runFrames = 0;
  private pending: Frame[] = [];
  private held: Frame | undefined;
  private waiter: ((f: Frame | undefined) => void) | undefined;
  private failure: SetokimError | undefined;
  private ended = false;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly counts: SourceStats = { received: 0, delivered: 0, dropped: 0, restarts: 0 };
  private readonly firstFrame: Promise<void>;
  private firstFrameDone!: (err?: SetokimError) => void;

  constructor(o: FrameSourceOptions) {
    super();
    this.o = o;
    this.spec = typeof o.source === 'string' ? parseSource(o.source) : o.source;
    this.tool = o.tool ?? defaultTool(this.spec);
    if (this.tool === 'ffmpeg' && this.spec.kind === 'csi') {
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        'csi:// cameras are read through GStreamer (nvarguscamerasrc); ' +
          'leave the tool to its default or choose gstreamer',
      );
    }
    this.frameSize = this.tool === 'gstreamer' ? gstFrameSize(this.spec, o) : o.size;
    this.description = describeSource(this.spec);
    const realtime = o.realtime ?? true;
    this.keep = o.keep ?? (this.spec.kind === 'file' && !realtime ? 'all' : 'latest');
    this.policy = { ...DEFAULT_RESTART, ...o.restart };
    this.pool = new FramePool(this.frameSize.width * this.frameSize.height * 3);
    this.assembler = new FrameAssembler(this.frameSize.width, this.frameSize.height, this.pool, (f) => this.onFrame(f));
    this.firstFrame = new Promise((resolve, reject) => {
      this.firstFrameDone = (err) => (err ? reject(err) : resolve());
    });
    this.firstFrame.catch(() => undefined); // read through ready(); never an unhandled rejection
  }

  /**
   * Resolves once the first frame arrived (it stays for next()); rejects with the source's error
   * when it fails first, so a caller can learn that a source opens before loading anything heavy.
   * A source that ends (or is stopped) without a frame resolves: next() then says so.
   */
  ready(): Promise<void> {
    return this.firstFrame;
  }

  get stats(): SourceStats {
    return { ...this.counts };
  }

  /** The running tool's process id (tests kill it to play a camera that disappears). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** The command line of the next run. */
  command(): MediaCommand {
    const startAt =
      this.spec.kind === 'file' && this.o.fps && this.counts.received > 0
        ? this.counts.received / this.o.fps
        : undefined;
    const o: CommandOptions = { ...this.o, jetson: this.o.jetson ?? isJetson(), ...(startAt ? { startAt } : {}) };
    return this.tool === 'gstreamer' ? gstCommand(this.spec, o) : ffmpegCommand(this.spec, o);
  }

  start(): void {
    if (this.child || this.stopping) return;
    this.spawnTool();
  }

  /**
   * The next frame: waits for one; undefined once the source ended (a file's end, or stop());
   * rejects with the source's error when it failed for good. The frame's buffer is reused after
   * the following next() call: copy what must outlive it.
   */
  next(): Promise<Frame | undefined> {
    if (this.held) {
      this.pool.give(this.held.rgb);
      this.held = undefined;
    }
    const f = this.pending.shift();
    if (f) {
      if (this.pending.length === 0) this.child?.stdout?.resume();
      return Promise.resolve(this.hand(f));
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended || this.stopping) return Promise.resolve(undefined);
    if (this.waiter)
      return Promise.reject(
        new SetokimError(ErrorCodes.INTERNAL, 'FrameSource.next() called again before the previous call resolved'),
      );
    return new Promise((resolve, reject) => {
      this.waiter = (frame) => {
        this.waiter = undefined;
        if (frame) resolve(this.hand(frame));
        else if (this.failure) reject(this.failure);
        else resolve(undefined);
      };
    });
  }

  /** Stops the tool (TERM, then KILL after 2 s) and ends the frames (undelivered ones are dropped); idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const f of this.pending.splice(0)) this.pool.give(f.rgb);
    clearTimeout(this.restartTimer);
    clearTimeout(this.stallTimer);
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      // A paused pipe would hold the tool in write() and its 'close' forever: let it drain.
      child.stdout?.resume();
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(kill);
    }
    this.waiter?.(undefined);
  }

  private hand(f: Frame): Frame {
    this.held = f;
    this.counts.delivered++;
    return f;
  }

  private spawnTool(): void {
    const cmd = this.command();
    this.runs++;
    this.runFrames = 0;
    this.stderr = '';
    const child = spawn(cmd.tool, cmd.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    let resolveExit!: () => void;
    this.exited = new Promise((r) => (resolveExit = r));
    child.stdout!.on('data', (chunk: Buffer) => this.assembler.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString('utf8')).slice(-STDERR_KEEP);
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      // The tool itself is missing (ENOENT) or cannot run: no restart would help.
      const missing = err.code === 'ENOENT';
      this.fail(
        new SetokimError(
          missing ? ErrorCodes.MEDIA_TOOL_MISSING : ErrorCodes.SOURCE_UNAVAILABLE,
          missing
            ? `${cmd.tool} is not installed; install it (Debian: apt-get install ${PACKAGES[cmd.tool]})`
            : `cannot start ${cmd.tool}: ${err.message}`,
        ),
      );
      resolveExit();
    });
    child.on('close', (code, signal) => {
      resolveExit();
      this.onExit(code, signal);
    });
    this.armStall();
    this.emit('event', { type: 'started', run: this.runs, tool: cmd.tool, pid: child.pid });
  }

  private armStall(): void {
    clearTimeout(this.stallTimer);
    const ms = this.o.stallMs;
    if (!ms || !isLive(this.spec)) return;
    this.stallTimer = setTimeout(() => {
      this.stderr += `\nno frame for ${ms} ms`;
      this.child?.kill('SIGKILL');
    }, ms);
  }

  private onFrame(f: Frame): void {
    if (this.stopping) return this.pool.give(f.rgb);
    this.counts.received++;
    this.firstFrameDone();
    this.runFrames++;
    this.failuresInRow = 0;
    this.armStall();
    if (this.waiter) return this.waiter(f);
    if (this.keep === 'latest') {
      for (const old of this.pending) {
        this.pool.give(old.rgb);
        this.counts.dropped++;
      }
      this.pending = [f];
      return;
    }
    this.pending.push(f);
    this.child?.stdout?.pause();
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    clearTimeout(this.stallTimer);
    this.child = undefined;
    this.assembler.reset();
    if (this.stopping || this.failure) return this.finish();
    const exit = signal ? `signal ${signal}` : `code ${code}`;
    if (!isLive(this.spec) && code === 0) {
      this.ended = true;
      this.emit('event', { type: 'ended' });
      return this.finish();
    }
    if (this.counts.received === 0) return this.fail(classifyFailure(this.tool, this.stderr, this.description, exit));
    if (this.runFrames === 0) this.failuresInRow++;
    else this.failuresInRow = 1;
    const said = this.stderr.trim().split('\n').slice(-1)[0];
    const reason = `${this.tool} stopped (${exit})${said ? `: ${said}` : ''}`;
    if (this.failuresInRow > this.policy.attempts) {
      return this.fail(
        new SetokimError(
          ErrorCodes.SOURCE_LOST,
          `video source ${this.description} stopped and did not come back after ${this.policy.attempts} restarts ` +
            `(last: ${reason}); check the camera or the stream`,
        ),
      );
    }
    const delayMs = Math.min(this.policy.maxDelayMs, this.policy.minDelayMs * 2 ** (this.failuresInRow - 1));
    this.emit('event', { type: 'restarting', attempt: this.failuresInRow, delayMs, reason });
    this.restartTimer = setTimeout(() => {
      if (this.stopping) return this.finish();
      this.counts.restarts++;
      this.spawnTool();
    }, delayMs);
  }

  private fail(err: SetokimError): void {
    if (this.failure) return;
    this.failure = err;
    this.firstFrameDone(err);
    this.emit('event', { type: 'failed', code: err.code, message: err.message });
    this.finish();
  }

  /** Wakes a waiting consumer once nothing more will come (it then sees the end or the error). */
  private finish(): void {
    this.firstFrameDone(this.failure);
    if (this.pending.length === 0) this.waiter?.(undefined);
  }
}
