import t from 'tap';
import { Prng, Sampler, StopMatcher } from '../../src/pipeline/sampler.js';
import { SetokimError } from '../../src/errors.js';

const logits = Float32Array.from([0.1, 2.0, 1.9, -3, 2.0, 0.5]);

t.test('greedy picks the highest logit, the lowest id on a tie', async (t) => {
  const s = new Sampler({ temperature: 0, topK: 0, topP: 1, seed: 1 });
  t.equal(s.sample(logits, 0, 6), 1);
  t.equal(s.sample(Float32Array.from([9, 0, 0, 1, 5]), 2, 3), 2, 'reads from the offset');
  t.equal(s.sample(logits, 0, 6, [2, 3, 5]), 2, 'restricted to allowed ids');
});

t.test('the same seed gives the same sequence; another seed a different one', async (t) => {
  const flat = new Float32Array(50).fill(0);
  const run = (seed: number) => {
    const s = new Sampler({ temperature: 1, topK: 0, topP: 1, seed });
    return Array.from({ length: 40 }, () => s.sample(flat, 0, 50));
  };
  t.same(run(7), run(7));
  t.not(run(7).join(), run(8).join());
  const a = run(7);
  t.ok(new Set(a).size > 10, 'uniform logits spread over many ids');
});

t.test('top-k keeps only the k best ids', async (t) => {
  const s = new Sampler({ temperature: 5, topK: 2, topP: 1, seed: 3 });
  const seen = new Set(Array.from({ length: 200 }, () => s.sample(logits, 0, 6)));
  t.same([...seen].sort(), [1, 4], 'the two tied best ids only');
});

t.test('top-p keeps the smallest set reaching p', async (t) => {
  // probabilities at T=1: id0 ~ 0.64, id1 ~ 0.24, id2 ~ 0.09, id3 ~ 0.03
  const l = Float32Array.from([3, 2, 1, 0]);
  const s = new Sampler({ temperature: 1, topK: 0, topP: 0.8, seed: 11 });
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 2000; i++) counts[s.sample(l, 0, 4)]!++;
  t.equal(counts[2], 0);
  t.equal(counts[3], 0);
  const ratio = counts[0]! / counts[1]!;
  t.ok(ratio > 2.2 && ratio < 3.3, `id0/id1 = ${ratio.toFixed(2)}, expected e ~ 2.72`);
});

t.test('bad parameters are BAD_ARGUMENT', async (t) => {
  t.throws(() => new Sampler({ temperature: -1, topK: 0, topP: 1, seed: 0 }), SetokimError);
  t.throws(() => new Sampler({ temperature: 1, topK: 0, topP: 0, seed: 0 }), SetokimError);
  t.throws(() => new Sampler({ temperature: 1, topK: 1.5, topP: 1, seed: 0 }), SetokimError);
});

t.test('Prng normals have mean ~0 and variance ~1', async (t) => {
  const r = new Prng(42);
  const xs = Array.from({ length: 20000 }, () => r.normal());
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
  t.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
  t.ok(Math.abs(v - 1) < 0.05, `variance ${v}`);
});

t.test('StopMatcher holds back a possible stop prefix and cuts at the stop string', async (t) => {
  const m = new StopMatcher(['###', 'USER:']);
  t.same(m.push('Hello #'), { emit: 'Hello ', stopped: false });
  t.same(m.push('# there'), { emit: '## there', stopped: false });
  t.same(m.push(' US'), { emit: ' ', stopped: false });
  t.same(m.push('ER: next'), { emit: 'US'.slice(0, 0), stopped: true });
  const n = new StopMatcher(['END']);
  t.same(n.push('abcE'), { emit: 'abc', stopped: false });
  t.equal(n.flush(), 'E');
  t.same(new StopMatcher([]).push('x'), { emit: 'x', stopped: false });
});
