/**
 * createPipeline: opens a model set's stages on the chosen backends and answers queries as event
 * streams. Requests run concurrently up to `maxInFlight`, each stage behind its own gate (see
 * scheduler.ts) and the LLM's memory behind the KV-cache budget; a request's failure or
 * cancellation ends only its own stream. Between queries it keeps vision tokens per image, the KV
 * rows of prompt prefixes and conversations (query.ts), the last two inside the KV budget.
 */
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { createDefaultRegistry } from '../engine/registry.js';
import { headDim, STAGES, type StageName } from '../engine/contract.js';
import { PRECISIONS } from '../engine/manifest.js';
import { openModelSet } from '../engine/modelset.js';
import { stageSource } from '../engine/stage-source.js';
import { ErrorCodes, errorCode, SetokimError } from '../errors.js';
import { EventChannel } from './channel.js';
import { KvBudget, kvBytesPerToken } from './kv-cache.js';
import { DEFAULT_IMAGE_LIMITS, type ImageLimits } from './preprocess.js';
import { Conversations, type Turn } from './conversations.js';
import { PrefixCache } from './prefix-cache.js';
import { runQuery, type PipelineModels, type QueryCaches } from './query.js';
import { VisionCache, visionModelKey } from './vision-cache.js';
import { checkRequest } from './request.js';
import { GatedStage, Semaphore, type RequestContext } from './scheduler.js';
import { loadTokenizer } from './tokenizer.js';
import type { CacheStats, Pipeline, PipelineEvent, QueryRequest, RunOptions } from './types.js';
import type { VisionTokens } from './vision.js';

const OptionsSchema = z
  .object({
    modelsDir: z.string().min(1),
    backend: z.string().min(1).optional(),
    threads: z.number().int().positive().optional(),
    kvBudgetBytes: z.number().int().positive().optional(),
    maxInFlight: z.number().int().positive().max(64).optional(),
    /** New tokens per query: the default and the cap (256). */
    maxTokens: z.number().int().positive().optional(),
    verify: z.boolean().optional(),
    /** Which build of each stage to run (a stage without it uses its main file). */
    precision: z.enum(PRECISIONS).optional(),
    /** Bytes of vision tokens kept per image for later queries on it (0: off). */
    visionCacheBytes: z.number().int().min(0).optional(),
    /**
     * Keep KV rows between queries: prompt prefixes (system prompt + image) and conversations'
     * caches, inside the KV budget. Off: every query prefills its whole context (conversations
     * keep their transcript and prefill it again each turn).
     */
    reuseKv: z.boolean().optional(),
    /** A conversation with no turn for this long ends (CONVERSATION_UNKNOWN after). */
    conversationIdleMs: z.number().int().positive().optional(),
    /** Conversations held at once; one more ends the least recently used. */
    maxConversations: z.number().int().positive().optional(),
  })
  .strict();

/** Defaults of the cache settings (docs/MQTT.md, "Conversations"). */
export const CACHE_DEFAULTS = {
  visionCacheBytes: 64 << 20,
  conversationIdleMs: 10 * 60_000,
  maxConversations: 64,
} as const;

export type PipelineOptions = z.input<typeof OptionsSchema> & { imageLimits?: ImageLimits };

/** A pipeline with its internals visible to tests and the bench. */
export interface LocalPipeline extends Pipeline {
  readonly kv: KvBudget;
  readonly models: PipelineModels;
  readonly caches: QueryCaches;
  cacheStats(): CacheStats;
  /** Requests admitted and not finished. */
  readonly inFlight: number;
}

export async function createPipeline(options: PipelineOptions): Promise<LocalPipeline> {
  const { imageLimits, ...rest } = options;
  const parsed = OptionsSchema.safeParse(rest);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `pipeline options: ${i.path.join('.') || 'options'}: ${i.message}`);
  }
  const o = parsed.data;
  const set = await openModelSet(path.resolve(o.modelsDir), { verify: o.verify });
  const a = set.architecture;
  const tokenizer = await loadTokenizer(set.dir, { expect: a.tokens });
  const registry = createDefaultRegistry();
  // With two or more requests in flight, two stages run at once in steady state (one request's
  // encoder while another decodes): give each half the cores rather than oversubscribe them.
  const maxInFlight = o.maxInFlight ?? 2;
  const threads = o.threads ?? Math.max(1, Math.floor(availableParallelism() / Math.min(maxInFlight, 2)));
  // A precision applies to the stages that have a build of it (embed, a lookup, never does); a set
  // with none at all was not quantised: say so rather than quietly run fp32.
  if (o.precision && !STAGES.some((s) => set.has(s) && set.variants(s).some((v) => v.precision === o.precision))) {
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `model set ${set.id} has no ${o.precision} builds of any stage; write them with \`setokim export quantize --models ${o.modelsDir} --precision ${o.precision}\` or run without --precision`,
    );
  }
  const stages: Partial<Record<StageName, GatedStage>> = {};
  const backends = new Set<string>();
  try {
    for (const s of STAGES) {
      if (!set.has(s)) continue;
      const precision =
        o.precision && set.variants(s).some((v) => v.precision === o.precision) ? o.precision : undefined;
      const session = await registry.open(stageSource(set, s, precision), {
        threads,
        only: o.backend ? [o.backend] : undefined,
      });
      backends.add(session.backend);
      stages[s] = new GatedStage(s, session);
    }
  } catch (err) {
    await Promise.all(Object.values(stages).map((g) => g!.session.dispose()));
    throw err;
  }
  const models: PipelineModels = { arch: a, tokenizer, stages };
  const perToken = kvBytesPerToken(a.llm.layers, a.llm.kvHeads, headDim(a));
  const kv = new KvBudget(o.kvBudgetBytes ?? maxInFlight * a.llm.maxContext * perToken);
  const maxTokens = o.maxTokens ?? 256;
  const backend = [...backends].join('+');
  const caches: QueryCaches = {
    vision: new VisionCache(o.visionCacheBytes ?? CACHE_DEFAULTS.visionCacheBytes),
    prefix: o.reuseKv === false ? undefined : new PrefixCache(kv, a),
    conversations: new Conversations(kv, {
      idleMs: o.conversationIdleMs ?? CACHE_DEFAULTS.conversationIdleMs,
      maxCount: o.maxConversations ?? CACHE_DEFAULTS.maxConversations,
    }),
    modelKey: visionModelKey(set.id, o.precision ?? 'fp32', backend, a),
  };
  return new SetokimPipeline(
    models,
    kv,
    caches,
    new Semaphore(maxInFlight),
    {
      modelSetId: set.id,
      backend,
      maxTokens,
      maxContext: a.llm.maxContext,
    },
    imageLimits ?? DEFAULT_IMAGE_LIMITS,
  );
}

class SetokimPipeline implements LocalPipeline {
  private active = 0;
  private closed = false;
  private readonly running = new Set<AbortController>();

  constructor(
    readonly models: PipelineModels,
    readonly kv: KvBudget,
    readonly caches: QueryCaches,
    private readonly admission: Semaphore,
    readonly info: LocalPipeline['info'],
    private readonly imageLimits: ImageLimits,
  ) {}

  get inFlight(): number {
    return this.active;
  }

  run(request: QueryRequest, options: RunOptions = {}): AsyncIterable<PipelineEvent> {
    const ch = new EventChannel<PipelineEvent>();
    const ac = new AbortController();
    const outer = options.signal;
    const onOuterAbort = () => ac.abort(outer?.reason);
    if (outer?.aborted) ac.abort(outer.reason);
    else outer?.addEventListener('abort', onOuterAbort, { once: true });
    ch.onReturn = () => ac.abort(new SetokimError(ErrorCodes.CANCELLED, 'the consumer stopped reading'));
    void this.execute(request, ac, ch, options.vision).finally(() => {
      outer?.removeEventListener('abort', onOuterAbort);
      ch.end();
    });
    return ch;
  }

  private async execute(
    request: QueryRequest,
    ac: AbortController,
    ch: EventChannel<PipelineEvent>,
    vision?: VisionTokens,
  ): Promise<void> {
    const startedAt = performance.now();
    const id = typeof request?.id === 'string' ? request.id : '';
    this.running.add(ac);
    let release: (() => void) | undefined;
    let turn: Turn | undefined;
    try {
      if (this.closed) throw new SetokimError(ErrorCodes.BUSY, 'the pipeline is closed');
      const req = checkRequest(request, { maxTokens: this.info.maxTokens }, !!vision);
      // A conversation's turn is claimed on arrival: a second one while it is queued or running is BUSY.
      turn = req.conversation ? this.caches.conversations.begin(req.conversation, !!req.image) : undefined;
      ch.push({ type: 'accepted', id });
      release = await this.admission.acquire(ac.signal);
      this.active++;
      const ctx: RequestContext = { signal: ac.signal, times: {} };
      const env = { models: this.models, kv: this.kv, caches: this.caches, imageLimits: this.imageLimits };
      await runQuery(env, req, turn, ctx, (e) => ch.push(e), startedAt, vision);
    } catch (err) {
      const code = ac.signal.aborted ? ErrorCodes.CANCELLED : errorCode(err);
      const message =
        code === ErrorCodes.CANCELLED
          ? 'the request was cancelled; everything it held is released'
          : err instanceof SetokimError
            ? err.message
            : `internal error: ${(err as Error)?.message ?? String(err)}`;
      ch.push({ type: 'error', id, code, message });
    } finally {
      if (turn) this.caches.conversations.abandon(turn); // a no-op once the turn was committed
      if (release) {
        this.active--;
        release();
      }
      this.running.delete(ac);
    }
  }

  cacheStats(): CacheStats {
    const { vision, prefix, conversations } = this.caches;
    return {
      vision: { ...vision.stats, capacityBytes: vision.capacityBytes },
      prefix: prefix?.stats ?? { hits: 0, misses: 0, bytes: 0, entries: 0 },
      conversations: { ...conversations.stats, bytes: conversations.bytes },
      kv: {
        budgetBytes: this.kv.totalBytes,
        usedBytes: this.kv.used,
        cachedBytes: this.kv.cached,
        evictions: this.kv.evicted,
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const ac of this.running) ac.abort(new SetokimError(ErrorCodes.CANCELLED, 'the pipeline is closing'));
    this.caches.conversations.clear();
    this.caches.prefix?.clear();
    this.caches.vision.clear();
    await Promise.all(Object.values(this.models.stages).map((g) => g!.session.dispose()));
  }
}
