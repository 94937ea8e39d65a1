/**
 * Our SentencePiece BPE (src/pipeline/bpe.ts) gives the ids of the two reference encoders: the
 * bundled llama-tokenizer-js and @huggingface/tokenizers reading the same LLaMA vocabulary as a
 * tokenizer.json (both LLaMA layouts), on seeded random texts with the cases that matter (runs of
 * spaces, byte fallback, emoji, tabs and newlines, long runs without a space). Its speed is in
 * bench/agent.ts (tokenising a maximal prompt).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import llama from 'llama-tokenizer-js';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { loadTokenizer } from '../../src/pipeline/tokenizer.js';

const WORDS = [
  'the',
  'quick',
  'brown',
  'fox',
  'é',
  '漢字',
  'tt',
  '\n',
  'a\tb',
  '😀',
  'Ünïcödé',
  '\u2581',
  '<s>',
  'aaaa',
  '1234567',
  'hello,world',
  '👩‍👩‍👧',
  '\uFEFF',
  '\u0000',
];

/** Seeded texts: words with one, two or no spaces between, some from random code points. */
function texts(count: number, seed: number): string[] {
  let x = seed;
  const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
  return Array.from({ length: count }, () => {
    if (rnd() < 0.2) return String.fromCodePoint(...Array.from({ length: 24 }, () => 32 + Math.floor(rnd() * 3000)));
    let s = rnd() < 0.2 ? ' ' : '';
    for (let n = 1 + Math.floor(rnd() * 24); n > 0; n--)
      s += WORDS[Math.floor(rnd() * WORDS.length)] + (rnd() < 0.6 ? ' ' : rnd() < 0.5 ? '  ' : '');
    return s;
  });
}

/** The LLaMA vocabulary and merges of llama-tokenizer-js as a tokenizer.json in a layout. */
function llamaJson(layout: 'legacy' | 'metaspace'): Record<string, unknown> {
  const vocab = Object.fromEntries((llama.vocabById as string[]).map((p, i) => [p, i]));
  const merges = [...(llama.merges as Map<string, number>)].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
  const added = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const metaspace = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false };
  return {
    version: '1.0',
    added_tokens: [
      added(0, '<unk>'),
      added(1, '<s>'),
      added(2, '</s>'),
      added(32000, '<im_start>'),
      added(32001, '<im_end>'),
      added(32002, '<target>'),
    ],
    normalizer:
      layout === 'legacy'
        ? {
            type: 'Sequence',
            normalizers: [
              { type: 'Prepend', prepend: '▁' },
              { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
            ],
          }
        : null,
    pre_tokenizer: layout === 'legacy' ? null : metaspace,
    post_processor: null,
    decoder:
      layout === 'legacy'
        ? {
            type: 'Sequence',
            decoders: [
              { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
              { type: 'ByteFallback' },
              { type: 'Fuse' },
            ],
          }
        : metaspace,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
}

t.test('the bundled vocabulary: the ids of llama-tokenizer-js', async (t) => {
  const tok = await loadTokenizer({ kind: 'llama' });
  t.equal(tok.encoder, 'bpe');
  let differ = 0;
  for (const s of texts(1500, 7)) if (tok.encode(s).join() !== llama.encode(s, false, true).join()) differ++;
  t.equal(differ, 0, 'the same ids on 1500 texts');
  for (const s of ['ab'.repeat(300), 'a'.repeat(700), '漢字テキスト'.repeat(100), ' '.repeat(50) + 'x']) {
    t.same(tok.encode(s), llama.encode(s, false, true), `a long run: ${JSON.stringify(s.slice(0, 12))}...`);
  }
});

for (const layout of ['legacy', 'metaspace'] as const) {
  t.test(`a LLaMA tokenizer.json (${layout} layout): the ids of @huggingface/tokenizers`, async (t) => {
    const json = llamaJson(layout);
    const dir = mkdtempSync(path.join(tmpdir(), 'setokim-bpe-'));
    writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json));
    const tok = await loadTokenizer(dir);
    t.equal(tok.encoder, 'bpe', 'encoded by our BPE, not by @huggingface/tokenizers');
    const hf = new HfTokenizer({ ...json, added_tokens: [] }, {});
    let differ = 0;
    // @huggingface/tokenizers is slow: fewer texts than above.
    for (const s of texts(150, 11))
      if (tok.encode(s).join() !== hf.encode(s, { add_special_tokens: false }).ids.join()) differ++;
    t.equal(differ, 0, 'the same ids on 150 texts');
  });
}
