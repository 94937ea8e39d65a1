/**
 * A real mosquitto (the Debian package) on a free port with a temporary config, for tests and
 * benchmarks. It never uses a system broker. restart() brings it back on the same port.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BINARIES = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'];

const DYNSEC_PLUGINS = [
  '/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so',
  '/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so',
  '/usr/lib/mosquitto_dynamic_security.so',
  '/usr/local/lib/mosquitto_dynamic_security.so',
];

/** The dynamic-security plugin, where mosquitto's package put it. */
export function dynsecPluginPath(): string | undefined {
  return DYNSEC_PLUGINS.find((p) => existsSync(p));
}

export function mosquittoPath(): string | undefined {
  return BINARIES.find((p) => existsSync(p));
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export interface Mosquitto {
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Stops and starts again on the same port (clients see the broker go away and come back). */
  restart(): Promise<void>;
}

export interface MosquittoOptions {
  /** TLS listener (PEM file paths, readable by the mosquitto user); requireCertificate asks clients for a certificate signed by ca. */
  tls?: { ca: string; cert: string; key: string; requireCertificate?: boolean };
  /** Users and passwords; anonymous clients are then refused. */
  users?: Record<string, string>;
  /**
   * A dynamic-security plugin config (the JSON of mosquitto's dynamic-security.json: roles, groups,
   * defaultACLAccess, anonymousGroup). Unlike an acl_file, whose rules mosquitto 2.0 applies only
   * when delivering, it can refuse a SUBSCRIBE (SUBACK "Not authorized").
   */
  dynsec?: Record<string, unknown>;
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const bin = mosquittoPath();
  if (!bin) throw new Error('mosquitto is not installed: apt-get install -y mosquitto');
  const dir = mkdtempSync(join(tmpdir(), 'setokim-mosquitto-'));
  chmodSync(dir, 0o755); // started as root, mosquitto drops to its own user: it must read this
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  const lines = [
    `listener ${port} 127.0.0.1`,
    'set_tcp_nodelay true',
    'persistence false',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
    'log_type information',
  ];
  if (opts.tls) {
    lines.push(`cafile ${opts.tls.ca}`, `certfile ${opts.tls.cert}`, `keyfile ${opts.tls.key}`);
    if (opts.tls.requireCertificate) lines.push('require_certificate true');
  }
  if (opts.users) {
    const passwords = join(dir, 'passwords');
    writeFileSync(passwords, '');
    for (const [user, password] of Object.entries(opts.users))
      execFileSync('mosquitto_passwd', ['-b', passwords, user, password]);
    chmodSync(passwords, 0o644);
    lines.push('allow_anonymous false', `password_file ${passwords}`);
  } else lines.push('allow_anonymous true');
  if (opts.dynsec) {
    const plugin = dynsecPluginPath();
    if (!plugin)
      throw new Error(
        'the mosquitto dynamic-security plugin is not installed (it ships with the Debian mosquitto package)',
      );
    const file = join(dir, 'dynamic-security.json');
    writeFileSync(file, JSON.stringify(opts.dynsec));
    chmodSync(file, 0o644);
    lines.push(`plugin ${plugin}`, `plugin_opt_config_file ${file}`);
  }
  writeFileSync(conf, lines.join('\n') + '\n');
  let child: ChildProcess | undefined;

  const launch = (): Promise<void> =>
    new Promise((resolve, reject) => {
      // stderr is unbuffered; stdout would hold the log lines back in a pipe
      const proc = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
      child = proc;
      let log = '';
      let ready = false;
      proc.stderr!.on('data', (chunk: Buffer) => {
        if (ready) return;
        log += chunk.toString();
        // mosquitto prints this once its listener is open
        if (/mosquitto version \S+ running/.test(log)) {
          ready = true;
          resolve();
        }
      });
      proc.once('exit', (code) => reject(new Error(`mosquitto exited with ${code} before it was ready:\n${log}`)));
    });

  const kill = (): Promise<void> =>
    new Promise((resolve) => {
      const proc = child;
      child = undefined;
      if (!proc || proc.exitCode !== null) return resolve();
      proc.once('exit', () => resolve());
      proc.kill('SIGTERM');
    });

  await launch();
  return {
    url: `${opts.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`,
    port,
    async stop() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      await kill();
      await launch();
    },
  };
}
