/**
 * Agent configuration: defaults < file (JSON or YAML) < environment (SETOKIM_*) < flags, validated
 * with zod. Every problem becomes one BAD_CONFIG error that names the setting, its flag and its
 * variable. Each setting is declared once, in `agentSettings`.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { DEFAULT_WORKSPACE_BYTES } from '../engine/engine-builder.js';
import { DEFAULT_BUILD_TIMEOUT_MS } from '../fleet/engines.js';
import { urlPrefixProblem } from '../fleet/policy.js';
import { parseSource } from '../media/spec.js';
import { CACHE_DEFAULTS } from '../pipeline/pipeline.js';
import { modelsSetting, runtimeSettings } from '../pipeline/settings.js';
import { brokerGroup, deviceSetting, fleetSetting } from '../mqtt/connection.js';
import { replyTopicFilter } from '../mqtt/topics.js';
import { DEFAULT_MAX_PROMPT_BYTES } from './codec.js';
import { fromEnv, group, merge, parseSettings, schemaOf, setting, type InputOf, type OutputOf } from '../settings.js';

const port = z.number().int().min(0).max(65535);

/** `name=source`: an allow-list entry of streams.sources. */
const StreamSourceEntry = z
  .string()
  .regex(
    /^[A-Za-z0-9_.-]{1,64}=.+$/,
    'use name=source, e.g. door=rtsp://cam.local/stream1 (name: letters, digits, _ . -)',
  )
  .transform((entry) => {
    const at = entry.indexOf('=');
    return { name: entry.slice(0, at), source: entry.slice(at + 1) };
  })
  .refine(({ source }) => {
    try {
      parseSource(source);
      return true;
    } catch {
      return false;
    }
  }, 'the source must be a file, /dev/videoN, csi://N, rtsp://, http(s)://, rtmp://, udp://, srt:// or test://');
const count = (min: number) => z.number().int().min(min);
/** A power rail as tegrastats names it (VDD_IN), or rails summed with + (VDD_GPU_SOC+VDD_CPU_CV). */
const energyRail = z.string().regex(/^[A-Z][A-Z0-9_]*(\+[A-Z][A-Z0-9_]*)*$/, 'a tegrastats rail, or rails joined by +');

/**
 * Every agent setting, declared once: its schema and default, flag, SETOKIM_* variable and help.
 * The config schema, the variables read, `setokim agent`'s flags and their mapping onto the config
 * are all derived from this tree (src/settings.ts).
 */
export const agentSettings = group(
  {
    fleet: fleetSetting({ required: true }, 'the CLI defaults it to "default"'),
    device: deviceSetting({ required: true }, 'the CLI defaults it to the host name'),
    /**
     * Directory of the model set (e.g. ./models/tiny). With `updates`, the store's active set is
     * served instead whenever it has one (updates survive a restart); `models` is the fallback
     * for a store nothing was installed into yet.
     */
    models: modelsSetting({ optional: true }, 'with --store, served only while the store has no active set'),
    /**
     * Fleet updates (docs/FLEET.md): the model store bundles install into, the public key they must
     * be signed with, and who may make the device fetch what (docs/FLEET.md, "What a job may name").
     */
    updates: group(
      {
        store: setting({
          schema: z.string().min(1),
          required: true,
          flag: '--store <dir>',
          env: 'SETOKIM_STORE',
          help: 'model store: serve its active set and take fleet update jobs into it (with --update-pubkey)',
        }),
        pubkey: setting({
          schema: z.string().min(1),
          required: true,
          flag: '--update-pubkey <pem>',
          env: 'SETOKIM_UPDATE_PUBKEY',
          help: 'public key update bundles (and signed jobs) must be signed with (with --store)',
        }),
        allowUrls: setting({
          schema: z.array(z.string().min(1)),
          default: [],
          flag: '--update-allow-url <prefix>',
          env: 'SETOKIM_UPDATE_ALLOW_URLS',
          read: 'list',
          help: 'URL prefix an update job may name, e.g. https://updates.example/bundles/ (repeatable; none: none may)',
        }),
        allowHttp: setting({
          schema: z.boolean(),
          default: false,
          flag: '--update-allow-http',
          env: 'SETOKIM_UPDATE_ALLOW_HTTP',
          read: 'boolean',
          help: 'let jobs name http:// URLs under the allowed prefixes (otherwise https only)',
        }),
        signedJobs: setting({
          schema: z.boolean(),
          default: false,
          flag: '--update-signed-jobs',
          env: 'SETOKIM_UPDATE_SIGNED_JOBS',
          read: 'boolean',
          help: 'run only jobs signed with --update-pubkey for this device (fleet rollout --sign-key)',
        }),
        jobTimeoutS: setting({
          schema: count(1),
          default: 3_600,
          flag: '--update-job-timeout <s>',
          env: 'SETOKIM_UPDATE_JOB_TIMEOUT',
          read: 'number',
          help: "an update job's total time limit in seconds (download and install)",
        }),
        maxDownloadMib: setting({
          schema: count(1),
          default: 8_192,
          flag: '--update-max-download-mib <n>',
          env: 'SETOKIM_UPDATE_MAX_DOWNLOAD_MIB',
          read: 'number',
          help: 'largest bundle download in MiB (one at a time); a job without a size needs this much free',
        }),
        buildTimeoutS: setting({
          schema: count(1),
          default: DEFAULT_BUILD_TIMEOUT_MS / 1000,
          flag: '--update-build-timeout <s>',
          env: 'SETOKIM_UPDATE_BUILD_TIMEOUT',
          read: 'number',
          help: 'seconds one engine build in an update may take before it is cancelled (ENGINE_BUILD_TIMEOUT, rolled back)',
        }),
        workspaceMib: setting({
          schema: count(1),
          default: DEFAULT_WORKSPACE_BYTES / 2 ** 20,
          flag: '--update-workspace-mib <n>',
          env: 'SETOKIM_UPDATE_WORKSPACE_MIB',
          read: 'number',
          help: 'TensorRT builder workspace limit in MiB for engines an update builds (lower it on 8 GB boards)',
        }),
        maxReleaseJump: setting({
          schema: count(1),
          flag: '--update-max-release-jump <n>',
          env: 'SETOKIM_UPDATE_MAX_RELEASE_JUMP',
          read: 'number',
          help: 'refuse a bundle whose release is more than this above the committed one (RELEASE_JUMP_REFUSED; default: no limit)',
        }),
      },
      {
        optional: true,
        refine: (s) =>
          s.superRefine((u, ctx) => {
            const { allowUrls, allowHttp } = u as { allowUrls: string[]; allowHttp: boolean };
            for (const p of allowUrls) {
              const problem = urlPrefixProblem(p, allowHttp);
              if (problem) ctx.addIssue({ code: 'custom', path: ['allowUrls'], message: problem });
            }
          }),
      },
    ),
    broker: brokerGroup({
      clientId: setting({ schema: z.string().max(128), help: 'MQTT client id (default setokim-<fleet>-<device>)' }),
      keepaliveS: setting({
        schema: z.number().int().min(0).max(65535),
        default: 30,
        help: 'MQTT keepalive in seconds',
      }),
      reconnectMinMs: setting({
        schema: count(10),
        default: 500,
        help: 'first reconnect delay; doubles up to reconnectMaxMs',
      }),
      reconnectMaxMs: setting({ schema: count(10), default: 30_000, help: 'longest reconnect delay' }),
    }),
    /** shared: $share/<fleet>/... (MQTT 5 brokers, mosquitto); plain: every agent gets every fleet
     * query (brokers without shared subscriptions, e.g. aedes, with one agent); off: device only. */
    fleetSubscription: setting({
      schema: z.enum(['shared', 'plain', 'off']),
      default: 'shared',
      flag: '--fleet-subscription <how>',
      env: 'SETOKIM_FLEET_SUBSCRIPTION',
      help: 'shared ($share/<fleet>/...), plain (brokers without shared subscriptions), off',
    }),
    /** Beside setokim/v1/replies/#, where replies may go (MQTT filters; never other setokim/ or $ topics). */
    replyTopics: setting({
      schema: z.array(replyTopicFilter).max(64),
      default: [],
      flag: '--reply-topic <filter>',
      env: 'SETOKIM_REPLY_TOPICS',
      read: 'list',
      help: 'also publish replies to topics matching this MQTT filter, e.g. plant/replies/# (repeatable)',
    }),
    limits: group({
      maxImageBytes: setting({
        schema: count(1024),
        default: 8 * 1024 * 1024,
        flag: '--max-image-bytes <n>',
        env: 'SETOKIM_MAX_IMAGE_BYTES',
        read: 'number',
        help: 'larger images are refused with PAYLOAD_TOO_LARGE',
      }),
      /** Prompts longer than this in UTF-8 bytes are PROMPT_TOO_LONG, measured before they are decoded. */
      maxPromptBytes: setting({
        schema: count(1).max(1 << 20),
        default: DEFAULT_MAX_PROMPT_BYTES,
        flag: '--max-prompt-bytes <n>',
        env: 'SETOKIM_MAX_PROMPT_BYTES',
        read: 'number',
        help: 'longer prompts (UTF-8 bytes) are refused with PROMPT_TOO_LONG before they are decoded',
      }),
      maxTokens: setting({
        schema: count(1),
        flag: '--max-tokens <n>',
        env: 'SETOKIM_MAX_TOKENS',
        read: 'number',
        help: 'cap on new tokens per query',
      }),
      /** Prompts longer than this (in tokens of the model set's tokenizer) are PROMPT_TOO_LONG. */
      maxPromptTokens: setting({
        schema: count(1),
        flag: '--max-prompt-tokens <n>',
        env: 'SETOKIM_MAX_PROMPT_TOKENS',
        read: 'number',
        help: 'longer prompts are refused with PROMPT_TOO_LONG before they take a slot',
      }),
      queueSize: setting({
        schema: count(0),
        default: 16,
        flag: '--queue-size <n>',
        env: 'SETOKIM_QUEUE_SIZE',
        read: 'number',
        help: 'queries waiting at most, beyond which the agent answers BUSY',
      }),
      concurrency: setting({
        schema: z.number().int().min(1).max(64),
        default: 1,
        flag: '--concurrency <n>',
        env: 'SETOKIM_CONCURRENCY',
        read: 'number',
        help: 'queries running at once',
      }),
      dedupeWindow: setting({
        schema: count(1),
        default: 4096,
        help: 'query ids remembered to drop a second delivery',
      }),
    }),
    metrics: group({
      port: setting({
        schema: port,
        default: 9464,
        flag: '--metrics-port <port>',
        env: 'SETOKIM_METRICS_PORT',
        read: 'number',
        help: 'Prometheus metrics on <host>:<port>/metrics (0 = any free port)',
      }),
      host: setting({ schema: z.string(), default: '127.0.0.1', help: 'address the metrics endpoint listens on' }),
      enabled: setting({
        schema: z.boolean(),
        default: true,
        flag: '--no-metrics',
        env: 'SETOKIM_METRICS',
        read: 'boolean',
        help: 'no metrics endpoint',
      }),
    }),
    /** Device health on a Jetson (src/agent/health.ts): tegrastats read every intervalMs; absent elsewhere. */
    health: group({
      enabled: setting({
        schema: z.boolean(),
        default: true,
        flag: '--no-device-health',
        env: 'SETOKIM_DEVICE_HEALTH',
        read: 'boolean',
        help: 'do not run tegrastats (no device health gauges, status summary or energy per query)',
      }),
      tegrastats: setting({
        schema: z.string().min(1),
        default: '/usr/bin/tegrastats',
        flag: '--tegrastats <path>',
        env: 'SETOKIM_TEGRASTATS',
        help: "tegrastats binary (JetPack's path; device health is off where it does not exist)",
      }),
      intervalMs: setting({
        schema: count(100),
        default: 1000,
        flag: '--health-interval-ms <n>',
        env: 'SETOKIM_HEALTH_INTERVAL_MS',
        read: 'number',
        help: 'how often tegrastats prints a reading',
      }),
      energyRails: setting({
        schema: z.array(energyRail).min(1),
        default: ['VDD_IN', 'POM_5V_IN'],
        flag: '--energy-rails <a,b>',
        env: 'SETOKIM_ENERGY_RAILS',
        read: 'list',
        help: 'rails for energy per query: the first tegrastats prints (AGX Orin: VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0)',
      }),
    }),
    /**
     * Video streams clients may start over MQTT (docs/STREAMS.md). Sources come only from this
     * allow-list, `name=source` (a camera, a URL, or a file the operator chose): a client names an
     * entry, never a path or URL of its own. No entries: streams are off (starts are refused).
     */
    streams: group({
      sources: setting({
        schema: z.array(StreamSourceEntry),
        default: [],
        flag: '--stream-source <name=source>',
        env: 'SETOKIM_STREAM_SOURCES',
        read: 'list',
        help: 'a source clients may stream from, as name=source (e.g. door=rtsp://cam/1, desk=/dev/video0); repeat for more',
      }),
      max: setting({
        schema: z.number().int().min(0).max(16),
        default: 1,
        flag: '--max-streams <n>',
        env: 'SETOKIM_MAX_STREAMS',
        read: 'number',
        help: 'streams running at once; more are refused with BUSY',
      }),
      fps: setting({
        schema: z.number().positive().max(60),
        default: 5,
        help: 'frames per second taken from a source; a stream may ask for fewer',
      }),
      leaseMs: setting({
        schema: count(1000),
        default: 30_000,
        help: 'a stream stops unless its client renews it within this (a stream may ask for less)',
      }),
    }),
    /** How the pipeline runs the model set (see createPipeline). */
    pipeline: group({
      ...runtimeSettings,
      /** Vision tokens kept per image for later queries on it (docs/MQTT.md, "Conversations and the caches"). */
      visionCacheBytes: setting({
        schema: count(0),
        default: CACHE_DEFAULTS.visionCacheBytes,
        flag: '--vision-cache-bytes <n>',
        env: 'SETOKIM_VISION_CACHE_BYTES',
        read: 'number',
        help: 'bytes of vision tokens kept per image for later queries on it (0 = off)',
      }),
      /** A conversation with no turn for this long ends (CONVERSATION_UNKNOWN after). */
      conversationIdleMs: setting({
        schema: count(1),
        default: CACHE_DEFAULTS.conversationIdleMs,
        flag: '--conversation-idle-ms <ms>',
        env: 'SETOKIM_CONVERSATION_IDLE_MS',
        read: 'number',
        help: 'a conversation with no turn for this long ends',
      }),
    }),
    /** How long SIGTERM waits for in-flight queries before giving up on them. */
    shutdownGraceMs: setting({
      schema: count(0),
      default: 30_000,
      help: 'how long SIGTERM waits for in-flight queries',
    }),
    statusIntervalMs: setting({
      schema: count(100),
      default: 5_000,
      help: 'how often the retained status is checked for a change (and republished as a heartbeat)',
    }),
  },
  {
    refine: (s) =>
      s.refine(
        (c) => (c as { models?: string }).models !== undefined || (c as { updates?: unknown }).updates !== undefined,
        {
          path: ['models'],
          message:
            'no model set: give models (--models, SETOKIM_MODELS) or a model store to serve from (updates.store and updates.pubkey: --store, --update-pubkey)',
        },
      ),
  },
);

export const agentConfigSchema = schemaOf(agentSettings);

export type AgentConfig = OutputOf<typeof agentSettings>;
export type AgentConfigInput = InputOf<typeof agentSettings>;

type Json = Record<string, unknown>;

/** A config file's settings as written (JSON or YAML), not merged or validated; BAD_CONFIG when it does not read. */
export function readConfigFile(file: string): Json {
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
    throw new SetokimError(
      ErrorCodes.BAD_CONFIG,
      `the config file ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
    );
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new SetokimError(
      ErrorCodes.BAD_CONFIG,
      `the config file ${file} must hold an object (fleet, device, models, broker: {url}, ...).`,
    );
  }
  return data as Json;
}

/** Validates a config object; the error names the first bad setting. */
export function parseAgentConfig(input: unknown, source = 'config'): AgentConfig {
  return parseSettings(agentSettings, agentConfigSchema, input, {
    what: `agent ${source}`,
    hint: '(needs at least fleet, device, models or updates.store, and broker.url; see docs/MQTT.md)',
  });
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
  let data: Json = merge(opts.defaults ?? {}, opts.file ? readConfigFile(opts.file) : {});
  data = merge(data, fromEnv(agentSettings, opts.env ?? process.env));
  if (opts.overrides) data = merge(data, opts.overrides);
  return parseAgentConfig(
    data,
    opts.file ? `configuration (${opts.file} + environment + flags)` : 'configuration (environment + flags)',
  );
}
