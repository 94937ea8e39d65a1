/**
 * The root file system overlays of a kit. `overlay/` is what every board gets: the bundle's public
 * key and the model store with the bundle committed into it by the same installBundle as `setokim
 * bundle install` (verified, unpacked, activated, canary query, committed; its release is the
 * store's anti-rollback floor), plus agent.yaml when the kit has one configuration. `devices/<id>/`
 * is one board's identity and secrets. Each has `files/` (the tree as it goes onto /) and
 * `files.txt` (type, mode, owner, path per line) for apply-to-rootfs.sh.
 */
import type { KeyObject } from 'node:crypto';
import { copyFile, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { canaryQuery, installBundle, type DeviceIdentity, type InstallResult } from '../../src/fleet/index.js';
import type { OverlayFile } from './device-config.js';
import { DEVICE } from './layout.js';

interface Entry {
  type: 'd' | 'f';
  mode: number;
  owner: 'root' | 'service';
  path: string;
}

/** One overlay directory being written: files/ and the entries of files.txt. */
export class Overlay {
  private readonly entries = new Map<string, Entry>();

  constructor(readonly dir: string) {}

  private get files(): string {
    return join(this.dir, 'files');
  }

  /** Where a device path lands inside this overlay. */
  at(path: string): string {
    return join(this.files, path);
  }

  addDir(path: string, mode: number, owner: Entry['owner']): void {
    this.entries.set(path, { type: 'd', mode, owner, path });
  }

  async add(f: OverlayFile): Promise<void> {
    const dest = this.at(f.path);
    await mkdir(dirname(dest), { recursive: true });
    if (f.from) await copyFile(f.from, dest);
    else await writeFile(dest, f.text ?? '');
    this.entries.set(f.path, { type: 'f', mode: f.mode, owner: f.owner, path: f.path });
  }

  /** Records the files and directories written under a device path (the store) as they are; the top one with `mode`. */
  async addTree(path: string, mode: number, owner: Entry['owner']): Promise<void> {
    const root = this.at(path);
    this.entries.set(path, { type: 'd', mode, owner, path });
    for (const e of await readdir(root, { withFileTypes: true, recursive: true })) {
      const full = join(e.parentPath, e.name);
      const p = `/${relative(this.files, full)}`;
      if (e.isDirectory() || e.isFile())
        this.entries.set(p, {
          type: e.isDirectory() ? 'd' : 'f',
          mode: (await stat(full)).mode & 0o7777,
          owner,
          path: p,
        });
    }
  }

  /** Writes files.txt: parents before children, the service user's name for its files. */
  async finish(): Promise<number> {
    const lines = [...this.entries.values()]
      .sort((a, b) => a.path.localeCompare(b.path))
      .map(
        (e) =>
          `${e.type} ${e.mode.toString(8).padStart(4, '0')} ${e.owner === 'service' ? DEVICE.user : 'root'} ${e.path}`,
      );
    await writeFile(join(this.dir, 'files.txt'), lines.join('\n') + '\n');
    return lines.length;
  }
}

export interface CommonOverlayOptions {
  bundle: string;
  pubkey: KeyObject;
  /** The kit's single configuration (no --devices), else nothing. */
  device?: OverlayFile[];
  /** The boards' fleet and target the bundle's signed binding is checked against. */
  binding: DeviceIdentity;
  onStep?: (step: string, detail: string) => void;
}

/** overlay/: the public key, the store holding the committed bundle, the configuration of a one-device kit. */
export async function writeCommonOverlay(o: Overlay, c: CommonOverlayOptions): Promise<InstallResult> {
  o.addDir(DEVICE.configDir, 0o755, 'root');
  await o.add({
    path: DEVICE.pubkey,
    text: c.pubkey.export({ type: 'spki', format: 'pem' }) as string,
    mode: 0o644,
    owner: 'root',
  });
  const store = o.at(DEVICE.store);
  await mkdir(store, { recursive: true });
  // The same install as `setokim bundle install`: verify, stage, activate, canary query, commit.
  const installed = await installBundle({
    bundle: c.bundle,
    store,
    pubkey: c.pubkey,
    health: (dir) => canaryQuery(dir),
    device: c.binding,
    // The kit is built off the board: no engine is checked or built for this machine's target
    // (the board builds its own on first boot: setokim-engines.service, ensure-engines).
    engines: false,
    ...(c.onStep ? { onStep: c.onStep } : {}),
  });
  o.addDir(DEVICE.stateDir, 0o750, 'service');
  await o.addTree(DEVICE.store, 0o750, 'service'); // as the postinst makes it
  await writeDeviceFiles(o, c.device ?? []);
  return installed;
}

/** A device's agent.yaml and TLS files (with the directories they need). */
export async function writeDeviceFiles(o: Overlay, files: OverlayFile[]): Promise<void> {
  if (!files.length) return;
  o.addDir(DEVICE.configDir, 0o755, 'root');
  if (files.some((f) => f.path.startsWith(`${DEVICE.tlsDir}/`))) o.addDir(DEVICE.tlsDir, 0o755, 'root');
  for (const f of files) await o.add(f);
}
