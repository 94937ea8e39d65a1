/** Bundle format: create -> verify round trip, and every way a bundle can be altered is refused with its code. */
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import {
  canonicalJson,
  createBundle,
  generateKeys,
  loadPublicKey,
  openBundle,
  parseBundleManifest,
  verifyBundle,
} from '../../src/fleet/index.js';
import { runCli } from '../helpers/cli.js';
import { bundleOf, fixture, flipByte, offsetOf, readHeader, rewriteHeader, testCompatibility } from './helpers.js';

const f = await fixture([1]);
t.teardown(f.cleanup);
const good = await bundleOf(f, f.sets[1]!, 7);

t.test(
  'create lists every file of the set, manifest.json first, with size and sha256; verify accepts it',
  async (t) => {
    const m = await verifyBundle(good, f.pub);
    t.equal(m.modelSetId, 'setokim-tiny-seed1');
    t.equal(m.release, 7);
    t.equal(m.files[0]!.path, 'manifest.json');
    const set = JSON.parse(await readFile(path.join(f.sets[1]!, 'manifest.json'), 'utf8'));
    const stageFiles = Object.values(set.stages)
      .map((s: any) => s.file)
      .sort();
    t.same(
      m.files.slice(1).map((x) => x.path),
      stageFiles,
    );
    for (const x of m.files) t.equal(x.size, (await stat(path.join(f.sets[1]!, x.path))).size, `${x.path} size`);
    const { payloadAt } = await readHeader(good);
    t.equal(
      (await stat(good)).size,
      payloadAt + m.files.reduce((a, x) => a + x.size, 0),
      'the file ends right after the last payload file',
    );
    let last = 0;
    await verifyBundle(good, f.pub, (done, total) => {
      t.ok(done >= last && done <= total);
      last = done;
    });
    t.equal(
      last,
      m.files.reduce((a, x) => a + x.size, 0),
      'progress reaches the payload size',
    );
  },
);

t.test('a flipped byte inside a stage file: BUNDLE_TAMPERED naming the file', async (t) => {
  const bad = await flipByte(good, (await offsetOf(good, 'llm.onnx')) + 1000, path.join(f.dir, 'flip-llm.bundle'));
  await openBundle(bad, f.pub); // header and signature are intact
  await t.rejects(verifyBundle(bad, f.pub), { code: 'BUNDLE_TAMPERED', message: /llm\.onnx/ });
});

t.test('a flipped byte in the signature: BUNDLE_SIGNATURE', async (t) => {
  const bad = await rewriteHeader(good, path.join(f.dir, 'flip-sig.bundle'), (h) => {
    const sig = Buffer.from(h.signature, 'base64');
    sig[10]! ^= 0x01;
    h.signature = sig.toString('base64');
  });
  await t.rejects(openBundle(bad, f.pub), { code: 'BUNDLE_SIGNATURE', message: /does not verify/ });
});

t.test('a manifest edited without re-signing (release raised, a hash swapped): BUNDLE_SIGNATURE', async (t) => {
  const r = await rewriteHeader(good, path.join(f.dir, 'release.bundle'), (h) => void (h.manifest.release = 99));
  await t.rejects(openBundle(r, f.pub), { code: 'BUNDLE_SIGNATURE' });
  const s = await rewriteHeader(
    good,
    path.join(f.dir, 'sha.bundle'),
    (h) => void (h.manifest.files[1].sha256 = 'a'.repeat(64)),
  );
  await t.rejects(openBundle(s, f.pub), { code: 'BUNDLE_SIGNATURE' });
});

t.test('another key: BUNDLE_SIGNATURE naming both key ids; a forged keyId still fails the signature', async (t) => {
  const other = await generateKeys(path.join(f.dir, 'other-keys'));
  const otherPub = await loadPublicKey(other.publicPath);
  await t.rejects(openBundle(good, otherPub), {
    code: 'BUNDLE_SIGNATURE',
    message: new RegExp(`signed by key [0-9a-f]{16}, but the trusted public key is ${other.keyId}`),
  });
  const forged = await rewriteHeader(
    good,
    path.join(f.dir, 'forged.bundle'),
    (h) => void (h.manifest.keyId = other.keyId),
  );
  await t.rejects(openBundle(forged, otherPub), { code: 'BUNDLE_SIGNATURE', message: /does not verify/ });
});

t.test('truncated or extended payload: BUNDLE_TAMPERED; not a bundle: BUNDLE_INVALID', async (t) => {
  const all = await readFile(good);
  const cut = path.join(f.dir, 'cut.bundle');
  await writeFile(cut, all.subarray(0, all.length - 1));
  await t.rejects(openBundle(cut, f.pub), { code: 'BUNDLE_TAMPERED', message: /truncated/ });
  const long = path.join(f.dir, 'long.bundle');
  await writeFile(long, Buffer.concat([all, Buffer.from('x')]));
  await t.rejects(openBundle(long, f.pub), { code: 'BUNDLE_TAMPERED', message: /1 bytes longer/ });
  const onnx = path.join(f.sets[1]!, 'llm.onnx');
  await t.rejects(openBundle(onnx, f.pub), { code: 'BUNDLE_INVALID', message: /magic/ });
  const badLen = path.join(f.dir, 'badlen.bundle');
  const b = Buffer.from(all.subarray(0, 64));
  b.writeUInt32BE(0xffffff, 12);
  await writeFile(badLen, b);
  await t.rejects(openBundle(badLen, f.pub), { code: 'BUNDLE_INVALID', message: /header length/ });
});

t.test('unsafe paths and duplicate entries are refused by the manifest schema', async (t) => {
  const { header } = await readHeader(good);
  const m = structuredClone(header.manifest);
  for (const p of ['../etc/passwd', '/abs', 'a/../b', 'a//b', './x', 'a\\b']) {
    m.files[1].path = p;
    t.throws(() => parseBundleManifest(m, 'x'), { code: 'BUNDLE_INVALID' }, p);
  }
  const dup = structuredClone(header.manifest);
  dup.files.push(dup.files[1]);
  t.throws(() => parseBundleManifest(dup, 'x'), { code: 'BUNDLE_INVALID', message: /listed twice/ });
  const nested = structuredClone(header.manifest);
  nested.files.push({ ...nested.files[1], path: `${nested.files[1].path}/inner` });
  t.throws(() => parseBundleManifest(nested, 'x'), { code: 'BUNDLE_INVALID', message: /also the directory of/ });
  const noSet = structuredClone(header.manifest);
  noSet.files.shift();
  t.throws(() => parseBundleManifest(noSet, 'x'), { code: 'BUNDLE_INVALID', message: /manifest\.json/ });
  t.throws(() => parseBundleManifest({ ...header.manifest, formatVersion: 4 }, 'x'), {
    code: 'BUNDLE_INVALID',
    message: /formatVersion 4 is not supported \(this runtime reads 1, 2 and 3\)/,
  });
});

t.test('canonical JSON: sorted keys at every level, no whitespace, integers only', async (t) => {
  t.equal(canonicalJson({ b: 1, a: [{ d: 'x', c: null }], e: undefined }), '{"a":[{"c":null,"d":"x"}],"b":1}');
  t.throws(() => canonicalJson({ a: 0.5 }), { code: 'BUNDLE_INVALID' });
});

t.test('create refuses a set that fails verification (it would never open)', async (t) => {
  const { cp } = await import('node:fs/promises');
  const dir = path.join(f.dir, 'damaged');
  await cp(f.sets[1]!, dir, { recursive: true });
  const p = path.join(dir, 'merger.onnx');
  const b = await readFile(p);
  b[b.length - 5]! ^= 1;
  await writeFile(p, b);
  await t.rejects(
    createBundle({
      models: dir,
      release: 1,
      key: f.priv,
      out: path.join(f.dir, 'damaged.bundle'),
      compatibility: testCompatibility(),
    }),
    { code: 'MODEL_HASH_MISMATCH' },
  );
  await t.rejects(stat(path.join(f.dir, 'damaged.bundle')), { code: 'ENOENT' }, 'no bundle written');
});

t.test('keys: keygen never overwrites; a device refuses a private key as --pubkey', async (t) => {
  await t.rejects(generateKeys(path.dirname(f.privPath)), { code: 'BAD_ARGUMENT', message: /never overwritten/ });
  await t.rejects(loadPublicKey(f.privPath), { code: 'BAD_ARGUMENT', message: /private key/ });
  t.equal((await stat(f.privPath)).mode & 0o077, 0, 'private key readable by its owner only');
});

t.test('CLI: keygen, create, verify; a tampered bundle exits 3 with its code', async (t) => {
  const keys = path.join(f.dir, 'cli-keys');
  const k = await runCli(['bundle', 'keygen', '--out', keys]);
  t.equal(k.status, 0, k.err);
  const out = path.join(f.dir, 'cli.bundle');
  const bind = ['--fleet', 'site1', '--target', '*', '--expires', '30d'];
  const c = await runCli([
    'bundle',
    'create',
    '--models',
    f.sets[1]!,
    '--release',
    '3',
    '--key',
    path.join(keys, 'bundle-signing.key.pem'),
    '--out',
    out,
    ...bind,
    '--no-progress',
  ]);
  t.equal(c.status, 0, c.err);
  t.match(c.out, /setokim-tiny-seed1 release 3, 8 files/);
  const v = await runCli([
    'bundle',
    'verify',
    out,
    '--pubkey',
    path.join(keys, 'bundle-signing.pub.pem'),
    '--no-progress',
  ]);
  t.equal(v.status, 0, v.err);
  t.match(v.out, /OK: setokim-tiny-seed1 release 3/);
  const bad = await flipByte(out, (await offsetOf(out, 'embed.onnx')) + 7, path.join(f.dir, 'cli-bad.bundle'));
  const vb = await runCli([
    'bundle',
    'verify',
    bad,
    '--pubkey',
    path.join(keys, 'bundle-signing.pub.pem'),
    '--no-progress',
  ]);
  t.equal(vb.status, 3);
  t.match(vb.err, /\[BUNDLE_TAMPERED\].*embed\.onnx/);
  const r0 = await runCli([
    'bundle',
    'create',
    '--models',
    f.sets[1]!,
    '--release',
    '0',
    '--key',
    f.privPath,
    '--out',
    out,
    ...bind,
  ]);
  t.equal(r0.status, 2);
  t.match(r0.err, /--release/);
});
