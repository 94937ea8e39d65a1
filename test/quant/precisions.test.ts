/**
 * `setokim export quantize --precision fp16 | int4w` end to end on the tiny set: the variants and
 * their dialects in the manifest, the INT4 weights within half a step of the fp32 weights they were
 * built from (both dialects holding the same values), every written graph against TensorRT's ONNX
 * parser support matrix, the planner's bytes against the written files, the TensorRT dialect as
 * what `export engine` builds from, and `setokim run --precision` answering with each.
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { STAGES } from '../../src/engine/contract.js';
import { ModelSet } from '../../src/engine/modelset.js';
import { decodeModel, floatValues, readInt4Weight } from '../../src/quant/index.js';
import { DT } from '../../src/quant/onnx-model.js';
import { inferTypes } from '../../src/quant/op-types.js';
import { checkTensorRtSupport } from '../../src/quant/tensorrt-support.js';
import { engineSources } from '../../tools/export/engine.js';
import { planModelSet } from '../../tools/export/plan.js';
import { runCli } from '../helpers/cli.js';
import { busyImage, tinySet } from '../pipeline/fixtures.js';

const fixture = await tinySet();
t.teardown(fixture.cleanup);
const dir = fixture.dir;
const load = async (file: string) => decodeModel(new Uint8Array(await readFile(path.join(dir, file))));

const fp16 = await runCli([
  'export',
  'quantize',
  '--models',
  dir,
  '--precision',
  'fp16',
  '--calibration-images',
  '2',
  '--no-progress',
]);
const int4 = await runCli([
  'export',
  'quantize',
  '--models',
  dir,
  '--precision',
  'int4w',
  '--calibration-images',
  '2',
  '--no-progress',
]);

t.test('fp16: one variant per stage for every backend, each within 1% of fp32 on held-out inputs', async (t) => {
  t.equal(fp16.status, 0, fp16.err);
  const set = await ModelSet.open(dir); // verifies every listed file
  for (const s of STAGES) {
    const v = set.variants(s).find((x) => x.precision === 'fp16');
    t.same(v && [v.file, v.dialect], [`${s}.fp16.onnx`, undefined], `${s}: ${s}.fp16.onnx, no dialect`);
    const line = fp16.out.split('\n').find((l) => l.startsWith(`${s}:`)) ?? '';
    const m = /max rel error ([\d.e+-]+), cosine ([\d.]+)/.exec(line);
    t.ok(m && Number(m[1]) < 0.01 && Number(m[2]) > 0.9999, line);
  }
  t.match(fp16.out, /^llm: fp16, float32 kept for 5 Pow, 5 ReduceMean, 5 Add, 5 Sqrt, 2 Softmax/m);
});

t.test(
  'int4w: the LLM in two dialects (float32 and float16 compute), the other stages as fp16 for TensorRT',
  async (t) => {
    t.equal(int4.status, 0, int4.err);
    const set = await ModelSet.open(dir);
    const llm = set.variants('llm').filter((v) => v.precision === 'int4w');
    t.same(
      llm.map((v) => [v.file, v.dialect]),
      [
        ['llm.int4w.onnx', 'onnxruntime'],
        ['llm.int4w.trt.onnx', 'tensorrt'],
      ],
    );
    t.equal(set.stagePath('llm', 'int4w', 'onnxruntime'), path.join(dir, 'llm.int4w.onnx'));
    t.equal(set.stagePath('llm', 'int4w', 'tensorrt'), path.join(dir, 'llm.int4w.trt.onnx'));
    for (const s of STAGES.filter((x) => x !== 'llm')) {
      t.same(
        set
          .variants(s)
          .filter((v) => v.precision === 'int4w')
          .map((v) => [v.file, v.dialect]),
        [[`${s}.int4w.trt.onnx`, 'tensorrt']],
        s,
      );
    }
    const line = int4.out.split('\n').find((l) => l.startsWith('llm:')) ?? '';
    // of the 14 MatMuls one is measured most sensitive and fits the default budget (6% of the INT4 weights)
    t.match(line, /13 MatMuls INT4 \(block 64\/16; AWQ scales on \d+ of 7 inputs.*; GPTQ on 7 of 7\)/);
    t.match(line, /lm_head\/weight fp16; fp16 where INT4 moved the output most: [\w./]+ \(1 MatMul, \+5\.9 KiB\)/);
    // the ONNX Runtime dialect computes in float32 (float16 is slow on a CPU), the TensorRT one in float16
    for (const [file, type] of [
      ['llm.int4w.onnx', DT.FLOAT],
      ['llm.int4w.trt.onnx', DT.FLOAT16],
    ] as const) {
      const g = (await load(file)).graph!;
      const types = inferTypes(g);
      const mms = g.node!.filter(
        (n) =>
          n.opType === 'MatMul' && g.node!.some((d) => d.opType === 'DequantizeLinear' && d.output![0] === n.input![1]),
      );
      t.equal(mms.length, 13, `${file}: 13 MatMuls read dequantised INT4 weights`);
      const fp16 = g.node!.filter(
        (n) =>
          n.opType === 'MatMul' && /_fp16$/.test(g.node!.find((d) => d.output![0] === n.input![1])?.input?.[0] ?? ''),
      );
      if (type === DT.FLOAT) t.equal(fp16.length, 2, `${file}: lm_head and the kept MatMul read float16 weights`);
      t.ok(
        mms.every((n) => types.get(n.input![0]!) === type && types.get(n.input![1]!) === type),
        `${file}: in ${type === DT.FLOAT ? 'float32' : 'float16'}`,
      );
    }
    const lmHead = (await load('llm.int4w.onnx')).graph!.initializer!.find((x) => x.name === 'lm_head/weight_fp16');
    t.equal(lmHead?.dataType, DT.FLOAT16, 'lm_head stored float16 (behind a Cast) in the ONNX Runtime dialect');
    const cos = [
      ...line.matchAll(
        /llm\.int4w(\.trt)?\.onnx \((onnxruntime|tensorrt)\): .*? worst output [\w.]+: max rel error [\d.e+-]+, cosine ([\d.]+)/g,
      ),
    ].map((m) => Number(m[3]));
    t.equal(cos.length, 2, 'both dialects checked against fp32');
    // The worst output is a layer's new keys: since the fixed-cache contract the LLM returns one step's rows, not
    // whole caches whose copied past rows matched exactly (new_keys.1 measures 0.9889 and 0.9891 on tiny).
    t.ok(
      cos.every((c) => c > 0.985),
      `worst output cosine ${cos.join(', ')}`,
    );
    t.ok(
      set.variants('llm').find((v) => v.file === 'llm.int4w.onnx')!.bytes < 0.5 * set.variants('llm')[0]!.bytes,
      'the int4w LLM is under half the fp32 file (lm_head fp16 is half of it on tiny)',
    );
  },
);

t.test(
  'the INT4 weights dequantise to within 3 half-steps of the fp32 weights (GPTQ); both dialects hold the same values',
  async (t) => {
    const fp32 = await load('llm.onnx');
    const trt = await load('llm.int4w.trt.onnx');
    const ort = await load('llm.int4w.onnx');
    const w32 = new Map(fp32.graph!.initializer!.map((x) => [x.name!, x]));
    const ortInits = new Map(ort.graph!.initializer!.map((x) => [x.name!, x]));
    const dqs = trt.graph!.node!.filter((n) => n.opType === 'DequantizeLinear');
    t.equal(dqs.length, 13, 'one DequantizeLinear per INT4 weight (the 14th MatMul kept float16)');
    let worst = 0;
    for (const dq of dqs) {
      const name = dq.output![0]!;
      const q = readInt4Weight(trt, name);
      const w = floatValues(w32.get(name)!);
      for (let k = 0; k < q.K; k++) {
        const m = q.multipliers ? q.multipliers[k]! : 1;
        for (let n = 0; n < q.N; n++) {
          const s = q.scales[Math.floor(k / q.block) * q.N + n]!;
          worst = Math.max(worst, Math.abs(w[k * q.N + n]! - m * q.q[k * q.N + n]! * s) / ((m * s) / 2));
        }
      }
      // the ONNX Runtime dialect holds the same values (its scales and multipliers as float32)
      const o = readInt4Weight(ort, name);
      const same =
        o.block === q.block && o.q.every((v, i) => v === q.q[i]) && o.scales.every((v, i) => v === q.scales[i]);
      const sameM = (o.multipliers ?? []).every((v, i) => v === q.multipliers![i]) && !o.multipliers === !q.multipliers;
      t.ok(same && sameM, `${name}: the same INT4 values, scales and multipliers in both dialects`);
      if (ortInits.get(dq.input?.[1] ?? '')?.dataType === DT.FLOAT16)
        t.fail('the ONNX Runtime dialect stores float32 scales');
    }
    // GPTQ rounds the error-updated weights to within half a step, so against the fp32 weights the error it moved
    // onto later rows shows (2.03 half-steps measured); a wrong scale, block or nibble order is far beyond 3
    t.ok(worst <= 3, `worst |w - m q s| / (m s / 2) = ${worst.toFixed(5)} over every INT4 weight (GPTQ: <= 3)`);
  },
);

t.test('every written graph against TensorRT 10.3 and 11.1 ONNX parser support', async (t) => {
  const set = await ModelSet.open(dir, { verify: false });
  for (const s of STAGES) {
    for (const v of set.variants(s)) {
      const m = await load(v.file);
      for (const version of ['10.3', '11.1']) {
        const f = checkTensorRtSupport(m, version);
        const errors = f.filter((x) => x.severity === 'error');
        const warnings = f.filter((x) => x.severity === 'warning');
        t.same(errors, [], `${v.file} on ${version}: no errors`);
        const opset21 = /^llm\.int4w/.test(v.file) && version === '10.3';
        t.same(
          warnings.map((w) => /opset 21 is above the documented 9-20/.test(w.message)),
          opset21 ? [true] : [],
          `${v.file} on ${version}: ${opset21 ? "opset 21 is beyond 10.x's documented range" : 'no warnings'}`,
        );
      }
    }
  }
});

t.test("the planner's weight bytes are the written files' (fp16, int4w TensorRT dialect) within 5%", async (t) => {
  const set = await ModelSet.open(dir, { verify: false });
  for (const precision of ['fp16', 'int4w'] as const) {
    const p = planModelSet(set.architecture, { precision, tokens: 8, context: 256 });
    for (const s of STAGES) {
      const file = set.stagePath(s, precision, 'tensorrt');
      const stored = (await load(path.basename(file))).graph!.initializer!.reduce(
        (n, x) => n + (x.rawData?.length ?? 0),
        0,
      );
      const planned = p.stages.find((x) => x.stage === s)!.bytes;
      t.ok(
        Math.abs(planned / stored - 1) <= 0.05,
        `${precision} ${s}: planned ${planned}, ${path.basename(file)} stores ${stored}`,
      );
    }
  }
});

t.test('export engine builds from the TensorRT dialect', async (t) => {
  const set = await ModelSet.open(dir, { verify: false });
  const src = engineSources(set, ['llm', 'encoder'], 'int4w', path.join(dir, 'engines'));
  t.same(
    src.map((x) => [path.basename(x.onnx), x.precision, path.basename(x.plan)]),
    [
      ['llm.int4w.trt.onnx', 'int4w', 'llm.int4w.plan'],
      ['encoder.int4w.trt.onnx', 'int4w', 'encoder.int4w.plan'],
    ],
  );
});

t.test('setokim run --precision fp16 and int4w answer end to end', async (t) => {
  const work = t.testdir({});
  const img = path.join(work, 'busy.jpg');
  await writeFile(img, await busyImage(4));
  for (const precision of ['fp16', 'int4w']) {
    const run = await runCli([
      'run',
      '--models',
      dir,
      '--precision',
      precision,
      '--image',
      img,
      '--prompt',
      'Describe it',
      '--max-tokens',
      '4',
      '--out',
      work,
    ]);
    t.equal(run.status, 0, `${precision}: ${run.err}`);
    t.match(run.out, /tokens: \d+ vision, \d+ prompt, 4 generated/, precision);
  }
});
