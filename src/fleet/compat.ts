/**
 * A signed bundle's binding (docs/FLEET.md "Compatibility"): the publisher signs which fleets,
 * targets and until when a bundle is for (format.ts CompatibilitySchema); a device checks them
 * against itself before it installs anything, and checks how far the release jumps above the one
 * it committed. Each refusal has its own code, so a fleet operator sees why a device said no.
 */
import { packageVersion } from '../engine/native.js';
import { detectTarget, matchingPatterns } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { compatibilityOf, type BundleManifest, type Compatibility } from './format.js';

/**
 * How far a device's clock may run ahead of the publisher's: a bundle is refused once the device's
 * clock is more than this past its notAfter. A clock running behind accepts an expired bundle for
 * as long as it is behind: devices need NTP or a kept RTC for the expiry to bind (docs/FLEET.md).
 */
export const CLOCK_SKEW_MS = 5 * 60_000;

/** What a bundle's compatibility section is checked against; every field defaults to this device. */
export interface DeviceIdentity {
  /** This device's fleet (the agent's --fleet, `bundle install --fleet`). A bound bundle needs it. */
  fleet?: string;
  /** This device's target id; default: detectTarget() (only when a pattern is not `*`). */
  target?: string;
  /** Default: this package's version. */
  agentVersion?: string;
  /** Default: the system clock. */
  now?: () => Date;
}

/** How an install treats a bundle's binding (InstallOptions extends it). */
export interface BindingPolicy {
  device?: DeviceIdentity;
  /**
   * Install a format-1 bundle, which signs no fleet, target or expiry (default false: refused with
   * BUNDLE_UNBOUND). For an operator installing by hand; never set on the MQTT update path.
   */
  allowUnbound?: boolean;
  /** The most a release may be above the committed one (default: no limit). */
  maxReleaseJump?: number;
}

const VERSION = /^(\d+)\.(\d+)\.(\d+)/;

/** Compares major.minor.patch versions (a pre-release suffix is ignored): <0, 0, >0. */
export function compareVersions(a: string, b: string): number {
  const pa = VERSION.exec(a);
  const pb = VERSION.exec(b);
  if (!pa || !pb) {
    const what = `${JSON.stringify(a)} and ${JSON.stringify(b)}`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot compare versions ${what}: major.minor.patch expected`);
  }
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return d;
  }
  return 0;
}

/** The refusal of a format-1 bundle, or the line that says it was taken anyway. */
function unbound(where: string, allow: boolean | undefined): string {
  if (allow) return 'an unbound format-1 bundle (no fleet, target or expiry signed), taken as asked (--allow-unbound)';
  throw new SetokimError(
    ErrorCodes.BUNDLE_UNBOUND,
    `${where}: a format-1 bundle signs no fleet, target or expiry, so it could be replayed to any device at any ` +
      'time; rebuild it with `setokim bundle create --fleet F --target T --expires D` ' +
      '(installing by hand, --allow-unbound takes it anyway)',
  );
}

function checkFleet(c: Compatibility, where: string, fleet: string | undefined): void {
  const fleets = c.fleets.join(', ');
  if (fleet === undefined) {
    throw new SetokimError(
      ErrorCodes.BUNDLE_WRONG_FLEET,
      `${where}: signed for fleet ${fleets}, and this install names no fleet; pass --fleet (the agent passes its own)`,
    );
  }
  if (!c.fleets.includes(fleet)) {
    throw new SetokimError(
      ErrorCodes.BUNDLE_WRONG_FLEET,
      `${where}: signed for fleet ${fleets}, not for this device's fleet ${fleet}; publish a bundle for ${fleet}`,
    );
  }
}

function checkExpiry(c: Compatibility, where: string, now: Date): void {
  if (now.getTime() <= Date.parse(c.notAfter) + CLOCK_SKEW_MS) return;
  throw new SetokimError(
    ErrorCodes.BUNDLE_EXPIRED,
    `${where}: expired at ${c.notAfter} (this device's clock says ${now.toISOString()}); ` +
      "publish a fresh bundle (bundle create --expires), or set the device's clock if it is wrong",
  );
}

function checkAgent(c: Compatibility, where: string, agent: string): void {
  if (compareVersions(agent, c.minAgentVersion) >= 0) return;
  throw new SetokimError(
    ErrorCodes.AGENT_TOO_OLD,
    `${where}: needs setokim-edge ${c.minAgentVersion} or newer, this device runs ${agent}; update the agent first`,
  );
}

/** The device's target (given, or detected when a pattern is not `*`; else null), checked against the patterns. */
async function checkTarget(c: Compatibility, where: string, given: string | undefined): Promise<string | null> {
  const target = given ?? (c.targets.every((t) => t === '*') ? null : (await detectTarget()).id);
  if (target === null || matchingPatterns(c.targets, target).length > 0) return target;
  throw new SetokimError(
    ErrorCodes.BUNDLE_WRONG_TARGET,
    `${where}: built for target ${c.targets.join(', ')}; this device is ${target} (setokim doctor); ` +
      'publish a bundle for it',
  );
}

/**
 * Checks a verified manifest's binding against this device: fleet, expiry, agent version, target,
 * in that order. Throws the refusal's code; returns what it was bound to (for the `verified` step).
 */
export async function checkBinding(m: BundleManifest, where: string, p: BindingPolicy): Promise<string> {
  const c = compatibilityOf(m);
  if (!c) return unbound(where, p.allowUnbound);
  const d = p.device ?? {};
  checkFleet(c, where, d.fleet);
  checkExpiry(c, where, (d.now ?? (() => new Date()))());
  checkAgent(c, where, d.agentVersion ?? packageVersion());
  const target = await checkTarget(c, where, d.target);
  const here = target ? ` (this device: ${target})` : '';
  return `for fleet ${c.fleets.join(', ')}, target ${c.targets.join(', ')}${here}, until ${c.notAfter}`;
}

/** Refuses a release more than `max` above the committed one (none committed: the first sets the floor). */
export function checkReleaseJump(release: number, committed: number | null, max: number | undefined, where: string) {
  if (max === undefined || committed === null || release - committed <= max) return;
  throw new SetokimError(
    ErrorCodes.RELEASE_JUMP_REFUSED,
    `${where}: release ${release} is ${release - committed} above the committed release ${committed}, more than ` +
      `this device takes at once (maxReleaseJump ${max}); a release number that high would refuse every later ` +
      `release below it. Publish the next release within ${committed + 1}..${committed + max}, or raise the limit`,
  );
}

const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 } as const;
const DURATION = /^(\d{1,6})([mhdw])$/;
const DATE = /^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2}))?$/;

/** `bundle create --expires`: a duration from `now` (90m, 12h, 30d, 8w), a date (2026-12-31, 00:00 UTC), an instant. */
export function parseExpiry(text: string, now: Date): Date {
  const dur = DURATION.exec(text);
  const unit = dur ? UNIT_MS[dur[2] as keyof typeof UNIT_MS] : 0;
  const at = dur ? new Date(now.getTime() + Number(dur[1]) * unit) : DATE.test(text) ? new Date(text) : null;
  if (!at || Number.isNaN(at.getTime())) {
    const want = 'a duration (90m, 12h, 30d, 8w) or a date (2026-12-31) or an instant (2026-12-31T18:00:00Z)';
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `--expires ${JSON.stringify(text)}: ${want}`);
  }
  if (at.getTime() <= now.getTime()) {
    const why = 'a bundle that has expired would be refused by every device';
    const when = `${text} is ${at.toISOString()}`;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `--expires ${when}, not in the future; ${why}`);
  }
  return at;
}
