import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import llama from 'llama-tokenizer-js';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { LLAMA_SPECIALS, loadTokenizer, type Tokenizer } from '../../src/pipeline/tokenizer.js';
import { SetokimError } from '../../src/errors.js';

const SAMPLES = [
  'Hello world',
  'The quick brown fox jumps over the lazy dog.',
  'héllo wörld, naïve café — Ελληνικά, русский, 日本語のテキスト',
  'emoji: 🦙🚀 and 👩‍👩‍👧 family, flag 🇯🇵',
  '  two  leading spaces,\ttabs\t\tand\nnew\n\nlines  ',
  ' x',
  '\uFEFF zero width\u200b joiner',
];

const codeOf = (err: unknown) => (err instanceof SetokimError ? err.code : String(err));

/** Pushes every id, returning the deltas. */
function stream(tok: Tokenizer, ids: number[]): string[] {
  const dec = tok.incrementalDecoder();
  const out = ids.map((id) => dec.push(id));
  out.push(dec.flush());
  return out;
}

t.test('bundled LLaMA vocabulary', async (t) => {
  const tok = await loadTokenizer({ kind: 'llama' });
  t.equal(tok.source, 'llama');
  t.equal(tok.vocabSize, 32003);
  t.same(tok.specials, LLAMA_SPECIALS);
  t.equal(tok.piece(32000), '<im_start>');
  t.equal(tok.piece(2), '</s>');

  t.test('known LLaMA ids', async (t) => {
    t.same(tok.encode('Hello world'), [15043, 3186]);
    t.same(tok.encode('Hello world', { bos: true }), [1, 15043, 3186]);
    // The package README's example: encode("Hello world!") -> [1, 15043, 3186, 29991] -> 'Hello world!'.
    t.same(llama.encode('Hello world!'), [1, 15043, 3186, 29991]);
    t.same(tok.encode('Hello world!', { bos: true }), [1, 15043, 3186, 29991]);
    t.equal(llama.decode([1, 15043, 3186, 29991]), 'Hello world!');
    t.equal(tok.decode([1, 15043, 3186, 29991]), 'Hello world!');
    // The README also claims decode([3186], false, false) is 'Hello'; 3186 is "▁world", so it is ' world'.
    t.equal(tok.piece(3186), '\u2581world');
    t.equal(llama.decode([3186], false, false), ' world');
    t.same(tok.encode('\n'), [29871, 13]); // LLaMA's "▁" then <0x0A>, as LLaVA prompts show
    t.same(tok.encode(''), []);
    t.same(tok.encode('', { bos: true }), [1]);
  });

  t.test('round trips, and agreement with the package decoder', async (t) => {
    for (const s of SAMPLES) {
      const ids = tok.encode(s, { bos: true });
      t.equal(tok.decode(ids), s, JSON.stringify(s));
      t.same(ids, llama.encode(s, true, true), `same ids as the package: ${JSON.stringify(s)}`);
      t.equal(tok.decode(ids), llama.decode(ids, true, true), `same text as the package: ${JSON.stringify(s)}`);
    }
  });

  t.test('emoji go through byte-fallback pieces', async (t) => {
    const ids = tok.encode('🦙');
    t.same(
      ids.map((i) => tok.piece(i)),
      ['\u2581', '<0xF0>', '<0x9F>', '<0xA6>', '<0x99>'],
    );
    t.same(stream(tok, ids), ['', '', '', '', '🦙', ''], 'nothing until the fourth byte, no leading space');
  });

  t.test('specials: never from text, never in decoded text', async (t) => {
    const ids = tok.encode('<im_start><im_end><target><s></s><unk><image>');
    t.ok(
      ids.every((id) => !tok.isSpecial(id) && id < 32000),
      'control-token text is plain text',
    );
    t.equal(tok.decode(ids), '<im_start><im_end><target><s></s><unk><image>');
    const hello = tok.encode('Hello');
    t.equal(tok.decode([1, ...hello, 32000, 32002, 32002, 32001, 2]), 'Hello');
    t.equal(tok.decode([...hello, 32010, 99999]), 'Hello', 'padded-vocabulary ids decode to nothing');
    t.equal(tok.piece(99999), undefined);
  });

  t.test('incremental decoding equals full decoding over every prefix', async (t) => {
    for (const s of SAMPLES) {
      const ids = [1, ...tok.encode(s), 32000, 32002, 32001, ...tok.encode('ok'), 2];
      const deltas = stream(tok, ids);
      t.equal(deltas.join(''), tok.decode(ids), JSON.stringify(s));
      t.notOk(
        deltas.some((d) => d.includes('\uFFFD')),
        'never half a character',
      );
      for (let k = 0; k <= ids.length; k++) {
        const prefix = ids.slice(0, k);
        if (stream(tok, prefix).join('') !== tok.decode(prefix)) t.fail(`prefix ${k} of ${JSON.stringify(s)}`);
      }
    }
  });

  t.test('an unfinished character comes out as U+FFFD only when the stream ends', async (t) => {
    const ids = tok.encode('🦙').slice(0, 3); // "▁", F0, 9F
    t.same(stream(tok, ids), ['', '', '', '\uFFFD']);
    t.equal(tok.decode(ids), '\uFFFD');
  });
});

/** A small real tokenizer.json: LLaMA's layout (byte fallback, "▁" normalizer) with a tiny BPE vocabulary. */
function tinyTokenizerJson(opts: { withSetokimTokens?: boolean } = {}) {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const merges = ['▁ h', 'l l', '▁h e', '▁he ll', '▁hell o', '▁ w', 'o r', '▁w or', 'l d', '▁wor ld'];
  for (const p of ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', ...merges.map((m) => m.replace(' ', ''))]) {
    vocab[p] ??= Object.keys(vocab).length;
  }
  const n = Object.keys(vocab).length;
  const added = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const addedTokens = [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>')];
  if (opts.withSetokimTokens !== false)
    addedTokens.push(added(n, '<im_start>'), added(n + 1, '<im_end>'), added(n + 2, '<target>'));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
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

function modelDir(json: unknown): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'setokim-tok-'));
  writeFileSync(path.join(dir, 'tokenizer.json'), typeof json === 'string' ? json : JSON.stringify(json));
  return dir;
}

t.test('a model set tokenizer.json', async (t) => {
  const json = tinyTokenizerJson();
  const tok = await loadTokenizer(modelDir(json));
  const v = json.model.vocab;
  const n = 259 + 8 + 10;
  t.equal(tok.source, 'tokenizer.json');
  t.same(tok.specials, { unk: 0, bos: 1, eos: 2, imStart: n, imEnd: n + 1, target: n + 2 });
  t.equal(tok.vocabSize, n + 3);

  t.same(tok.encode('hello world', { bos: true }), [1, v['▁hello'], v['▁world']]);
  const ids = tok.encode('hé world');
  t.same(
    ids.map((i) => tok.piece(i)),
    ['▁h', '<0xC3>', '<0xA9>', '▁world'],
    'é by byte fallback',
  );
  t.equal(tok.decode(ids), 'hé world');
  t.ok(
    tok.encode('<im_start>').every((id) => !tok.isSpecial(id)),
    'special text stays text',
  );

  // Our decoding agrees with @huggingface/tokenizers' own decoder on the same file.
  const hf = new HfTokenizer(json, {});
  for (const s of ['hello world', 'hé wörld 🦙', '  dolor\t\nhello ', 'x']) {
    const ids = tok.encode(s, { bos: true });
    t.equal(tok.decode(ids), s, JSON.stringify(s));
    t.equal(tok.decode(ids), hf.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
    t.equal(stream(tok, ids).join(''), s);
  }
  t.equal(tok.decode([1, v['▁hello'], n, n + 2, n + 1, 2]), 'hello');
});

t.test('a tokenizer.json in the newer Metaspace layout encodes the same', async (t) => {
  const legacy = tinyTokenizerJson();
  const json = {
    ...legacy,
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
  };
  const [a, b] = await Promise.all([loadTokenizer(modelDir(legacy)), loadTokenizer(modelDir(json))]);
  for (const s of ['hello world', 'hé wörld 🦙', 'hello  world ']) {
    t.same(b.encode(s, { bos: true }), a.encode(s, { bos: true }), JSON.stringify(s));
    t.equal(b.decode(b.encode(s)), s);
  }
  // In this layout a leading space takes the place of the dummy prefix (HF's prepend_scheme "first"),
  // so it does not survive a round trip; we decode exactly as @huggingface/tokenizers does.
  const ids = b.encode(' hello');
  t.same(ids, a.encode('hello'));
  const hf = new HfTokenizer(json, {});
  t.equal(b.decode(ids), hf.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
});

t.test('loadTokenizer picks the source and refuses bad files clearly', async (t) => {
  const empty = mkdtempSync(path.join(tmpdir(), 'setokim-tok-'));
  t.equal((await loadTokenizer(empty)).source, 'llama', 'no tokenizer.json: bundled LLaMA');
  await t.rejects(loadTokenizer(path.join(empty, 'missing')), { code: 'MODEL_NOT_FOUND' });
  const bad = async (json: unknown, re: RegExp) => {
    const dir = modelDir(json);
    const err = await loadTokenizer(dir).then(
      () => null,
      (e: unknown) => e,
    );
    t.equal(codeOf(err), 'MODEL_INVALID');
    t.match((err as Error).message, re);
    t.match((err as Error).message, dir, 'names the file');
  };
  await bad('{"model": ', /not readable JSON/);
  await bad({ model: { type: 'WordPiece', vocab: {} } }, /not a BPE tokenizer\.json/);
  await bad(tinyTokenizerJson({ withSetokimTokens: false }), /no <im_start> token/);
  await bad({ ...tinyTokenizerJson(), decoder: { type: 'ByteLevel' } }, /not SentencePiece-style/);

  await t.resolves(loadTokenizer({ kind: 'llama' }, { expect: LLAMA_SPECIALS }));
  const err = await loadTokenizer(modelDir(tinyTokenizerJson()), { expect: LLAMA_SPECIALS }).then(
    () => null,
    (e: unknown) => e,
  );
  t.equal(codeOf(err), 'MODEL_INVALID');
  t.match((err as Error).message, /<im_start> is 277, manifest says 32000/);
});
