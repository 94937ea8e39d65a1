/**
 * The agent configuration a device boots with: the operator's --config with the kit's paths in it
 * (the store and public key the kit installs, TLS files copied into /etc/setokim/tls) and, with
 * --devices, each board's id, fleet, broker and client certificate. Each result is validated with
 * the agent's own parseAgentConfig, and every key file is checked (readable, a certificate that
 * matches its key, not the bundle-signing key), before the kit writes anything.
 */
import { createPrivateKey, createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { parseAgentConfig } from '../../src/agent/config.js';
import { ErrorCodes, SetokimError, type ErrorCode } from '../../src/errors.js';
import { keyIdOf } from '../../src/fleet/keys.js';
import { merge } from '../../src/settings.js';
import type { DeviceEntry } from './devices.js';
import { DEVICE } from './layout.js';

type Json = Record<string, unknown>;

/** One file a device's overlay holds. */
export interface OverlayFile {
  /** Absolute path on the device. */
  path: string;
  /** Copied from this file on the build machine, or written from `text`. */
  from?: string;
  text?: string;
  mode: number;
  /** Secrets belong to the service user (apply-to-rootfs.sh and the package's postinst chown them). */
  owner: 'root' | 'service';
}

export interface DeviceSetup {
  /** The device id, or undefined for the one configuration of a kit without --devices. */
  id?: string;
  /** Its fleet: the bundle committed into the kit's store must be signed for it. */
  fleet: string;
  files: OverlayFile[];
}

const TLS = { ca: `${DEVICE.tlsDir}/ca.pem`, cert: `${DEVICE.tlsDir}/client.pem`, key: `${DEVICE.tlsDir}/client.key` };

interface Source {
  /** Where a problem is reported: the config file, or devices.csv and its line. */
  where: string;
  code: ErrorCode;
}

function read(file: string, what: string, src: Source): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new SetokimError(src.code, `${src.where}: cannot read the ${what} ${file}: ${(err as Error).message}`);
  }
}

/** The client certificate and key: both readable, the key the certificate's, and not the bundle-signing key. */
function checkClientPair(certFile: string, keyFile: string, signing: KeyObject, src: Source): void {
  const certPem = read(certFile, 'client certificate', src);
  const keyPem = read(keyFile, 'client key', src);
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new SetokimError(src.code, `${src.where}: ${certFile} is not a PEM certificate (${(err as Error).message})`);
  }
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new SetokimError(src.code, `${src.where}: ${keyFile} is not a PEM private key (${(err as Error).message})`);
  }
  if (keyIdOf(createPublicKey(key)) === keyIdOf(signing)) {
    throw new SetokimError(
      src.code,
      `${src.where}: ${keyFile} is the bundle-signing private key; it never leaves the build machine: give the ` +
        `device its own client key`,
    );
  }
  if (!cert.checkPrivateKey(key))
    throw new SetokimError(
      src.code,
      `${src.where}: ${keyFile} is not the key of ${certFile} (${cert.subject.replace(/\n/g, ', ')})`,
    );
}

function checkCa(file: string, src: Source): void {
  try {
    new X509Certificate(read(file, 'broker CA certificate', src));
  } catch (err) {
    if (err instanceof SetokimError) throw err;
    throw new SetokimError(src.code, `${src.where}: ${file} is not a PEM certificate (${(err as Error).message})`);
  }
}

/** Settings the kit decides: a config that says otherwise is refused rather than silently changed. */
function refuseConflicts(base: Json, configFile: string): void {
  const conflict = (msg: string) => new SetokimError(ErrorCodes.BAD_CONFIG, `${configFile}: ${msg}`);
  if (base.models !== undefined) {
    throw conflict(
      `models (${String(base.models)}) names a directory on this machine; a flashed device serves the bundle from ` +
        `its store ${DEVICE.store}: remove models`,
    );
  }
  const u = (base.updates ?? {}) as Json;
  if (u.store !== undefined && u.store !== DEVICE.store)
    throw conflict(
      `updates.store is ${String(u.store)}; the kit installs the bundle into ${DEVICE.store}: ` +
        'remove it or set it to that',
    );
  if (u.pubkey !== undefined && u.pubkey !== DEVICE.pubkey)
    throw conflict(
      `updates.pubkey is ${String(u.pubkey)}; the kit installs the key as ${DEVICE.pubkey}: ` +
        'remove it or set it to that',
    );
}

/**
 * The overlay files of one configuration: agent.yaml and its TLS files. `device` is a devices.csv
 * row (its fleet, id, broker and client pair win over the base config's).
 */
export function deviceSetup(
  base: Json,
  configFile: string,
  signing: KeyObject,
  device?: DeviceEntry,
  csv?: string,
): DeviceSetup {
  refuseConflicts(base, configFile);
  const fromCsv: Source = { where: `${csv}: line ${device?.line}`, code: ErrorCodes.BAD_DEVICE_LIST };
  const fromConfig: Source = { where: configFile, code: ErrorCodes.BAD_CONFIG };
  const broker = (base.broker ?? {}) as Json;
  const files: OverlayFile[] = [];
  const over: Json = { updates: { store: DEVICE.store, pubkey: DEVICE.pubkey }, broker: {} };
  const overBroker = over.broker as Json;
  if (typeof broker.ca === 'string') {
    checkCa(broker.ca, fromConfig);
    files.push({ path: TLS.ca, from: broker.ca, mode: 0o644, owner: 'root' });
    overBroker.ca = TLS.ca;
  }
  const pair =
    device?.cert && device.key
      ? { cert: device.cert, key: device.key, src: fromCsv }
      : typeof broker.cert === 'string' && typeof broker.key === 'string'
        ? { cert: broker.cert, key: broker.key, src: fromConfig }
        : undefined;
  if (pair) {
    checkClientPair(pair.cert, pair.key, signing, pair.src);
    files.push(
      { path: TLS.cert, from: pair.cert, mode: 0o600, owner: 'service' },
      { path: TLS.key, from: pair.key, mode: 0o600, owner: 'service' },
    );
    Object.assign(overBroker, { cert: TLS.cert, key: TLS.key });
  }
  if (device) {
    Object.assign(over, { fleet: device.fleet, device: device.device });
    overBroker.url = device.broker;
  }
  const config = merge(base, over);
  let fleet: string;
  try {
    fleet = parseAgentConfig(
      config,
      device
        ? `configuration for ${device.device} (${configFile} + ${csv} line ${device.line})`
        : `configuration ${configFile}`,
    ).fleet;
  } catch (err) {
    if (err instanceof SetokimError)
      throw new SetokimError(ErrorCodes.BAD_CONFIG, `the agent would refuse this: ${err.message}`);
    throw err;
  }
  const header =
    `# ${DEVICE.config}: written by setokim flash-kit${device ? ` for ${device.device}` : ''}; the ` +
    `agent reads it (setokim agent --config).\n`;
  files.push({ path: DEVICE.config, text: header + stringify(config), mode: 0o600, owner: 'service' });
  return { ...(device ? { id: device.device } : {}), fleet, files };
}
