/**
 * int4w's mixed precision (src/quant/sensitivity.ts): the pass measures each activation group's effect on
 * the stage outputs and keeps float16 the ones the budget buys, most sensitive per weight first. The
 * graph here has three MatMul groups of the same size, on three inputs of the same distribution, whose
 * outputs reach the graph output scaled by 10, 3 and 1, so their INT4 errors weigh about 100 : 9 : 1 in
 * the output, and the pass must find that order.
 */
import t from 'tap';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import type { Tensor } from '../../src/engine/backend.js';
import {
  Int4Rewrite,
  pick,
  planInt4,
  selectInt4,
  SensitivityPass,
  type Feeds,
  type KeptGroup,
} from '../../src/quant/index.js';
import { DT, node, onnx, tensor, type ModelProto } from '../../src/quant/onnx-model.js';
import { Rng } from '../../tools/export/onnx/random.js';

const K = 64;
const rng = new Rng(5);
const io = (name: string) =>
  onnx.ValueInfoProto.create({
    name,
    type: { tensorType: { elemType: DT.FLOAT, shape: { dim: [{ dimParam: 'r' }, { dimValue: K }] } } },
  });

/** y = 10 (x_loud W_loud) + 3 (x_mid W_mid) + x_quiet W_quiet: three groups, one activation each. */
function model(): ModelProto {
  const w = (name: string) => tensor(name, DT.FLOAT, [K, K], rng.uniform(K * K, 0.1));
  const c = (name: string, v: number) => tensor(name, DT.FLOAT, [1], Float32Array.of(v));
  return onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      name: 'three_groups',
      initializer: [w('w_loud'), w('w_mid'), w('w_quiet'), c('ten', 10), c('three', 3)],
      node: [
        node('MatMul', 'mm_loud', ['x_loud', 'w_loud'], ['a_loud']),
        node('MatMul', 'mm_mid', ['x_mid', 'w_mid'], ['a_mid']),
        node('MatMul', 'mm_quiet', ['x_quiet', 'w_quiet'], ['a_quiet']),
        node('Mul', 'scale_loud', ['a_loud', 'ten'], ['s_loud']),
        node('Mul', 'scale_mid', ['a_mid', 'three'], ['s_mid']),
        node('Add', 'add1', ['s_loud', 's_mid'], ['y1']),
        node('Add', 'add2', ['y1', 'a_quiet'], ['y']),
      ],
      input: [io('x_loud'), io('x_mid'), io('x_quiet')],
      output: [io('y')],
    },
  });
}

const m = model();
const input = (): Tensor => ({ dtype: 'float32', dims: [8, K], data: rng.uniform(8 * K, 2), location: 'host' });
const feeds: Feeds[] = Array.from({ length: 12 }, () => ({ x_loud: input(), x_mid: input(), x_quiet: input() }));
const backend = new OrtBackend({ threads: 1 });
const selection = selectInt4(m, 32);
const { plan } = await planInt4(backend, m, selection, feeds, { stage: 'test', threads: 1 });
const pass = (share: number) =>
  new SensitivityPass(backend, m, plan, feeds, { stage: 'test', threads: 1, share, form: 'dq' }).run();

t.test('three groups, one MatMul each, all INT4 before the pass', async (t) => {
  t.same([...selection.groups.keys()].sort(), ['x_loud', 'x_mid', 'x_quiet']);
  t.same(selection.kept, []);
});

t.test('a third of the weights (0.34): the loudest group stays float16, the rest INT4', async (t) => {
  const r = await pass(0.34);
  t.ok(r.budget >= K * K && r.budget < 2 * K * K, 'budget: one group of 64 x 64');
  t.equal(r.candidates, 3);
  t.same(
    r.kept.map((k) => k.activation),
    ['x_loud'],
  );
  t.same(
    r.plan.selection.kept.map((k) => k.weight),
    ['w_loud'],
  );
  t.notOk(r.plan.selection.groups.has('x_loud'), 'no longer an INT4 group');
  t.notOk(r.plan.multipliers.has('x_loud'), 'nor its AWQ multipliers');
  const { report } = new Int4Rewrite(m, r.plan, 'test').write('dq', { headsFp16: true });
  t.same(
    report.kept.map((k) => [k.name, k.bytesAfter]),
    [['w_loud', K * K * 2]],
    'written float16',
  );
  t.same(report.weights.map((w) => w.name).sort(), ['w_mid', 'w_quiet']);
  const all = await pass(1);
  const gains = ['x_loud', 'x_mid', 'x_quiet'].map((a) => all.kept.find((k) => k.activation === a)?.gain ?? NaN);
  t.ok(gains[0]! > 5 * gains[1]! && gains[1]! > 3 * gains[2]!, `gains ${gains.map((g) => g.toExponential(2))}`);
  t.ok(gains[0]! < r.errorAllInt4 && gains[0]! > 0.5 * r.errorAllInt4, 'the loud group is most of the error');
});

t.test('two thirds (0.67): the two loudest; all: every group; 0: none, nothing measured', async (t) => {
  t.same(
    (await pass(0.67)).kept.map((k) => k.activation),
    ['x_loud', 'x_mid'],
  );
  t.same((await pass(1)).kept.map((k) => k.activation).sort(), ['x_loud', 'x_mid', 'x_quiet']);
  const none = await pass(0);
  t.same(none.kept, []);
  t.equal(none.candidates, 0);
  t.equal(none.plan, plan, 'the plan as it was');
});

t.test('pick: the most total gain that fits, never a group that does not help', async (t) => {
  const g = (activation: string, gain: number, weights: number): KeptGroup => ({
    activation,
    matmuls: 1,
    gain,
    weights,
    extraBytes: 1.5 * weights,
  });
  const measured = [g('big', 10, 1000), g('dense', 4, 100), g('small', 1, 50), g('worse', -1, 10), g('zero', 0, 10)];
  const names = (budget: number) => pick(measured, budget).map((x) => x.activation);
  t.same(names(1000), ['big'], 'big alone (10) beats dense + small (5), though they gain more per weight');
  t.same(names(1100), ['big', 'dense']);
  t.same(names(1200), ['big', 'dense', 'small']);
  t.same(names(150), ['dense', 'small']);
  t.same(names(120), ['dense']);
  t.same(names(20), [], 'nothing that helps fits');
  const many = Array.from({ length: 40 }, (_, i) => g(`g${i}`, 1 + (i % 7), 3 + (i % 5)));
  const total = (gs: KeptGroup[]) => gs.reduce((n, x) => n + x.gain, 0);
  const chosen = pick(many, 30);
  t.ok(chosen.reduce((n, x) => n + x.weights, 0) <= 30, 'fits');
  // exhaustive check on a small instance
  const few = many.slice(0, 12);
  let bestGain = 0;
  for (let mask = 0; mask < 1 << few.length; mask++) {
    const set = few.filter((_, i) => mask & (1 << i));
    if (set.reduce((n, x) => n + x.weights, 0) <= 20) bestGain = Math.max(bestGain, total(set));
  }
  t.equal(total(pick(few, 20)), bestGain, `the best subset's gain, ${bestGain}`);
});
