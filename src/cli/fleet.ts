/**
 * `setokim fleet`: fleet operations over MQTT. `rollout` sends an update job to devices, canaries
 * first (src/fleet/rollout.ts), optionally only to the devices whose retained status names a
 * target matching `--target`; `status` prints what every device of a fleet last reported
 * (src/agent/fleet-status.ts): online, release, model set, target, backend, update state, last error.
 */
import type { Command } from 'commander';
import { connectAsync, type MqttClient } from 'mqtt';
import { z } from 'zod';
import { collectFleetStatus, formatFleetStatus, type FleetStatus } from '../agent/fleet-status.js';
import { matchTarget, TargetPattern } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { loadPrivateKey } from '../fleet/keys.js';
import { rollout, type UpdateState } from '../fleet/index.js';
import { brokerGroup, credentialOptions, fleetSetting } from '../mqtt/connection.js';
import { levelName } from '../mqtt/topics.js';
import { group, parseCommandSettings, registerFlags, setting } from '../settings.js';

const whole = (min: number) => z.number().int().min(min).max(Number.MAX_SAFE_INTEGER);

/** --fleet, the same for rollout and status. */
const fleet = fleetSetting({ required: true }, 'required');

/** Every flag of `setokim fleet rollout`, declared once (src/settings.ts); the broker's are shared with the agent and query. */
const rolloutSettings = group({
  broker: brokerGroup({}),
  fleet,
  devices: setting({
    schema: z.array(levelName).min(1),
    required: true,
    flag: '--devices <a,b,c>',
    read: 'list',
    help: 'devices to update, comma-separated (required)',
  }),
  canary: setting({
    schema: z.array(levelName).min(1),
    flag: '--canary <a>',
    read: 'list',
    help: 'devices to update first, one at a time (default: the first of --devices)',
  }),
  url: setting({
    schema: z
      .string()
      .regex(/^https?:\/\//i, 'https:// (or http://): devices refuse file: and other URLs in jobs over MQTT'),
    required: true,
    flag: '--url <url>',
    help: 'bundle URL the devices fetch (resumable), under a prefix of their updates.allowUrls (required)',
  }),
  sha256: setting({
    schema: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits (sha256sum of the bundle)'),
    required: true,
    flag: '--sha256 <hex>',
    help: 'sha256 of the bundle file (required)',
  }),
  release: setting({
    schema: whole(1),
    flag: '--release <n>',
    read: 'number',
    help: 'the release it carries (informational; devices check the signed one)',
  }),
  size: setting({
    schema: whole(1),
    flag: '--size <bytes>',
    read: 'number',
    help: "the bundle file's size in bytes (stat -c %s): devices refuse a larger download and check their free space first",
  }),
  maxFailures: setting({
    schema: whole(0),
    default: 0,
    flag: '--max-failures <n>',
    read: 'number',
    help: 'failures tolerated after the canaries',
  }),
  concurrency: setting({
    schema: whole(1),
    default: 1,
    flag: '--concurrency <n>',
    read: 'number',
    help: 'devices updating at once after the canaries',
  }),
  timeout: setting({
    schema: whole(1),
    default: 600,
    flag: '--timeout <s>',
    read: 'number',
    help: 'seconds a device may take from job to final state',
  }),
  signKey: setting({
    schema: z.string().min(1),
    flag: '--sign-key <pem>',
    env: 'SETOKIM_SIGN_KEY',
    help: "the fleet's private key (bundle keygen): signs each device's job (devices with updates.signedJobs need it)",
  }),
  settle: setting({
    schema: whole(0),
    default: 10,
    flag: '--settle <s>',
    read: 'number',
    help: 'seconds after a device commits that a warning from it (e.g. its agent could not open the new set) may still arrive (0: do not wait)',
  }),
  target: setting({
    schema: TargetPattern,
    flag: '--target <pattern>',
    help: 'only devices whose retained status names a matching target (orin-nano-*/jp6.*/trt10.3); others are skipped',
  }),
});

/** Every flag of `setokim fleet status`. */
const statusSettings = group({
  broker: brokerGroup({}),
  fleet,
  quiet: setting({
    schema: whole(1),
    default: 500,
    flag: '--quiet-ms <ms>',
    read: 'number',
    help: 'stop reading retained messages once none came for this long',
  }),
  json: setting({
    schema: z.boolean(),
    default: false,
    flag: '--json',
    switchValue: true,
    help: 'print JSON instead of a table',
  }),
});

async function connect(broker: { url: string } & Parameters<typeof credentialOptions>[0]): Promise<MqttClient> {
  try {
    return await connectAsync(broker.url, { ...credentialOptions(broker), reconnectPeriod: 0 });
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `cannot connect to --broker ${broker.url}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/**
 * `--target`: the devices whose retained status names a target matching the pattern; the others
 * are printed as skipped with their target (or that they reported none).
 */
function byTarget(status: FleetStatus, devices: string[], pattern: string): string[] {
  const targets = new Map(status.devices.map((d) => [d.device, d.status?.target]));
  const keep: string[] = [];
  for (const d of devices) {
    const t = targets.get(d);
    if (t && matchTarget(pattern, t)) keep.push(d);
    else
      process.stdout.write(
        `${d}: skipped: ${t ? `target ${t} does not match ${pattern}` : 'no retained status with a target'}\n`,
      );
  }
  if (keep.length === 0)
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `no device of --devices reports a target matching ${pattern}; see \`setokim fleet status\``,
    );
  return keep;
}

/** `setokim fleet rollout` and `setokim fleet status`. */
export function registerFleet(program: Command): Command {
  const cmd = program
    .command('fleet')
    .description('fleet operations over MQTT: staged rollouts of bundles, the status of every device');
  const rolloutCmd = cmd
    .command('rollout')
    .description(
      'send an update job (bundle URL + sha256) to devices: canaries first, then the rest; stop when failures pass --max-failures',
    );
  registerFlags(rolloutCmd, rolloutSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(rolloutSettings, raw, 'fleet rollout');
    const signKey = o.signKey ? await loadPrivateKey(o.signKey) : undefined;
    const client = await connect(o.broker);
    let devices = o.devices;
    let canary = o.canary;
    try {
      if (o.target) {
        devices = byTarget(await collectFleetStatus(client, { fleet: o.fleet }), o.devices, o.target);
        canary = canary?.filter((d) => devices.includes(d));
        if (canary?.length === 0) canary = undefined;
      }
    } catch (err) {
      await client.endAsync();
      throw err;
    }
    const last = new Map<string, UpdateState>();
    const stop = new AbortController();
    const leave = () => process.exit(130);
    const onSigint = () => {
      process.stderr.write(
        'stopping: no more jobs are sent; waiting for the devices already updating (Ctrl-C again to leave now)\n',
      );
      stop.abort();
      process.once('SIGINT', leave);
    };
    process.once('SIGINT', onSigint);
    try {
      const r = await rollout(client, {
        signal: stop.signal,
        fleet: o.fleet,
        devices,
        canary,
        job: { url: o.url, sha256: o.sha256, release: o.release, ...(o.size !== undefined ? { size: o.size } : {}) },
        ...(signKey ? { signKey } : {}),
        onForged: (d) =>
          process.stderr.write(
            `${d}: ignored a state for its job not sealed with the job's nonce (another client sent it)\n`,
          ),
        maxFailures: o.maxFailures,
        concurrency: o.concurrency,
        timeoutMs: o.timeout * 1000,
        settleMs: o.settle * 1000,
        onEvent: (d, e) => {
          if (last.get(d) === e.state && !e.warning) return;
          last.set(d, e.state);
          process.stderr.write(
            `${d}: ${e.state}${e.code ? ` [${e.code}]` : ''}${e.message ? ` ${e.message}` : ''}${e.warning ? ` warning [${e.warning.code}] ${e.warning.message}` : ''}\n`,
          );
        },
      });
      for (const x of r.outcomes) {
        const warning = x.warning ? ` with warning ${x.warning.code}: ${x.warning.message}` : '';
        process.stdout.write(
          `${x.device}: ${x.result}${x.code ? ` ${x.code}` : ''}${x.message && x.result !== 'committed' ? `: ${x.message}` : ''}${warning}\n`,
        );
      }
      const warned = r.outcomes.filter((x) => x.warning).map((x) => x.device);
      if (warned.length)
        process.stderr.write(
          `warning: ${warned.join(', ')} committed the release but reported a failure after the commit (see above): check that they serve it, or restart their agents\n`,
        );
      if (r.aborted) {
        const failed = r.failures; // a canary that committed with a warning is one
        throw new SetokimError(
          ErrorCodes.ROLLOUT_ABORTED,
          `rollout stopped after failures on ${failed.join(', ')}; ${r.outcomes.filter((x) => x.result === 'skipped').length} devices were not sent the job. Fix the bundle or the devices and roll out again`,
        );
      }
    } finally {
      process.off('SIGINT', onSigint);
      process.off('SIGINT', leave);
      await client.endAsync();
    }
  });

  const statusCmd = cmd
    .command('status')
    .description(
      "what every device of a fleet last reported: online, release, model set, target, backend, update state, last error (the broker's retained messages)",
    );
  registerFlags(statusCmd, statusSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(statusSettings, raw, 'fleet status');
    const client = await connect(o.broker);
    try {
      const s = await collectFleetStatus(client, { fleet: o.fleet, quietMs: o.quiet });
      process.stdout.write((o.json ? JSON.stringify(s) : formatFleetStatus(s)) + '\n');
    } finally {
      await client.endAsync();
    }
  });
  return cmd;
}
