/** Model sets on disk: verified open, quantised variants of a stage, versioned sets with an active pointer. */
import t from 'tap';
import { copyFile, cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SetokimError } from '../../src/errors.js';
import { ModelSet, ModelStore } from '../../src/engine/modelset.js';
import { synthesize } from '../../tools/export/synth.js';

const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => 'resolved',
    (e: unknown) => (e instanceof SetokimError ? e.code : String(e)),
  );

t.test('variants of a stage are listed and picked by precision', async (t) => {
  const dir = t.testdir();
  await synthesize({ config: 'tiny', seed: 3, out: dir });
  const json = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
  await copyFile(join(dir, 'encoder.onnx'), join(dir, 'encoder.int8.onnx')); // stands in for a quantised build
  const { sha256, bytes } = json.stages.encoder;
  json.stages.encoder.variants = [{ file: 'encoder.int8.onnx', format: 'onnx', sha256, bytes, precision: 'int8' }];
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(json));
  const set = await ModelSet.open(dir);
  t.equal(set.id, 'setokim-tiny-seed3');
  t.equal(set.architecture.image.size, 224);
  t.same(
    set.variants('encoder').map((v) => [v.file, v.precision]),
    [
      ['encoder.onnx', 'fp32'],
      ['encoder.int8.onnx', 'int8'],
    ],
  );
  t.equal(set.stagePath('encoder'), join(dir, 'encoder.onnx'));
  t.equal(set.stagePath('encoder', 'int8'), join(dir, 'encoder.int8.onnx'));
  t.throws(() => set.stagePath('encoder', 'int4w'), {
    code: 'MODEL_NOT_FOUND',
    message: /no int4w build of encoder for onnxruntime \(has: fp32, int8\)/,
  });
  await set.verify('encoder', 'int8');
  // a broken variant fails the verified open too
  await writeFile(join(dir, 'encoder.int8.onnx'), Buffer.alloc(bytes));
  t.equal(await codeOf(ModelSet.open(dir)), 'MODEL_HASH_MISMATCH');
  t.ok(await ModelSet.open(dir, { verify: false }), 'verify: false trusts the disk');
});

t.test(
  'a precision written in two dialects: each backend picks its own, a dialect-less variant serves both',
  async (t) => {
    const dir = t.testdir();
    await synthesize({ config: 'tiny', seed: 3, out: dir });
    const json = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    const { sha256, bytes } = json.stages.llm;
    for (const f of ['llm.int4w.onnx', 'llm.int4w.trt.onnx', 'llm.fp16.onnx'])
      await copyFile(join(dir, 'llm.onnx'), join(dir, f)); // stand-ins
    json.stages.llm.variants = [
      { file: 'llm.int4w.onnx', format: 'onnx', sha256, bytes, precision: 'int4w', dialect: 'onnxruntime' },
      { file: 'llm.int4w.trt.onnx', format: 'onnx', sha256, bytes, precision: 'int4w', dialect: 'tensorrt' },
      { file: 'llm.fp16.onnx', format: 'onnx', sha256, bytes, precision: 'fp16' },
    ];
    await copyFile(join(dir, 'encoder.onnx'), join(dir, 'encoder.int4w.trt.onnx'));
    json.stages.encoder.variants = [
      {
        file: 'encoder.int4w.trt.onnx',
        format: 'onnx',
        sha256: json.stages.encoder.sha256,
        bytes: json.stages.encoder.bytes,
        precision: 'int4w',
        dialect: 'tensorrt',
      },
    ];
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(json));
    const set = await ModelSet.open(dir);
    t.equal(set.stagePath('llm', 'int4w'), join(dir, 'llm.int4w.onnx'), 'ONNX Runtime is the default target');
    t.equal(set.stagePath('llm', 'int4w', 'tensorrt'), join(dir, 'llm.int4w.trt.onnx'));
    t.equal(set.stagePath('llm', 'fp16', 'tensorrt'), join(dir, 'llm.fp16.onnx'));
    t.equal(set.stagePath('llm', 'fp16', 'onnxruntime'), join(dir, 'llm.fp16.onnx'), 'no dialect: any backend');
    t.equal(set.stagePath('encoder', 'int4w', 'tensorrt'), join(dir, 'encoder.int4w.trt.onnx'));
    t.throws(() => set.stagePath('encoder', 'int4w', 'onnxruntime'), {
      code: 'MODEL_NOT_FOUND',
      message: /no int4w build of encoder for onnxruntime \(has: fp32, int4w \(tensorrt\)\)/,
    });
    // The main file has no dialect: a manifest giving it one is refused.
    json.stages.llm.dialect = 'tensorrt';
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(json));
    t.equal(await codeOf(ModelSet.open(dir)), 'MODEL_INVALID');
  },
);

t.test('a store holds versioned sets and switches the active one only to a verified set', async (t) => {
  const root = t.testdir();
  const store = new ModelStore(root);
  t.same(await store.list(), []);
  t.equal(await store.active(), null);
  t.equal(await codeOf(store.openActive()), 'MODEL_NOT_FOUND');
  await synthesize({ config: 'tiny', seed: 1, out: store.dirOf('setokim-tiny-seed1') });
  await cp(store.dirOf('setokim-tiny-seed1'), store.dirOf('setokim-tiny-seed2'), { recursive: true });
  t.same(await store.list(), ['setokim-tiny-seed1', 'setokim-tiny-seed2']);

  await store.activate('setokim-tiny-seed1');
  t.equal(await store.active(), 'setokim-tiny-seed1');
  t.equal((await store.openActive()).id, 'setokim-tiny-seed1');

  // seed2's directory holds a manifest whose id is seed1: refused, and the active set stays
  t.equal(await codeOf(store.activate('setokim-tiny-seed2')), 'MODEL_INVALID');
  t.equal(await store.active(), 'setokim-tiny-seed1');
  t.throws(() => store.dirOf('../escape'), { code: 'BAD_ARGUMENT' });
});

t.test("a set manifest or a store id naming the store's own files is refused", async (t) => {
  const dir = t.testdir();
  await synthesize({ config: 'tiny', seed: 1, out: dir });
  const json = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
  for (const id of ['active', 'Active', 'x.tmp', 'X.TMP', '.fleet']) {
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...json, id }));
    t.equal(await codeOf(ModelSet.open(dir, { verify: false })), 'MODEL_INVALID', id);
    t.throws(() => new ModelStore(dir).dirOf(id), { code: 'BAD_ARGUMENT' }, id);
  }
  t.equal(new ModelStore('/s').dirOf('active-1.tmp2'), '/s/active-1.tmp2', 'only the exact names are reserved');
});
