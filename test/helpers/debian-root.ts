/**
 * A throwaway Debian root to install packages into, built from this machine in a private mount
 * namespace (so every mount disappears with it, whatever happens to the test):
 *   /usr and /etc: this machine's, copy-on-write (overlayfs), with the accounts reset to a fresh
 *     Debian's (base-passwd's passwd.master and group.master: no service users yet);
 *   /var/lib/dpkg: this machine's package database, copy-on-write: it describes that /usr, so
 *     dpkg checks Depends (nodejs >= 20, adduser, libc6 ...) against what is really there;
 *   /opt, /var/lib, /tmp, /run, /home: empty; /proc, /sys and /dev mounted as a system has them.
 * Nothing it does reaches this machine's own files. Needs root, overlayfs and mount namespaces
 * (`available()` says why not when they are missing); debootstrap would need a mirror or minutes.
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const CHROOT_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C.UTF-8',
  HOME: '/root',
};

/** Why a Debian root cannot be made here, or undefined when it can. */
export async function unavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (mounts and chroot)';
  for (const tool of ['unshare', 'nsenter', 'chroot', 'dpkg']) {
    if (
      !(await run('which', [tool]).then(
        () => true,
        () => false,
      ))
    )
      return `${tool} is not installed`;
  }
  if (!existsSync('/usr/share/base-passwd/passwd.master')) return 'base-passwd is not installed';
  const probe = mkdtempSync(join(tmpdir(), 'setokim-root-probe-'));
  try {
    for (const d of ['up', 'work', 'm']) mkdirSync(join(probe, d));
    await run('unshare', [
      '--mount',
      '--propagation',
      'private',
      'mount',
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=/usr,upperdir=${probe}/up,workdir=${probe}/work`,
      `${probe}/m`,
    ]);
    return undefined;
  } catch (err) {
    return `cannot mount an overlay in a private mount namespace: ${(err as Error).message.split('\n')[0]}`;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

export interface DebianRoot {
  /** The root directory (as seen inside the namespace; its files are visible outside too, except the mounts). */
  root: string;
  /** Runs a command chrooted into the root (as `user` when given); its output, or a rejection for a non-zero exit. */
  exec(cmd: string[], o?: { user?: string; env?: Record<string, string> }): Promise<{ stdout: string; stderr: string }>;
  /** Runs a command in the namespace but outside the chroot (e.g. apply-to-rootfs.sh on the root). */
  host(cmd: string[], o?: { env?: Record<string, string> }): Promise<{ stdout: string; stderr: string }>;
  /** Starts a long-running command in the chroot. */
  spawn(cmd: string[], o: { user?: string; env?: Record<string, string> } & Pick<SpawnOptions, 'stdio'>): ChildProcess;
  close(): Promise<void>;
}

function shadowOf(passwd: string, group: string): { shadow: string; gshadow: string } {
  const names = (text: string) =>
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(':')[0]!);
  return {
    shadow:
      names(passwd)
        .map((n) => `${n}:*:20000:0:99999:7:::`)
        .join('\n') + '\n',
    gshadow:
      names(group)
        .map((n) => `${n}:*::`)
        .join('\n') + '\n',
  };
}

export async function debianRoot(): Promise<DebianRoot> {
  const base = mkdtempSync(join(tmpdir(), 'setokim-debian-root-'));
  const root = join(base, 'root');
  for (const d of [
    'usr',
    'etc',
    'var/lib/dpkg',
    'var/log',
    'var/cache',
    'opt',
    'home',
    'root',
    'run',
    'proc',
    'sys',
    'dev',
    'tmp',
  ])
    mkdirSync(join(root, d), { recursive: true });
  chmodSync(join(root, 'tmp'), 0o1777);
  for (const [link, to] of [
    ['bin', 'usr/bin'],
    ['sbin', 'usr/sbin'],
    ['lib', 'usr/lib'],
    ['lib64', 'usr/lib64'],
  ] as const)
    symlinkSync(to, join(root, link));
  const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', 'infinity'], { stdio: 'ignore' });
  await new Promise((resolve) => setTimeout(resolve, 100)); // the namespace exists once unshare has exec'd sleep
  const ns = (cmd: string[]) =>
    run('nsenter', ['-t', String(holder.pid), '-m', '--', ...cmd], {
      maxBuffer: 64 << 20,
      env: { ...process.env, ...CHROOT_ENV },
    });
  const layers = [
    ['/usr', 'usr'],
    ['/etc', 'etc'],
    ['/var/lib/dpkg', 'var/lib/dpkg'],
  ] as const;
  try {
    for (const [lower, at] of layers) {
      const up = join(base, `${at.replace(/\//g, '-')}-up`);
      const work = join(base, `${at.replace(/\//g, '-')}-work`);
      mkdirSync(up);
      mkdirSync(work);
      // A fresh Debian's accounts, put into the upper layer before it is mounted.
      if (at === 'etc') writeAccounts(up);
      // No stat overrides: this machine's name its own groups (e.g. ssl-cert), which a fresh root lacks.
      if (at === 'var/lib/dpkg') writeFileSync(join(up, 'statoverride'), '');
      await ns([
        'mount',
        '-t',
        'overlay',
        'overlay',
        '-o',
        `lowerdir=${lower},upperdir=${up},workdir=${work}`,
        join(root, at),
      ]);
    }
    await ns(['mount', '-t', 'proc', 'proc', join(root, 'proc')]);
    await ns(['mount', '--rbind', '/sys', join(root, 'sys')]);
    await ns(['mount', '--rbind', '/dev', join(root, 'dev')]);
  } catch (err) {
    holder.kill('SIGKILL');
    rmSync(base, { recursive: true, force: true });
    throw err;
  }
  // `env -i` first: only these variables reach the chroot (tap adds NODE_OPTIONS to every child it
  // sees, naming its loader by a path that does not exist in there).
  const chrootArgs = (cmd: string[], user?: string, env: Record<string, string> = {}) => [
    'env',
    '-i',
    ...Object.entries({ ...CHROOT_ENV, ...env }).map(([k, v]) => `${k}=${v}`),
    'chroot',
    ...(user ? [`--userspec=${user}:${user}`] : []),
    root,
    ...cmd,
  ];
  return {
    root,
    exec: (cmd, o = {}) =>
      run('nsenter', ['-t', String(holder.pid), '-m', '--', ...chrootArgs(cmd, o.user, o.env)], {
        maxBuffer: 64 << 20,
      }),
    host: (cmd, o = {}) =>
      run('nsenter', ['-t', String(holder.pid), '-m', '--', ...cmd], {
        maxBuffer: 64 << 20,
        env: { ...process.env, ...CHROOT_ENV, ...o.env },
      }),
    spawn: (cmd, o) =>
      spawn('nsenter', ['-t', String(holder.pid), '-m', '--', ...chrootArgs(cmd, o.user, o.env)], {
        stdio: o.stdio ?? 'pipe',
      }),
    async close() {
      const gone = new Promise((resolve) => holder.once('exit', resolve));
      holder.kill('SIGKILL'); // the last process in the namespace: every mount goes with it
      await gone;
      rmSync(base, { recursive: true, force: true });
    },
  };
}

/** passwd, group, shadow and gshadow of a fresh Debian (base-passwd's masters), into `etc`. */
function writeAccounts(etc: string): void {
  const passwd = readFileSync('/usr/share/base-passwd/passwd.master', 'utf8');
  const group = readFileSync('/usr/share/base-passwd/group.master', 'utf8');
  const { shadow, gshadow } = shadowOf(passwd, group);
  for (const [name, text] of Object.entries({ passwd, group, shadow, gshadow })) {
    writeFileSync(join(etc, name), text, { mode: name.includes('shadow') ? 0o640 : 0o644 });
  }
}
