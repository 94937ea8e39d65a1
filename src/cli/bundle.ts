/**
 * `setokim bundle`: signed model-set bundles for fleet updates (docs/FLEET.md). keygen makes an
 * Ed25519 key pair, create signs a bundle, verify checks one, install puts one into a device's
 * model store (journalled, health-checked, rolled back on failure), recover finishes or undoes an
 * install a crash interrupted, status shows the store. The work lives in src/fleet.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
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
  ENGINES_DIR,
  FIRST_BOUND_AGENT_VERSION,
  generateKeys,
  installBundle,
  loadPrivateKey,
  loadPublicKey,
  readJournal,
  readRelease,
  recoverStore,
  parseExpiry,
  verifyBundle,
  type BundleManifest,
  engineGroupsOf,
} from '../fleet/index.js';
import { group, parseCommandSettings, progressSetting, registerFlags, setting } from '../settings.js';
import { engineProgress, withProgressBar } from './progress.js';
import { levelName } from '../mqtt/topics.js';
import { fleetSetting } from '../mqtt/connection.js';

/** What a bundle is bound to, for create's and verify's one line. */
function describeBinding(m: BundleManifest): string {
  const c = compatibilityOf(m);
  if (!c) return 'format 1: bound to no fleet, target or expiry (devices refuse it unless --allow-unbound)';
  const what = `for fleet ${c.fleets.join(', ')}, target ${c.targets.join(', ')}, until ${c.notAfter}`;
  const groups = engineGroupsOf(m);
  const engines = groups.length
    ? `; prebuilt engines for ${groups.map((g) => `${g.target} (${g.files.length / 2})`).join(', ')}`
    : '';
  return `${what}, agent ${c.minAgentVersion} or newer${engines}`;
}

const missingOr = (what?: string) => (iss: { input?: unknown }) => (iss.input === undefined ? 'required' : what);
const text = () => z.string({ error: missingOr() }).min(1);
const wholeNumber = (min: number) =>
  z
    .string({ error: missingOr() })
    .regex(/^\d+$/, 'a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(Number.MAX_SAFE_INTEGER));
/** A repeatable flag (`--fleet a --fleet b`): at least one. */
const repeated = <T extends z.ZodType<string>>(item: T, what: string) =>
  z.array(item, { error: missingOr() }).min(1, `give at least one ${what}`);

/** --store: install, recover and status. */
const store = setting({
  schema: text(),
  required: true,
  flag: '--store <dir>',
  help: 'model store root (sets in <dir>/<id>/, the active pointer in <dir>/active) (required)',
});

/** --pubkey: bundle verify and install, and flash-kit. */
export const pubkeySetting = setting({
  schema: text(),
  required: true,
  flag: '--pubkey <pem>',
  help: 'trusted Ed25519 public key bundles are signed with (required; never the private key)',
});

/** Every flag of each `bundle` subcommand, declared once (src/settings.ts). */
const keygenSettings = group({
  out: setting({
    schema: text(),
    required: true,
    flag: '--out <dir>',
    help: 'directory for the two PEM files (required; existing keys are never overwritten)',
  }),
});

const createSettings = group({
  models: setting({
    schema: text(),
    required: true,
    flag: '--models <dir>',
    help: 'model set directory (manifest.json + stage files) (required)',
  }),
  release: setting({
    schema: wholeNumber(1),
    required: true,
    flag: '--release <n>',
    help: 'release number, higher than every earlier bundle for this fleet (required)',
  }),
  key: setting({
    schema: text(),
    required: true,
    flag: '--key <pem>',
    help: 'Ed25519 private key from `bundle keygen` (required)',
  }),
  out: setting({ schema: text(), required: true, flag: '--out <file>', help: 'bundle file to write (required)' }),
  fleet: setting({
    schema: repeated(levelName, 'fleet'),
    required: true,
    flag: '--fleet <name>',
    read: 'list',
    help: 'a fleet whose devices may install it (repeatable; at least one)',
  }),
  target: setting({
    schema: repeated(TargetPattern, 'target pattern (* for any)'),
    required: true,
    flag: '--target <pattern>',
    read: 'list',
    help: 'a target it runs on: orin-nano-*/jp6.*/trt10.3, * for any (repeatable; at least one)',
  }),
  expires: setting({
    schema: text(),
    required: true,
    flag: '--expires <when>',
    help: 'devices refuse it after: a duration (90m, 12h, 30d, 8w) or a date (2026-12-31) (required)',
  }),
  minAgentVersion: setting({
    schema: AgentVersion,
    default: FIRST_BOUND_AGENT_VERSION,
    flag: '--min-agent-version <v>',
    help: 'the oldest setokim-edge that may install it',
  }),
  engines: setting({
    schema: z.array(z.string().min(1)),
    flag: '--engines <dirs...>',
    help: "prebuilt engines, one directory per target (what `export engine` wrote on a device of it); a device unpacks only its own target's",
  }),
  progress: progressSetting,
});

const verifySettings = group({ pubkey: pubkeySetting, progress: progressSetting });

const installSettings = group({
  store,
  pubkey: pubkeySetting,
  fleet: fleetSetting(
    { optional: true },
    "this device's: bundles signed for other fleets are refused (format 2 needs it)",
  ),
  allowUnbound: setting({
    schema: z.boolean(),
    default: false,
    flag: '--allow-unbound',
    help: 'also install a format-1 bundle, which signs no fleet, target or expiry',
  }),
  maxReleaseJump: setting({
    schema: wholeNumber(1),
    flag: '--max-release-jump <n>',
    help: 'refuse a release more than n above the committed one (default: no limit)',
  }),
  canaryImage: setting({
    schema: z.string().min(1),
    flag: '--canary-image <file>',
    help: 'image for the health-check query (default: a generated gradient)',
  }),
  backend: setting({
    schema: z.string().min(1),
    flag: '--backend <name>',
    help: 'run the health check on this backend only (default: the one that will serve: tensorrt once engines are ready)',
  }),
  reserveMib: setting({
    schema: wholeNumber(0),
    flag: '--reserve-mib <n>',
    help: `free space to leave after unpacking (default ${DEFAULT_RESERVE_BYTES / 2 ** 20})`,
  }),
  healthTimeout: setting({
    schema: wholeNumber(1),
    flag: '--health-timeout <s>',
    help: 'seconds the canary query may take (default 120)',
  }),
  engines: setting({
    schema: z.boolean(),
    default: true,
    flag: '--no-engines',
    help: 'no engine step: serve the set on ONNX Runtime (no engine is checked or built)',
  }),
  buildTimeout: setting({
    schema: wholeNumber(1),
    flag: '--build-timeout <s>',
    help: 'seconds one engine build may take before it is cancelled (default 7200)',
  }),
  workspaceMib: setting({
    schema: wholeNumber(1),
    flag: '--workspace-mib <n>',
    help: 'TensorRT builder workspace limit for engines built here (default 1024; lower it on 8 GB boards)',
  }),
  progress: progressSetting,
});

const storeSettings = group({ store });

export function registerBundle(program: Command): Command {
  const cmd = program
    .command('bundle')
    .description('signed model-set bundles: keygen, create, verify, install on a device, recover, status');

  const keygen = cmd
    .command('keygen')
    .description(
      'make an Ed25519 key pair: bundle-signing.key.pem (keep it on the build machine) and bundle-signing.pub.pem (give it to devices)',
    );
  registerFlags(keygen, keygenSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(keygenSettings, raw, 'bundle keygen');
    const k = await generateKeys(o.out);
    process.stdout.write(`key ${k.keyId}\nprivate: ${k.privatePath}\npublic: ${k.publicPath}\n`);
  });

  const create = cmd.command('create').description('bundle a model set into one signed file');
  registerFlags(create, createSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(createSettings, raw, 'bundle create');
    const own = path.join(o.models, ENGINES_DIR);
    if (
      await stat(own).then(
        () => true,
        () => false,
      )
    )
      process.stderr.write(`note: ${own} is left out: engines travel per target (--engines DIR)\n`);
    const now = new Date();
    const notAfter = parseExpiry(o.expires, now).toISOString();
    const compatibility = { fleets: o.fleet, targets: o.target, notAfter, minAgentVersion: o.minAgentVersion };
    const key = await loadPrivateKey(o.key);
    const { models, release, out } = o;
    const m = await withProgressBar('bundle', o.progress, (bar) =>
      createBundle({
        models,
        release,
        key,
        out,
        compatibility,
        createdAt: now,
        onProgress: bar.onProgress,
        ...(o.engines ? { engines: o.engines } : {}),
      }),
    );
    const files = [...m.files, ...engineGroupsOf(m).flatMap((g) => g.files)];
    const mib = (files.reduce((a, f) => a + f.size, 0) / 2 ** 20).toFixed(1);
    const what = `${m.modelSetId} release ${m.release}, ${m.files.length} files, ${mib} MiB, signed by ${m.keyId}`;
    process.stdout.write(`${o.out}: ${what}; ${describeBinding(m)}\n`);
  });

  const verify = cmd
    .command('verify <file>')
    .description("check a bundle's signature and every file's sha256 without installing it");
  registerFlags(verify, verifySettings).action(async (file: string, raw: Record<string, unknown>) => {
    const o = parseCommandSettings(verifySettings, raw, 'bundle verify');
    const pubkey = await loadPublicKey(o.pubkey);
    const m = await withProgressBar('verify', o.progress, (bar) => verifyBundle(file, pubkey, bar.onProgress));
    const what = `${m.modelSetId} release ${m.release}, created ${m.createdAt}, ${m.files.length} files, signed by ${m.keyId}`;
    process.stdout.write(`${file}: OK: ${what}; ${describeBinding(m)}\n`);
  });

  const install = cmd
    .command('install <file>')
    .description(
      'install a bundle into a device model store: verify, stage, activate, canary query, commit; roll back on any failure',
    );
  registerFlags(install, installSettings).action(async (file: string, raw: Record<string, unknown>) => {
    const o = parseCommandSettings(installSettings, raw, 'bundle install');
    const engines = o.engines && {
      ...(o.buildTimeout !== undefined ? { buildTimeoutMs: o.buildTimeout * 1000 } : {}),
      ...(o.workspaceMib !== undefined ? { workspaceBytes: o.workspaceMib * 2 ** 20 } : {}),
      onProgress: engineProgress(o.progress),
    };
    const pubkey = await loadPublicKey(o.pubkey);
    let image: Uint8Array | undefined;
    if (o.canaryImage) {
      try {
        image = new Uint8Array(await readFile(o.canaryImage));
      } catch (err) {
        throw new SetokimError(
          ErrorCodes.BAD_ARGUMENT,
          `cannot read --canary-image ${o.canaryImage}: ${(err as Error).message}`,
          { cause: err },
        );
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
        health: (dir, ctx) =>
          canaryQuery(dir, {
            image,
            backend: o.backend ?? ctx.backend,
            timeoutMs: o.healthTimeout === undefined ? undefined : o.healthTimeout * 1000,
          }),
        engines,
        onProgress: bar.onProgress,
        onStep: (s, detail) => {
          bar.stop();
          process.stderr.write(`[${s}] ${detail}\n`);
        },
      }),
    );
    const on = `canary answered in ${r.health.ms.toFixed(0)} ms on ${r.health.backend}`;
    process.stdout.write(
      `installed ${r.modelSetId} release ${r.release} into ${o.store} (previous: ${r.previous ?? 'none'}); ${on}\n`,
    );
  });

  const recover = cmd
    .command('recover')
    .description('finish or undo an install that a crash or power loss interrupted (install does this first too)');
  registerFlags(recover, storeSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(storeSettings, raw, 'bundle recover');
    const r = await recoverStore(o.store);
    const what =
      r.action === 'none'
        ? 'nothing to recover'
        : `${r.action} release ${r.journal!.release} (${r.journal!.modelSetId}, interrupted after step ${r.journal!.step})`;
    process.stdout.write(`${o.store}: ${what}; active: ${r.active ?? 'none'}\n`);
  });

  const status = cmd
    .command('status')
    .description('the active set, the committed release and any interrupted install of a model store');
  registerFlags(status, storeSettings).action(async (raw: Record<string, unknown>) => {
    const o = parseCommandSettings(storeSettings, raw, 'bundle status');
    const store = new ModelStore(o.store);
    const [active, sets, release, journal] = await Promise.all([
      store.active(),
      store.list(),
      readRelease(o.store),
      readJournal(o.store),
    ]);
    process.stdout.write(
      JSON.stringify({
        store: o.store,
        active,
        release: release?.release ?? null,
        previous: release?.previous ?? null,
        sets,
        interrupted: journal ? { step: journal.step, release: journal.release, modelSetId: journal.modelSetId } : null,
      }) + '\n',
    );
  });
  return cmd;
}
