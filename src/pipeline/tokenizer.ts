/**
 * The text tokenizer of Setokim: LLaMA/Vicuna SentencePiece BPE (vocabulary 32000, byte fallback)
 * plus `<im_start>`, `<im_end>` and `<target>`. Two sources, one interface:
 * - `{ kind: 'llama' }`: the LLaMA vocabulary bundled in llama-tokenizer-js (reference model sets);
 * - a model-set directory holding a real export's tokenizer.json (@huggingface/tokenizers encodes).
 *
 * Encoding never produces special ids from text: a literal "<im_start>" or "<s>" in a prompt is
 * tokenized as plain text, so a user cannot inject control tokens. Specials are placed by the
 * template (template.ts). Decoding is ours for both sources, piece by piece as bytes, so that the
 * full decode and the streaming decode share one definition:
 *   text = UTF-8 decode of the concatenated bytes of every non-special piece ("▁" -> " ",
 *   "<0xNN>" -> byte NN), with one leading space removed (SentencePiece's dummy prefix).
 * Invalid or unfinished byte sequences decode to U+FFFD, as TextDecoder does. (A tokenizer.json in
 * the newer Metaspace layout, prepend_scheme "first", lets a leading space replace the dummy prefix,
 * so " x" decodes to "x" there, exactly as in @huggingface/tokenizers; Vicuna's own file is legacy.)
 *
 * Encoding runs on our SentencePieceBpe (bpe.ts: the same ids, 4-7x faster than llama-tokenizer-js
 * on 16 KiB, so a maximal prompt does not hold the event loop long) for the bundled vocabulary and
 * for tokenizer.json files in the LLaMA layouts; any other tokenizer.json is encoded by
 * @huggingface/tokenizers.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { SentencePieceBpe } from './bpe.js';

export interface SpecialTokens {
  unk: number;
  bos: number;
  eos: number;
  imStart: number;
  imEnd: number;
  target: number;
}

/** The ids of the real model (LLaMA's unk/bos/eos, Setokim's three added tokens). */
export const LLAMA_SPECIALS: Readonly<SpecialTokens> = Object.freeze({
  unk: 0,
  bos: 1,
  eos: 2,
  imStart: 32000,
  imEnd: 32001,
  target: 32002,
});

const SPECIAL_TEXT: Record<keyof SpecialTokens, string> = {
  unk: '<unk>',
  bos: '<s>',
  eos: '</s>',
  imStart: '<im_start>',
  imEnd: '<im_end>',
  target: '<target>',
};

export interface EncodeOptions {
  /** Prepend the beginning-of-sequence id (default false). */
  bos?: boolean;
}

/** Streams text token by token: never emits half a character; deltas + flush() = decode(all ids). */
export interface IncrementalDecoder {
  /** The text this id completes (often '' while a multi-byte character is unfinished). */
  push(id: number): string;
  /** Ends the stream: bytes of an unfinished character come out as U+FFFD. */
  flush(): string;
}

export interface Tokenizer {
  readonly source: 'llama' | 'tokenizer.json';
  /** What encodes: our SentencePieceBpe (bpe.ts), or @huggingface/tokenizers for a tokenizer.json in another layout. */
  readonly encoder: 'bpe' | 'huggingface';
  /** One more than the largest id, specials included. */
  readonly vocabSize: number;
  readonly specials: Readonly<SpecialTokens>;
  /** SentencePiece encoding with the dummy-prefix space; never yields special ids from text. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Text of the ids; specials and ids outside the vocabulary (padded logits) contribute nothing. */
  decode(ids: readonly number[]): string;
  isSpecial(id: number): boolean;
  /** The vocabulary piece of an id ("▁Hello", "<0x0A>", "<im_start>"), undefined when out of range. */
  piece(id: number): string | undefined;
  incrementalDecoder(): IncrementalDecoder;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8 = new TextEncoder();

/** Shared by both sources: pieces by id, which ids are special, and the byte-level decoding. */
class PieceTokenizer implements Tokenizer {
  private readonly bytesCache = new Map<number, Uint8Array>();
  private readonly specialIds: Set<number>;
  readonly vocabSize: number;

  constructor(
    readonly source: 'llama' | 'tokenizer.json',
    readonly encoder: 'bpe' | 'huggingface',
    private readonly pieces: readonly (string | undefined)[],
    readonly specials: Readonly<SpecialTokens>,
    extraSpecialIds: Iterable<number>,
    private readonly encodeText: (text: string) => number[],
  ) {
    this.specialIds = new Set([...Object.values(specials), ...extraSpecialIds]);
    this.vocabSize = pieces.length;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = text.length === 0 ? [] : this.encodeText(text);
    return options.bos ? [this.specials.bos, ...ids] : ids;
  }

  decode(ids: readonly number[]): string {
    const decoder = this.incrementalDecoder();
    let text = '';
    for (const id of ids) text += decoder.push(id);
    return text + decoder.flush();
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  piece(id: number): string | undefined {
    return this.pieces[id];
  }

  /** The bytes an id stands for; empty for specials and unknown ids. */
  bytes(id: number): Uint8Array {
    let b = this.bytesCache.get(id);
    if (b) return b;
    const p = this.pieces[id];
    if (p === undefined || this.specialIds.has(id)) b = new Uint8Array(0);
    else {
      const m = BYTE_PIECE.exec(p);
      b = m ? Uint8Array.of(parseInt(m[1]!, 16)) : utf8.encode(p.replaceAll('\u2581', ' '));
    }
    this.bytesCache.set(id, b);
    return b;
  }

  incrementalDecoder(): IncrementalDecoder {
    // TextDecoder in stream mode holds back an unfinished UTF-8 sequence until its last byte.
    // ignoreBOM: a U+FEFF the model writes is text, not a byte-order mark to swallow.
    const td = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    let started = false; // whether any character has come out yet (for the dummy-prefix space)
    const emit = (s: string): string => {
      if (started || s.length === 0) return s;
      started = true;
      return s.startsWith(' ') ? s.slice(1) : s;
    };
    return {
      push: (id: number) => {
        const b = this.bytes(id);
        return b.length === 0 ? '' : emit(td.decode(b, { stream: true }));
      },
      flush: () => emit(td.decode()),
    };
  }
}

/** The LLaMA tokenizer bundled in llama-tokenizer-js, with Setokim's three specials after it. */
export async function loadLlamaTokenizer(): Promise<Tokenizer> {
  // Imported lazily: the module decodes its 32000-piece vocabulary when it loads.
  const { default: llama } = await import('llama-tokenizer-js');
  const pieces: (string | undefined)[] = [...llama.vocabById];
  if (pieces.length !== LLAMA_SPECIALS.imStart) {
    throw new SetokimError(ErrorCodes.INTERNAL, `llama-tokenizer-js has ${pieces.length} pieces, expected 32000`);
  }
  // The package's merges, in rank order ("left right" -> rank).
  const ranked = [...(llama.merges as Map<string, number>)].sort((a, b) => a[1] - b[1]);
  const merges = ranked.map(([pair]) => pair.split(' ') as [string, string]);
  const bpe = new SentencePieceBpe(pieces, merges, LLAMA_SPECIALS.unk);
  pieces.push(SPECIAL_TEXT.imStart, SPECIAL_TEXT.imEnd, SPECIAL_TEXT.target);
  // As llama.encode(text, false, true): SentencePiece's dummy prefix, spaces as "▁", no BOS.
  const encode = (text: string) => bpe.encode(`\u2581${text.replaceAll(' ', '\u2581')}`);
  return new PieceTokenizer('llama', 'bpe', pieces, LLAMA_SPECIALS, [], encode);
}

const METASPACE = '\u2581';

/** The parts of a tokenizer.json that llamaLayout reads; everything optional, checked where read. */
interface RawTokenizerJson {
  model?: {
    byte_fallback?: boolean;
    dropout?: number | null;
    ignore_merges?: boolean;
    continuing_subword_prefix?: string | null;
    end_of_word_suffix?: string | null;
    vocab: Record<string, number>;
    merges?: unknown;
  };
  normalizer?: RawStep & { normalizers?: RawStep[] };
  pre_tokenizer?: RawStep & { replacement?: string; split?: boolean; prepend_scheme?: string };
}
interface RawStep {
  type?: string;
  prepend?: string;
  pattern?: { String?: string };
  content?: string;
}

/**
 * How a tokenizer.json in one of the LLaMA layouts turns text into the string BPE runs on, or
 * undefined for any other layout (then @huggingface/tokenizers encodes): the legacy one (normalizer
 * Prepend "▁" then Replace " " -> "▁", no pre-tokenizer) or Metaspace ("▁", prepend_scheme first or
 * always, split false, no normalizer), with a byte-fallback BPE model and every byte piece.
 */
function llamaLayout(raw: RawTokenizerJson): ((text: string) => string) | undefined {
  const m = raw.model;
  const plainBpe = m?.byte_fallback === true && !m.dropout && !m.ignore_merges;
  if (!plainBpe || m.continuing_subword_prefix || m.end_of_word_suffix) return undefined;
  for (let b = 0; b < 256; b++) {
    if (!(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>` in m.vocab)) return undefined;
  }
  const n = raw.normalizer;
  const steps = n?.type === 'Sequence' ? n.normalizers : [n];
  const legacy =
    !raw.pre_tokenizer &&
    steps?.length === 2 &&
    steps[0]?.type === 'Prepend' &&
    steps[0].prepend === METASPACE &&
    steps[1]?.type === 'Replace' &&
    steps[1].pattern?.String === ' ' &&
    steps[1].content === METASPACE;
  if (legacy) return (text) => METASPACE + text.replaceAll(' ', METASPACE);
  const p = raw.pre_tokenizer;
  const metaspace =
    !n &&
    p?.type === 'Metaspace' &&
    p.replacement === METASPACE &&
    p.split === false &&
    (p.prepend_scheme === 'first' || p.prepend_scheme === 'always');
  if (metaspace) {
    return (text) => {
      const replaced = text.replaceAll(' ', METASPACE);
      return replaced.startsWith(METASPACE) ? replaced : METASPACE + replaced;
    };
  }
  return undefined;
}

/** A tokenizer.json's merges ("left right" strings or [left, right] pairs), or undefined if one has neither shape. */
function mergePairs(merges: unknown): [string, string][] | undefined {
  if (!Array.isArray(merges)) return undefined;
  const pairs: [string, string][] = [];
  for (const m of merges) {
    const pair = typeof m === 'string' ? m.split(' ') : m;
    const ok = Array.isArray(pair) && pair.length === 2 && typeof pair[0] === 'string' && typeof pair[1] === 'string';
    if (!ok) return undefined;
    pairs.push([pair[0], pair[1]]);
  }
  return pairs;
}

const AddedTokenSchema = z.object({
  id: z.number().int().nonnegative(),
  content: z.string(),
  special: z.boolean().optional(),
});
const TokenizerJsonSchema = z.looseObject({
  added_tokens: z.array(z.looseObject(AddedTokenSchema.shape)).default([]),
  model: z.looseObject({
    type: z.literal('BPE'),
    vocab: z.record(z.string(), z.number().int().nonnegative()),
  }),
  decoder: z.unknown(),
});

/** True for SentencePiece-style decoders (Metaspace, or Replace "▁" / ByteFallback in a Sequence). */
function isSentencePieceDecoder(decoder: unknown): boolean {
  const d = decoder as { type?: string; decoders?: unknown[]; pattern?: { String?: string } } | null;
  if (!d || typeof d !== 'object') return false;
  if (d.type === 'Metaspace' || d.type === 'ByteFallback') return true;
  if (d.type === 'Replace') return d.pattern?.String === '\u2581';
  if (d.type === 'Sequence') return (d.decoders ?? []).some(isSentencePieceDecoder);
  return false;
}

/** A real export's tokenizer.json (LLaMA-style SentencePiece BPE with Setokim's added tokens). */
export async function loadTokenizerJson(file: string): Promise<Tokenizer> {
  const invalid = (why: string, cause?: unknown) =>
    new SetokimError(
      ErrorCodes.MODEL_INVALID,
      `${file}: ${why}; export the tokenizer of the Setokim checkpoint again`,
      { cause },
    );
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw invalid('not readable JSON', err);
  }
  const parsed = TokenizerJsonSchema.safeParse(raw);
  if (!parsed.success) throw invalid(`not a BPE tokenizer.json (${parsed.error.issues[0]?.message ?? 'bad shape'})`);
  const json = parsed.data;
  if (!isSentencePieceDecoder(json.decoder)) throw invalid('its decoder is not SentencePiece-style (LLaMA)');

  const pieces: (string | undefined)[] = [];
  const idOf = new Map<string, number>();
  for (const [piece, id] of Object.entries(json.model.vocab)) {
    pieces[id] = piece;
    idOf.set(piece, id);
  }
  for (const t of json.added_tokens) {
    pieces[t.id] = t.content;
    idOf.set(t.content, t.id);
  }
  const specials = {} as SpecialTokens;
  for (const [key, text] of Object.entries(SPECIAL_TEXT) as [keyof SpecialTokens, string][]) {
    const id = idOf.get(text);
    if (id === undefined) throw invalid(`it has no ${text} token`);
    specials[key] = id;
  }

  const { Tokenizer: HfTokenizer } = await import('@huggingface/tokenizers');
  // Without added tokens the encoder cannot turn text such as "<im_start>" into a special id.
  let hf: InstanceType<typeof HfTokenizer>;
  try {
    hf = new HfTokenizer({ ...(raw as object), added_tokens: [] }, {});
  } catch (err) {
    throw invalid(`@huggingface/tokenizers refused it (${(err as Error).message})`, err);
  }
  const extra = json.added_tokens.filter((t) => t.special).map((t) => t.id);
  const normalize = llamaLayout(raw as RawTokenizerJson);
  const pairs = normalize && mergePairs((raw as RawTokenizerJson).model?.merges);
  if (normalize && pairs) {
    // The model's own vocabulary only: added tokens are never produced from text.
    const modelPieces: string[] = [];
    for (const [piece, id] of Object.entries(json.model.vocab)) modelPieces[id] = piece;
    const bpe = new SentencePieceBpe(modelPieces, pairs, specials.unk);
    return new PieceTokenizer('tokenizer.json', 'bpe', pieces, specials, extra, (text) => bpe.encode(normalize(text)));
  }
  const hfEncode = (text: string) => hf.encode(text, { add_special_tokens: false }).ids;
  return new PieceTokenizer('tokenizer.json', 'huggingface', pieces, specials, extra, hfEncode);
}

export type TokenizerSource = string | { kind: 'llama' };

export interface LoadTokenizerOptions {
  /** Special ids the model set's manifest declares; a tokenizer that disagrees is refused. */
  expect?: Readonly<SpecialTokens>;
}

/**
 * A model-set directory's tokenizer.json when it has one, else the bundled LLaMA vocabulary;
 * `{ kind: 'llama' }` always picks the bundled one.
 */
export async function loadTokenizer(source: TokenizerSource, options: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  let tok: Tokenizer;
  if (typeof source === 'string') {
    if (!existsSync(source) || !statSync(source).isDirectory()) {
      throw new SetokimError(ErrorCodes.MODEL_NOT_FOUND, `model set directory ${source} does not exist`);
    }
    const file = path.join(source, 'tokenizer.json');
    tok = existsSync(file) ? await loadTokenizerJson(file) : await loadLlamaTokenizer();
  } else {
    tok = await loadLlamaTokenizer();
  }
  const expect = options.expect;
  if (expect) {
    const wrong = (Object.keys(SPECIAL_TEXT) as (keyof SpecialTokens)[]).filter((k) => expect[k] !== tok.specials[k]);
    if (wrong.length > 0) {
      const detail = wrong
        .map((k) => `${SPECIAL_TEXT[k]} is ${tok.specials[k]}, manifest says ${expect[k]}`)
        .join('; ');
      throw new SetokimError(ErrorCodes.MODEL_INVALID, `the tokenizer does not match the model set: ${detail}`);
    }
  }
  return tok;
}
