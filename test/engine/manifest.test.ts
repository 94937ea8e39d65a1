/**
 * manifest.json loading and verification: a good set passes; a corrupted, truncated, missing or
 * non-ONNX file and a manifest with a wrong hash or an unknown version are refused with the right
 * code and a message that names the file.
 */
import t, { type Test } from 'tap';
import { cp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { SetokimError } from '../../src/errors.js';
import {
  checkOnnxFile,
  loadManifest,
  parseManifest,
  verifyModelSet,
  type Manifest,
} from '../../src/engine/manifest.js';
import { synthesize } from '../../tools/export/synth.js';

let pristine = '';
t.before(async () => {
  pristine = join(t.testdir(), 'pristine');
  await synthesize({ config: 'tiny', seed: 1, out: pristine });
});

/** A fresh copy of the synthesised set for one test to damage. */
async function copySet(t: Test): Promise<{ dir: string; manifest: Manifest; json: any }> {
  const dir = join(t.testdir(), 'set');
  await cp(pristine, dir, { recursive: true });
  const json = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
  return { dir, manifest: await loadManifest(dir), json };
}

async function refused(t: Test, p: Promise<unknown>, code: string, mentions: string[]) {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof SetokimError, 'a SetokimError');
  if (!(err instanceof SetokimError)) return;
  t.equal(err.code, code, err.message);
  for (const m of mentions) t.match(err.message, m, `message names ${m}`);
}

t.test('a freshly synthesised set loads and verifies', async (t) => {
  const { dir, manifest } = await copySet(t);
  t.equal(manifest.id, 'setokim-tiny-seed1');
  const paths = await verifyModelSet(dir, manifest);
  t.equal(paths.llm, join(dir, 'llm.onnx'));
});

t.test('a corrupted model file (same size) is refused: MODEL_HASH_MISMATCH naming it', async (t) => {
  const { dir, manifest } = await copySet(t);
  const file = join(dir, 'merger.onnx');
  const bytes = await readFile(file);
  bytes[bytes.length - 10]! ^= 0xff;
  await writeFile(file, bytes);
  await refused(t, verifyModelSet(dir, manifest), 'MODEL_HASH_MISMATCH', ['merger.onnx']);
});

t.test('a manifest with a wrong hash is refused naming the file', async (t) => {
  const { dir, json } = await copySet(t);
  json.stages.embed.sha256 = 'ab'.repeat(32);
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(json));
  await refused(
    t,
    loadManifest(dir).then((m) => verifyModelSet(dir, m)),
    'MODEL_HASH_MISMATCH',
    ['embed.onnx', 'abab'],
  );
});

t.test('a truncated file is refused as MODEL_INVALID saying truncated', async (t) => {
  const { dir, manifest } = await copySet(t);
  await truncate(join(dir, 'encoder.onnx'), 1000);
  await refused(t, verifyModelSet(dir, manifest), 'MODEL_INVALID', ['encoder.onnx', 'truncated']);
});

t.test('a missing file is refused as MODEL_NOT_FOUND', async (t) => {
  const { dir, manifest } = await copySet(t);
  await rm(join(dir, 'llm.onnx'));
  await refused(t, verifyModelSet(dir, manifest), 'MODEL_NOT_FOUND', ['llm.onnx']);
});

t.test('a non-ONNX file whose hash and size match is refused as MODEL_INVALID', async (t) => {
  const { dir, json } = await copySet(t);
  const text = Buffer.from(JSON.stringify({ hello: 'not a model' }).repeat(20));
  await writeFile(join(dir, 'diffusion.onnx'), text);
  json.stages.diffusion.sha256 = createHash('sha256').update(text).digest('hex');
  json.stages.diffusion.bytes = text.length;
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(json));
  await refused(t, verifyModelSet(dir, await loadManifest(dir)), 'MODEL_INVALID', [
    'diffusion.onnx',
    'not a valid ONNX model',
  ]);
});

t.test('checkOnnxFile: a whole ModelProto passes, a cut one does not', async (t) => {
  const { dir } = await copySet(t);
  const file = join(dir, 'mask_decoder.onnx');
  await checkOnnxFile(file);
  const bytes = await readFile(file);
  for (const keep of [1, 5, Math.floor(bytes.length / 2), bytes.length - 1]) {
    await writeFile(file, bytes.subarray(0, keep));
    await refused(t, checkOnnxFile(file), 'MODEL_INVALID', ['mask_decoder.onnx']);
  }
});

t.test('manifest-level refusals', async (t) => {
  const { dir, json } = await copySet(t);
  const where = join(dir, 'manifest.json');
  const bad = (m: unknown, code: string, mentions: string[]) =>
    refused(
      t,
      Promise.resolve().then(() => parseManifest(m, where)),
      code,
      mentions,
    );
  await bad({ ...json, formatVersion: 2 }, 'MODEL_VERSION', ['formatVersion 2', 'manifest.json']);
  await bad({ ...json, format: 'something-else' }, 'MODEL_INVALID', ['not a Setokim model set manifest']);
  const { llm: _llm, ...noLlm } = json.stages;
  await bad({ ...json, stages: noLlm }, 'MODEL_INVALID', ['required stage llm']);
  await bad(
    { ...json, stages: { ...json.stages, embed: { ...json.stages.embed, file: '../elsewhere.onnx' } } },
    'MODEL_INVALID',
    ['stages.embed.file'],
  );
  const sig = structuredClone(json.stages.merger.signature);
  sig.inputs[1].shape = [1, 'L', 100];
  await bad(
    { ...json, stages: { ...json.stages, merger: { ...json.stages.merger, signature: sig } } },
    'MODEL_INVALID',
    ['merger.onnx', 'stage contract', 'assign'],
  );
  await refused(t, loadManifest(join(dir, 'nowhere')), 'MODEL_NOT_FOUND', ['nowhere']);
  await writeFile(where, '{ not json');
  await refused(t, loadManifest(dir), 'MODEL_INVALID', ['manifest.json', 'not valid JSON']);
});
