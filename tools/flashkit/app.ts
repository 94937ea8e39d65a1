/**
 * The package's file tree: the app under /opt/setokim (the compiled JavaScript of src/ and tools/,
 * the files it reads at run time, the addon for the target, production node_modules), the command
 * /usr/bin/setokim, the systemd units and the lintian overrides.
 */
import { chmod, copyFile, cp, mkdir, open, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { stageAddon, type AddonBuild } from './addon.js';
import { DEVICE, fillTemplate, type DebArch } from './layout.js';
import { stageNodeModules, type StagedModules } from './node-modules.js';

/** Directories of compiled JavaScript the app needs (not the benchmarks). */
const JS_TREES = ['src', 'tools'];

/** Files the app reads from its own directory at run time (relative to the package root). */
const RUNTIME_FILES = ['bin/setokim.js', 'proto/setokim.proto', 'src/engine/ort-worker.mjs'];

/** Refuses a dist/ older than the TypeScript it was compiled from: the kit would ship old code. */
export async function checkCompiled(root: string): Promise<void> {
  const stale: string[] = [];
  for (const tree of JS_TREES) {
    for (const e of await readdir(join(root, tree), { withFileTypes: true, recursive: true })) {
      if (!e.isFile() || !e.name.endsWith('.ts') || e.name.endsWith('.d.ts')) continue;
      const ts = join(e.parentPath, e.name);
      const js = join(root, 'dist', relative(root, ts)).replace(/\.ts$/, '.js');
      const [a, b] = await Promise.all([stat(ts), stat(js).catch(() => undefined)]);
      if (!b || b.mtimeMs < a.mtimeMs) stale.push(relative(root, ts));
    }
  }
  if (stale.length) {
    throw new SetokimError(
      ErrorCodes.KIT_BUILD_FAILED,
      `dist/ is older than ${stale.length} source file(s) ` +
        `(${stale.slice(0, 3).join(', ')}${stale.length > 3 ? ', ...' : ''}); run \`npm run build\` first`,
    );
  }
}

async function copyJs(from: string, to: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(from, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || !e.name.endsWith('.js')) continue; // no .d.ts, no source maps (their sources are not shipped)
    const src = join(e.parentPath, e.name);
    const dest = join(to, relative(from, src));
    await mkdir(dirname(dest), { recursive: true });
    await copyFile(src, dest);
    n++;
  }
  return n;
}

/** The app's package.json: what Node needs (ES modules) and what identifies it; no scripts, nothing to install. */
async function appPackageJson(root: string): Promise<string> {
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
  const keep = ['name', 'version', 'description', 'type', 'license', 'engines', 'bin'];
  return (
    JSON.stringify(
      { ...Object.fromEntries(keep.filter((k) => k in pkg).map((k) => [k, pkg[k]])), private: true },
      null,
      2,
    ) + '\n'
  );
}

/**
 * Debian's modes for every file under dir: directories 0755; scripts (#!) and executables 0755;
 * shared objects (.so, .node) and everything else 0644. npm packages arrive with modes such as
 * 0744 or an executable README.
 */
export async function normalizeModes(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const full = join(e.parentPath, e.name);
    if (e.isDirectory()) {
      await chmod(full, 0o755);
      continue;
    }
    if (!e.isFile()) continue;
    const fh = await open(full, 'r');
    const head = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0).finally(() => fh.close());
    const elf = head.readUInt32BE(0) === 0x7f454c46;
    const library = /\.(node|so(\.\d+)*)$/.test(e.name);
    const executable =
      head.subarray(0, 2).toString() === '#!' || (elf && !library && ((await stat(full)).mode & 0o111) !== 0);
    await chmod(full, executable ? 0o755 : 0o644);
  }
}

export interface StagedApp {
  jsFiles: number;
  addon: AddonBuild;
  modules: StagedModules;
}

/** Lays out the package's files under `stage` (everything but DEBIAN/ and the docs). */
export async function stageApp(root: string, files: string, arch: DebArch, stage: string): Promise<StagedApp> {
  const app = join(stage, DEVICE.appDir);
  await mkdir(app, { recursive: true });
  let jsFiles = 0;
  for (const tree of JS_TREES) jsFiles += await copyJs(join(root, 'dist', tree), join(app, 'dist', tree));
  for (const f of RUNTIME_FILES) {
    await mkdir(dirname(join(app, f)), { recursive: true });
    await copyFile(join(root, f), join(app, f));
  }
  await chmod(join(app, 'bin', 'setokim.js'), 0o755);
  // flash-kit's templates, so the command works from an installed package too.
  await cp(files, join(app, 'tools', 'flashkit', 'files'), { recursive: true });
  await writeFile(join(app, 'package.json'), await appPackageJson(root));
  await mkdir(join(app, 'build', 'Release'), { recursive: true });
  const addon = await stageAddon(root, arch, join(app, 'build', 'Release', 'setokim.node'));
  const modules = await stageNodeModules(root, arch, app);
  await normalizeModes(app);

  await mkdir(join(stage, 'usr', 'bin'), { recursive: true });
  await symlink(join(DEVICE.appDir, 'bin', 'setokim.js'), join(stage, DEVICE.bin));
  const units = join(stage, DEVICE.unitDir);
  await mkdir(units, { recursive: true });
  for (const unit of [DEVICE.agentUnit, DEVICE.enginesUnit]) {
    await writeFile(join(units, unit), fillTemplate(await readFile(join(files, unit), 'utf8')));
  }
  const overrides = join(stage, 'usr', 'share', 'lintian', 'overrides');
  await mkdir(overrides, { recursive: true });
  await writeFile(
    join(overrides, DEVICE.package),
    fillTemplate(await readFile(join(files, 'lintian-overrides'), 'utf8')),
  );
  return { jsFiles, addon, modules };
}
