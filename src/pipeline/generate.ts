/**
 * The LLM with its KV cache: prefill of the assembled prompt embeddings, then a decode loop that
 * samples, streams text deltas through the tokenizer's IncrementalDecoder and the stop strings, and
 * keeps `<im_start>` `<target>`... `<im_end>` well formed: inside an image only `<target>` or
 * `<im_end>` may follow, at most `maxTargets` of them. The LLM hidden state at each `<target>`
 * position is kept for the diffusion head.
 */
import { tensor, type Tensor } from '../engine/backend.js';
import { headDim, type Architecture } from '../engine/contract.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { GatedStage, RequestContext } from './scheduler.js';
import { throwIfAborted } from './scheduler.js';
import { StopMatcher, type Sampler } from './sampler.js';
import { KvCache } from './kv-tensors.js';
import type { PromptSegment } from './template.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * One sequence's LLM state: its KV cache (resident in the LLM session's backend) and how many of
 * its rows are filled. Each run feeds the cache by handle and writes the new tokens' rows into it
 * at the write position; only the last position's logits and hidden state come back.
 */
export class LlmContext {
  private cache: KvCache | undefined;
  /** Whether release() frees the cache (not a conversation's cache borrowed in place). */
  private owned = true;
  private length = 0;
  private emptyPast: Record<string, Tensor> | undefined;
  constructor(
    private readonly a: Architecture,
    private readonly llm: GatedStage,
    private readonly embed: GatedStage,
    private readonly ctx: RequestContext,
  ) {}

  get position(): number {
    return this.length;
  }

  /** The cache this context writes, if one is attached. */
  get kv(): KvCache | undefined {
    return this.cache;
  }

  /** A fresh cache of `capacity` rows. */
  async open(capacity: number): Promise<void> {
    this.attach(await KvCache.allocate(this.llm.session, this.a, capacity), 0);
  }

  /**
   * Continues in `cache`, whose first `rows` rows already hold the sequence (a prefix copied in, a
   * conversation's own cache). A cache not `owned` is only borrowed: release() leaves it alone.
   */
  attach(cache: KvCache, rows: number, owned = true): void {
    this.release();
    this.cache = cache;
    this.owned = owned;
    this.length = rows;
  }

  /** Hands the cache to the caller (a conversation keeps it); this context then holds none. */
  detach(): KvCache | undefined {
    const c = this.cache;
    this.cache = undefined;
    return c;
  }

  /** Token ids -> input embeddings [T, H]. */
  async embedIds(ids: readonly number[]): Promise<Float32Array> {
    const out = await this.embed.run(this.ctx, {
      input_ids: tensor(
        'int64',
        BigInt64Array.from(ids, (i) => BigInt(i)),
        [1, ids.length],
      ),
    });
    return out.embeds!.data as Float32Array;
  }

  /** The embeddings [T, H] of prompt segments: text through the embed stage, `vision` at the vision segment. */
  async promptEmbeds(segments: readonly PromptSegment[], vision?: Float32Array): Promise<Float32Array> {
    const parts: Float32Array[] = [];
    for (const seg of segments) {
      if (seg.kind === 'text') parts.push(await this.embedIds(seg.ids));
      else if (vision) parts.push(vision);
      else
        throw new SetokimError(
          ErrorCodes.INTERNAL,
          'the prompt has an image segment but no vision embeddings were given',
        );
    }
    const out = new Float32Array(parts.reduce((n, x) => n + x.length, 0));
    let at = 0;
    for (const x of parts) {
      out.set(x, at);
      at += x.length;
    }
    return out;
  }

  /**
   * Runs T new positions at the write position; returns the logits and hidden state of the last
   * one. `label` names the stage in the request's clock (prefill / decode).
   */
  async step(embeds: Float32Array, label: string): Promise<{ logits: Float32Array; hidden: Float32Array }> {
    const { hidden: H, maxContext } = this.a.llm;
    const T = embeds.length / H;
    if (this.length + T > maxContext)
      throw new SetokimError(
        ErrorCodes.PROMPT_TOO_LONG,
        `the context would hold ${this.length + T} tokens, over the model's ${maxContext}`,
      );
    const cache = this.cache;
    if (!cache || this.length + T > cache.capacity) {
      const why = `the KV cache holds ${cache?.capacity ?? 0} rows and the sequence needs ${this.length + T}`;
      throw new SetokimError(ErrorCodes.INTERNAL, `${why}; the query reserved too few`);
    }
    const past = this.length === 0 ? this.noPast() : cache.feeds(); // an empty cache: attend to nothing
    const out = await this.llm.run(
      this.ctx,
      {
        inputs_embeds: tensor('float32', embeds, [1, T, H]),
        past_length: tensor('int64', BigInt64Array.of(BigInt(this.length)), [1]),
        ...past,
      },
      label,
      { writeInto: cache.writes(this.length) },
    );
    this.length += T;
    return { logits: out.logits!.data as Float32Array, hidden: out.hidden!.data as Float32Array };
  }

  /** Zero-row past tensors: a prefill from position 0 attends to no cache rows at all. */
  private noPast(): Record<string, Tensor> {
    if (!this.emptyPast) {
      const { layers, kvHeads } = this.a.llm;
      const empty = tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim(this.a)]);
      this.emptyPast = {};
      for (let l = 0; l < layers; l++) this.emptyPast[`past_keys.${l}`] = this.emptyPast[`past_values.${l}`] = empty;
    }
    return this.emptyPast;
  }

  /** Frees the cache (the KV lease is released by the owner). */
  release(): void {
    if (this.owned) this.cache?.release();
    this.cache = undefined;
  }
}

export interface DecodeOptions {
  tokenizer: Tokenizer;
  sampler: Sampler;
  maxTokens: number;
  stop: readonly string[];
  /** The prompt already opened an image (`<im_start>` is its last id): generate or edit. */
  startInImage: boolean;
  /** Most `<target>` tokens in one image (the engine profile's maxTokens). */
  maxTargets: number;
  onText: (delta: string) => void;
  /** Called once, when the first new token is chosen (time to first token). */
  onFirstToken?: () => void;
}

export interface DecodeResult {
  ids: number[];
  finishReason: 'stop' | 'length' | 'eos';
  /** Hidden states at `<target>` positions, one [H] row each, per image emitted. */
  images: Float32Array[][];
  /** Hidden state of the last position run. */
  lastHidden: Float32Array;
}

/** Decode from the state the prefill left: `first` holds its logits and hidden state. */
export async function decode(
  llm: LlmContext,
  first: { logits: Float32Array; hidden: Float32Array },
  o: DecodeOptions,
  ctx: RequestContext,
): Promise<DecodeResult> {
  const { tokenizer: tok, sampler } = o;
  const s = tok.specials;
  const textVocab = tok.vocabSize; // logits past it are padding
  const dec = tok.incrementalDecoder();
  const stops = new StopMatcher(o.stop);
  const ids: number[] = [];
  const images: Float32Array[][] = [];
  let inImage = o.startInImage;
  let targets: Float32Array[] = [];
  if (inImage) images.push(targets);
  let { logits, hidden } = first;
  let finishReason: DecodeResult['finishReason'] = 'length';
  const targetOnly = [s.target];
  const targetOrEnd = [s.target, s.imEnd];
  const endOnly = [s.imEnd];
  let lastPrevTarget = false; // the previous id fed was a <target>: its hidden state is `hidden`
  for (let n = 0; n < o.maxTokens; n++) {
    throwIfAborted(ctx.signal);
    if (lastPrevTarget) targets.push(Float32Array.from(hidden));
    lastPrevTarget = false;
    let allowed: readonly number[] | undefined;
    if (inImage) allowed = targets.length === 0 ? targetOnly : targets.length >= o.maxTargets ? endOnly : targetOrEnd;
    const id = sampler.sample(logits, 0, textVocab, allowed);
    ids.push(id);
    if (n === 0) o.onFirstToken?.();
    if (id === s.eos) {
      finishReason = 'eos';
      break;
    }
    if (id === s.imStart && !inImage) {
      inImage = true;
      targets = [];
      images.push(targets);
    } else if (id === s.imEnd && inImage) {
      inImage = false;
    } else if (id === s.target && inImage) {
      lastPrevTarget = true;
    } else if (!tok.isSpecial(id)) {
      const { emit, stopped } = stops.push(dec.push(id));
      if (emit) o.onText(emit);
      if (stopped) {
        finishReason = 'stop';
        break;
      }
    }
    // The last token is fed only when its hidden state is needed (a <target>).
    if (n === o.maxTokens - 1 && !lastPrevTarget) break;
    ({ logits, hidden } = await llm.step(await llm.embedIds([id]), 'decode'));
  }
  if (lastPrevTarget) targets.push(Float32Array.from(hidden));
  if (finishReason !== 'stop') {
    const rest = stops.push(dec.flush());
    const tail = rest.emit + (rest.stopped ? '' : stops.flush());
    if (tail) o.onText(tail);
    if (rest.stopped) finishReason = 'stop';
  }
  return { ids, finishReason, images: images.filter((t) => t.length > 0), lastHidden: Float32Array.from(hidden) };
}
