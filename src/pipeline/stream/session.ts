/**
 * A stream: frames from a FrameSource through FrameVision, token events when the token map changes,
 * and a standing prompt answered through the pipeline's normal query path (Pipeline.run with the
 * frame's vision tokens, RunOptions.vision) when AnswerPolicy says so. One frame is processed at a
 * time; the source drops frames that arrive meanwhile (counted). Answers run beside the frames, one
 * at a time. Events go out synchronously on 'event', in order; 'ended' is the last.
 */
import { EventEmitter } from 'node:events';
import { patchGrid } from '../../engine/contract.js';
import { ErrorCodes, SetokimError, errorCode, type ErrorCode } from '../../errors.js';
import type { Frame } from '../../media/frames.js';
import type { FrameSource, SourceEvent, SourceStats } from '../../media/source.js';
import type { LocalPipeline } from '../pipeline.js';
import type { GenerationParams } from '../types.js';
import { tokenMaskPng } from '../visualize.js';
import { AnswerPolicy, type AnswerTrigger } from './answer-policy.js';
import { DEFAULT_GATE, FrameVision, type FrameTokens, type TokenChange } from './frame-vision.js';
import { checkFrameSize } from './model-frame.js';

export interface StreamSessionOptions {
  pipeline: LocalPipeline;
  source: FrameSource;
  /** Stream id: answers are queries `<id>-a<n>`. */
  id?: string;
  /** The standing prompt; without one the stream only reports tokens. */
  prompt?: string;
  /** Answer at least this often (ms); default: only when the scene changes. */
  everyMs?: number;
  /** Fraction of patches with another token id since the last answer that counts as a change. */
  change?: number;
  /** Attach the token-mask PNG to a token event at most this often (ms); default never. */
  maskEveryMs?: number;
  /** Pixel gate (FrameVision); default DEFAULT_GATE, < 0 off. */
  gate?: number;
  generation?: GenerationParams;
  /** Sees each frame before it is processed (a recorder, a preview; tests slow the pipeline here). */
  onFrame?: (f: Frame) => Promise<void> | void;
}

export interface StreamStats extends SourceStats {
  /** Frames that ran through the encoder, ClusterStream and merger. */
  processed: number;
  /** Frames in which no patch changed (nothing ran). */
  unchanged: number;
  /** Frames that failed (reported as non-fatal errors). */
  failed: number;
  answers: number;
}

export type StreamEvent =
  | { type: 'started'; id: string; source: string; tool: string; width: number; height: number }
  | ({
      type: 'tokens';
      id: string;
      frame: number;
      /** From the frame's arrival to this event. */
      latencyMs: number;
      count: number;
      ids: number[];
      changedPatches: number;
      maskPng?: Uint8Array;
    } & TokenChange)
  | { type: 'text'; id: string; answer: number; delta: string }
  | {
      type: 'answer';
      id: string;
      answer: number;
      frame: number;
      trigger: AnswerTrigger;
      text: string;
      visionTokens: number;
      promptTokens: number;
      generatedTokens: number;
      totalMs: number;
    }
  | { type: 'source'; id: string; state: 'restarting'; attempt: number; delayMs: number; reason: string }
  | { type: 'error'; id: string; code: ErrorCode; message: string; fatal: boolean }
  | {
      type: 'ended';
      id: string;
      reason: 'source-ended' | 'stopped' | 'failed';
      stats: StreamStats;
      maskPng?: Uint8Array;
    };

export type StreamEnd = Extract<StreamEvent, { type: 'ended' }>;

export class StreamSession extends EventEmitter<{ event: [StreamEvent] }> {
  readonly id: string;
  private readonly o: StreamSessionOptions;
  private readonly vision: FrameVision;
  private readonly policy: AnswerPolicy;
  private readonly ac = new AbortController();
  private latest: FrameTokens | undefined;
  private answering: Promise<void> | undefined;
  private pending: AnswerTrigger | undefined;
  private lastMaskAt = -Infinity;
  private readonly counts = { processed: 0, unchanged: 0, failed: 0, answers: 0 };
  private ran = false;

  constructor(o: StreamSessionOptions) {
    super();
    this.o = o;
    this.id = o.id ?? 'stream';
    checkFrameSize(o.pipeline.models.arch, o.source.frameSize.width, o.source.frameSize.height);
    this.vision = new FrameVision(o.pipeline.models, o.gate ?? DEFAULT_GATE);
    this.policy = new AnswerPolicy({
      change: o.change ?? 0.25,
      ...(o.everyMs !== undefined ? { everyMs: o.everyMs } : {}),
    });
  }

  get stats(): StreamStats {
    return { ...this.o.source.stats, ...this.counts };
  }

  /** Ends the stream after the frame in hand; an answer in flight is cancelled. */
  stop(): void {
    this.ac.abort(new SetokimError(ErrorCodes.CANCELLED, `stream ${this.id} was stopped`));
    void this.o.source.stop();
  }

  /** Runs the stream to its end (the source's end, stop(), or a failure); resolves with 'ended'. */
  async run(): Promise<StreamEnd> {
    if (this.ran) throw new SetokimError(ErrorCodes.INTERNAL, 'StreamSession.run() twice');
    this.ran = true;
    const { source } = this.o;
    const onSource = (e: SourceEvent): void => {
      if (e.type === 'restarting')
        this.emitEvent({
          type: 'source',
          id: this.id,
          state: 'restarting',
          attempt: e.attempt,
          delayMs: e.delayMs,
          reason: e.reason,
        });
    };
    source.on('event', onSource);
    source.start();
    this.emitEvent({
      type: 'started',
      id: this.id,
      source: source.description,
      tool: source.tool,
      width: source.frameSize.width,
      height: source.frameSize.height,
    });
    let reason: StreamEnd['reason'] = 'source-ended';
    try {
      for (;;) {
        const frame = await source.next();
        if (!frame || this.ac.signal.aborted) break;
        await this.o.onFrame?.(frame);
        await this.processFrame(frame);
      }
      if (this.ac.signal.aborted) reason = 'stopped';
    } catch (err) {
      if (this.ac.signal.aborted) {
        reason = 'stopped';
      } else {
        reason = 'failed';
        this.emitEvent({
          type: 'error',
          id: this.id,
          code: errorCode(err),
          message: (err as Error).message,
          fatal: true,
        });
      }
    } finally {
      source.off('event', onSource);
      await source.stop();
    }
    // The answer in flight (and one still due) finishes unless the stream was stopped.
    while (this.answering) await this.answering;
    this.vision.close();
    const end: StreamEnd = { type: 'ended', id: this.id, reason, stats: this.stats };
    if (this.o.maskEveryMs !== undefined && this.latest) end.maskPng = await this.maskOf(this.latest);
    this.emitEvent(end);
    return end;
  }

  private async processFrame(frame: Frame): Promise<void> {
    let tokens: FrameTokens | undefined;
    try {
      tokens = await this.vision.process(frame, this.ac.signal);
    } catch (err) {
      if (this.ac.signal.aborted) return;
      // A frame the encoder cannot take will not be the last: end the stream with it.
      if (errorCode(err) === ErrorCodes.FRAME_SIZE) throw err;
      this.counts.failed++;
      this.emitEvent({
        type: 'error',
        id: this.id,
        code: errorCode(err),
        message: `frame ${frame.index}: ${(err as Error).message}`,
        fatal: false,
      });
      return;
    }
    if (!tokens) {
      this.counts.unchanged++;
    } else {
      this.counts.processed++;
      this.latest = tokens;
      const c = tokens.change;
      if (c.relabelled > 0 || c.added.length || c.removed.length) await this.emitTokens(frame, tokens);
    }
    this.considerAnswer();
  }

  private async emitTokens(frame: Frame, t: FrameTokens): Promise<void> {
    const now = performance.now();
    const withMask = this.o.maskEveryMs !== undefined && now - this.lastMaskAt >= this.o.maskEveryMs;
    const maskPng = withMask ? await this.maskOf(t) : undefined;
    if (withMask) this.lastMaskAt = now;
    this.emitEvent({
      type: 'tokens',
      id: this.id,
      frame: t.index,
      latencyMs: performance.now() - frame.at,
      count: t.ids.length,
      ids: [...t.ids],
      changedPatches: t.changedPatches,
      ...t.change,
      ...(maskPng ? { maskPng } : {}),
    });
  }

  /** Token masks coloured by token id (mod 4096: a colour per id, the same from frame to frame). */
  private async maskOf(t: FrameTokens): Promise<Uint8Array> {
    const a = this.o.pipeline.models.arch;
    const colours = t.patchIds.map((id) => id % 4096);
    return (await tokenMaskPng(t.rgb, a.image.size, colours, patchGrid(a), a.image.patch)).png;
  }

  private considerAnswer(): void {
    if (!this.o.prompt || this.ac.signal.aborted) return;
    const trigger = this.policy.due(this.latest, performance.now());
    if (!trigger) return;
    if (this.answering) {
      this.pending = trigger; // served with the latest tokens once the running answer ends
      return;
    }
    this.startAnswer(trigger);
  }

  private startAnswer(trigger: AnswerTrigger): void {
    const tokens = this.latest!;
    this.policy.answered(tokens, performance.now());
    const n = ++this.counts.answers;
    this.answering = this.answer(n, trigger, tokens).finally(() => {
      this.answering = undefined;
      const next = this.pending;
      this.pending = undefined;
      if (next && !this.ac.signal.aborted) this.startAnswer(next);
    });
  }

  /** The standing prompt on one frame's tokens, through the pipeline's query path. */
  private async answer(n: number, trigger: AnswerTrigger, tokens: FrameTokens): Promise<void> {
    const request = {
      id: `${this.id}-a${n}`,
      task: 'ask' as const,
      prompt: this.o.prompt!,
      ...(this.o.generation ? { generation: this.o.generation } : {}),
    };
    let text = '';
    for await (const e of this.o.pipeline.run(request, { signal: this.ac.signal, vision: tokens.vision })) {
      if (e.type === 'text') {
        text += e.delta;
        this.emitEvent({ type: 'text', id: this.id, answer: n, delta: e.delta });
      } else if (e.type === 'done') {
        this.emitEvent({
          type: 'answer',
          id: this.id,
          answer: n,
          frame: tokens.index,
          trigger,
          text,
          visionTokens: e.visionTokens,
          promptTokens: e.promptTokens,
          generatedTokens: e.generatedTokens,
          totalMs: e.totalMs,
        });
      } else if (e.type === 'error' && e.code !== ErrorCodes.CANCELLED) {
        this.emitEvent({
          type: 'error',
          id: this.id,
          code: e.code,
          message: `answer ${n}: ${e.message}`,
          fatal: false,
        });
      }
    }
  }

  private emitEvent(e: StreamEvent): void {
    this.emit('event', e);
  }
}
