/**
 * `setokim flash-kit`: a provisioning kit for Jetsons from a signed bundle (docs/FLASHING.md): the
 * Debian package, the root file system overlays (one per device with --devices) and
 * apply-to-rootfs.sh. The work lives in tools/flashkit; this file parses the flags and reports.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { TargetId } from '../engine/target.js';
import { parseFlags } from '../flags.js';
import { ARCHES, hostArch, KitBuilder, type DebArch } from '../../tools/flashkit/index.js';

const req = () => z.string({ error: (iss) => (iss.input === undefined ? 'required' : undefined) }).min(1);

const FlashKitOptions = z.object({
  bundle: req(),
  pubkey: req(),
  config: req(),
  out: req(),
  arch: z.enum(Object.keys(ARCHES) as [DebArch, ...DebArch[]]).optional(),
  devices: z.string().min(1).optional(),
  target: TargetId.optional(),
  compression: z.enum(['xz', 'gzip', 'zstd']).default('xz'),
  maintainer: z
    .string()
    .regex(/^[^<>]+ <[^<>@\s]+@[^<>\s]+>$/, 'Name <email>')
    .optional(),
});

export function registerFlashKit(program: Command): void {
  program
    .command('flash-kit')
    .description(
      'build a Jetson provisioning kit from a signed bundle: a .deb, root file system overlays (one per device) ' +
        'and apply-to-rootfs.sh (docs/FLASHING.md)',
    )
    .option('--bundle <file>', "signed bundle to install into the kit's model store (required)")
    .option('--pubkey <pem>', 'the public key bundles are signed with (required; never the private key)')
    .option('--config <file>', 'agent configuration (YAML or JSON) for the devices (required)')
    .option('--out <dir>', 'directory to write the kit into; must not exist or be empty (required)')
    .option(
      '--arch <arch>',
      `Debian architecture of the devices: ${Object.keys(ARCHES).join(' | ')} (default: this machine's)`,
    )
    .option(
      '--devices <csv>',
      'devices.csv (device,fleet,broker[,cert,key]): one overlay per device with its identity and secrets',
    )
    .option(
      '--target <id>',
      "the boards' target, e.g. orin-nano-8gb/jp6.2/trt10.3 (setokim doctor on one): needed for a bundle bound to targets",
    )
    .option('--compression <c>', 'package compression: xz (default), gzip, zstd')
    .option('--maintainer <who>', 'the package\'s Maintainer field, "Name <email>"')
    .action(async (raw: unknown) => {
      const o = parseFlags(FlashKitOptions, raw, 'flash-kit');
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
