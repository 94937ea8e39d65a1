/**
 * `setokim bundle`: signed model-set bundles for fleet updates (docs/FLEET.md). keygen makes an
 * Ed25519 key pair, create signs a bundle, verify checks one, install puts one into a device's
 * model store (journalled, health-checked, rolled back on failure), recover finishes or undoes an
 * install a crash interrupted, status shows the store. The work lives in src/fleet.
 */
import { readFile } from 'node:fs/promises';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { connectAsync } from 'mqtt';
import { z } from 'zod';
import { ModelStore } from '../engine/modelset.js';
import { TargetPattern } from '../engine/target.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  AgentVersion,
  canaryQuery,
  compatibilityOf,
  createBundle,
  DEFAULT_RESERVE_BYTES,
  FIRST_BOUND_AGENT_VERSION,
  generateKeys,
  installBundle,
  loadPrivateKey,
  loadPublicKey,
  readJournal,
  readRelease,
  recoverStore,
  parseExpiry,
  rollout,
  verifyBundle,
  type BundleManifest,
  type ByteProgress,
  type UpdateState,
} from '../fleet/index.js';
import { parseFlags } from '../flags.js';
import { brokerGroup, credentialOptions } from '../mqtt/connection.js';
import { levelName } from '../mqtt/topics.js';
import { group, parseCommandSettings, registerFlags, setting } from '../settings.js';

/** What a bundle is bound to, for create's and verify's one line. */
function describeBinding(m: BundleManifest): string {
  const c = compatibilityOf(m);
  if (!c) return 'format 1: bound to no fleet, target or expiry (devices refuse it unless --allow-unbound)';
  const what = `for fleet ${c.fleets.join(', ')}, target ${c.targets.join(', ')}, until ${c.notAfter}`;
  return `${what}, agent ${c.minAgentVersion} or newer`;
}

const missingOr = (what?: string) => (iss: { input?: unknown }) => (iss.input === undefined ? 'required' : what);
const req = () => z.string({ error: missingOr() }).min(1);
const wholeNumber = (min: number) => z.string({ error: missingOr() }).regex(/^\d+$/, 'a whole number').transform(Number).pipe(z.number().int().min(min).max(Number.MAX_SAFE_INTEGER));

/** A byte-progress bar on stderr when it is a terminal; null otherwise (or with --no-progress). */
function progressBar(label: string, enabled: boolean): { onProgress?: ByteProgress; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { stop: () => {} };
  const bar = new SingleBar({ format: `${label} {bar} {percentage}% {mib}/{totalMib} MiB {file}`, hideCursor: true, stream: process.stderr }, Presets.shades_classic);
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  return {
    onProgress: (done, total, file) => {
      if (!bar.isActive) bar.start(total, 0, { mib: '0.0', totalMib: mib(total), file });
      bar.update(done, { mib: mib(done), totalMib: mib(total), file });
    },
    stop: () => bar.stop(),
  };
}

/** Runs `work` with a progress bar, stopped however the work ends. */
async function withProgressBar<T>(label: string, enabled: boolean, work: (bar: ReturnType<typeof progressBar>) => Promise<T>): Promise<T> {
  const bar = progressBar(label, enabled);
  try {
    return await work(bar);
  } finally {
    bar.stop();
  }
}

/** A repeatable flag: commander collects each use into an array. */
const collect = (value: string, previous: string[] = []) => [...previous, value];
const repeated = <T extends z.ZodType<string>>(item: T, what: string) =>
  z.array(item, { error: missingOr() }).min(1, `give at least one ${what}`);

const KeygenOptions = z.object({ out: req() });
const CreateOptions = z.object({
  models: req(),
  release: wholeNumber(1),
  key: req(),
  out: req(),
  fleet: repeated(levelName, 'fleet'),
  target: repeated(TargetPattern, 'target pattern (* for any)'),
  expires: req(),
  minAgentVersion: AgentVersion.default(FIRST_BOUND_AGENT_VERSION),
  progress: z.boolean(),
});
const VerifyOptions = z.object({ pubkey: req(), progress: z.boolean() });
const InstallOptions = z.object({
  store: req(),
  pubkey: req(),
  fleet: levelName.optional(),
  allowUnbound: z.boolean().default(false),
  maxReleaseJump: wholeNumber(1).optional(),
  canaryImage: z.string().min(1).optional(),
  backend: z.string().min(1).optional(),
  reserveMib: wholeNumber(0).optional(),
  healthTimeout: wholeNumber(1).optional(),
  progress: z.boolean(),
});
const StoreOptions = z.object({ store: req() });

export function registerBundle(program: Command): Command {
  const cmd = program.command('bundle').description('signed model-set bundles: keygen, create, verify, install on a device, recover, status');

  cmd
    .command('keygen')
    .description('make an Ed25519 key pair: bundle-signing.key.pem (keep it on the build machine) and bundle-signing.pub.pem (give it to devices)')
    .option('--out <dir>', 'directory for the two PEM files (required; existing keys are never overwritten)')
    .action(async (raw: unknown) => {
      const o = parseFlags(KeygenOptions, raw, 'bundle keygen');
      const k = await generateKeys(o.out);
      process.stdout.write(`key ${k.keyId}\nprivate: ${k.privatePath}\npublic: ${k.publicPath}\n`);
    });

  cmd
    .command('create')
    .description('bundle a model set into one signed file')
    .option('--models <dir>', 'model set directory (manifest.json + stage files) (required)')
    .option('--release <n>', 'release number, higher than every earlier bundle for this fleet (required)')
    .option('--key <pem>', 'Ed25519 private key from `bundle keygen` (required)')
    .option('--out <file>', 'bundle file to write (required)')
    .option('--fleet <name>', 'a fleet whose devices may install it (repeatable; at least one)', collect)
    .option('--target <pattern>', 'a target it runs on: orin-nano-*/jp6.*/trt10.3, * for any (repeatable; at least one)', collect)
    .option('--expires <when>', 'devices refuse it after: a duration (90m, 12h, 30d, 8w) or a date (2026-12-31) (required)')
    .option('--min-agent-version <v>', `the oldest setokim-edge that may install it (default ${FIRST_BOUND_AGENT_VERSION})`)
    .option('--no-progress', 'no progress bar')
    .action(async (raw: unknown) => {
      const o = parseFlags(CreateOptions, raw, 'bundle create');
      const now = new Date();
      const notAfter = parseExpiry(o.expires, now).toISOString();
      const compatibility = { fleets: o.fleet, targets: o.target, notAfter, minAgentVersion: o.minAgentVersion };
      const key = await loadPrivateKey(o.key);
      const { models, release, out } = o;
      const m = await withProgressBar('bundle', o.progress, (bar) =>
        createBundle({ models, release, key, out, compatibility, createdAt: now, onProgress: bar.onProgress }),
      );
      const mib = (m.files.reduce((a, f) => a + f.size, 0) / 2 ** 20).toFixed(1);
      const what = `${m.modelSetId} release ${m.release}, ${m.files.length} files, ${mib} MiB, signed by ${m.keyId}`;
      process.stdout.write(`${o.out}: ${what}; ${describeBinding(m)}\n`);
    });

  cmd
    .command('verify <file>')
    .description("check a bundle's signature and every file's sha256 without installing it")
    .option('--pubkey <pem>', 'trusted Ed25519 public key (required)')
    .option('--no-progress', 'no progress bar')
    .action(async (file: string, raw: unknown) => {
      const o = parseFlags(VerifyOptions, raw, 'bundle verify');
      const pubkey = await loadPublicKey(o.pubkey);
      const m = await withProgressBar('verify', o.progress, (bar) => verifyBundle(file, pubkey, bar.onProgress));
      const what = `${m.modelSetId} release ${m.release}, created ${m.createdAt}, ${m.files.length} files, signed by ${m.keyId}`;
      process.stdout.write(`${file}: OK: ${what}; ${describeBinding(m)}\n`);
    });

  cmd
    .command('install <file>')
    .description('install a bundle into a device model store: verify, stage, activate, canary query, commit; roll back on any failure')
    .option('--store <dir>', 'model store root (sets in <dir>/<id>/, the active pointer in <dir>/active) (required)')
    .option('--pubkey <pem>', 'trusted Ed25519 public key (required)')
    .option('--fleet <name>', "this device's fleet: bundles signed for other fleets are refused (needed for format 2)")
    .option('--allow-unbound', 'also install a format-1 bundle, which signs no fleet, target or expiry')
    .option('--max-release-jump <n>', 'refuse a release more than n above the committed one (default: no limit)')
    .option('--canary-image <file>', 'image for the health-check query (default: a generated gradient)')
    .option('--backend <name>', 'run the health check on this backend only (onnxruntime-cpu, tensorrt)')
    .option('--reserve-mib <n>', `free space to leave after unpacking (default ${DEFAULT_RESERVE_BYTES / 2 ** 20})`)
    .option('--health-timeout <s>', 'seconds the canary query may take (default 120)')
    .option('--no-progress', 'no progress bar')
    .action(async (file: string, raw: unknown) => {
      const o = parseFlags(InstallOptions, raw, 'bundle install');
      const pubkey = await loadPublicKey(o.pubkey);
      let image: Uint8Array | undefined;
      if (o.canaryImage) {
        try {
          image = new Uint8Array(await readFile(o.canaryImage));
        } catch (err) {
          throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read --canary-image ${o.canaryImage}: ${(err as Error).message}`, { cause: err });
        }
      }
      const r = await withProgressBar('unpack', o.progress, (bar) =>
        installBundle({
          bundle: file,
          store: o.store,
          pubkey,
          device: o.fleet === undefined ? {} : { fleet: o.fleet },
          allowUnbound: o.allowUnbound,
          maxReleaseJump: o.maxReleaseJump,
          reserveBytes: o.reserveMib === undefined ? undefined : o.reserveMib * 2 ** 20,
          health: (dir) => canaryQuery(dir, { image, backend: o.backend, timeoutMs: o.healthTimeout === undefined ? undefined : o.healthTimeout * 1000 }),
          onProgress: bar.onProgress,
          onStep: (s, detail) => {
            bar.stop();
            process.stderr.write(`[${s}] ${detail}\n`);
          },
        }),
      );
      process.stdout.write(`installed ${r.modelSetId} release ${r.release} into ${o.store} (previous: ${r.previous ?? 'none'}); canary answered in ${r.health.ms.toFixed(0)} ms\n`);
    });

  cmd
    .command('recover')
    .description('finish or undo an install that a crash or power loss interrupted (install does this first too)')
    .option('--store <dir>', 'model store root (required)')
    .action(async (raw: unknown) => {
      const o = parseFlags(StoreOptions, raw, 'bundle recover');
      const r = await recoverStore(o.store);
      const what = r.action === 'none' ? 'nothing to recover' : `${r.action} release ${r.journal!.release} (${r.journal!.modelSetId}, interrupted after step ${r.journal!.step})`;
      process.stdout.write(`${o.store}: ${what}; active: ${r.active ?? 'none'}\n`);
    });

  cmd
    .command('status')
    .description('the active set, the committed release and any interrupted install of a model store')
    .option('--store <dir>', 'model store root (required)')
    .action(async (raw: unknown) => {
      const o = parseFlags(StoreOptions, raw, 'bundle status');
      const store = new ModelStore(o.store);
      const [active, sets, release, journal] = await Promise.all([store.active(), store.list(), readRelease(o.store), readJournal(o.store)]);
      process.stdout.write(
        JSON.stringify({ store: o.store, active, release: release?.release ?? null, previous: release?.previous ?? null, sets, interrupted: journal ? { step: journal.step, release: journal.release, modelSetId: journal.modelSetId } : null }) + '\n',
      );
    });
  return cmd;
}

const whole = (min: number) => z.number().int().min(min).max(Number.MAX_SAFE_INTEGER);

/** Every flag of `setokim fleet rollout`, declared once (src/settings.ts); the broker's are shared with the agent and query. */
const rolloutSettings = group({
  broker: brokerGroup({}),
  fleet: setting({ schema: levelName, required: true, flag: '--fleet <name>', env: 'SETOKIM_FLEET', help: 'fleet name (required)' }),
  devices: setting({ schema: z.array(levelName).min(1), required: true, flag: '--devices <a,b,c>', read: 'list', help: 'devices to update, comma-separated (required)' }),
  canary: setting({ schema: z.array(levelName).min(1), flag: '--canary <a>', read: 'list', help: 'devices to update first, one at a time (default: the first of --devices)' }),
  url: setting({
    schema: z
      .string()
      .regex(/^https?:\/\//i, 'https:// (or http://): devices refuse file: and other URLs in jobs over MQTT'),
    required: true,
    flag: '--url <url>',
    help: "bundle URL the devices fetch (resumable), under a prefix of their updates.allowUrls (required)",
  }),
  sha256: setting({ schema: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits (sha256sum of the bundle)'), required: true, flag: '--sha256 <hex>', help: 'sha256 of the bundle file (required)' }),
  release: setting({ schema: whole(1), flag: '--release <n>', read: 'number', help: 'the release it carries (informational; devices check the signed one)' }),
  size: setting({ schema: whole(1), flag: '--size <bytes>', read: 'number', help: "the bundle file's size in bytes (stat -c %s): devices refuse a larger download and check their free space first" }),
  maxFailures: setting({ schema: whole(0), default: 0, flag: '--max-failures <n>', read: 'number', help: 'failures tolerated after the canaries' }),
  concurrency: setting({ schema: whole(1), default: 1, flag: '--concurrency <n>', read: 'number', help: 'devices updating at once after the canaries' }),
  timeout: setting({ schema: whole(1), default: 600, flag: '--timeout <s>', read: 'number', help: 'seconds a device may take from job to final state' }),
  signKey: setting({
    schema: z.string().min(1),
    flag: '--sign-key <pem>',
    env: 'SETOKIM_SIGN_KEY',
    help: "the fleet's private key (bundle keygen): signs each device's job (devices with updates.signedJobs need it)",
  }),
  settle: setting({ schema: whole(0), default: 10, flag: '--settle <s>', read: 'number', help: 'seconds after a device commits that a warning from it (e.g. its agent could not open the new set) may still arrive (0: do not wait)' }),
});

/** `setokim fleet rollout`: publish an update job to devices over MQTT, canaries first (src/fleet/rollout.ts). */
export function registerFleet(program: Command): Command {
  const cmd = program.command('fleet').description('fleet operations over MQTT: staged rollouts of bundles');
  const rolloutCmd = cmd
    .command('rollout')
    .description('send an update job (bundle URL + sha256) to devices: canaries first, then the rest; stop when failures pass --max-failures');
  registerFlags(rolloutCmd, rolloutSettings).action(async (raw: Record<string, unknown>) => {
      const o = parseCommandSettings(rolloutSettings, raw, 'fleet rollout');
      const signKey = o.signKey ? await loadPrivateKey(o.signKey) : undefined;
      let client;
      try {
        client = await connectAsync(o.broker.url, { ...credentialOptions(o.broker), reconnectPeriod: 0 });
      } catch (err) {
        throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot connect to --broker ${o.broker.url}: ${(err as Error).message}`, { cause: err });
      }
      const last = new Map<string, UpdateState>();
      const stop = new AbortController();
      const leave = () => process.exit(130);
      const onSigint = () => {
        process.stderr.write('stopping: no more jobs are sent; waiting for the devices already updating (Ctrl-C again to leave now)\n');
        stop.abort();
        process.once('SIGINT', leave);
      };
      process.once('SIGINT', onSigint);
      try {
        const r = await rollout(client, {
          signal: stop.signal,
          fleet: o.fleet,
          devices: o.devices,
          canary: o.canary,
          job: { url: o.url, sha256: o.sha256, release: o.release, ...(o.size !== undefined ? { size: o.size } : {}) },
          ...(signKey ? { signKey } : {}),
          onForged: (d) =>
            process.stderr.write(`${d}: ignored a state for its job not sealed with the job's nonce (another client sent it)\n`),
          maxFailures: o.maxFailures,
          concurrency: o.concurrency,
          timeoutMs: o.timeout * 1000,
          settleMs: o.settle * 1000,
          onEvent: (d, e) => {
            if (last.get(d) === e.state && !e.warning) return;
            last.set(d, e.state);
            process.stderr.write(`${d}: ${e.state}${e.code ? ` [${e.code}]` : ''}${e.message ? ` ${e.message}` : ''}${e.warning ? ` warning [${e.warning.code}] ${e.warning.message}` : ''}\n`);
          },
        });
        for (const x of r.outcomes) {
          const warning = x.warning ? ` with warning ${x.warning.code}: ${x.warning.message}` : '';
          process.stdout.write(`${x.device}: ${x.result}${x.code ? ` ${x.code}` : ''}${x.message && x.result !== 'committed' ? `: ${x.message}` : ''}${warning}\n`);
        }
        const warned = r.outcomes.filter((x) => x.warning).map((x) => x.device);
        if (warned.length) process.stderr.write(`warning: ${warned.join(', ')} committed the release but reported a failure after the commit (see above): check that they serve it, or restart their agents\n`);
        if (r.aborted) {
          const failed = r.failures; // a canary that committed with a warning is one
          throw new SetokimError(ErrorCodes.ROLLOUT_ABORTED, `rollout stopped after failures on ${failed.join(', ')}; ${r.outcomes.filter((x) => x.result === 'skipped').length} devices were not sent the job. Fix the bundle or the devices and roll out again`);
        }
      } finally {
        process.off('SIGINT', onSigint);
        process.off('SIGINT', leave);
        await client.endAsync();
      }
    });
  return cmd;
}
