/**
 * `setokim flash-kit`: a provisioning kit for Jetsons from a signed bundle (docs/FLASHING.md): the
 * Debian package, the root file system overlays (one per device with --devices) and
 * apply-to-rootfs.sh. The work lives in tools/flashkit; this file parses the flags and reports.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { TargetId } from '../engine/target.js';
import { group, parseCommandSettings, registerFlags, setting } from '../settings.js';
import { pubkeySetting } from './bundle.js';
import { ARCHES, hostArch, KitBuilder, type DebArch } from '../../tools/flashkit/index.js';

const text = () => z.string({ error: (iss) => (iss.input === undefined ? 'required' : undefined) }).min(1);

/** Every flag of `setokim flash-kit`, declared once (src/settings.ts); --pubkey is bundle install's. */
const flashKitSettings = group({
  bundle: setting({
    schema: text(),
    required: true,
    flag: '--bundle <file>',
    help: "signed bundle to install into the kit's model store (required)",
  }),
  pubkey: pubkeySetting,
  config: setting({
    schema: text(),
    required: true,
    flag: '--config <file>',
    help: 'agent configuration (YAML or JSON) for the devices (required)',
  }),
  out: setting({
    schema: text(),
    required: true,
    flag: '--out <dir>',
    help: 'directory to write the kit into; must not exist or be empty (required)',
  }),
  arch: setting({
    schema: z.enum(Object.keys(ARCHES) as [DebArch, ...DebArch[]]),
    flag: '--arch <arch>',
    help: `Debian architecture of the devices: ${Object.keys(ARCHES).join(' | ')} (default: this machine's)`,
  }),
  devices: setting({
    schema: z.string().min(1),
    flag: '--devices <csv>',
    help: 'devices.csv (device,fleet,broker[,cert,key]): one overlay per device with its identity and secrets',
  }),
  target: setting({
    schema: TargetId,
    flag: '--target <id>',
    help: "the boards' target, e.g. orin-nano-8gb/jp6.2/trt10.3 (setokim doctor on one): needed for a bundle bound to targets",
  }),
  compression: setting({
    schema: z.enum(['xz', 'gzip', 'zstd']),
    default: 'xz',
    flag: '--compression <c>',
    help: 'package compression: xz, gzip, zstd',
  }),
  maintainer: setting({
    schema: z.string().regex(/^[^<>]+ <[^<>@\s]+@[^<>\s]+>$/, 'Name <email>'),
    flag: '--maintainer <who>',
    help: 'the package\'s Maintainer field, "Name <email>"',
  }),
});

export function registerFlashKit(program: Command): void {
  const cmd = program
    .command('flash-kit')
    .description(
      'build a Jetson provisioning kit from a signed bundle: a .deb, root file system overlays (one per device) ' +
        'and apply-to-rootfs.sh (docs/FLASHING.md)',
    );
  registerFlags(cmd, flashKitSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(flashKitSettings, raw, 'flash-kit');
    const arch = o.arch ?? hostArch() ?? 'arm64';
    const started = Date.now();
    const kit = await new KitBuilder({
      bundle: o.bundle,
      pubkey: o.pubkey,
      config: o.config,
      out: o.out,
      arch,
      compression: o.compression,
      ...(o.devices ? { devices: o.devices } : {}),
      ...(o.target ? { target: o.target } : {}),
      ...(o.maintainer ? { maintainer: o.maintainer } : {}),
      log: (line) => process.stderr.write(`flash-kit: [${((Date.now() - started) / 1000).toFixed(1)} s] ${line}\n`),
    }).build();
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    process.stdout.write(
      `${o.out}/${kit.deb.file} (${mib(kit.deb.bytes)} MiB, Depends: ${kit.deb.depends.join(', ')})\n` +
        `${o.out}/overlay: ${kit.bundle.modelSetId} release ${kit.bundle.release} committed in the store, ` +
        `key ${kit.bundle.keyId}\n` +
        (kit.devices.length ? `${o.out}/devices: ${kit.devices.join(', ')}\n` : '') +
        `${o.out}/apply-to-rootfs.sh: sudo ${o.out}/apply-to-rootfs.sh${kit.devices.length ? ' --device ID' : ''} ` +
        `Linux_for_Tegra/rootfs (dry run; --apply to change it)\n`,
    );
  });
}
