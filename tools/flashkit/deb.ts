/**
 * The Debian package: a staged tree (opt/setokim, usr/bin/setokim, the unit files, the docs)
 * plus DEBIAN/ (control, maintainer scripts from tools/flashkit/files, md5sums), built with
 * dpkg-deb as root:root whoever runs it. The control file's Depends are nodejs (>= 20), adduser
 * (the postinst) and what the shipped ELF files load (elf.ts).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { DEVICE, fillTemplate, type DebArch } from './layout.js';

const run = promisify(execFile);

export interface ControlFields {
  version: string;
  arch: DebArch;
  maintainer: string;
  depends: string[];
  installedKib: number;
}

export function controlFile(c: ControlFields): string {
  return [
    `Package: ${DEVICE.package}`,
    `Version: ${c.version}`,
    `Architecture: ${c.arch}`,
    `Maintainer: ${c.maintainer}`,
    `Installed-Size: ${c.installedKib}`,
    `Depends: ${c.depends.join(', ')}`,
    'Section: misc',
    'Priority: optional',
    'Description: Setokim edge runtime: image queries over MQTT on Jetson',
    ' The setokim agent serves Setokim, a multimodal LLM with the SeTok dynamic',
    ' vision tokenizer: it answers image queries that arrive over MQTT, takes',
    ' signed model-set bundles as fleet updates, and reports device health.',
    ` The app lives in ${DEVICE.appDir} (compiled JavaScript, its production`,
    ' node_modules and the native addon); systemd runs it as the setokim user.',
    ' Node.js 20 or newer comes from the nodejs package (NodeSource on JetPack).',
    '',
  ].join('\n');
}

/** `md5sum`-format lines for every regular file of the package (DEBIAN/ excluded). */
async function md5sums(stage: string): Promise<string> {
  const lines: string[] = [];
  for (const e of await readdir(stage, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const rel = relative(stage, join(e.parentPath, e.name));
    if (rel.startsWith('DEBIAN/')) continue;
    const h = createHash('md5');
    for await (const chunk of createReadStream(join(stage, rel))) h.update(chunk as Buffer);
    lines.push(`${h.digest('hex')}  ${rel}`);
  }
  return lines.sort((a, b) => a.slice(34).localeCompare(b.slice(34))).join('\n') + '\n';
}

/** Writes DEBIAN/ into the staged tree. */
export async function writeControlDir(stage: string, files: string, c: ControlFields): Promise<void> {
  const dir = join(stage, 'DEBIAN');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'control'), controlFile(c));
  for (const script of ['postinst', 'prerm', 'postrm']) {
    await writeFile(join(dir, script), fillTemplate(await readFile(join(files, script), 'utf8')));
    await chmod(join(dir, script), 0o755);
  }
  await writeFile(join(dir, 'md5sums'), await md5sums(stage));
}

/** /usr/share/doc/<package>: copyright, changelog.gz (native version), the flashing guide. */
export async function writeDocs(
  stage: string,
  files: string,
  guide: string,
  c: Pick<ControlFields, 'version' | 'maintainer'>,
  at: Date,
): Promise<void> {
  const doc = join(stage, 'usr', 'share', 'doc', DEVICE.package);
  await mkdir(doc, { recursive: true });
  await writeFile(
    join(doc, 'copyright'),
    fillTemplate(await readFile(join(files, 'copyright'), 'utf8'), { year: String(at.getUTCFullYear()) }),
  );
  const date = at.toUTCString().replace(/GMT$/, '+0000');
  const changelog =
    `${DEVICE.package} (${c.version}) unstable; urgency=medium\n\n  * Built by setokim flash-kit ` +
    `from the setokim-edge ${c.version} sources.\n\n -- ${c.maintainer}  ${date}\n`;
  await writeFile(join(doc, 'changelog.gz'), gzipSync(changelog, { level: 9 }));
  await writeFile(join(doc, 'FLASHING.md'), await readFile(guide));
}

export type Compression = 'xz' | 'gzip' | 'zstd';

/** dpkg-deb --build, every file root:root. */
export async function buildDeb(stage: string, out: string, compression: Compression): Promise<void> {
  try {
    await run('dpkg-deb', ['--root-owner-group', `-Z${compression}`, '--build', stage, out], { maxBuffer: 16 << 20 });
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.KIT_BUILD_FAILED,
      `dpkg-deb could not build the package: ${(err as Error).message}`,
    );
  }
}
