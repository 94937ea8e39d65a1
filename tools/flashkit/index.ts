/** Flashing kits for Jetsons (docs/FLASHING.md): the package, the overlays, apply-to-rootfs.sh. */
export { KitBuilder, type KitOptions, type KitSummary } from './kit.js';
export { ARCHES, DEVICE, hostArch, type DebArch } from './layout.js';
export { readDevicesCsv, type DeviceEntry } from './devices.js';
