/**
 * The LLM graph's fixed-capacity KV cache: decoding one token at a time, or prefilling in two
 * pieces (a cached prefix, then the rest), gives what one prefill of all the tokens gives; rows
 * past `past_length` have no influence; positions come from `past_length`, not from the cache's size.
 */
import t, { type Test } from 'tap';
import ort from 'onnxruntime-node';
import type { Architecture } from '../../src/engine/contract.js';
import { headDim } from '../../src/engine/contract.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { Rng } from '../../tools/export/onnx/random.js';
import { buildLlm } from '../../tools/export/stages/llm.js';
import { data, f32, i64, maxAbsDiff, randn, session } from './helpers.js';

/** One layer's cache as the runtime keeps it: [1, kvHeads, capacity, hd], rows written at an offset. */
class Cache {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  constructor(
    private readonly a: Architecture,
    readonly capacity: number,
    garbageSeed: number,
  ) {
    const n = a.llm.kvHeads * capacity * headDim(a);
    // Unwritten rows hold noise: the graph must mask them, whatever they hold.
    this.keys = Array.from({ length: a.llm.layers }, (_, l) => randn(n, garbageSeed + l, 3));
    this.values = Array.from({ length: a.llm.layers }, (_, l) => randn(n, garbageSeed + 100 + l, 3));
  }

  feeds(pastLength: number): Record<string, ort.Tensor> {
    const out: Record<string, ort.Tensor> = { past_length: i64([pastLength], [1]) };
    const dims = [1, this.a.llm.kvHeads, this.capacity, headDim(this.a)];
    this.keys.forEach((k, l) => (out[`past_keys.${l}`] = f32(k, dims)));
    this.values.forEach((v, l) => (out[`past_values.${l}`] = f32(v, dims)));
    return out;
  }

  /** Writes the run's new rows (T of them) at row `at`. */
  write(out: Record<string, ort.Tensor>, at: number): void {
    const hd = headDim(this.a);
    for (let l = 0; l < this.a.llm.layers; l++) {
      for (const [dst, name] of [
        [this.keys[l]!, `new_keys.${l}`],
        [this.values[l]!, `new_values.${l}`],
      ] as const) {
        const src = data(out[name]);
        const T = out[name]!.dims[2]!;
        for (let h = 0; h < this.a.llm.kvHeads; h++)
          dst.set(src.subarray(h * T * hd, (h + 1) * T * hd), (h * this.capacity + at) * hd);
      }
    }
  }
}

async function check(t: Test, a: Architecture) {
  const s = await session(buildLlm(a, new Rng(5)));
  t.teardown(() => s.release());
  const { hidden: H, layers, kvHeads, vocab } = a.llm;
  const hd = headDim(a);
  const n = 7;
  const embeds = randn(n * H, 6, 1);
  const rows = (from: number, count: number) => f32(embeds.subarray(from * H, (from + count) * H), [1, count, H]);
  const empty = new Cache(a, 0, 0);
  const prefill = (count: number) => s.run({ inputs_embeds: rows(0, count), ...empty.feeds(0) });
  const full = await prefill(n);
  t.same(full.logits!.dims, [1, 1, vocab], 'logits of the last position only');
  t.same(full.hidden!.dims, [1, 1, H]);
  t.same(full['new_keys.0']!.dims, [1, kvHeads, n, hd]);
  t.equal(Object.keys(full).filter((k) => k.startsWith('new_')).length, 2 * layers);

  // prefill 3 into a cache of n + 2 rows, then decode the other 4 one at a time
  const cache = new Cache(a, n + 2, 11);
  const first = 3;
  let out = await s.run({ inputs_embeds: rows(0, first), ...cache.feeds(0) });
  t.ok(
    maxAbsDiff(data(out.hidden), data((await prefill(first)).hidden)) < 1e-4,
    'a shorter prefill is the prefix of the longer (causal; unwritten rows masked)',
  );
  cache.write(out, 0);
  let maxHidden = 0;
  let maxLogit = 0;
  for (let i = first; i < n; i++) {
    out = await s.run({ inputs_embeds: rows(i, 1), ...cache.feeds(i) });
    t.same(out['new_keys.0']!.dims, [1, kvHeads, 1, hd], 'one new row per decode step');
    cache.write(out, i);
    const ref = await prefill(i + 1);
    maxHidden = Math.max(maxHidden, maxAbsDiff(data(out.hidden), data(ref.hidden)));
    maxLogit = Math.max(maxLogit, maxAbsDiff(data(out.logits), data(ref.logits)));
  }
  t.ok(maxHidden < 1e-4, `decode hidden = prefill hidden (max diff ${maxHidden.toExponential(2)})`);
  t.ok(maxLogit < 1e-4, `decode logits = prefill logits (max diff ${maxLogit.toExponential(2)})`);
  const written = (c: Cache, l: number) =>
    Array.from({ length: kvHeads }, (_, h) =>
      Array.from(c.keys[l]!.subarray(h * c.capacity * hd, (h * c.capacity + n) * hd)),
    ).flat();
  const prefillKeys = Array.from(data(full['new_keys.1']));
  t.ok(maxAbsDiff(written(cache, 1), prefillKeys) < 1e-4, 'the rows written by decoding = the prefill rows');

  // a cached prefix of 4 rows, then the other 3 tokens prefilled at once on top of it
  const split = new Cache(a, n, 23);
  split.write(await s.run({ inputs_embeds: rows(0, 4), ...split.feeds(0) }), 0);
  const rest = await s.run({ inputs_embeds: rows(4, n - 4), ...split.feeds(4) });
  t.ok(maxAbsDiff(data(rest.logits), data(full.logits)) < 1e-4, 'prefix + rest = one prefill');

  // rows past past_length have no influence; the position does
  const other = new Cache(a, n + 2, 99);
  other.write(await s.run({ inputs_embeds: rows(0, first), ...other.feeds(0) }), 0);
  const a1 = await s.run({ inputs_embeds: rows(first, 1), ...cache.feeds(first) });
  const a2 = await s.run({ inputs_embeds: rows(first, 1), ...other.feeds(first) });
  t.ok(maxAbsDiff(data(a1.logits), data(a2.logits)) < 1e-5, 'different noise in unwritten rows, same answer');
  const shifted = await s.run({ inputs_embeds: rows(0, 1), ...cache.feeds(n) });
  t.ok(maxAbsDiff(data(shifted.hidden), data((await prefill(1)).hidden)) > 1e-3, 'the past changes the output');
}

t.test('tiny (multi-head attention)', (t) => check(t, CONFIGS.tiny));
t.test('grouped-query attention (kvHeads < heads)', (t) =>
  check(t, { ...CONFIGS.tiny, llm: { ...CONFIGS.tiny.llm, kvHeads: 2 } }),
);
