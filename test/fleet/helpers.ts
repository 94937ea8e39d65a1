/** Fixtures for the fleet tests: tiny model sets synthesised into a temp dir, a key pair, bundles. */
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { synthesize } from '../../tools/export/synth.js';
import { createBundle, generateKeys, loadPrivateKey, loadPublicKey, PREFIX_BYTES } from '../../src/fleet/index.js';
import type { KeyObject } from 'node:crypto';
import type { Compatibility } from '../../src/fleet/index.js';

export interface Fixture {
  dir: string;
  /** Model set directories by seed. */
  sets: Record<number, string>;
  privPath: string;
  pubPath: string;
  priv: KeyObject;
  pub: KeyObject;
  cleanup: () => Promise<void>;
}

export async function fixture(seeds: number[]): Promise<Fixture> {
  const dir = await mkdtemp(path.join(tmpdir(), 'setokim-fleet-'));
  const sets: Record<number, string> = {};
  for (const seed of seeds) {
    sets[seed] = path.join(dir, `set${seed}`);
    await synthesize({ config: 'tiny', seed, out: sets[seed]! });
  }
  const k = await generateKeys(path.join(dir, 'keys'));
  return {
    dir,
    sets,
    privPath: k.privatePath,
    pubPath: k.publicPath,
    priv: await loadPrivateKey(k.privatePath),
    pub: await loadPublicKey(k.publicPath),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** The fleet the fixture's bundles are signed for (the agent tests' fleet too). */
export const TEST_FLEET = 'test';
/** The device identity a test install passes (installBundle's and UpdateHandler's `device`): fleet `test`, this machine's target. */
export const testDevice = { fleet: TEST_FLEET };

/** A compatibility section for TEST_FLEET, any target, valid for a day: the fixture's default. */
export function testCompatibility(over: Partial<Compatibility> = {}): Compatibility {
  return {
    fleets: [TEST_FLEET],
    targets: ['*'],
    notAfter: new Date(Date.now() + 86_400_000).toISOString(),
    minAgentVersion: '0.1.0',
    ...over,
  };
}

export async function bundleOf(
  f: Fixture,
  models: string,
  release: number,
  name = `r${release}`,
  compatibility = testCompatibility(),
): Promise<string> {
  const out = path.join(f.dir, `${name}.bundle`);
  await createBundle({ models, release, key: f.priv, out, compatibility });
  return out;
}

/** A copy of `bundle` with one byte XORed at `offset` (from the start of the file). */
export async function flipByte(bundle: string, offset: number, out: string): Promise<string> {
  const buf = await readFile(bundle);
  buf[offset]! ^= 0x01;
  await writeFile(out, buf);
  return out;
}

/** The parsed header and where the payload starts. */
export async function readHeader(
  bundle: string,
): Promise<{ header: { manifest: any; signature: string }; payloadAt: number }> {
  const fh = await open(bundle, 'r');
  try {
    const p = Buffer.alloc(PREFIX_BYTES);
    await fh.read(p, 0, PREFIX_BYTES, 0);
    const n = p.readUInt32BE(PREFIX_BYTES - 4);
    const h = Buffer.alloc(n);
    await fh.read(h, 0, n, PREFIX_BYTES);
    return { header: JSON.parse(h.toString('utf8')), payloadAt: PREFIX_BYTES + n };
  } finally {
    await fh.close();
  }
}

/** Rewrites a bundle's header (as an attacker would) and keeps its payload. */
export async function rewriteHeader(
  bundle: string,
  out: string,
  edit: (h: { manifest: any; signature: string }) => void,
): Promise<string> {
  const { header, payloadAt } = await readHeader(bundle);
  edit(header);
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(h.length);
  const all = await readFile(bundle);
  await writeFile(out, Buffer.concat([all.subarray(0, PREFIX_BYTES - 4), len, h, all.subarray(payloadAt)]));
  return out;
}

/** Offset in the bundle file of the first byte of `file` (per the header's order and sizes). */
export async function offsetOf(bundle: string, file: string): Promise<number> {
  const { header, payloadAt } = await readHeader(bundle);
  let at = payloadAt;
  for (const f of header.manifest.files) {
    if (f.path === file) return at;
    at += f.size;
  }
  throw new Error(`${file} is not in ${bundle}`);
}

/**
 * A model set that passes every file check (sizes, sha256, whole ONNX, manifest schema) but
 * cannot answer: its llm.onnx is the set's vision encoder graph, a valid ONNX model with the
 * wrong inputs and outputs, as a mixed-up export would ship it.
 */
export async function brokenLlmSet(from: string, out: string): Promise<string> {
  await synthesizeCopy(from, out);
  await copyFile(path.join(out, 'encoder.onnx'), path.join(out, 'llm.onnx'));
  const bytes = await readFile(path.join(out, 'llm.onnx'));
  const m = JSON.parse(await readFile(path.join(out, 'manifest.json'), 'utf8'));
  m.stages.llm.sha256 = createHash('sha256').update(bytes).digest('hex');
  m.stages.llm.bytes = (await stat(path.join(out, 'llm.onnx'))).size;
  m.id = `${m.id}-broken`;
  await writeFile(path.join(out, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  return out;
}

async function synthesizeCopy(from: string, out: string): Promise<void> {
  const { cp } = await import('node:fs/promises');
  await cp(from, out, { recursive: true });
}

/** A canary check that passes at once: for tests about the install steps, not the canary. */
export const noCanary = async () => ({ ms: 0, visionTokens: 0, generatedTokens: 1, backend: 'none' });

/** One request a test server saw. */
export interface Seen {
  url: string;
  range?: string;
}

/**
 * A real HTTP server on port 0 serving `files` (name -> path) at `/<name>` with Range support, and
 * `routes` of its own (a redirect, a server that holds the answer...). `seen` lists every request.
 */
export async function bundleServer(
  files: Record<string, string> = {},
  routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = {},
) {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', ...(req.headers.range ? { range: req.headers.range } : {}) });
    const name = (req.url ?? '').slice(1).split('?')[0]!;
    const route = routes[name];
    if (route) return route(req, res);
    const file = files[name];
    if (!file) return void res.writeHead(404).end('no such bundle');
    void readFile(file).then((body) => {
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      const start = m ? Number(m[1]) : 0;
      if (start >= body.length) return void res.writeHead(416).end();
      res.writeHead(m ? 206 : 200, { 'content-length': body.length - start });
      res.end(body.subarray(start));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    base,
    /** The URL of `/<name>`. */
    url: (name: string) => `${base}/${name}`,
    seen,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * A bundle signed with the fixture's key over whatever manifest `edit` leaves, with none of
 * createBundle's checks: what a publisher with the key (or a buggy build) could sign. The files
 * are the set's, listed as createBundle lists them.
 */
export async function signedAnyway(
  f: Fixture,
  models: string,
  out: string,
  edit: (manifest: any) => void,
): Promise<string> {
  const { readdir } = await import('node:fs/promises');
  const { encodePrefix, signedBytes, BUNDLE_FORMAT, BUNDLE_VERSION, keyIdOf } =
    await import('../../src/fleet/index.js');
  const { sign } = await import('node:crypto');
  const names = (await readdir(models)).sort();
  const ordered = ['manifest.json', ...names.filter((n) => n !== 'manifest.json')];
  const files = [];
  for (const p of ordered) {
    const bytes = await readFile(path.join(models, p));
    files.push({ path: p, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), bytes });
  }
  const manifest: any = {
    format: BUNDLE_FORMAT,
    formatVersion: BUNDLE_VERSION,
    modelSetId: JSON.parse(await readFile(path.join(models, 'manifest.json'), 'utf8')).id,
    release: 1,
    createdAt: new Date().toISOString(),
    keyId: keyIdOf(f.pub),
    compatibility: testCompatibility(),
    files: files.map(({ path: p, size, sha256 }) => ({ path: p, size, sha256 })),
  };
  edit(manifest);
  const signature = sign(null, signedBytes(manifest), f.priv);
  await writeFile(out, Buffer.concat([encodePrefix(manifest, signature), ...files.map((x) => x.bytes)]));
  return out;
}

/** A copy of a model set whose manifest.json says id `id` (nothing else changes). */
export async function setWithId(from: string, out: string, id: string): Promise<string> {
  await synthesizeCopy(from, out);
  const m = JSON.parse(await readFile(path.join(out, 'manifest.json'), 'utf8'));
  m.id = id;
  await writeFile(path.join(out, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  return out;
}
