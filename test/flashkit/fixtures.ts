/** Inputs of a flashing kit for the tests: a tiny set in a signed bundle, its keys, a config, client certificates. */
import { execFile } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createBundle, generateKeys, loadPrivateKey } from '../../src/fleet/index.js';
import { synthesize } from '../../tools/export/synth.js';
import { testCompatibility } from '../fleet/helpers.js';

const run = promisify(execFile);

export interface KitInputs {
  dir: string;
  setDir: string;
  bundle: string;
  pub: string;
  priv: string;
  config: string;
}

/** A kit's inputs; the bundle is signed for `fleets` (default: the config's fleet), any target, for a day. */
export async function kitInputs(
  dir: string,
  config: Record<string, unknown>,
  seed = 11,
  fleets = [String(config.fleet)],
): Promise<KitInputs> {
  const setDir = join(dir, 'set');
  await synthesize({ config: 'tiny', seed, out: setDir });
  const keys = await generateKeys(join(dir, 'keys'));
  const bundle = join(dir, 'r1.bundle');
  const compatibility = testCompatibility({ fleets });
  await createBundle({
    models: setDir,
    release: 1,
    key: await loadPrivateKey(keys.privatePath),
    out: bundle,
    compatibility,
  });
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

/** The files under dir that contain any of the needles, with the needle's index (each file read once, whole). */
export async function filesContaining(dir: string, needles: Buffer[]): Promise<string[]> {
  const hits: string[] = [];
  for (const f of await filesUnder(dir)) {
    const bytes = await readFile(f);
    needles.forEach((n, i) => bytes.includes(n) && hits.push(`${f} (needle ${i})`));
  }
  return hits;
}
