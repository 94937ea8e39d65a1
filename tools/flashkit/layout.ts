/**
 * Where a flashing kit puts things on a device (docs/FLASHING.md), declared once: the package's
 * files, the overlay's files, the unit files and maintainer scripts (tools/flashkit/files/, whose
 * @NAME@ placeholders are these values) and apply-to-rootfs.sh all take them from here.
 */
export const DEVICE = {
  /** The package name, its service user and group. */
  package: 'setokim-edge',
  user: 'setokim',
  /** The app: compiled JS, production node_modules, the native addon. */
  appDir: '/opt/setokim',
  /** The command, a link to the app's bin/setokim.js. */
  bin: '/usr/bin/setokim',
  configDir: '/etc/setokim',
  config: '/etc/setokim/agent.yaml',
  pubkey: '/etc/setokim/bundle.pub.pem',
  /** A device's TLS files (from its config or devices.csv): client certificate, key, broker CA. */
  tlsDir: '/etc/setokim/tls',
  stateDir: '/var/lib/setokim',
  store: '/var/lib/setokim/models',
  unitDir: '/lib/systemd/system',
  agentUnit: 'setokim-agent.service',
  enginesUnit: 'setokim-engines.service',
} as const;

/** Debian architecture names, and what Node, ELF headers and npm call each. */
export const ARCHES = {
  amd64: { node: 'x64', elfMachine: 62, elfName: 'x86-64', triple: 'x86_64-linux-gnu' },
  arm64: { node: 'arm64', elfMachine: 183, elfName: 'AArch64', triple: 'aarch64-linux-gnu' },
} as const;
export type DebArch = keyof typeof ARCHES;

/** The Debian architecture of this machine, when it is one a kit can be built for. */
export function hostArch(): DebArch | undefined {
  return (Object.keys(ARCHES) as DebArch[]).find((a) => ARCHES[a].node === process.arch);
}

/** `@NAME@` placeholders of the files in tools/flashkit/files, from DEVICE. */
export function fillTemplate(text: string, extra: Record<string, string> = {}): string {
  const values: Record<string, string> = { ...Object.fromEntries(Object.entries(DEVICE)), ...extra };
  return text.replace(/@([A-Za-z]+)@/g, (whole, name: string) => {
    const v = values[name];
    if (v === undefined) throw new Error(`flash-kit template: no value for ${whole}`);
    return v;
  });
}
