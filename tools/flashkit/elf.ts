/**
 * What the ELF files a package ships need from the system: their machine (an arm64 package must
 * hold aarch64 code only), the shared libraries they load and the glibc/libstdc++ symbol versions
 * they use (readelf, from binutils). From those come the package's Depends on libc6, libstdc++6 and
 * libgcc-s1, as dpkg-shlibdeps would derive them, so dpkg refuses a system too old to load them.
 */
import { execFile } from 'node:child_process';
import { open, readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, SetokimError } from '../../src/errors.js';

const run = promisify(execFile);

/** e_machine of an ELF file, or undefined for any other file. */
export async function elfMachine(file: string): Promise<number | undefined> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(20);
    const { bytesRead } = await fh.read(b, 0, 20, 0);
    if (bytesRead < 20 || b.readUInt32BE(0) !== 0x7f454c46) return undefined;
    return b[5] === 2 ? b.readUInt16BE(18) : b.readUInt16LE(18);
  } finally {
    await fh.close();
  }
}

/** Every ELF file under dir, relative to it, with its machine. */
export async function elfFiles(dir: string): Promise<Array<{ path: string; machine: number }>> {
  const out: Array<{ path: string; machine: number }> = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const full = join(e.parentPath, e.name);
    const machine = await elfMachine(full);
    if (machine !== undefined) out.push({ path: relative(dir, full), machine });
  }
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

export interface LinkNeeds {
  /** NEEDED libraries (sonames). */
  libraries: Set<string>;
  /** Highest version needed per family: GLIBC, GLIBCXX, CXXABI, GCC. */
  versions: Map<string, number[]>;
}

const cmp = (a: number[], b: number[]) => {
  for (let i = 0; i < Math.max(a.length, b.length); i++)
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
  return 0;
};

/** NEEDED entries and version references of the given ELF files (readelf -d -V). */
export async function linkNeeds(files: string[]): Promise<LinkNeeds> {
  const needs: LinkNeeds = { libraries: new Set(), versions: new Map() };
  for (const f of files) {
    let text: string;
    try {
      ({ stdout: text } = await run('readelf', ['-d', '-V', '-W', f], { maxBuffer: 64 << 20 }));
    } catch (err) {
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `readelf ${f} failed (install binutils): ${(err as Error).message}`,
      );
    }
    for (const m of text.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)) needs.libraries.add(m[1]!);
    // Version needs (.gnu.version_r): "Name: GLIBC_2.34  Flags: none  Version: 5"
    const section = text.split(/Version needs section/)[1] ?? '';
    for (const m of section.matchAll(/Name: (GLIBC|GLIBCXX|CXXABI|GCC)_([\d.]+)\b/g)) {
      const v = m[2]!.split('.').map(Number);
      const prev = needs.versions.get(m[1]!);
      if (!prev || cmp(v, prev) > 0) needs.versions.set(m[1]!, v);
    }
  }
  return needs;
}

/** GLIBCXX_3.4.N -> the GCC release that first shipped it (libstdc++6's Debian version). */
const GLIBCXX_GCC: Record<number, string> = {
  21: '5',
  22: '6',
  23: '7',
  24: '8',
  25: '8',
  26: '9',
  27: '9',
  28: '10',
  29: '11',
  30: '12',
  31: '13',
  32: '13.2',
  33: '14',
};

/** The sonames glibc provides (package libc6). */
const LIBC = /^(libc|libm|libpthread|libdl|librt|libutil|libresolv|ld-linux[-\w.]*)\.so(\.\d+)*$/;

/** Depends for the system libraries the ELF files load; `shipped` are sonames inside the package. */
export function dependsFor(needs: LinkNeeds, shipped: Set<string>): { depends: string[]; unresolved: string[] } {
  const depends: string[] = [];
  const unresolved: string[] = [];
  const glibc = needs.versions.get('GLIBC');
  let libc = false;
  let libstdcxx = false;
  let libgcc = false;
  for (const lib of [...needs.libraries].sort()) {
    if (shipped.has(lib)) continue;
    if (LIBC.test(lib)) libc = true;
    else if (lib === 'libstdc++.so.6') libstdcxx = true;
    else if (lib === 'libgcc_s.so.1') libgcc = true;
    else unresolved.push(lib);
  }
  if (libc) depends.push(glibc ? `libc6 (>= ${glibc.join('.')})` : 'libc6');
  if (libstdcxx) {
    const v = needs.versions.get('GLIBCXX');
    const gcc = v && v[0] === 3 && v[1] === 4 ? GLIBCXX_GCC[v[2] ?? 0] : undefined;
    depends.push(gcc ? `libstdc++6 (>= ${gcc})` : 'libstdc++6');
  }
  if (libgcc) depends.push('libgcc-s1');
  return { depends, unresolved };
}
