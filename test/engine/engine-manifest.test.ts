import t from 'tap';
import { generateKeyPairSync, sign } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  ENGINE_MANIFEST_FORMAT,
  type EngineManifest,
  type MachineInfo,
  assertEngineCompatible,
  engineManifestPath,
  incompatibilities,
  machineInfo,
  manifestSigningBytes,
  parseEngineManifest,
  profileCovers,
  readEngineManifest,
  readL4t,
  verifyPlanFile,
} from '../../src/engine/engine-manifest.js';
import { sha256File } from '../../src/engine/manifest.js';
import { capabilities } from '../../src/engine/native.js';
import { tmpDir } from './fixtures.js';

const dir = tmpDir();

function manifest(over: Partial<EngineManifest> = {}): EngineManifest {
  return parseEngineManifest(
    {
      format: ENGINE_MANIFEST_FORMAT,
      stage: 'merger',
      plan: 'merger.fp16.plan',
      sha256: 'a'.repeat(64),
      bytes: 1234,
      source: { file: 'merger.onnx', sha256: 'b'.repeat(64) },
      tensorrt: '10.3.0',
      cuda: '12.6',
      sm: '8.7',
      gpu: 'Orin',
      jetpack: '6.1',
      l4t: '36.4.0',
      precision: 'fp16',
      stronglyTyped: true,
      profiles: [{ assign: { min: [1, 1, 256], opt: [1, 32, 256], max: [1, 64, 256] } }],
      io: { inputs: [{ name: 'assign', dtype: 'float32', shape: [1, 'L', 256] }], outputs: [] },
      builder: { workspaceBytes: 1 << 30, timingCache: true, seconds: 42 },
      builtAt: '2026-11-27T12:00:00Z',
      ...over,
    },
    'test',
  );
}

const orin: MachineInfo = {
  tensorrtCompiled: true,
  tensorrt: '10.3.0',
  cuda: '12.6',
  gpus: [{ index: 0, name: 'Orin', sm: '8.7' }],
  l4t: '36.4.0',
};

t.test('a matching machine accepts the engine', async (t) => {
  t.same(incompatibilities(manifest(), orin), []);
  t.same(incompatibilities(manifest({ tensorrt: '10.3' }), orin), [], '10.3 and 10.3.0 are one version');
  t.same(incompatibilities(manifest(), { ...orin, cuda: '12.2.140' }), [], 'CUDA minor versions may differ');
  t.doesNotThrow(() => assertEngineCompatible(manifest(), orin));
  t.ok(profileCovers(manifest(), 'assign', 1, 1, 64));
  t.notOk(profileCovers(manifest(), 'assign', 1, 1, 65), 'L = 65 is beyond the profile');
});

t.test('each mismatch is refused with its own reason, all at once', async (t) => {
  t.match(incompatibilities(manifest(), { ...orin, tensorrt: '10.3.1' }), [
    /built with TensorRT 10\.3\.0, this machine has TensorRT 10\.3\.1/,
  ]);
  t.match(incompatibilities(manifest(), { ...orin, gpus: [{ index: 0, name: 'Xavier', sm: '7.2' }] }), [
    /built for SM 8\.7 \(Orin\), this machine has SM 7\.2 \(Xavier\)/,
  ]);
  t.match(incompatibilities(manifest(), { ...orin, gpus: [] }), [/no GPU is present/]);
  t.match(incompatibilities(manifest(), { ...orin, tensorrtCompiled: false }), [/addon has no TensorRT backend/]);
  t.match(incompatibilities(manifest(), { ...orin, cuda: '11.4' }), [/CUDA 12\.6, this runtime uses CUDA 11\.4/]);
  t.match(incompatibilities(manifest(), { ...orin, l4t: '35.5.0' }), [
    /L4T 36\.4\.0 \(JetPack 6\.1\), this machine runs L4T 35\.5\.0/,
  ]);
  const jp5 = {
    tensorrtCompiled: true,
    tensorrt: '8.5.2',
    cuda: '11.4',
    gpus: [{ index: 0, name: 'Xavier', sm: '7.2' }],
    l4t: '35.4.1',
  };
  const all = incompatibilities(manifest(), jp5);
  t.equal(all.length, 4, all.join(' | '));
  t.throws(() => assertEngineCompatible(manifest(), jp5), {
    code: 'ENGINE_INCOMPATIBLE',
    message:
      /engine for stage 'merger' \(merger\.fp16\.plan\) cannot run here: .*TensorRT 8\.5\.2.*SM 7\.2.*CUDA 11\.4.*L4T 35\.4\.1.*setokim export engine/,
  });
});

t.test('version-compatible engines load only with a trusted signature', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const unsigned = manifest({ versionCompatible: true, tensorrt: '10.1.0' });
  t.match(incompatibilities(unsigned, orin), [/embed host code.*the manifest is unsigned/]);
  const signed = {
    ...unsigned,
    signature: {
      keyId: 'fleet',
      algorithm: 'ed25519' as const,
      value: sign(null, manifestSigningBytes(unsigned), privateKey).toString('base64'),
    },
  };
  t.same(
    incompatibilities(signed, orin, { trustedKeys: { fleet: pem } }),
    [],
    'signed by a trusted key, same major version',
  );
  t.match(incompatibilities(signed, orin), [/key 'fleet' is not trusted/]);
  t.match(
    incompatibilities({ ...signed, sm: '8.7', bytes: 999 }, orin, { trustedKeys: { fleet: pem } }),
    [/does not match the manifest/],
    'tampered',
  );
  t.match(incompatibilities(signed, { ...orin, tensorrt: '11.0.0' }, { trustedKeys: { fleet: pem } }), [
    /cannot run on major version 11/,
  ]);
  t.match(incompatibilities(manifest(), orin, { requireSignature: true }), [
    /a signed engine is required: the manifest is unsigned/,
  ]);
});

t.test('malformed manifests are refused naming the field', async (t) => {
  t.throws(() => manifest({ sm: 'eight' }), { code: 'MODEL_INVALID', message: /sm:/ });
  t.throws(() => manifest({ stronglyTyped: false as true }), { code: 'MODEL_INVALID', message: /stronglyTyped/ });
  t.throws(() => manifest({ profiles: [{ x: { min: [4], opt: [2], max: [8] } }] }), {
    code: 'MODEL_INVALID',
    message: /min <= opt <= max/,
  });
  t.throws(() => manifest({ format: 'other' as typeof ENGINE_MANIFEST_FORMAT }), {
    code: 'MODEL_INVALID',
    message: /format/,
  });
});

t.test('plans are read with their manifest and checked byte for byte', async (t) => {
  const plan = path.join(dir, 'merger.fp16.plan');
  writeFileSync(plan, Buffer.from('not really a plan, but bytes'));
  t.throws(() => readEngineManifest(plan), { code: 'MODEL_NOT_FOUND', message: /has no manifest/ });
  writeFileSync(engineManifestPath(plan), '{ nope');
  t.throws(() => readEngineManifest(plan), { code: 'MODEL_INVALID', message: /not JSON/ });
  const good = manifest({ sha256: await sha256File(plan) });
  writeFileSync(engineManifestPath(plan), JSON.stringify(good));
  t.same(readEngineManifest(plan), good);
  await t.resolves(verifyPlanFile(plan, good));
  writeFileSync(plan, Buffer.from('not really a plan, but bytes!'));
  await t.rejects(verifyPlanFile(plan, good), {
    code: 'MODEL_HASH_MISMATCH',
    message: /merger\.fp16\.plan has sha256 [0-9a-f]{64}, its manifest says/,
  });
});

t.test("the machine's view comes from capabilities() and /etc/nv_tegra_release", async (t) => {
  const rel = path.join(dir, 'nv_tegra_release');
  writeFileSync(rel, '# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n');
  t.equal(readL4t(rel), '36.4.0');
  t.equal(readL4t(path.join(dir, 'absent')), null);
  const caps = capabilities();
  const m = machineInfo(caps, null);
  t.equal(m.tensorrtCompiled, caps.compiled.tensorrt);
  t.equal(m.gpus.length, caps.present.gpus.length);
  // Whatever this machine is, an Orin engine from JetPack 6 is either runnable or refused with reasons.
  if (!caps.compiled.tensorrt) t.match(incompatibilities(manifest(), m).join('\n'), /no TensorRT backend/);
});
