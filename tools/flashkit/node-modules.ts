/**
 * The production node_modules for a target architecture, from package-lock.json: every package
 * that is not a dev dependency and whose os/cpu/libc fits linux-<arch>-glibc. Packages this
 * checkout already has are copied; a platform package it lacks (the arm64 builds of sharp and
 * esbuild on an x86 machine) is fetched with `npm pack` and checked against the lock's integrity.
 * Then every native binary for another platform (onnxruntime-node ships all of them) is removed.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, readdir, readFile, rm, rmdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { ARCHES, type DebArch } from './layout.js';

const run = promisify(execFile);

interface LockEntry {
  name?: string;
  version?: string;
  integrity?: string;
  dev?: boolean;
  optional?: boolean;
  os?: string[];
  cpu?: string[];
  libc?: string[];
}

/** npm's os/cpu/libc rule: a list names what fits, `!x` what does not. */
function fits(list: string[] | undefined, value: string): boolean {
  if (!list?.length) return true;
  if (list.includes(`!${value}`)) return false;
  return list.includes(value) || list.every((e) => e.startsWith('!'));
}

export interface PackagePick {
  /** node_modules/... as in the lock. */
  path: string;
  name: string;
  version: string;
  integrity?: string;
  /** Present in this checkout's node_modules, or fetched from the registry. */
  source: 'local' | 'fetch';
}

/** Which lock entries a linux-<arch> production install holds, and where each comes from. */
export async function pickPackages(root: string, arch: DebArch): Promise<PackagePick[]> {
  const lock = JSON.parse(await readFile(join(root, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockEntry>;
  };
  const cpu = ARCHES[arch].node;
  const picks: PackagePick[] = [];
  for (const [path, e] of Object.entries(lock.packages)) {
    if (!path.startsWith('node_modules/') || e.dev) continue;
    if (!fits(e.os, 'linux') || !fits(e.cpu, cpu) || !fits(e.libc, 'glibc')) continue;
    const name = e.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
    const pick = { path, name, version: e.version ?? '', ...(e.integrity ? { integrity: e.integrity } : {}) };
    if (existsSync(join(root, path, 'package.json'))) picks.push({ ...pick, source: 'local' });
    // A platform package built for this arch: fetch it. Other optional packages npm skipped here
    // (wasm fallbacks and their dependencies) are skipped for the target too.
    else if (e.optional && e.cpu?.includes(cpu)) picks.push({ ...pick, source: 'fetch' });
    else if (!e.optional) {
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `${path} (${name}@${e.version}) is in package-lock.json but not installed; run \`npm ci\` first`,
      );
    }
  }
  return picks;
}

async function sha512(file: string): Promise<string> {
  const h = createHash('sha512');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return `sha512-${h.digest('base64')}`;
}

/** `npm pack name@version` into a temp dir, checked against the lock's integrity, unpacked at dest. */
async function fetchPackage(p: PackagePick, dest: string): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'setokim-kit-pack-'));
  try {
    let out: string;
    try {
      ({ stdout: out } = await run(
        'npm',
        ['pack', `${p.name}@${p.version}`, '--pack-destination', tmp, '--silent', '--ignore-scripts'],
        { maxBuffer: 1 << 20 },
      ));
    } catch (err) {
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `cannot fetch ${p.name}@${p.version} for the target (npm pack): ` +
          (err as Error).message.split('\n').slice(-3).join(' '),
      );
    }
    const tarball = join(tmp, out.trim().split('\n').at(-1)!);
    if (p.integrity && (await sha512(tarball)) !== p.integrity) {
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `${p.name}@${p.version}: the fetched tarball does not match package-lock.json's integrity`,
      );
    }
    await mkdir(dest, { recursive: true });
    await run('tar', ['-xzf', tarball, '-C', dest, '--strip-components=1', '--no-same-owner']);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** What a file's first bytes say it is: an ELF for some machine, another OS's binary, or neither. */
async function binaryKind(file: string): Promise<{ elf: number } | 'foreign' | null> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(20);
    const { bytesRead } = await fh.read(b, 0, 20, 0);
    if (bytesRead < 20) return null;
    if (b.readUInt32BE(0) === 0x7f454c46) return { elf: b[5] === 2 ? b.readUInt16BE(18) : b.readUInt16LE(18) };
    const magic = b.readUInt32BE(0);
    if ([0xfeedface, 0xfeedfacf, 0xcefaedfe, 0xcffaedfe].includes(magic)) return 'foreign'; // Mach-O
    if (magic === 0xcafebabe && !file.endsWith('.class')) return 'foreign'; // Mach-O universal
    if (b[0] === 0x4d && b[1] === 0x5a && /\.(dll|exe|node|pyd)$/i.test(file)) return 'foreign'; // PE
    return null;
  } finally {
    await fh.close();
  }
}

/** Files of a package's repository that npm published along (lint and VCS settings), not the package. */
const REPO_FILES = /^(\.eslintrc(\..*)?|\.npmignore|\.gitignore|\.gitattributes|\.gitmodules)$/;

/** Removes every binary for another platform under dir (and directories left empty); returns them. */
async function stripForeign(dir: string, machine: number): Promise<string[]> {
  const removed: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const full = join(d, e.name);
      if (e.isDirectory()) {
        await walk(full);
        if ((await readdir(full)).length === 0) await rmdir(full);
      } else if (e.isFile() && REPO_FILES.test(e.name)) {
        await rm(full);
      } else if (e.isFile()) {
        const kind = await binaryKind(full);
        if (kind === 'foreign' || (kind && kind.elf !== machine)) {
          await rm(full);
          removed.push(full.slice(dir.length + 1));
        }
      }
    }
  };
  await walk(dir);
  return removed.sort();
}

export interface StagedModules {
  packages: number;
  fetched: string[];
  /** Binaries for other platforms removed (paths under node_modules). */
  removed: string[];
}

/** Writes the production node_modules for `arch` into `dest` (dest/node_modules/...). */
export async function stageNodeModules(root: string, arch: DebArch, dest: string): Promise<StagedModules> {
  const picks = await pickPackages(root, arch);
  for (const p of picks) {
    const to = join(dest, p.path);
    if (p.source === 'fetch') await fetchPackage(p, to);
    else {
      // Nested node_modules are entries of their own; .bin links are for npm scripts, not the app.
      const nested = join(root, p.path, 'node_modules');
      await cp(join(root, p.path), to, { recursive: true, verbatimSymlinks: true, filter: (src) => src !== nested });
    }
  }
  const removed = await stripForeign(join(dest, 'node_modules'), ARCHES[arch].elfMachine);
  return {
    packages: picks.length,
    fetched: picks.filter((p) => p.source === 'fetch').map((p) => `${p.name}@${p.version}`),
    removed,
  };
}

/** Sizes for the summary. */
export async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}
