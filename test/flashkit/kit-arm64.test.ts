/**
 * An arm64 (Jetson) kit with --devices, built once on this x86 machine: the addon cross-compiled
 * (checked by its ELF header), every binary in the package AArch64 (npm's arm64 builds fetched,
 * x86 ones left out), the JavaScript byte-identical to dist/ (as the amd64 package's is), one
 * overlay per device with its own identity and secrets, and apply-to-rootfs.sh's dry run on an
 * arm64 root file system. Slow: the first aarch64 addon build takes a minute or more (then it is
 * incremental in build/kit-arm64), and the arm64 npm packages are fetched (npm's cache after).
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { parse } from 'yaml';
import { parseAgentConfig } from '../../src/agent/config.js';
import { elfMachine } from '../../tools/flashkit/elf.js';
import { KitBuilder, type KitSummary } from '../../tools/flashkit/index.js';
import { clientCert, filesContaining, filesUnder, kitInputs } from './fixtures.js';

const run = promisify(execFile);
/** `p` fails (a command that exits non-zero) with `stderr` matching. */
async function failsWith(
  t: Test,
  p: Promise<unknown>,
  stderr: RegExp,
  message = `fails with ${stderr}`,
): Promise<void> {
  t.match(
    await p.then(
      () => 'it succeeded',
      (e: unknown) => e,
    ),
    { stderr },
    message,
  );
}
// Longer than .taprc's 300 s: building and checking a package takes minutes on 2 shared cores.
t.setTimeout(20 * 60_000);
const ROOT = join(import.meta.dirname, '..', '..');
const CROSS_LIBC = '/usr/aarch64-linux-gnu/lib/libc.so.6';

const missing = ['aarch64-linux-gnu-g++', 'dpkg-deb', 'openssl'].filter((tool) => !existsSync(`/usr/bin/${tool}`));
if (missing.length) {
  t.plan(0, `needs ${missing.join(', ')} (apt-get install -y g++-aarch64-linux-gnu dpkg openssl)`);
} else {
  await arm64Kit();
}

async function arm64Kit(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'setokim-kit-arm64-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const certs = join(dir, 'certs');
  mkdirSync(certs);
  const cam1 = await clientCert(certs, 'cam-01');
  const ca = await clientCert(certs, 'plant-ca');
  const inputs = await kitInputs(
    dir,
    { broker: { url: 'mqtts://unused:8883', ca: ca.cert }, limits: { queueSize: 4 } },
    12,
    ['plant-a'],
  );
  const csv = join(dir, 'devices.csv');
  writeFileSync(
    csv,
    [
      '# plant A',
      'device,fleet,broker,cert,key',
      'cam-01,plant-a,mqtts://broker.plant-a:8883,certs/cam-01.pem,certs/cam-01.key',
      'cam-02,plant-a,mqtts://broker.plant-a:8883,,',
      '',
    ].join('\n'),
  );
  const out = join(dir, 'kit');
  const started = Date.now();
  const kit: KitSummary = await new KitBuilder({
    bundle: inputs.bundle,
    pubkey: inputs.pub,
    config: inputs.config,
    out,
    arch: 'arm64',
    devices: csv,
    compression: 'gzip',
  }).build();
  t.comment(`kit built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  const deb = join(out, kit.deb.file);
  const data = join(dir, 'data');
  await run('dpkg-deb', ['-x', deb, data]);

  t.test('an arm64 package: control fields, an AArch64 addon, only AArch64 binaries', async (t) => {
    t.match(kit.deb.file, /^setokim-edge_[\d.]+_arm64\.deb$/);
    const { stdout } = await run('dpkg-deb', ['--info', deb]);
    t.match(stdout, /\n Architecture: arm64\n/);
    t.match(stdout, /\n Depends: nodejs \(>= 20\), adduser, libc6 \(>= 2\.\d+\)/);
    // Installable on JetPack 6 (Ubuntu 22.04: glibc 2.35, libstdc++6 12.3): nothing newer may be needed.
    const need = (pkg: string) =>
      new RegExp(`(?:, |: )${pkg.replace(/\+/g, '\\+')} \\(>= ([\\d.]+)\\)`).exec(stdout)?.[1];
    const [libc, libstdcxx] = [need('libc6'), need('libstdc++6')];
    t.ok(libc && Number(libc.split('.')[1]) <= 35, `libc6 (>= ${libc}): JetPack 6 has 2.35`);
    t.ok(!libstdcxx || Number(libstdcxx) <= 12, `libstdc++6 (>= ${libstdcxx}): JetPack 6 has 12`);
    const addon = join(data, 'opt/setokim/build/Release/setokim.node');
    t.equal(await elfMachine(addon), 183, 'the addon: e_machine 183 (EM_AARCH64)');
    t.match((await run('file', ['-b', addon])).stdout, /^ELF 64-bit LSB shared object, ARM aarch64/);
    t.match(kit.addon, /cross-compiled with aarch64-linux-gnu-g\+\+/);
    const { stdout: files } = await run('sh', ['-c', `cd ${data} && find . -type f -exec file {} + | grep ELF`], {
      maxBuffer: 16 << 20,
    });
    const elves = files.split('\n').filter(Boolean);
    t.ok(elves.length >= 4, `${elves.length} ELF files`);
    t.same(
      elves.filter((l) => !/ELF 64-bit LSB .*ARM aarch64/.test(l)),
      [],
      'every one is AArch64',
    );
    for (const p of ['@img/sharp-linux-arm64', '@img/sharp-libvips-linux-arm64', '@esbuild/linux-arm64']) {
      t.ok(
        kit.nodeModules.fetched.some((f) => f.startsWith(`${p}@`)),
        `${p} fetched for arm64`,
      );
      t.ok(existsSync(join(data, 'opt/setokim/node_modules', p, 'package.json')), `${p} in the package`);
    }
    for (const p of ['@img/sharp-linux-x64', '@esbuild/linux-x64', 'onnxruntime-node/bin/napi-v6/linux/x64'])
      t.notOk(existsSync(join(data, 'opt/setokim/node_modules', p)), `no ${p}`);
    t.ok(
      existsSync(
        join(data, 'opt/setokim/node_modules/onnxruntime-node/bin/napi-v6/linux/arm64/onnxruntime_binding.node'),
      ),
    );
  });

  t.test("the JavaScript is dist/'s byte for byte, as in the amd64 package", async (t) => {
    const shipped = (await filesUnder(join(data, 'opt/setokim/dist')))
      .map((f) => relative(join(data, 'opt/setokim/dist'), f))
      .sort();
    const built = (await filesUnder(join(ROOT, 'dist')))
      .map((f) => relative(join(ROOT, 'dist'), f))
      .filter((f) => /^(src|tools)\/.*\.js$/.test(f))
      .sort();
    t.same(shipped, built, 'the same files');
    const differ: string[] = [];
    for (const f of built)
      if (!(await readFile(join(ROOT, 'dist', f))).equals(await readFile(join(data, 'opt/setokim/dist', f))))
        differ.push(f);
    t.same(differ, [], `${built.length} files, none differs`);
  });

  t.test("one overlay per device: its identity and secrets, 0600 and the service user's", async (t) => {
    t.same(kit.devices, ['cam-01', 'cam-02']);
    const common = readFileSync(join(out, 'overlay/files.txt'), 'utf8');
    t.notMatch(common, /agent\.yaml|tls\//, 'no identity in the common overlay');
    t.match(common, /^f 0644 root \/etc\/setokim\/bundle\.pub\.pem$/m);
    t.match(
      common,
      new RegExp(`^f 0644 setokim /var/lib/setokim/models/${kit.bundle.modelSetId}/manifest\\.json$`, 'm'),
    );
    const listed = (id: string) =>
      readFileSync(join(out, 'devices', id, 'files.txt'), 'utf8')
        .split('\n')
        .filter(Boolean);
    t.same(listed('cam-01'), [
      'd 0755 root /etc/setokim',
      'f 0600 setokim /etc/setokim/agent.yaml',
      'd 0755 root /etc/setokim/tls',
      'f 0644 root /etc/setokim/tls/ca.pem',
      'f 0600 setokim /etc/setokim/tls/client.key',
      'f 0600 setokim /etc/setokim/tls/client.pem',
    ]);
    t.same(listed('cam-02'), [
      'd 0755 root /etc/setokim',
      'f 0600 setokim /etc/setokim/agent.yaml',
      'd 0755 root /etc/setokim/tls',
      'f 0644 root /etc/setokim/tls/ca.pem',
    ]);
    const file = (id: string, path: string) => join(out, 'devices', id, 'files', path);
    t.equal(
      readFileSync(file('cam-01', '/etc/setokim/tls/client.key'), 'utf8'),
      readFileSync(cam1.key, 'utf8'),
      "cam-01's own key",
    );
    for (const id of ['cam-01', 'cam-02']) {
      const config = parseAgentConfig(parse(readFileSync(file(id, '/etc/setokim/agent.yaml'), 'utf8')));
      t.same(
        [config.fleet, config.device, config.broker.url, config.broker.ca],
        ['plant-a', id, 'mqtts://broker.plant-a:8883', '/etc/setokim/tls/ca.pem'],
        `${id}: identity from devices.csv`,
      );
      t.match(config.updates, { store: '/var/lib/setokim/models', pubkey: '/etc/setokim/bundle.pub.pem' });
      t.equal(config.limits.queueSize, 4, 'the rest from --config');
      t.same(
        [config.broker.cert, config.broker.key],
        id === 'cam-01' ? ['/etc/setokim/tls/client.pem', '/etc/setokim/tls/client.key'] : [undefined, undefined],
      );
    }
    const seed = readFileSync(inputs.priv, 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .join('');
    t.same(await filesContaining(out, [Buffer.from(seed)]), [], 'no signing key anywhere in the kit');
  });

  t.test('apply-to-rootfs.sh on an arm64 root file system: the dry run, and its refusals', async (t) => {
    const rootfs = join(dir, 'rootfs');
    mkdirSync(join(rootfs, 'var/lib/dpkg'), { recursive: true });
    mkdirSync(join(rootfs, 'usr/bin'), { recursive: true });
    writeFileSync(join(rootfs, 'var/lib/dpkg/status'), '');
    // An AArch64 ELF where the script reads the root file system's architecture from.
    copyFileSync(CROSS_LIBC, join(rootfs, 'usr/bin/dpkg'));
    const script = join(out, 'apply-to-rootfs.sh');
    const dry = await run(script, ['--device', 'cam-01', rootfs]);
    t.match(
      dry.stdout,
      /^setokim flashing kit [\d.]+ \(arm64\) -> .*rootfs \(dry run: nothing is changed; add --apply\)$/m,
    );
    t.match(dry.stdout, /^warning: nodejs >= 20 is not installed in .*rootfs \(found: none\)/m);
    const common = readFileSync(join(out, 'overlay/files.txt'), 'utf8').split('\n').filter(Boolean).length;
    t.equal(dry.stdout.match(/^ {2}new /gm)?.length, common + 6, "the common overlay and cam-01's six entries");
    t.match(dry.stdout, /^ {2}new +f 0600 \/etc\/setokim\/tls\/client\.key \(setokim\)$/m);
    t.notOk(existsSync(join(rootfs, 'etc')), 'nothing written');
    const anonymous = await run(script, [rootfs]);
    t.match(
      anonymous.stdout,
      /^note: no --device: the board gets no identity; .*the agent stays off until \/etc\/setokim\/agent\.yaml is/m,
    );
    await failsWith(
      t,
      run(script, ['--device', 'cam-09', rootfs]),
      /no device cam-09 in this kit \(have: cam-01 cam-02 \)/,
    );
    const binfmt = existsSync('/proc/sys/fs/binfmt_misc/qemu-aarch64');
    if (!binfmt) {
      t.match(
        dry.stdout,
        /^warning: this host cannot run the arm64 programs in .*rootfs \(its dpkg\): apt-get install -y qemu-/m,
      );
      await failsWith(
        t,
        run(script, ['--apply', '--device', 'cam-01', rootfs]),
        /this host cannot run the arm64 programs/,
        '--apply refuses without qemu',
      );
    } else {
      await failsWith(
        t,
        run(script, ['--apply', '--device', 'cam-01', rootfs]),
        /nodejs >= 20 is not installed/,
        '--apply needs Node in the rootfs first',
      );
    }
    copyFileSync('/usr/bin/dpkg', join(rootfs, 'usr/bin/dpkg'));
    await failsWith(t, run(script, [rootfs]), /rootfs is amd64; this kit is for arm64 \(build one with --arch amd64\)/);
    await failsWith(t, run(script, [join(dir, 'nowhere')]), /nowhere is not a directory/);
  });
}
