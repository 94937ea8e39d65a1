/**
 * Bad input to `setokim export quantize`: one line with a stable code, and the model set on disk
 * exactly as it was (manifest text and directory listing). An unknown precision or block size, a
 * stage named in --stages that cannot be built at the precision, fp32 files that fail verification,
 * and a weight whose float16 (fp16) or INT4 scale (int4w) cannot be represented.
 */
import t, { type Test } from 'tap';
import { cp, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { sha256Bytes } from '../../src/engine/manifest.js';
import { decodeModel, encodeModel } from '../../src/quant/index.js';
import { runCli } from '../helpers/cli.js';
import { tinySet } from '../pipeline/fixtures.js';

const fixture = await tinySet();
t.teardown(fixture.cleanup);

const snapshot = async (dir: string) => ({
  manifest: await readFile(path.join(dir, 'manifest.json'), 'utf8'),
  files: (await readdir(dir)).sort(),
});
const quantize = (dir: string, ...args: string[]) =>
  runCli(['export', 'quantize', '--models', dir, '--no-progress', '--calibration-images', '1', ...args]);

async function refused(t: Test, dir: string, args: string[], status: number, re: RegExp): Promise<void> {
  const before = await snapshot(dir);
  const r = await quantize(dir, ...args);
  t.equal(r.status, status, `${args.join(' ')}: exit ${status}`);
  t.match(r.err, re);
  t.equal(r.err.trim().split('\n').length, 1, 'one line');
  t.notMatch(r.err, /\n\s+at /, 'no stack trace');
  t.same(await snapshot(dir), before, 'the set on disk is unchanged');
}

t.test('an unknown precision or block size: BAD_ARGUMENT before any work', async (t) => {
  await refused(
    t,
    fixture.dir,
    ['--precision', 'int3'],
    2,
    /^setokim: error \[BAD_ARGUMENT\]: --precision "int3": expected one of fp16, int8, int4w/,
  );
  await refused(
    t,
    fixture.dir,
    ['--precision', 'fp32'],
    2,
    /\[BAD_ARGUMENT\]: --precision fp32 is the main file of every stage already/,
  );
  await refused(
    t,
    fixture.dir,
    ['--precision', 'int4w', '--block-size', '48'],
    2,
    /\[BAD_ARGUMENT\]: export quantize: --block-size: expected one of 32, 64, 128, got "48"/,
  );
});

t.test(
  'a stage named in --stages that cannot be built at the precision: QUANT_UNSUPPORTED, saying which and why',
  async (t) => {
    await refused(
      t,
      fixture.dir,
      ['--precision', 'int8', '--stages', 'llm,embed'],
      3,
      /\[QUANT_UNSUPPORTED\]: stage embed cannot be built at int8: no MatMul with a 2-D float32 weight of >= 1024 values; stays fp32; leave it out of --stages/,
    );
  },
);

t.test('fp32 files that fail verification: refused at open', async (t) => {
  const dir = path.join(t.testdir(), 'set');
  await cp(fixture.dir, dir, { recursive: true });
  const llm = await readFile(path.join(dir, 'llm.onnx'));
  llm[llm.length - 10]! ^= 0xff;
  await writeFile(path.join(dir, 'llm.onnx'), llm);
  await refused(
    t,
    dir,
    ['--precision', 'fp16'],
    3,
    /\[MODEL_HASH_MISMATCH\]: .*llm\.onnx: sha256 \w+ does not match the manifest's/,
  );
});

t.test('a weight of 1e6: its float16 and its INT4 scale overflow float16; refused, nothing written', async (t) => {
  const dir = path.join(t.testdir(), 'set');
  await cp(fixture.dir, dir, { recursive: true });
  const m = decodeModel(new Uint8Array(await readFile(path.join(dir, 'llm.onnx'))));
  const w = m.graph!.initializer!.find((x) => x.name === 'layers.1/mlp/down_proj/weight')!;
  new DataView(w.rawData!.buffer, w.rawData!.byteOffset).setFloat32(4 * 7, 1e6, true);
  const bytes = encodeModel(m);
  await writeFile(path.join(dir, 'llm.onnx'), bytes);
  const manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8'));
  Object.assign(manifest.stages.llm, { sha256: sha256Bytes(bytes), bytes: bytes.length });
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  await refused(
    t,
    dir,
    ['--precision', 'int4w', '--stages', 'llm'],
    3,
    /\[QUANT_SCALE_INVALID\]: llm layers\.1\/mlp\/down_proj\/weight block 0 column 7: a block's largest \|w\| is 1\.00e\+6.*beyond float16's 65504/,
  );
  await refused(
    t,
    dir,
    ['--precision', 'fp16', '--stages', 'llm'],
    3,
    /\[QUANT_UNSUPPORTED\]: stage llm cannot be built in fp16: initializer layers\.1\/mlp\/down_proj\/weight holds 1\.00e\+6/,
  );
});
