/**
 * `setokim flash-kit` refuses bad input before it writes anything, with a stable code: a bundle
 * that fails verification, a config the agent would refuse (checked with its own parseAgentConfig)
 * or that fights the kit's paths, a devices.csv with duplicate or unsafe ids or bad key files, a
 * missing or private --pubkey, an --out that holds something. Also: a stale dist/ is refused.
 */
import { existsSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { createBundle, generateKeys, loadPrivateKey, type Compatibility } from '../../src/fleet/index.js';
import { testCompatibility } from '../fleet/helpers.js';
import { checkCompiled } from '../../tools/flashkit/app.js';
import { runCli } from '../helpers/cli.js';
import { clientCert, kitInputs } from './fixtures.js';

const dir = t.testdir();
const base = { fleet: 'plant', device: 'cam-1', broker: { url: 'mqtt://127.0.0.1:1883' } };
const inputs = await kitInputs(dir, base);
let n = 0;

/** Runs flash-kit with the good inputs and `over` replacing some; checks nothing was written. */
async function refused(
  t: Test,
  over: Record<string, string | undefined>,
  code: string,
  message: RegExp,
): Promise<void> {
  const out = join(dir, `kit-${n++}`);
  const flags: Record<string, string | undefined> = {
    bundle: inputs.bundle,
    pubkey: inputs.pub,
    config: inputs.config,
    out,
    arch: 'amd64',
    ...over,
  };
  const before = existsSync(flags.out!) ? readdirSync(flags.out!) : null;
  const args = Object.entries(flags).flatMap(([k, v]) => (v === undefined ? [] : [`--${k}`, v]));
  const r = await runCli(['flash-kit', ...args]);
  t.equal(r.status, code.startsWith('BAD') ? 2 : 3, `exit status for ${code}`);
  t.match(r.err, new RegExp(`^setokim: error \\[${code}\\]: `, 'm'));
  t.match(r.err, message);
  t.same(existsSync(flags.out!) ? readdirSync(flags.out!) : null, before, 'nothing written to --out');
  t.notOk(existsSync(`${flags.out}.partial`), 'no partial kit');
}

async function writeConfig(name: string, config: unknown): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, typeof config === 'string' ? config : JSON.stringify(config));
  return file;
}

async function writeCsv(name: string, lines: string[]): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, lines.join('\n') + '\n');
  return file;
}

t.test('a bundle that fails verification', async (t) => {
  const tampered = join(dir, 'tampered.bundle');
  const bytes = await readFile(inputs.bundle);
  bytes[bytes.length - 100]! ^= 1;
  await writeFile(tampered, bytes);
  await refused(t, { bundle: tampered }, 'BUNDLE_TAMPERED', /sha256/);
  const other = await generateKeys(join(dir, 'other-keys'));
  const foreign = join(dir, 'foreign.bundle');
  await createBundle({
    models: inputs.setDir,
    release: 1,
    key: await loadPrivateKey(other.privatePath),
    out: foreign,
    compatibility: testCompatibility({ fleets: ['plant'] }),
  });
  await refused(
    t,
    { bundle: foreign },
    'BUNDLE_SIGNATURE',
    /signed by key [0-9a-f]{16}, but the trusted public key is [0-9a-f]{16}/,
  );
  await refused(
    t,
    { bundle: join(dir, 'none.bundle') },
    'BAD_ARGUMENT',
    /cannot read --bundle .*none\.bundle: no such file/,
  );
});

t.test('a bundle the boards would refuse: another fleet, a target the kit does not name or that differs', async (t) => {
  const signed = async (name: string, over: Partial<Compatibility>) => {
    const out = join(dir, `${name}.bundle`);
    const key = await loadPrivateKey(inputs.priv);
    await createBundle({ models: inputs.setDir, release: 1, key, out, compatibility: testCompatibility(over) });
    return out;
  };
  await refused(
    t,
    { bundle: await signed('other-fleet', { fleets: ['elsewhere'] }) },
    'BUNDLE_WRONG_FLEET',
    /not for this device's fleet plant/,
  );
  const nano = await signed('nano', { fleets: ['plant'], targets: ['orin-nano-*/jp6.*/trt10.3'] });
  await refused(
    t,
    { bundle: nano },
    'BAD_ARGUMENT',
    /bound to target orin-nano-\*\/jp6\.\*\/trt10\.3: name the boards' target with --target/,
  );
  await refused(
    t,
    { bundle: nano, target: 'agx-orin-64gb/jp6.1/trt10.3' },
    'BUNDLE_WRONG_TARGET',
    /this device is agx-orin-64gb\/jp6\.1\/trt10\.3/,
  );
});

t.test('the public key: missing, or the private key given instead', async (t) => {
  await refused(
    t,
    { pubkey: join(dir, 'missing.pub.pem') },
    'BAD_ARGUMENT',
    /cannot read the public key .*missing\.pub\.pem/,
  );
  await refused(t, { pubkey: inputs.priv }, 'BAD_ARGUMENT', /holds a private key; give devices the public key only/);
});

t.test('a config the agent would refuse, or one that fights the kit', async (t) => {
  await refused(
    t,
    { config: await writeConfig('bad-url.yaml', { ...base, broker: { url: 'http://broker' } }) },
    'BAD_CONFIG',
    /the agent would refuse this: invalid agent configuration .*bad-url\.yaml:\n {2}broker\.url: must start with mqtt:/,
  );
  await refused(
    t,
    { config: await writeConfig('no-device.yaml', { fleet: 'plant', broker: base.broker }) },
    'BAD_CONFIG',
    /device: /,
  );
  await refused(
    t,
    { config: await writeConfig('typo.yaml', { ...base, limts: { queueSize: 4 } }) },
    'BAD_CONFIG',
    /Unrecognized key.*limts/,
  );
  await refused(
    t,
    { config: await writeConfig('not-yaml.yaml', 'fleet: [unclosed') },
    'BAD_CONFIG',
    /is not valid YAML/,
  );
  await refused(
    t,
    { config: await writeConfig('models.yaml', { ...base, models: '/home/me/models/tiny' }) },
    'BAD_CONFIG',
    /models \(\/home\/me\/models\/tiny\) names a directory on this machine/,
  );
  await refused(
    t,
    {
      config: await writeConfig('store.yaml', {
        ...base,
        updates: { store: '/data/models', pubkey: '/etc/setokim/bundle.pub.pem' },
      }),
    },
    'BAD_CONFIG',
    /updates\.store is \/data\/models; the kit installs the bundle into \/var\/lib\/setokim\/models/,
  );
  await refused(
    t,
    { config: await writeConfig('ca.yaml', { ...base, broker: { ...base.broker, ca: join(dir, 'no-ca.pem') } }) },
    'BAD_CONFIG',
    /cannot read the broker CA certificate .*no-ca\.pem/,
  );
  await refused(t, { config: join(dir, 'absent.yaml') }, 'BAD_CONFIG', /cannot read the config file/);
});

t.test('devices.csv: duplicates, unsafe ids, bad rows and key files', async (t) => {
  const devices = { ...base, device: undefined, fleet: undefined };
  const config = await writeConfig('fleet-base.yaml', devices);
  const csv = (name: string, rows: string[]) => writeCsv(name, ['device,fleet,broker,cert,key', ...rows]);
  const url = 'mqtt://broker:1883';
  await refused(
    t,
    {
      config,
      devices: await csv('dup.csv', [`cam-01,plant,${url},,`, `cam-02,plant,${url},,`, `CAM-01,plant,${url},,`]),
    },
    'BAD_DEVICE_LIST',
    /dup\.csv: line 4: device CAM-01 is already on line 2/,
  );
  for (const id of ['..', '.', '../etc', 'a/b', 'cam+1', '-rf', '.hidden', 'x'.repeat(65), '']) {
    await refused(
      t,
      { config, devices: await csv('unsafe.csv', [`${id},plant,${url},,`]) },
      'BAD_DEVICE_LIST',
      /unsafe\.csv: line 2: device/,
    );
  }
  await refused(
    t,
    { config, devices: await csv('fleet.csv', [`cam-01,plant/a,${url},,`]) },
    'BAD_DEVICE_LIST',
    /line 2: fleet "plant\/a": use letters/,
  );
  await refused(
    t,
    { config, devices: await csv('url.csv', ['cam-01,plant,https://broker,,']) },
    'BAD_DEVICE_LIST',
    /line 2: broker "https:\/\/broker": must be a broker URL/,
  );
  await refused(
    t,
    { config, devices: await csv('cols.csv', [`cam-01,plant,${url}`]) },
    'BAD_DEVICE_LIST',
    /line 2: 3 values for 5 columns/,
  );
  await refused(
    t,
    { config, devices: await writeCsv('header.csv', ['id,fleet,broker', `cam-01,plant,${url}`]) },
    'BAD_DEVICE_LIST',
    /line 1: the header must name the columns .*unknown: id; missing: device/,
  );
  await refused(
    t,
    { config, devices: await writeCsv('empty.csv', ['# nothing here']) },
    'BAD_DEVICE_LIST',
    /no header and no devices/,
  );
  await refused(t, { config, devices: join(dir, 'absent.csv') }, 'BAD_DEVICE_LIST', /absent\.csv: cannot read it/);

  const certs = join(dir, 'certs');
  await mkdir(certs);
  const a = await clientCert(certs, 'cam-01');
  const b = await clientCert(certs, 'cam-02');
  await refused(
    t,
    { config, devices: await csv('half.csv', [`cam-01,plant,${url},${a.cert},`]) },
    'BAD_DEVICE_LIST',
    /half\.csv: line 2: cert ".*cam-01\.pem": cert and key go together/,
  );
  await refused(
    t,
    { config, devices: await csv('nokey.csv', [`cam-01,plant,${url},${a.cert},certs/missing.key`]) },
    'BAD_DEVICE_LIST',
    /nokey\.csv: line 2: cannot read the client key .*certs\/missing\.key/,
  );
  await refused(
    t,
    { config, devices: await csv('swap.csv', [`cam-01,plant,${url},${a.cert},${b.key}`]) },
    'BAD_DEVICE_LIST',
    /swap\.csv: line 2: .*cam-02\.key is not the key of .*cam-01\.pem \(CN=cam-01\)/,
  );
  await refused(
    t,
    { config, devices: await csv('signing.csv', [`cam-01,plant,${url},${a.cert},${inputs.priv}`]) },
    'BAD_DEVICE_LIST',
    /is the bundle-signing private key; it never leaves the build machine/,
  );
  // A device row that makes a config the agent refuses: the agent's own message, naming the device.
  await refused(
    t,
    {
      config: await writeConfig('limits.yaml', { ...devices, limits: { queueSize: -1 } }),
      devices: await csv('ok.csv', [`cam-01,plant,${url},,`]),
    },
    'BAD_CONFIG',
    /configuration for cam-01 .*ok\.csv line 2\):\n {2}limits\.queueSize: /,
  );
});

t.test('--out must not hold anything; flags are checked', async (t) => {
  const full = join(dir, 'full');
  await mkdir(full);
  await writeFile(join(full, 'keep.txt'), 'mine');
  await refused(t, { out: full }, 'BAD_ARGUMENT', /--out .*full exists and is not an empty directory/);
  t.equal(await readFile(join(full, 'keep.txt'), 'utf8'), 'mine', 'left as it was');
  await refused(
    t,
    { arch: 'riscv64' },
    'BAD_ARGUMENT',
    /flash-kit: --arch: Invalid option: expected one of "amd64"\|"arm64"/,
  );
  await refused(t, { config: undefined }, 'BAD_ARGUMENT', /flash-kit: --config: required/);
});

t.test('a dist/ older than its TypeScript is refused (the kit would ship old code)', async (t) => {
  const root = t.testdir({
    src: { 'a.ts': 'export const a = 1;\n' },
    tools: {},
    dist: { src: { 'a.js': 'export const a = 1;\n' } },
  });
  await checkCompiled(root);
  const later = new Date(Date.now() + 60_000);
  await utimes(join(root, 'src', 'a.ts'), later, later);
  await t.rejects(checkCompiled(root), {
    code: 'KIT_BUILD_FAILED',
    message: /dist\/ is older than 1 source file\(s\) \(src\/a\.ts\); run `npm run build` first/,
  });
  await copyFile(join(root, 'src', 'a.ts'), join(root, 'src', 'b.ts'));
  await t.rejects(checkCompiled(root), { message: /older than 2 source file/ }, 'a file never compiled counts too');
});
