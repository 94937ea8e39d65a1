/**
 * An amd64 flashing kit, built once (KitBuilder, as `setokim flash-kit` runs it) from a tiny set
 * and shared by every subtest: the package as dpkg-deb lists it against docs/FLASHING.md, lintian,
 * the JS against dist/, the signing key nowhere; then apply-to-rootfs.sh into a throwaway Debian
 * root (test/helpers/debian-root.ts) where the package installs, reinstalls, is removed and purged,
 * its units verify, ensure-engines says why it built nothing, and the installed `setokim agent`
 * answers a query over mosquitto from the overlay's store.
 * Slow by nature: the kit takes 1.5-2 minutes on 2 shared cores (node_modules copy, dpkg-deb),
 * lintian 1-2 more. Needs `npm run build` first (the kit ships dist/ and refuses a stale one).
 */
import { execFile } from 'node:child_process';
import { createHash, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import type { ReplyEvent } from '../../src/agent/codec.js';
import { KitBuilder, type KitSummary } from '../../tools/flashkit/index.js';
import { debianRoot, unavailable, type DebianRoot } from '../helpers/debian-root.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { samplePng } from '../agent/stub-pipeline.js';
import { filesContaining, filesUnder, kitInputs } from './fixtures.js';

const run = promisify(execFile);
// Longer than .taprc's 300 s: building and checking a package takes minutes on 2 shared cores.
t.setTimeout(20 * 60_000);
const ROOT = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'setokim-kit-amd64-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

if (!mosquittoPath()) throw new Error('mosquitto is not installed: apt-get install -y mosquitto');
const broker = await startMosquitto();
t.teardown(() => broker.stop());
const inputs = await kitInputs(dir, {
  fleet: 'kit',
  device: 'amd64-box',
  broker: { url: broker.url },
  metrics: { port: 0 },
});
const out = join(dir, 'kit');
const started = Date.now();
const kit: KitSummary = await new KitBuilder({
  bundle: inputs.bundle,
  pubkey: inputs.pub,
  config: inputs.config,
  out,
  arch: 'amd64',
  compression: 'gzip',
}).build();
t.comment(`kit built in ${((Date.now() - started) / 1000).toFixed(0)} s`);
const deb = join(out, kit.deb.file);
const data = join(dir, 'data'); // the package's files, as dpkg-deb -x lays them out
await run('dpkg-deb', ['-x', deb, data]);

t.test('dpkg-deb --info: the control fields docs/FLASHING.md describes', async (t) => {
  const { stdout } = await run('dpkg-deb', ['--info', deb]);
  const version = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;
  t.equal(kit.deb.file, `setokim-edge_${version}_amd64.deb`);
  t.match(
    stdout,
    new RegExp(`\\n Package: setokim-edge\\n Version: ${version.replace(/\./g, '\\.')}\\n Architecture: amd64\\n`),
  );
  const depends = /\n Depends: (.*)\n/.exec(stdout)![1]!.split(', ');
  t.same(depends.slice(0, 2), ['nodejs (>= 20)', 'adduser']);
  t.ok(
    depends.some((d) => /^libc6 \(>= 2\.\d+\)$/.test(d)),
    `a versioned libc6: ${depends.join(', ')}`,
  );
  t.same(depends, kit.deb.depends, 'kit.json says the same');
  for (const script of ['postinst', 'prerm', 'postrm'])
    t.match(stdout, new RegExp(`\\d+ bytes, +\\d+ lines +\\* +${script} +#!/bin/sh`), `${script}, executable`);
  t.equal(
    kit.deb.sha256,
    createHash('sha256')
      .update(await readFile(deb))
      .digest('hex'),
  );
});

t.test(
  'dpkg-deb --contents: the package table of docs/FLASHING.md, nothing for other platforms, no dev package',
  async (t) => {
    const { stdout } = await run('dpkg-deb', ['--contents', deb], { maxBuffer: 64 << 20 });
    const listed = stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => /\.(\/\S*)/.exec(l)![1]!.replace(/\/$/, ''));
    const guide = readFileSync(join(ROOT, 'docs', 'FLASHING.md'), 'utf8');
    const table = guide.slice(guide.indexOf('### The package'), guide.indexOf('- **node_modules**'));
    const documented = [...table.matchAll(/^\| `(\/[^`]+)`/gm)].map((m) => m[1]!.replace(/\/$/, ''));
    t.ok(documented.length >= 12, `${documented.length} documented paths`);
    for (const path of documented) t.ok(listed.includes(path), `${path} is in the package`);
    t.match(stdout, /-rwxr-xr-x root\/root .* \.\/opt\/setokim\/bin\/setokim\.js\n/);
    t.match(stdout, /lrwxrwxrwx root\/root .* \.\/usr\/bin\/setokim -> \/opt\/setokim\/bin\/setokim\.js\n/);
    t.notOk(
      listed.some(
        (p) => p.startsWith('/opt/setokim/node_modules/tap/') || p.startsWith('/opt/setokim/node_modules/typescript/'),
      ),
      'no dev dependency',
    );
    t.notOk(
      listed.some((p) => /napi-v6\/(darwin|win32|linux\/arm64)/.test(p)),
      "none of onnxruntime's other platforms",
    );
    const bad = listed.filter(
      (p) =>
        p.startsWith('/opt/setokim/dist/') &&
        (p.startsWith('/opt/setokim/dist/bench') || p.endsWith('.map') || p.endsWith('.d.ts')),
    );
    t.same(bad, [], 'no benchmarks, source maps or declarations in dist/');
    t.ok(
      kit.nodeModules.removedForeignBinaries > 0,
      `${kit.nodeModules.removedForeignBinaries} foreign binaries left out`,
    );
    const { stdout: files } = await run('sh', ['-c', `cd ${data} && find . -type f -exec file {} + | grep ELF`], {
      maxBuffer: 16 << 20,
    });
    const elves = files.split('\n').filter(Boolean);
    t.ok(elves.length >= 4, `${elves.length} ELF files`);
    t.same(
      elves.filter((l) => !/ELF 64-bit LSB .*x86-64/.test(l)),
      [],
      'every one is x86-64',
    );
  },
);

t.test("the app's JavaScript is dist/'s, byte for byte", async (t) => {
  let n = 0;
  for (const tree of ['src', 'tools']) {
    for (const f of (await filesUnder(join(ROOT, 'dist', tree))).filter((f) => f.endsWith('.js'))) {
      const shipped = join(data, 'opt/setokim/dist', relative(join(ROOT, 'dist'), f));
      t.ok(existsSync(shipped) && (await readFile(shipped)).equals(await readFile(f)), relative(ROOT, f));
      n++;
    }
  }
  t.ok(n > 100, `${n} files compared`);
});

t.test('lintian: no error, no warning (what stays is overridden with a reason)', async (t) => {
  const t0 = Date.now();
  const r = await run('lintian', ['--tag-display-limit', '0', '--fail-on', 'error,warning', deb], {
    maxBuffer: 64 << 20,
  }).catch((e: { stdout: string; stderr: string; code: number }) => e);
  t.comment(`lintian took ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const tags = r.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
  t.same(tags, [], r.stderr.replace(/running with root privileges is not recommended!\n/, ''));
  const overrides = readFileSync(join(data, 'usr/share/lintian/overrides/setokim-edge'), 'utf8');
  const lines = overrides.split('\n').filter(Boolean);
  lines.forEach((line, i) => {
    if (!line.startsWith('setokim-edge:')) return;
    const above = lines
      .slice(0, i)
      .reverse()
      .find((l) => !l.startsWith('setokim-edge:'));
    t.match(above, /^# /, `a reason above ${line}`);
  });
});

t.test('neither the package nor the overlay holds the bundle-signing private key', async (t) => {
  const pem = readFileSync(inputs.priv, 'utf8');
  const body = Buffer.from(
    pem
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .join(''),
  );
  const der = createPrivateKey(pem).export({ type: 'pkcs8', format: 'der' });
  const seed = der.subarray(der.length - 32); // the Ed25519 private key itself
  for (const where of [data, out]) {
    const hits = await filesContaining(where, [body, seed]);
    t.same(hits, [], `neither the PEM body nor the raw key under ${relative(dir, where)}`);
  }
  t.equal(
    readFileSync(join(out, 'overlay/files/etc/setokim/bundle.pub.pem'), 'utf8'),
    readFileSync(inputs.pub, 'utf8'),
    'the public key, as SPKI PEM',
  );
});

const why = await unavailable();

t.test(
  'into a clean Debian root: apply, reinstall, units, engines, the agent answers; remove, purge, install again',
  { skip: why && `no throwaway Debian root here: ${why}` },
  async (t) => {
    const r: DebianRoot = await debianRoot();
    t.teardown(() => r.close());
    const apply = (...args: string[]) => r.host([join(out, 'apply-to-rootfs.sh'), ...args, r.root]);

    const dry = await apply();
    t.match(
      dry.stdout,
      /\(dry run: nothing is changed; add --apply\)\npackage: setokim-edge_\S+_amd64\.deb \(installed: none\)/,
    );
    const overlayFiles = readFileSync(join(out, 'overlay/files.txt'), 'utf8').split('\n').filter(Boolean);
    t.equal(dry.stdout.match(/^ {2}new /gm)?.length, overlayFiles.length, 'every overlay entry is new');
    t.match(dry.stdout, /^ {2}new +f 0600 \/etc\/setokim\/agent\.yaml \(setokim\)$/m);
    t.notOk(
      existsSync(join(r.root, 'opt/setokim')) || existsSync(join(r.root, 'etc/setokim')),
      'the dry run changed nothing',
    );
    await t.rejects(r.exec(['dpkg', '-s', 'setokim-edge']), 'not installed');

    const applied = await apply('--apply');
    t.match(applied.stdout, /Setting up setokim-edge/);
    t.match(applied.stdout, /applied: setokim-edge installed/);
    const id = (await r.exec(['id', 'setokim'])).stdout;
    t.match(
      id,
      /^uid=\d+\(setokim\) gid=\d+\(setokim\) groups=\d+\(setokim\),44\(video\)/,
      'the service user, in video',
    );
    t.match((await r.exec(['getent', 'passwd', 'setokim'])).stdout, /:\/var\/lib\/setokim:\/usr\/sbin\/nologin\n$/);
    const st = (path: string) => r.exec(['stat', '-c', '%a %U', path]).then((o) => o.stdout.trim());
    t.equal(await st('/etc/setokim/agent.yaml'), '600 setokim');
    t.equal(await st('/etc/setokim/bundle.pub.pem'), '644 root');
    t.equal(await st('/var/lib/setokim/models'), '750 setokim');
    t.equal(await st(`/var/lib/setokim/models/${kit.bundle.modelSetId}/manifest.json`), '644 setokim');
    for (const unit of ['setokim-agent.service', 'setokim-engines.service']) {
      t.equal(
        (await r.exec(['readlink', `/etc/systemd/system/multi-user.target.wants/${unit}`])).stdout.trim(),
        `/lib/systemd/system/${unit}`,
        `${unit} enabled`,
      );
    }
    const again = await apply();
    t.equal(
      again.stdout.match(/^ {2}same /gm)?.length,
      overlayFiles.length,
      'applied: a dry run now finds every file the same',
    );

    const verify = await r.exec([
      'systemd-analyze',
      'verify',
      '/lib/systemd/system/setokim-agent.service',
      '/lib/systemd/system/setokim-engines.service',
    ]);
    t.equal(`${verify.stdout}${verify.stderr}`, '', 'systemd-analyze verify: clean');

    const engines = await r.exec(
      ['/usr/bin/setokim', 'export', 'ensure-engines', '--store', '/var/lib/setokim/models'],
      { user: 'setokim' },
    );
    t.match(
      engines.stdout,
      new RegExp(
        `^ensure-engines: built nothing for ${kit.bundle.modelSetId}: TensorRT cannot build engines here: .+\\. ` +
          'The agent serves the set on ONNX Runtime\\.\\n$',
      ),
    );

    // The installed agent, as the unit runs it, with the overlay's configuration and store.
    const agent = r.spawn(['/usr/bin/setokim', 'agent', '--config', '/etc/setokim/agent.yaml'], {
      user: 'setokim',
      env: { HOME: '/var/lib/setokim' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    agent.stderr!.on('data', (c: Buffer) => (log += c.toString()));
    const exited = new Promise<number | null>((resolve) => agent.once('exit', resolve));
    t.teardown(() => agent.kill('SIGKILL'));
    await new Promise<void>((resolve, reject) => {
      const check = () =>
        /serving setokim\/v1\/kit\/amd64-box\/query/.test(log) && (agent.stderr!.off('data', check), resolve());
      agent.stderr!.on('data', check);
      agent.once('exit', () => reject(new Error(`the agent exited:\n${log}`)));
    });
    const client = await QueryClient.connect({ url: broker.url, protocolVersion: 5 });
    t.teardown(() => client.close());
    t.equal(
      (await client.status('kit', 'amd64-box'))?.modelSetId,
      kit.bundle.modelSetId,
      "serving the overlay store's set",
    );
    const events: ReplyEvent[] = [];
    for await (const e of client.query(
      { fleet: 'kit', device: 'amd64-box' },
      {
        id: newQueryId(),
        task: 'ask',
        prompt: 'what is this?',
        image: await samplePng(),
        generation: { maxTokens: 6 },
      },
      { timeoutMs: 60_000 },
    ))
      events.push(e);
    t.same(
      events.map((e) => e.type).filter((ty, i, a) => a.indexOf(ty) === i),
      ['accepted', 'clustered', 'text', 'done'],
      log,
    );
    const done = events.at(-1) as Extract<ReplyEvent, { type: 'done' }>;
    t.ok(done.generatedTokens > 0 && done.generatedTokens <= 6, `${done.generatedTokens} tokens`);
    t.notOk('energyMj' in done, 'no power rails here: no energy');
    agent.kill('SIGTERM');
    t.equal(await exited, 0, 'SIGTERM: a clean exit');

    // The maintainer scripts run again and again with the same result.
    const uid = (await r.exec(['id', '-u', 'setokim'])).stdout;
    const tmpDeb = `/tmp/${kit.deb.file}`;
    await r.host(['cp', deb, join(r.root, tmpDeb)]);
    await r.exec(['dpkg', '-i', tmpDeb]);
    t.equal((await r.exec(['id', '-u', 'setokim'])).stdout, uid, 'reinstall: the same user');
    t.equal(await st('/etc/setokim/agent.yaml'), '600 setokim', 'reinstall: the configuration as it was');
    await r.exec(['dpkg', '-r', 'setokim-edge']);
    t.notOk(
      existsSync(join(r.root, 'opt/setokim')) || existsSync(join(r.root, 'usr/bin/setokim')),
      'remove: the app is gone',
    );
    t.ok(
      existsSync(join(r.root, `var/lib/setokim/models/${kit.bundle.modelSetId}/manifest.json`)),
      'remove: the store stays',
    );
    await r.exec(['dpkg', '--purge', 'setokim-edge']);
    t.equal((await r.exec(['id', '-u', 'setokim'])).stdout, uid, 'purge: the system user stays (Debian policy)');
    await r.exec(['dpkg', '-i', tmpDeb]);
    t.match(
      (await r.exec(['dpkg', '-s', 'setokim-edge'])).stdout,
      /Status: install ok installed/,
      'installs again after a purge',
    );
  },
);
