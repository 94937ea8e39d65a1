/**
 * The Vicuna v1 conversation template as token-id segments:
 *   <s> {system} USER: <im_start> [vision tokens] <im_end> \n{prompt} ASSISTANT:
 * The vision tokens are not ids: the pipeline embeds each text segment with the embed stage and
 * splices the merger's embeddings in at the `vision` segment. Text around the image is tokenized
 * chunk by chunk, each with SentencePiece's dummy prefix, as LLaVA's tokenizer_image_token does
 * (the convention Setokim's training code inherits), so "\n" after `<im_end>` is [29871, 13].
 * Specials come only from here, never from the user's text.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import { IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM } from '../engine/contract.js';
import type { Tokenizer } from './tokenizer.js';

export type PromptSegment = { kind: 'text'; ids: number[] } | { kind: 'vision' };

export interface PromptLayout {
  /** Text ids and, with an image, one `vision` marker between `<im_start>` and `<im_end>`. */
  segments: PromptSegment[];
  /** Number of text ids over all segments (specials included). */
  textTokens: number;
  hasImage: boolean;
  /**
   * Where the part shared with other queries ends (what the prefix cache keeps): the system
   * prompt and the image through `<im_end>`, or, text-only, the system prompt through "USER:" when
   * it tokenizes the same alone. The prefix is segments[0 .. segment-1] plus the first `ids` ids
   * of segments[segment]. Undefined when there is none.
   */
  prefixEnd?: { segment: number; ids: number };
}

export interface PromptOptions {
  prompt: string;
  /** Whether the query carries an image (every task but generate). */
  image: boolean;
  system?: string;
  /**
   * Open the assistant turn with `<im_start>` so the model answers with vision tokens (generate,
   * edit): it then emits `<target>` placeholders, one per generated vision token, and `<im_end>`.
   */
  answerWithImage?: boolean;
}

/** The template as text, "<image>" standing for the vision tokens (for logs and debugging). */
export function vicunaPromptText(options: PromptOptions): string {
  const system = options.system ?? VICUNA_V1_SYSTEM;
  const user =
    options.image && !options.prompt.includes(IMAGE_PLACEHOLDER)
      ? `${IMAGE_PLACEHOLDER}\n${options.prompt}`
      : options.prompt;
  return `${system} USER: ${user} ASSISTANT:`;
}

export function buildVicunaPrompt(tok: Tokenizer, options: PromptOptions): PromptLayout {
  const placeholders = options.prompt.split(IMAGE_PLACEHOLDER).length - 1;
  if (placeholders > 1) {
    throw new SetokimError(
      ErrorCodes.BAD_INPUT,
      `the prompt contains "${IMAGE_PLACEHOLDER}" ${placeholders} times; a query carries one image`,
    );
  }
  if (placeholders === 1 && !options.image) {
    throw new SetokimError(
      ErrorCodes.BAD_INPUT,
      `the prompt contains "${IMAGE_PLACEHOLDER}" but the query has no image`,
    );
  }
  const s = tok.specials;
  const text = vicunaPromptText(options);
  const tail = options.answerWithImage ? [s.imStart] : [];
  let segments: PromptSegment[];
  let prefixEnd: PromptLayout['prefixEnd'];
  if (!options.image) {
    const ids = tok.encode(text, { bos: true });
    segments = [{ kind: 'text', ids: [...ids, ...tail] }];
    const system = tok.encode(`${options.system ?? VICUNA_V1_SYSTEM} USER:`, { bos: true });
    const clean = system.length < ids.length && system.every((id, i) => id === ids[i]);
    if (clean) prefixEnd = { segment: 0, ids: system.length };
  } else {
    // The user's own "<image>" (if any) was kept by vicunaPromptText; otherwise ours leads the turn.
    const at = text.indexOf(IMAGE_PLACEHOLDER);
    const before = text.slice(0, at);
    const after = text.slice(at + IMAGE_PLACEHOLDER.length);
    segments = [
      { kind: 'text', ids: [...tok.encode(before, { bos: true }), s.imStart] },
      { kind: 'vision' },
      { kind: 'text', ids: [s.imEnd, ...tok.encode(after), ...tail] },
    ];
    prefixEnd = { segment: 2, ids: 1 }; // through <im_end>
  }
  const textTokens = segments.reduce((n, seg) => n + (seg.kind === 'text' ? seg.ids.length : 0), 0);
  return { segments, textTokens, hasImage: options.image, ...(prefixEnd ? { prefixEnd } : {}) };
}

/** The layout's segments split where its shared prefix ends (prefix empty when it has none). */
export function splitPrefix(layout: PromptLayout): { prefix: PromptSegment[]; rest: PromptSegment[] } {
  const end = layout.prefixEnd;
  if (!end) return { prefix: [], rest: layout.segments };
  const cut = layout.segments[end.segment];
  const head = layout.segments.slice(0, end.segment);
  const tail = layout.segments.slice(end.segment + 1);
  if (cut?.kind !== 'text') return { prefix: head, rest: cut ? [cut, ...tail] : tail };
  return {
    prefix: [...head, { kind: 'text', ids: cut.ids.slice(0, end.ids) }],
    rest: [{ kind: 'text', ids: cut.ids.slice(end.ids) }, ...tail],
  };
}

/** Positions segments take: their text ids plus `visionTokens` for a vision segment. */
export function segmentsLength(segments: readonly PromptSegment[], visionTokens: number): number {
  return segments.reduce((n, seg) => n + (seg.kind === 'text' ? seg.ids.length : visionTokens), 0);
}

/**
 * A follow-up turn of a conversation (Vicuna v1): the previous answer is closed with `</s>`, then
 * `USER: {prompt} ASSISTANT:` as one chunk (dummy prefix, as every chunk). `closing` holds what the
 * previous turn generated but never fed (its last id) and `</s>` when it did not end with one.
 */
export function followUpIds(tok: Tokenizer, prompt: string, closing: readonly number[]): number[] {
  if (prompt.includes(IMAGE_PLACEHOLDER)) {
    throw new SetokimError(
      ErrorCodes.BAD_INPUT,
      `a follow-up turn carries no image, so its prompt cannot contain "${IMAGE_PLACEHOLDER}"; ` +
        'start a new conversation for another image',
    );
  }
  return [...closing, ...tok.encode(`USER: ${prompt} ASSISTANT:`)];
}

/** Positions the prompt takes in the context: its text ids plus the vision tokens. */
export function promptLength(layout: PromptLayout, visionTokens: number): number {
  return layout.textTokens + (layout.hasImage ? visionTokens : 0);
}

/** Prompt tokens of a query with `visionTokens` vision tokens (the most the merger can give, before clustering). */
export function countPromptTokens(tok: Tokenizer, options: PromptOptions, visionTokens: number): number {
  return promptLength(buildVicunaPrompt(tok, options), visionTokens);
}

/**
 * Refuses a prompt that leaves fewer than `minNewTokens` positions of `maxContext` for the answer,
 * before any stage runs: pass visionTokens = maxTokens for the worst case. (The pipeline checks the
 * exact length itself once the image is clustered; the agent bounds prompts by limits.maxPromptTokens.)
 */
export function assertPromptFits(
  tok: Tokenizer,
  options: PromptOptions,
  limits: { visionTokens: number; maxContext: number; minNewTokens?: number },
): PromptLayout {
  const layout = buildVicunaPrompt(tok, options);
  const used = promptLength(layout, limits.visionTokens);
  const room = limits.maxContext - (limits.minNewTokens ?? 1);
  if (used > room) {
    throw new SetokimError(
      ErrorCodes.PROMPT_TOO_LONG,
      `the prompt takes ${used} tokens (${layout.textTokens} text + ${layout.hasImage ? limits.visionTokens : 0} vision) ` +
        `and the context holds ${limits.maxContext}; shorten the prompt to leave room for the answer`,
    );
  }
  return layout;
}

/** What the assistant emits for an image of n vision tokens: `<im_start>` `<target>` x n `<im_end>`. */
export function visionOutputIds(tok: Tokenizer, n: number): number[] {
  const s = tok.specials;
  return [s.imStart, ...new Array<number>(n).fill(s.target), s.imEnd];
}
