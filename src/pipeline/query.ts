/**
 * One query from checked request to events: vision tokens (from the vision cache or the vision
 * path) -> prompt (or a conversation's next turn) -> KV cache (a cached prefix or the
 * conversation's copied in, the rest prefilled) -> decode (streamed) -> the task's pictures ->
 * done. Everything the query holds (KV lease, LLM cache) is released in `finally`, whether it
 * completes, fails or is cancelled; a conversation keeps the cache of a completed turn.
 */
import { headDim, patchGrid, type Architecture, type StageName } from '../engine/contract.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Conversations, Turn } from './conversations.js';
import { decode, LlmContext } from './generate.js';
import { kvBytesPerToken, type KvBudget, type KvLease } from './kv-cache.js';
import { prefixKey, type PrefixCache } from './prefix-cache.js';
import { preprocess, type ImageLimits } from './preprocess.js';
import type { CheckedRequest } from './request.js';
import { Prng, Sampler } from './sampler.js';
import { timed, type GatedStage, type RequestContext } from './scheduler.js';
import { renderImage } from './tasks/image.js';
import { segmentMasks } from './tasks/segment.js';
import { buildVicunaPrompt, followUpIds, segmentsLength, splitPrefix, type PromptSegment } from './template.js';
import type { Tokenizer } from './tokenizer.js';
import type { PipelineEvent } from './types.js';
import { tokensKey, visionKey, type CachedVision, type VisionCache } from './vision-cache.js';
import { visionTokens, type VisionTokens } from './vision.js';
import { tokenMaskPng } from './visualize.js';

export interface PipelineModels {
  arch: Architecture;
  tokenizer: Tokenizer;
  stages: Partial<Record<StageName, GatedStage>>;
}

/** What survives between queries: vision tokens, prompt prefixes' KV rows, conversations. */
export interface QueryCaches {
  vision: VisionCache;
  /** Undefined when KV reuse is off. */
  prefix: PrefixCache | undefined;
  conversations: Conversations;
  /** The model side of every cache key (set, precision, backend, clustering). */
  modelKey: string;
}

export interface QueryEnv {
  models: PipelineModels;
  kv: KvBudget;
  caches: QueryCaches;
  imageLimits?: ImageLimits;
}

const TASK_STAGES: Record<string, StageName[]> = {
  ask: ['encoder', 'merger', 'embed', 'llm'],
  describe: ['encoder', 'merger', 'embed', 'llm'],
  segment: ['encoder', 'merger', 'embed', 'llm', 'mask_decoder'],
  generate: ['embed', 'llm', 'diffusion', 'detokenizer'],
  edit: ['encoder', 'merger', 'embed', 'llm', 'diffusion', 'detokenizer'],
};

function stage(models: PipelineModels, name: StageName, task: string): GatedStage {
  const s = models.stages[name];
  if (!s)
    throw new SetokimError(
      ErrorCodes.MODEL_NOT_FOUND,
      `the model set has no '${name}' stage, so it cannot run task '${task}'; use a model set that includes it`,
    );
  return s;
}

/** The vision path's result for the query's image: from the cache, or computed and kept. */
async function visionOf(env: QueryEnv, req: CheckedRequest, key: string, ctx: RequestContext): Promise<CachedVision> {
  const { models } = env;
  const a = models.arch;
  const cached = env.caches.vision.get(key);
  if (cached) return cached;
  const pre = await timed(ctx, 'preprocess', () => preprocess(req.image!, a.image, env.imageLimits));
  const vision = await visionTokens(
    a,
    { encoder: stage(models, 'encoder', req.task), merger: stage(models, 'merger', req.task) },
    pre.pixels,
    ctx,
  );
  const pic = await timed(ctx, 'png', () =>
    tokenMaskPng(pre.rgb, pre.size, vision.clusters.labels, patchGrid(a), a.image.patch, pre.box),
  );
  const out = { vision, geometry: pre.geometry, maskPng: pic.png };
  env.caches.vision.put(key, out);
  return out;
}

/** The context the model sees for this query, and which of its rows a cache already holds. */
interface Context {
  segments: PromptSegment[];
  vision: Float32Array | undefined;
  visionTokens: number;
  /** Rows a prefix entry holds (copied in after the lease is granted). */
  prefix?: { key: string; rows: number };
}

/** A fresh prompt: the template around the image, its shared prefix looked up in the prefix cache. */
function promptContext(
  env: QueryEnv,
  req: CheckedRequest,
  vision: VisionTokens | undefined,
  vKey: string | undefined,
): Context {
  const layout = buildVicunaPrompt(env.models.tokenizer, {
    prompt: req.prompt,
    image: !!vision,
    answerWithImage: req.task === 'generate' || req.task === 'edit',
  });
  const count = vision?.count ?? 0;
  const { prefix } = splitPrefix(layout);
  const ctx: Context = { segments: layout.segments, vision: vision?.embeds, visionTokens: count };
  if (prefix.length)
    ctx.prefix = { key: prefixKey(env.caches.modelKey, prefix, vKey), rows: segmentsLength(prefix, count) };
  return ctx;
}

/**
 * Gets the LLM context's cache ready for `rows` rows of `capacity`: in place in the conversation's
 * cache when it is large enough, else a new cache (leased) with the reusable rows copied in.
 * Returns the lease, how many rows came from a cache, and what to unpin when the query ends.
 */
async function openCache(
  env: QueryEnv,
  llm: LlmContext,
  c: Context,
  turn: Turn | undefined,
  capacity: number,
  signal: AbortSignal,
): Promise<{ lease?: KvLease; cached: number; unpin?: () => void }> {
  const a = env.models.arch;
  const conv = turn && !turn.isNew ? turn.conversation : undefined;
  const own = conv?.liveCache;
  if (own && own.capacity >= capacity) {
    // Written in place for the whole turn: pinned, so no other request's reservation takes it.
    const hold = conv!.hold;
    hold?.pin();
    llm.attach(own, conv!.length, false);
    return { cached: conv!.length, unpin: () => hold?.unpin() };
  }
  // Reserve first, then borrow: a pin held while waiting could keep the budget from ever fitting.
  const lease = await env.kv.reserve(capacity * kvBytesPerToken(a.llm.layers, a.llm.kvHeads, headDim(a)), signal);
  try {
    const source = conv?.liveCache;
    if (source) {
      conv!.hold?.pin();
      try {
        llm.attach(await source.copy(a, capacity, conv!.length), conv!.length);
      } finally {
        conv!.hold?.unpin();
      }
      return { lease, cached: conv!.length };
    }
    const loan = c.prefix && env.caches.prefix?.borrow(c.prefix.key);
    if (loan) {
      try {
        llm.attach(await loan.cache.copy(a, capacity, loan.rows), loan.rows);
      } finally {
        loan.done();
      }
      return { lease, cached: loan.rows };
    }
    await llm.open(capacity);
    return { lease, cached: 0 };
  } catch (err) {
    lease.release();
    throw err;
  }
}

/** The segments after the first `rows` positions (a cache boundary falls between segments). */
function dropRows(segments: readonly PromptSegment[], rows: number, visionTokens: number): PromptSegment[] {
  const out: PromptSegment[] = [];
  let left = rows;
  for (const seg of segments) {
    const n = seg.kind === 'text' ? seg.ids.length : visionTokens;
    if (left >= n) {
      left -= n;
      continue;
    }
    if (left > 0 && seg.kind !== 'text')
      throw new SetokimError(ErrorCodes.INTERNAL, 'a cached prefix ends inside the image');
    out.push(seg.kind === 'text' && left > 0 ? { kind: 'text', ids: seg.ids.slice(left) } : seg);
    left = 0;
  }
  return out;
}

/**
 * Runs one checked request. `turn`: the conversation turn it is (claimed by the caller, who
 * abandons it if the query ends without committing it). `prepared`: vision tokens computed already
 * (RunOptions.vision, a stream's frame): no image path runs; the prefix cache keys them by their embeddings.
 */
export async function runQuery(
  env: QueryEnv,
  req: CheckedRequest,
  turn: Turn | undefined,
  ctx: RequestContext,
  emit: (e: PipelineEvent) => void,
  startedAt: number,
  prepared?: VisionTokens,
): Promise<void> {
  for (const s of TASK_STAGES[req.task]!)
    if (req.image || (s !== 'encoder' && s !== 'merger')) stage(env.models, s, req.task);
  const { models } = env;
  const a = models.arch;
  const tok = models.tokenizer;
  const id = req.id;
  const sampler = new Sampler({ temperature: req.temperature, topK: req.topK, topP: req.topP, seed: req.seed });
  const imageTask = req.task === 'generate' || req.task === 'edit';

  let seen: CachedVision | undefined;
  let vKey: string | undefined;
  if (req.image) {
    vKey = visionKey(req.image, env.caches.modelKey);
    seen = await visionOf(env, req, vKey, ctx);
    emit({ type: 'clustered', id, visionTokens: seen.vision.count, patches: patchGrid(a) ** 2, maskPng: seen.maskPng });
  } else if (prepared) vKey = tokensKey(prepared, env.caches.modelKey);

  const conv = turn && !turn.isNew ? turn.conversation : undefined;
  const c: Context = conv
    ? {
        segments: [...conv.transcript, { kind: 'text', ids: followUpIds(tok, req.prompt, conv.closing) }],
        vision: conv.vision,
        visionTokens: conv.visionTokens,
      }
    : promptContext(env, req, seen?.vision ?? prepared, vKey);
  const promptTokens = segmentsLength(c.segments, c.visionTokens);
  const extra = req.task === 'segment' ? 1 : 0; // the referring <target> query
  const room = a.llm.maxContext - promptTokens - extra;
  if (room < 1)
    throw new SetokimError(
      ErrorCodes.PROMPT_TOO_LONG,
      `the prompt takes ${promptTokens} tokens and the context holds ${a.llm.maxContext}; ` +
        `shorten the prompt${conv ? ' or start a new conversation' : ''}`,
    );
  const maxTokens = Math.min(req.maxTokens, room);
  const capacity = promptTokens + maxTokens + extra;
  const llm = new LlmContext(a, stage(models, 'llm', req.task), stage(models, 'embed', req.task), ctx);
  let lease: KvLease | undefined;
  let unpin: (() => void) | undefined;
  try {
    const opened = await openCache(env, llm, c, turn, capacity, ctx.signal);
    lease = opened.lease;
    unpin = opened.unpin;
    const first = await llm.step(
      await llm.promptEmbeds(dropRows(c.segments, opened.cached, c.visionTokens), c.vision),
      'prefill',
    );
    const promptEnd = llm.position;
    if (c.prefix && opened.cached === 0 && env.caches.prefix)
      await env.caches.prefix.store(c.prefix.key, llm.kv!, c.prefix.rows);
    let firstTokenMs: number | undefined;
    const result = await decode(
      llm,
      first,
      {
        tokenizer: tok,
        sampler,
        maxTokens,
        stop: req.stop,
        startInImage: imageTask,
        maxTargets: a.cluster.maxTokens,
        onText: (delta) => emit({ type: 'text', id, delta }),
        onFirstToken: () => (firstTokenMs = performance.now() - startedAt),
      },
      ctx,
    );

    if (turn) {
      // The answer becomes part of the conversation: its ids (the last one unfed unless it was fed) and </s>.
      const answered = result.ids;
      const unfed = answered.slice(llm.position - promptEnd);
      const closing = unfed.at(-1) === tok.specials.eos ? unfed : [...unfed, tok.specials.eos];
      const transcript: PromptSegment[] = [
        ...c.segments,
        { kind: 'text', ids: answered.slice(0, llm.position - promptEnd) },
      ];
      const keep = env.caches.prefix ? llm.kv : undefined; // KV reuse off: conversations keep transcripts only
      if (keep) llm.detach();
      env.caches.conversations.commit(turn, {
        transcript,
        length: llm.position,
        closing,
        ...(turn.isNew ? { vision: c.vision, visionTokens: c.visionTokens } : {}),
        cache: keep,
        lease: keep ? lease : undefined,
        resumed: opened.cached > 0,
      });
      if (keep) lease = undefined; // the conversation holds it now
    }

    if (req.task === 'segment') {
      // The hidden state at a <target> the model emitted, or at one we feed as the referring query.
      let query = result.images.at(-1)?.at(-1);
      if (!query) query = (await llm.step(await llm.embedIds([tok.specials.target]), 'decode')).hidden;
      const masks = await segmentMasks(
        a,
        stage(models, 'mask_decoder', req.task),
        seen!.vision,
        query,
        seen!.geometry,
        ctx,
      );
      for (const m of masks) emit({ type: 'mask', id, ...m });
    }
    llm.release();
    lease?.release(); // the pictures below need no KV cache

    if (imageTask) {
      const targets = result.images[0];
      if (!targets || targets.length === 0)
        throw new SetokimError(
          ErrorCodes.INTERNAL,
          'the model emitted no <target> token for the image; retry with another seed',
        );
      const rng = new Prng((req.seed ^ 0x9e3779b9) >>> 0);
      const pic = await renderImage(
        a,
        { diffusion: stage(models, 'diffusion', req.task), detokenizer: stage(models, 'detokenizer', req.task) },
        targets,
        rng,
        ctx,
      );
      emit({ type: 'image', id, png: pic.png, width: pic.width, height: pic.height });
    }

    emit({
      type: 'done',
      id,
      visionTokens: c.visionTokens,
      promptTokens,
      cachedTokens: opened.cached,
      generatedTokens: result.ids.length,
      finishReason: result.finishReason,
      stages: { ...ctx.times },
      totalMs: performance.now() - startedAt,
      firstTokenMs,
    });
  } finally {
    unpin?.();
    llm.release();
    lease?.release();
  }
}
