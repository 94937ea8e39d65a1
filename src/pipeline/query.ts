/**
 * One query from checked request to events: preprocess -> vision tokens -> prompt -> prefill ->
 * decode (streamed) -> the task's pictures -> done. Everything the query holds (KV lease, LLM
 * cache) is released in `finally`, whether it completes, fails or is cancelled.
 */
import { headDim, patchGrid, type Architecture, type StageName } from '../engine/contract.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { kvBytesPerToken, type KvBudget } from './kv-cache.js';
import { decode, LlmContext } from './generate.js';
import { preprocess, type ImageLimits, type Preprocessed } from './preprocess.js';
import type { CheckedRequest } from './request.js';
import { Prng, Sampler } from './sampler.js';
import { timed, type GatedStage, type RequestContext } from './scheduler.js';
import { renderImage } from './tasks/image.js';
import { segmentMasks } from './tasks/segment.js';
import { buildVicunaPrompt, promptLength } from './template.js';
import type { Tokenizer } from './tokenizer.js';
import type { PipelineEvent } from './types.js';
import { visionTokens, type VisionTokens } from './vision.js';
import { tokenMaskPng } from './visualize.js';

export interface PipelineModels {
  arch: Architecture;
  tokenizer: Tokenizer;
  stages: Partial<Record<StageName, GatedStage>>;
}

export interface QueryEnv {
  models: PipelineModels;
  kv: KvBudget;
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
    throw new SetokimError(ErrorCodes.MODEL_NOT_FOUND, `the model set has no '${name}' stage, so it cannot run task '${task}'; use a model set that includes it`);
  return s;
}

/** `prepared`: vision tokens computed already (RunOptions.vision): no image path runs. */
export async function runQuery(
  env: QueryEnv,
  req: CheckedRequest,
  ctx: RequestContext,
  emit: (e: PipelineEvent) => void,
  startedAt: number,
  prepared?: VisionTokens,
): Promise<void> {
  const { models } = env;
  const a = models.arch;
  const tok = models.tokenizer;
  const id = req.id;
  for (const s of TASK_STAGES[req.task]!) if (!prepared || (s !== 'encoder' && s !== 'merger')) stage(models, s, req.task);
  const sampler = new Sampler({ temperature: req.temperature, topK: req.topK, topP: req.topP, seed: req.seed });
  const imageTask = req.task === 'generate' || req.task === 'edit';

  let pre: Preprocessed | undefined;
  let vision: VisionTokens | undefined = prepared;
  if (req.image) {
    pre = await timed(ctx, 'preprocess', () => preprocess(req.image!, a.image, env.imageLimits));
    vision = await visionTokens(a, { encoder: stage(models, 'encoder', req.task), merger: stage(models, 'merger', req.task) }, pre.pixels, ctx);
    const pic = await timed(ctx, 'png', () => tokenMaskPng(pre!.rgb, pre!.size, vision!.clusters.labels, patchGrid(a), a.image.patch, pre!.box));
    emit({ type: 'clustered', id, visionTokens: vision.count, patches: patchGrid(a) ** 2, maskPng: pic.png });
  }

  const layout = buildVicunaPrompt(tok, { prompt: req.prompt, image: !!vision, answerWithImage: imageTask });
  const promptTokens = promptLength(layout, vision?.count ?? 0);
  const extra = req.task === 'segment' ? 1 : 0; // the referring <target> query
  const room = a.llm.maxContext - promptTokens - extra;
  if (room < 1)
    throw new SetokimError(ErrorCodes.PROMPT_TOO_LONG, `the prompt takes ${promptTokens} tokens and the context holds ${a.llm.maxContext}; shorten the prompt`);
  const maxTokens = Math.min(req.maxTokens, room);
  const lease = await env.kv.reserve((promptTokens + maxTokens + extra) * kvBytesPerToken(a.llm.layers, a.llm.kvHeads, headDim(a)), ctx.signal);
  const llm = new LlmContext(a, stage(models, 'llm', req.task), stage(models, 'embed', req.task), ctx);
  try {
    const first = await llm.step(await llm.promptEmbeds(layout, vision?.embeds), 'prefill');
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

    if (req.task === 'segment') {
      // The hidden state at a <target> the model emitted, or at one we feed as the referring query.
      let query = result.images.at(-1)?.at(-1);
      if (!query) query = (await llm.step(await llm.embedIds([tok.specials.target]), 'decode')).hidden;
      const masks = await segmentMasks(a, stage(models, 'mask_decoder', req.task), vision!, query, pre!.geometry, ctx);
      for (const m of masks) emit({ type: 'mask', id, ...m });
    }
    llm.release();
    lease.release(); // the pictures below need no KV cache

    if (imageTask) {
      const targets = result.images[0];
      if (!targets || targets.length === 0)
        throw new SetokimError(ErrorCodes.INTERNAL, 'the model emitted no <target> token for the image; retry with another seed');
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
      visionTokens: vision?.count ?? 0,
      promptTokens,
      generatedTokens: result.ids.length,
      finishReason: result.finishReason,
      stages: { ...ctx.times },
      totalMs: performance.now() - startedAt,
      firstTokenMs,
    });
  } finally {
    llm.release();
    lease.release();
  }
}
