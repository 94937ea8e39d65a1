/**
 * How every setokim MQTT client reaches the broker (the agent, `setokim query`, `setokim fleet`):
 * the connection settings, declared once with their flags and SETOKIM_* variables, and the
 * mqtt.js options they become (credentials, TLS files read here, so a missing file is one
 * BAD_CONFIG naming it).
 */
import { readFileSync } from 'node:fs';
import type { IClientOptions } from 'mqtt';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import {
  group,
  setting,
  sharedSetting,
  type Group,
  type Leaf,
  type Node,
  type PresenceChoice,
  type PresenceOf,
} from '../settings.js';
import { levelName } from './topics.js';

const BROKER_URL = /^(mqtts?|wss?|tcp|ssl):\/\//;

/** The settings every client shares: where the broker is, who we are to it, and how TLS is checked. */
export const brokerConnectionSettings = {
  url: setting({
    schema: z.string().regex(BROKER_URL, 'must start with mqtt://, mqtts://, ws:// or wss://'),
    required: true,
    flag: '--broker <url>',
    env: 'SETOKIM_BROKER',
    help: 'mqtt://host:1883 or mqtts://host:8883',
  }),
  protocolVersion: setting({
    schema: z.union([z.literal(4), z.literal(5)]),
    default: 5,
    flag: '--mqtt-version <v>',
    env: 'SETOKIM_MQTT_VERSION',
    read: 'number',
    help: '5, or 4 for MQTT 3.1.1 brokers such as the embedded one',
  }),
  username: setting({
    schema: z.string(),
    flag: '--username <name>',
    env: 'SETOKIM_USERNAME',
    help: 'broker user name',
  }),
  password: setting({
    schema: z.string(),
    flag: '--password <secret>',
    env: 'SETOKIM_PASSWORD',
    secret: true,
    help: 'broker password (prefer the variable: flags show in ps)',
  }),
  ca: setting({
    schema: z.string(),
    flag: '--ca <pem>',
    env: 'SETOKIM_CA',
    help: 'CA certificate that signed the broker (mqtts)',
  }),
  cert: setting({
    schema: z.string(),
    flag: '--cert <pem>',
    env: 'SETOKIM_CERT',
    help: 'client certificate (mqtts, with --key)',
  }),
  key: setting({
    schema: z.string(),
    flag: '--key <pem>',
    env: 'SETOKIM_KEY',
    help: 'client key (mqtts, with --cert)',
  }),
  rejectUnauthorized: setting({
    schema: z.boolean(),
    default: true,
    flag: '--insecure',
    switchValue: false,
    help: 'do not verify the broker certificate (testing only)',
  }),
};

/** A certificate without its key (or the other way round) is refused wherever the group sits. */
const certWithKey: Group['refine'] = (s) =>
  s.refine(
    (b) => !(b as { cert?: string }).cert === !(b as { key?: string }).key,
    'broker.cert and broker.key go together (--cert with --key)',
  );

/** The broker group of a client: the shared connection settings plus any of its own. */
export function brokerGroup<E extends Readonly<Record<string, Node>>>(extra: E) {
  return group({ ...brokerConnectionSettings, ...extra }, { refine: certWithKey });
}

/** How a command takes its fleet or device: it must be given, falls back to a default, or may be absent. */
export type LevelPresence = PresenceChoice<string>;

/** One topic-level setting (fleet or device): the same schema, flag and variable in every command. */
function levelSetting<P extends LevelPresence>(
  what: { flag: string; env: string; name: string },
  presence: P,
  note?: string,
): Leaf<typeof levelName, PresenceOf<P>> {
  const help = `${what.name}, one MQTT topic level${note ? ` (${note})` : ''}`;
  return sharedSetting({ schema: levelName, flag: what.flag, env: what.env, help }, presence);
}

/**
 * `--fleet` (SETOKIM_FLEET), declared once for the agent (its own fleet), `setokim query` and
 * `setokim fleet` (the fleet they address) and `bundle install` (the device's fleet); `note` says
 * what the command does without it.
 */
export const fleetSetting = <P extends LevelPresence>(presence: P, note?: string) =>
  levelSetting({ flag: '--fleet <name>', env: 'SETOKIM_FLEET', name: 'fleet name' }, presence, note);

/** `--device` (SETOKIM_DEVICE), declared once for the agent (its own id) and `setokim query` (the device asked). */
export const deviceSetting = <P extends LevelPresence>(presence: P, note?: string) =>
  levelSetting({ flag: '--device <id>', env: 'SETOKIM_DEVICE', name: 'device id' }, presence, note);

export interface BrokerConnection {
  url: string;
  protocolVersion: 4 | 5;
  username?: string | undefined;
  password?: string | undefined;
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  rejectUnauthorized: boolean;
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `cannot read the ${what} ${path}: ${(err as Error).message}`);
  }
}

/** What a client program (setokim query, the stream client) connects with: credentials and TLS as values, not paths. */
export interface ClientConnectOptions extends Pick<
  IClientOptions,
  'username' | 'password' | 'ca' | 'cert' | 'key' | 'rejectUnauthorized'
> {
  url: string;
  protocolVersion?: 4 | 5;
  clientId?: string;
}

/** The mqtt.js options a client program starts from (its own additions, such as a will, go on top). */
export function clientOptions(o: ClientConnectOptions, clientId: string): IClientOptions {
  return {
    protocolVersion: o.protocolVersion ?? 5,
    clientId,
    clean: true,
    reconnectPeriod: 500,
    connectTimeout: 10_000,
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
    ...(o.ca ? { ca: o.ca } : {}),
    ...(o.cert ? { cert: o.cert } : {}),
    ...(o.key ? { key: o.key } : {}),
    ...(o.rejectUnauthorized !== undefined ? { rejectUnauthorized: o.rejectUnauthorized } : {}),
  };
}

/** The mqtt.js options for credentials and TLS (PEM files read now: BAD_CONFIG naming one that cannot be read). */
export function credentialOptions(b: BrokerConnection): IClientOptions {
  return {
    protocolVersion: b.protocolVersion,
    rejectUnauthorized: b.rejectUnauthorized,
    ...(b.username !== undefined ? { username: b.username } : {}),
    ...(b.password !== undefined ? { password: b.password } : {}),
    ...(b.ca ? { ca: readPem(b.ca, 'CA certificate') } : {}),
    ...(b.cert ? { cert: readPem(b.cert, 'client certificate') } : {}),
    ...(b.key ? { key: readPem(b.key, 'client key') } : {}),
  };
}
