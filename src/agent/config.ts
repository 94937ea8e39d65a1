/**
 * Agent configuration: defaults < file (JSON or YAML) < environment (SETOKIM_*) < flags, validated
 * with zod. Every problem becomes one BAD_CONFIG error that names the setting and its source.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { levelName } from '../mqtt/topics.js';

const port = z.number().int().min(0).max(65535);

export const agentConfigSchema = z
  .object({
    fleet: levelName,
    device: levelName,
    /**
     * Directory of the model set (e.g. ./models/tiny). With `updates`, the store's active set is
     * served instead whenever it has one (updates survive a restart); `models` is the fallback
     * for a store nothing was installed into yet.
     */
    models: z.string().min(1).optional(),
    /** Fleet updates (docs/FLEET.md): the model store bundles install into, and the public key they must be signed with. */
    updates: z.object({ store: z.string().min(1), pubkey: z.string().min(1) }).strict().optional(),
    broker: z
      .object({
        url: z.string().regex(/^(mqtts?|wss?|tcp|ssl):\/\//, 'must start with mqtt://, mqtts://, ws:// or wss://'),
        protocolVersion: z.union([z.literal(4), z.literal(5)]).default(5),
        username: z.string().optional(),
        password: z.string().optional(),
        /** Paths of PEM files for mqtts: the CA that signed the broker, and our client certificate. */
        ca: z.string().optional(),
        cert: z.string().optional(),
        key: z.string().optional(),
        rejectUnauthorized: z.boolean().default(true),
        clientId: z.string().max(128).optional(),
        keepaliveS: z.number().int().min(0).max(65535).default(30),
        reconnectMinMs: z.number().int().min(10).default(500),
        reconnectMaxMs: z.number().int().min(10).default(30_000),
      })
      .strict()
      .refine((b) => !b.cert === !b.key, 'broker.cert and broker.key go together'),
    /** shared: $share/<fleet>/... (MQTT 5 brokers, mosquitto); plain: every agent gets every fleet
     * query (brokers without shared subscriptions, e.g. aedes, with one agent); off: device only. */
    fleetSubscription: z.enum(['shared', 'plain', 'off']).default('shared'),
    limits: z
      .object({
        maxImageBytes: z.number().int().min(1024).default(8 * 1024 * 1024),
        maxTokens: z.number().int().min(1).optional(),
        /** Prompts longer than this (in tokens of the model set's tokenizer) are PROMPT_TOO_LONG. */
        maxPromptTokens: z.number().int().min(1).optional(),
        queueSize: z.number().int().min(0).default(16),
        concurrency: z.number().int().min(1).max(64).default(1),
        dedupeWindow: z.number().int().min(1).default(4096),
      })
      .strict()
      .default({ maxImageBytes: 8 * 1024 * 1024, queueSize: 16, concurrency: 1, dedupeWindow: 4096 }),
    metrics: z
      .object({ port: port.default(9464), host: z.string().default('127.0.0.1'), enabled: z.boolean().default(true) })
      .strict()
      .default({ port: 9464, host: '127.0.0.1', enabled: true }),
    /** How the pipeline runs the model set (see createPipeline). */
    pipeline: z
      .object({
        backend: z.string().min(1).optional(),
        threads: z.number().int().min(1).optional(),
        verify: z.boolean().default(true),
        /** Bytes of vision tokens kept per image for later queries on it (0: off; default 64 MiB). */
        visionCacheBytes: z.number().int().min(0).optional(),
        /** A conversation with no turn for this long ends (default 10 minutes). */
        conversationIdleMs: z.number().int().min(1).optional(),
      })
      .strict()
      .default({ verify: true }),
    /** How long SIGTERM waits for in-flight queries before giving up on them. */
    shutdownGraceMs: z.number().int().min(0).default(30_000),
    statusIntervalMs: z.number().int().min(100).default(5_000),
  })
  .strict()
  .refine((c) => c.models !== undefined || c.updates !== undefined, {
    path: ['models'],
    message: 'no model set: give models (--models, SETOKIM_MODELS) or a model store to serve from (updates.store and updates.pubkey: --store, --update-pubkey)',
  });

export type AgentConfig = z.output<typeof agentConfigSchema>;
export type AgentConfigInput = z.input<typeof agentConfigSchema>;

type Json = Record<string, unknown>;

/** SETOKIM_* variables and where they land in the config. */
const ENV: Record<string, { path: string[]; type: 'string' | 'number' | 'boolean' }> = {
  SETOKIM_FLEET: { path: ['fleet'], type: 'string' },
  SETOKIM_DEVICE: { path: ['device'], type: 'string' },
  SETOKIM_MODELS: { path: ['models'], type: 'string' },
  SETOKIM_STORE: { path: ['updates', 'store'], type: 'string' },
  SETOKIM_UPDATE_PUBKEY: { path: ['updates', 'pubkey'], type: 'string' },
  SETOKIM_BROKER: { path: ['broker', 'url'], type: 'string' },
  SETOKIM_MQTT_VERSION: { path: ['broker', 'protocolVersion'], type: 'number' },
  SETOKIM_USERNAME: { path: ['broker', 'username'], type: 'string' },
  SETOKIM_PASSWORD: { path: ['broker', 'password'], type: 'string' },
  SETOKIM_CA: { path: ['broker', 'ca'], type: 'string' },
  SETOKIM_CERT: { path: ['broker', 'cert'], type: 'string' },
  SETOKIM_KEY: { path: ['broker', 'key'], type: 'string' },
  SETOKIM_FLEET_SUBSCRIPTION: { path: ['fleetSubscription'], type: 'string' },
  SETOKIM_MAX_IMAGE_BYTES: { path: ['limits', 'maxImageBytes'], type: 'number' },
  SETOKIM_MAX_TOKENS: { path: ['limits', 'maxTokens'], type: 'number' },
  SETOKIM_MAX_PROMPT_TOKENS: { path: ['limits', 'maxPromptTokens'], type: 'number' },
  SETOKIM_QUEUE_SIZE: { path: ['limits', 'queueSize'], type: 'number' },
  SETOKIM_CONCURRENCY: { path: ['limits', 'concurrency'], type: 'number' },
  SETOKIM_METRICS_PORT: { path: ['metrics', 'port'], type: 'number' },
  SETOKIM_METRICS: { path: ['metrics', 'enabled'], type: 'boolean' },
  SETOKIM_BACKEND: { path: ['pipeline', 'backend'], type: 'string' },
  SETOKIM_THREADS: { path: ['pipeline', 'threads'], type: 'number' },
  SETOKIM_VISION_CACHE_BYTES: { path: ['pipeline', 'visionCacheBytes'], type: 'number' },
  SETOKIM_CONVERSATION_IDLE_MS: { path: ['pipeline', 'conversationIdleMs'], type: 'number' },
};

function setPath(target: Json, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Json;
  }
  node[path[path.length - 1]!] = value;
}

function fromEnv(env: NodeJS.ProcessEnv): Json {
  const out: Json = {};
  for (const [name, { path, type }] of Object.entries(ENV)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    let value: unknown = raw;
    if (type === 'number') {
      value = Number(raw);
      if (!Number.isFinite(value)) throw new SetokimError(ErrorCodes.BAD_CONFIG, `${name}=${raw} is not a number.`);
    } else if (type === 'boolean') {
      if (!/^(1|0|true|false|yes|no)$/i.test(raw)) throw new SetokimError(ErrorCodes.BAD_CONFIG, `${name}=${raw}: use true or false.`);
      value = /^(1|true|yes)$/i.test(raw);
    }
    setPath(out, path, value);
  }
  return out;
}

function readFile(file: string): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `cannot read the config file ${file}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text); // YAML is a superset of JSON
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `the config file ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `the config file ${file} must hold an object (fleet, device, models, broker: {url}, ...).`);
  }
  return data as Json;
}

function merge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? merge(b as Json, v as Json) : v;
  }
  return out;
}

/** Validates a config object; the error names the first bad setting. */
export function parseAgentConfig(input: unknown, source = 'config'): AgentConfig {
  const parsed = agentConfigSchema.safeParse(input);
  if (parsed.success) return parsed.data;
  const lines = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(top level)'}: ${i.message}`);
  throw new SetokimError(
    ErrorCodes.BAD_CONFIG,
    `invalid agent ${source}:\n${lines.join('\n')}\n(needs at least fleet, device, models or updates.store, and broker.url; see docs/MQTT.md)`,
  );
}

export interface LoadConfigOptions {
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Already shaped like the config (the CLI maps its flags onto these paths). */
  overrides?: Json;
  /** Below the file: what the CLI fills in when nothing else says (e.g. fleet "default"). */
  defaults?: Json;
}

export function loadAgentConfig(opts: LoadConfigOptions = {}): AgentConfig {
  let data: Json = merge(opts.defaults ?? {}, opts.file ? readFile(opts.file) : {});
  data = merge(data, fromEnv(opts.env ?? process.env));
  if (opts.overrides) data = merge(data, opts.overrides);
  return parseAgentConfig(data, opts.file ? `configuration (${opts.file} + environment + flags)` : 'configuration (environment + flags)');
}
