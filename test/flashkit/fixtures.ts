/** Inputs of a flashing kit for the tests: a tiny set in a signed bundle, its keys, a config, client certificates. */
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createBundle, generateKeys, loadPrivateKey } from '../../src/fleet/index.js';
import { synthesize } from '../../tools/export/synth.js';

const run = promisify(execFile);

export interface KitInputs {
  dir: string;
  setDir: string;
  bundle: string;
  pub: string;
  priv: string;
  config: string;
}

export async function kitInputs(dir: string, config: Record<string, unknown>, seed = 11): Promise<KitInputs> {
  const setDir = join(dir, 'set');
  await synthesize({ config: 'tiny', seed, out: setDir });
  const keys = await generateKeys(join(dir, 'keys'));
  const bundle = join(dir, 'r1.bundle');
  await createBundle({ models: setDir, release: 1, key: await loadPrivateKey(keys.privatePath), out: bundle });
  const configPath = join(dir, 'agent.yaml');
  await writeFile(configPath, JSON.stringify(config)); // JSON is YAML
  return { dir, setDir, bundle, pub: keys.publicPath, priv: keys.privatePath, config: configPath };
}

/** A self-signed client certificate and its key (openssl), as a broker's CA would issue one per device. */
export async function clientCert(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
  ]);
  return { cert, key };
}

/** Every regular file under dir (recursively). */
export async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { withFileTypes: true, recursive: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

/** The files under dir that contain `needle` anywhere. */
export async function filesContaining(dir: string, needle: Buffer): Promise<string[]> {
  const hits: string[] = [];
  for (const f of await filesUnder(dir)) {
    let tail = Buffer.alloc(0);
    for await (const chunk of createReadStream(f)) {
      const buf = Buffer.concat([tail, chunk as Buffer]);
      if (buf.includes(needle)) {
        hits.push(f);
        break;
      }
      tail = buf.subarray(Math.max(0, buf.length - needle.length + 1));
    }
  }
  return hits;
}
