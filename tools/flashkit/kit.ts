/**
 * `setokim flash-kit`: everything a Jetson needs to boot into a serving agent (docs/FLASHING.md).
 * KitBuilder.build() runs named steps: every input is checked before anything is written (a bundle
 * that does not verify, a config the agent would refuse, a bad devices.csv, a missing key file, a
 * missing tool), then the kit is built in `<out>.partial` and renamed into place, so a failure
 * leaves no kit at all. The bundle-signing private key is never an input, and a last step checks
 * that no file of the overlays holds it.
 */
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { readConfigFile } from '../../src/agent/config.js';
import { packageRoot } from '../../src/engine/native.js';
import { sha256File } from '../../src/engine/manifest.js';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import {
  checkBinding,
  compatibilityOf,
  keyIdOf,
  loadPublicKey,
  verifyBundle,
  type BundleManifest,
} from '../../src/fleet/index.js';
import { checkAddonTools } from './addon.js';
import { checkCompiled, stageApp, type StagedApp } from './app.js';
import { buildDeb, writeControlDir, writeDocs, type Compression } from './deb.js';
import { deviceSetup, type DeviceSetup } from './device-config.js';
import { readDevicesCsv } from './devices.js';
import { dependsFor, elfFiles, linkNeeds } from './elf.js';
import { ARCHES, DEVICE, fillTemplate, type DebArch } from './layout.js';
import { Overlay, writeCommonOverlay, writeDeviceFiles } from './overlay.js';

const run = promisify(execFile);

export interface KitOptions {
  bundle: string;
  pubkey: string;
  config: string;
  out: string;
  arch: DebArch;
  devices?: string;
  /**
   * The boards' target (orin-nano-8gb/jp6.2/trt10.3, `setokim doctor` on one of them): needed when
   * the bundle is bound to targets other than `*`, since the kit is built on another machine.
   */
  target?: string;
  compression?: Compression;
  maintainer?: string;
  /** Progress lines (stderr in the CLI). */
  log?: (line: string) => void;
}

export interface KitSummary {
  format: 'setokim-flash-kit/1';
  version: string;
  arch: DebArch;
  deb: { file: string; sha256: string; bytes: number; depends: string[] };
  addon: string;
  nodeModules: { packages: number; fetched: string[]; removedForeignBinaries: number };
  bundle: { modelSetId: string; release: number; keyId: string };
  devices: string[];
  createdAt: string;
}

interface Checked {
  version: string;
  pubkey: KeyObject;
  manifest: BundleManifest;
  common: DeviceSetup | undefined;
  devices: DeviceSetup[];
}

const TOOLS: Array<[string, string]> = [
  ['dpkg-deb', 'dpkg'],
  ['readelf', 'binutils'],
  ['tar', 'tar'],
];

export class KitBuilder {
  private readonly root = packageRoot();
  private readonly files = join(packageRoot(), 'tools', 'flashkit', 'files');
  private readonly log: (line: string) => void;

  constructor(private readonly o: KitOptions) {
    this.log = o.log ?? (() => undefined);
  }

  async build(): Promise<KitSummary> {
    const checked = await this.checkInputs();
    const partial = `${this.o.out}.partial`;
    await rm(partial, { recursive: true, force: true });
    await mkdir(partial, { recursive: true });
    const stage = join(tmpdir(), `setokim-kit-${process.pid}-${Date.now()}`);
    try {
      const pkg = await this.buildPackage(checked, stage, partial);
      await this.writeOverlays(checked, partial);
      await this.writeApplyScript(checked, pkg.deb.file, partial);
      await this.refuseSigningKey(checked.pubkey, partial);
      const summary: KitSummary = {
        format: 'setokim-flash-kit/1',
        version: checked.version,
        arch: this.o.arch,
        deb: pkg.deb,
        addon: pkg.addon,
        nodeModules: pkg.modules,
        bundle: {
          modelSetId: checked.manifest.modelSetId,
          release: checked.manifest.release,
          keyId: checked.manifest.keyId,
        },
        devices: checked.devices.map((d) => d.id!),
        createdAt: new Date().toISOString(),
      };
      await writeFile(join(partial, 'kit.json'), JSON.stringify(summary, null, 2) + '\n');
      if (existsSync(this.o.out)) await rm(this.o.out, { recursive: true }); // an empty directory (checked)
      await rename(partial, this.o.out);
      return summary;
    } catch (err) {
      await rm(partial, { recursive: true, force: true });
      throw err;
    } finally {
      await rm(stage, { recursive: true, force: true });
    }
  }

  /** Step 1: every input and tool, before a byte is written. */
  private async checkInputs(): Promise<Checked> {
    const o = this.o;
    if (existsSync(o.out) && (!(await stat(o.out)).isDirectory() || (await readdir(o.out)).length > 0)) {
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `--out ${o.out} exists and is not an empty directory; a kit is never written over another`,
      );
    }
    const pubkey = await loadPublicKey(o.pubkey); // refuses a private key given as --pubkey
    if (!existsSync(o.bundle))
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read --bundle ${o.bundle}: no such file`);
    this.log(`verifying ${o.bundle}`);
    const manifest = await verifyBundle(o.bundle, pubkey);
    const base = readConfigFile(o.config);
    let common: DeviceSetup | undefined;
    let devices: DeviceSetup[] = [];
    if (o.devices) {
      const rows = await readDevicesCsv(o.devices);
      devices = rows.map((row) => deviceSetup(base, o.config, pubkey, row, o.devices));
    } else {
      common = deviceSetup(base, o.config, pubkey);
    }
    await this.checkBinding(manifest, [...(common ? [common] : []), ...devices]);
    for (const [tool, pkg] of TOOLS) {
      await run('which', [tool]).catch(() => {
        throw new SetokimError(
          ErrorCodes.KIT_BUILD_FAILED,
          `${tool} is not installed (apt-get install -y ${pkg}); it is needed to build a kit`,
        );
      });
    }
    await checkAddonTools(this.root, o.arch);
    await checkCompiled(this.root);
    const version = (JSON.parse(await readFile(join(this.root, 'package.json'), 'utf8')) as { version: string })
      .version;
    return { version, pubkey, manifest, common, devices };
  }

  /**
   * Step 1b: the bundle must be one every board of the kit would accept (its fleet, expiry, agent
   * version and the boards' target), checked before anything is written.
   */
  private async checkBinding(manifest: BundleManifest, setups: DeviceSetup[]): Promise<void> {
    const targets = compatibilityOf(manifest)?.targets ?? ['*'];
    if (this.o.target === undefined && targets.some((t) => t !== '*')) {
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `${this.o.bundle} is bound to target ${targets.join(', ')}: name the boards' target with --target ` +
          '(setokim doctor on one of them prints it); the kit is not built on the board',
      );
    }
    for (const fleet of new Set(setups.map((d) => d.fleet))) {
      await checkBinding(manifest, this.o.bundle, {
        device: { fleet, ...(this.o.target ? { target: this.o.target } : {}) },
      });
    }
  }

  /** Step 2: the Debian package. */
  private async buildPackage(
    c: Checked,
    stage: string,
    kit: string,
  ): Promise<{ deb: KitSummary['deb']; addon: string; modules: KitSummary['nodeModules'] }> {
    this.log(`staging the ${this.o.arch} package`);
    const app: StagedApp = await stageApp(this.root, this.files, this.o.arch, stage);
    const m = app.modules;
    this.log(
      `  ${app.jsFiles} JavaScript files, ${m.packages} npm packages (${m.fetched.length} fetched for ` +
        `${this.o.arch}, ` +
        `${m.removed.length} binaries for other platforms left out), addon: ${app.addon.how}`,
    );
    const elves = await elfFiles(stage);
    const foreign = elves.filter((e) => e.machine !== ARCHES[this.o.arch].elfMachine);
    if (foreign.length)
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `${foreign.map((e) => e.path).join(', ')} is not ${ARCHES[this.o.arch].elfName} code`,
      );
    const { depends: libs, unresolved } = dependsFor(
      await linkNeeds(elves.map((e) => join(stage, e.path))),
      new Set(elves.map((e) => basename(e.path))),
    );
    if (unresolved.length) this.log(`  warning: libraries neither shipped nor in Depends: ${unresolved.join(', ')}`);
    const depends = ['nodejs (>= 20)', 'adduser', ...libs];
    const maintainer = this.o.maintainer ?? 'setokim-edge maintainers <maintainers@setokim-edge.invalid>';
    await writeDocs(
      stage,
      this.files,
      join(this.root, 'docs', 'FLASHING.md'),
      { version: c.version, maintainer },
      new Date(),
    );
    const { stdout } = await run('du', ['-sk', '--apparent-size', stage]);
    await writeControlDir(stage, this.files, {
      version: c.version,
      arch: this.o.arch,
      maintainer,
      depends,
      installedKib: Number(stdout.split('\t')[0]),
    });
    const file = `${DEVICE.package}_${c.version}_${this.o.arch}.deb`;
    this.log(`building ${file} (${this.o.compression ?? 'xz'})`);
    await buildDeb(stage, join(kit, file), this.o.compression ?? 'xz');
    const path = join(kit, file);
    const deb = { file, sha256: await sha256File(path), bytes: (await stat(path)).size, depends };
    const modules = { packages: m.packages, fetched: m.fetched, removedForeignBinaries: m.removed.length };
    return { deb, addon: app.addon.how, modules };
  }

  /** Step 3: overlay/ (key, store, one configuration) and devices/<id>/ (identity and secrets). */
  private async writeOverlays(c: Checked, kit: string): Promise<void> {
    const common = new Overlay(join(kit, 'overlay'));
    this.log(`installing ${basename(this.o.bundle)} into the overlay's store ${DEVICE.store}`);
    await writeCommonOverlay(common, {
      bundle: this.o.bundle,
      pubkey: c.pubkey,
      // Checked for every board's fleet in step 1b; the store takes it as the first board's.
      binding: { fleet: (c.common ?? c.devices[0])!.fleet, ...(this.o.target ? { target: this.o.target } : {}) },
      ...(c.common ? { device: c.common.files } : {}),
      onStep: (step, detail) => this.log(`  [${step}] ${detail}`),
    });
    await common.finish();
    for (const d of c.devices) {
      const o = new Overlay(join(kit, 'devices', d.id!));
      await writeDeviceFiles(o, d.files);
      await o.finish();
    }
    if (c.devices.length) this.log(`${c.devices.length} device overlays: ${c.devices.map((d) => d.id).join(', ')}`);
  }

  /** Step 4: apply-to-rootfs.sh for this kit. */
  private async writeApplyScript(c: Checked, debFile: string, kit: string): Promise<void> {
    const script = fillTemplate(await readFile(join(this.files, 'apply-to-rootfs.sh'), 'utf8'), {
      debFile,
      debArch: this.o.arch,
      kitVersion: c.version,
    });
    await writeFile(join(kit, 'apply-to-rootfs.sh'), script);
    await chmod(join(kit, 'apply-to-rootfs.sh'), 0o755);
  }

  /** Step 5: no file a board receives from the overlays holds the bundle-signing private key. */
  private async refuseSigningKey(pubkey: KeyObject, kit: string): Promise<void> {
    const signing = keyIdOf(pubkey);
    for (const e of await readdir(kit, { withFileTypes: true, recursive: true })) {
      if (!e.isFile() || e.name.endsWith('.deb')) continue;
      const file = join(e.parentPath, e.name);
      if ((await stat(file)).size > 1 << 20) continue;
      const text = await readFile(file, 'latin1');
      for (const m of text.matchAll(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g)) {
        let id: string | undefined;
        try {
          id = keyIdOf(createPublicKey(createPrivateKey(m[0])));
        } catch {
          continue; // not a key this runtime reads: not the signing key either
        }
        if (id === signing)
          throw new SetokimError(
            ErrorCodes.KIT_BUILD_FAILED,
            `${file} holds the bundle-signing private key (${signing}); the kit is not written`,
          );
      }
    }
  }
}
