/**
 * A small in-test Pipeline for protocol behaviour (admission, replies, reconnects): it decodes the
 * image for real (sharp) and streams the prompt's words back. `hold` parks a query after its first
 * text delta until the test releases it; that is how tests put a query "in flight" on purpose.
 */
import sharp from 'sharp';
import type { Pipeline, PipelineEvent, QueryRequest, RunOptions } from '../../src/pipeline/types.js';

export interface StubOptions {
  maxContext?: number;
  /** Prompts that start with "hold" wait for release(id) after their first delta. */
  holdable?: boolean;
}

export class StubPipeline implements Pipeline {
  readonly info: Pipeline['info'];
  readonly seen: string[] = [];
  private readonly gates = new Map<string, () => void>();
  private readonly held = new Map<string, () => void>();
  private heldWaiters: Array<{ id?: string; resolve: (id: string) => void }> = [];

  constructor(private readonly opts: StubOptions = {}) {
    this.info = { modelSetId: 'stub', backend: 'stub', maxTokens: 64, maxContext: opts.maxContext ?? 256 };
  }

  /** Resolves when a query reaches its hold point (the next one, or the one with this id). */
  waitHeld(id?: string): Promise<string> {
    for (const key of this.held.keys()) if (!id || key === id) return Promise.resolve(key);
    return new Promise((resolve) => this.heldWaiters.push({ ...(id ? { id } : {}), resolve }));
  }

  release(id: string): void {
    this.held.get(id)?.();
  }

  async *run(req: QueryRequest, options: RunOptions = {}): AsyncIterable<PipelineEvent> {
    const { id } = req;
    this.seen.push(id);
    yield { type: 'accepted', id };
    let width = 0;
    if (req.image) {
      try {
        await sharp(req.image).stats(); // decodes every pixel: truncated files fail here
        width = (await sharp(req.image).metadata()).width ?? 0;
      } catch (err) {
        yield { type: 'error', id, code: 'BAD_IMAGE', message: `cannot decode the image: ${(err as Error).message}` };
        return;
      }
    }
    const words = (req.prompt ?? 'describe').split(/\s+/).filter(Boolean);
    if (words.length > this.info.maxContext) {
      yield {
        type: 'error',
        id,
        code: 'PROMPT_TOO_LONG',
        message: `the prompt has ${words.length} tokens; the context holds ${this.info.maxContext}`,
      };
      return;
    }
    const started = Date.now();
    for (const [i, word] of words.entries()) {
      if (options.signal?.aborted) return;
      yield { type: 'text', id, delta: (i ? ' ' : '') + word };
      if (i === 0 && this.opts.holdable && word === 'hold') {
        await new Promise<void>((resolve) => {
          this.held.set(id, resolve);
          options.signal?.addEventListener('abort', () => resolve(), { once: true });
          const waiters = this.heldWaiters;
          this.heldWaiters = [];
          for (const w of waiters) {
            if (w.id && w.id !== id) this.heldWaiters.push(w);
            else w.resolve(id);
          }
        });
        this.held.delete(id);
      }
    }
    yield {
      type: 'done',
      id,
      visionTokens: width ? 4 : 0,
      promptTokens: words.length,
      generatedTokens: words.length,
      finishReason: 'stop',
      stages: { encode: 0, decode: Date.now() - started },
      totalMs: Date.now() - started,
    };
  }

  async close(): Promise<void> {}
}

/** A tiny valid PNG. */
export async function samplePng(width = 32, height = 24): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: 40, g: 120, b: 200 } } })
    .png()
    .toBuffer();
}
