/**
 * `setokim agent`: serve a model set over MQTT until SIGTERM or SIGINT, then stop gracefully
 * (no new work, finish in-flight queries, publish offline). Configuration: --config FILE (JSON or
 * YAML), SETOKIM_* variables, and flags, in rising priority.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { Agent, type LogLevel } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { openServingSet, startingModels, startUpdates, type UpdateService } from '../agent/updates.js';
import { loadPublicKey } from '../fleet/keys.js';
import { parseFlags } from '../flags.js';

/**
 * A numeric flag. Only "is it a number" is checked here: ranges and kinds (an integer queue size,
 * MQTT version 4 or 5) belong to the config schema, which names the setting whatever its source.
 */
const num = z
  .string()
  .refine((v) => v.trim() !== '' && Number.isFinite(Number(v)), { error: (issue) => `${String(issue.input)} is not a number` })
  .transform(Number)
  .optional();

/** The flags as commander hands them over: every value a string, --no-x a boolean. */
const AgentFlags = z.object({
  config: z.string().optional(),
  broker: z.string().optional(),
  models: z.string().optional(),
  store: z.string().optional(),
  updatePubkey: z.string().optional(),
  fleet: z.string().optional(),
  device: z.string().optional(),
  mqttVersion: num,
  username: z.string().optional(),
  password: z.string().optional(),
  ca: z.string().optional(),
  cert: z.string().optional(),
  key: z.string().optional(),
  insecure: z.boolean().optional(),
  fleetSubscription: z.string().optional(),
  queueSize: num,
  concurrency: num,
  maxImageBytes: num,
  maxTokens: num,
  maxPromptTokens: num,
  metricsPort: num,
  metrics: z.boolean().optional(),
  backend: z.string().optional(),
  threads: num,
  visionCacheBytes: num,
  conversationIdleMs: num,
  verify: z.boolean().optional(),
  verbose: z.boolean().optional(),
});
type AgentFlags = z.infer<typeof AgentFlags>;

/** Parses the flags (BAD_ARGUMENT naming a bad one) and maps them onto the config's paths. */
export function flagsToConfig(raw: unknown): Record<string, unknown> {
  return mapFlags(parseFlags(AgentFlags, raw, 'agent'));
}

function mapFlags(f: AgentFlags): Record<string, unknown> {
  return {
    fleet: f.fleet,
    device: f.device,
    models: f.models,
    // Only when given: an empty object would read as "updates on, store missing".
    updates: f.store !== undefined || f.updatePubkey !== undefined ? { store: f.store, pubkey: f.updatePubkey } : undefined,
    fleetSubscription: f.fleetSubscription,
    broker: {
      url: f.broker,
      protocolVersion: f.mqttVersion,
      username: f.username,
      password: f.password,
      ca: f.ca,
      cert: f.cert,
      key: f.key,
      rejectUnauthorized: f.insecure ? false : undefined,
    },
    limits: {
      queueSize: f.queueSize,
      concurrency: f.concurrency,
      maxImageBytes: f.maxImageBytes,
      maxTokens: f.maxTokens,
      maxPromptTokens: f.maxPromptTokens,
    },
    metrics: { port: f.metricsPort, enabled: f.metrics === false ? false : undefined },
    pipeline: {
      backend: f.backend,
      threads: f.threads,
      visionCacheBytes: f.visionCacheBytes,
      conversationIdleMs: f.conversationIdleMs,
      verify: f.verify === false ? false : undefined,
    },
  };
}

export function stderrLogger(verbose: boolean) {
  return (level: LogLevel, message: string): void => {
    if (level === 'debug' && !verbose) return;
    process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${message}\n`);
  };
}

export function registerAgent(program: Command): void {
  program
    .command('agent')
    .description('serve a model set over MQTT (queries in, streamed answers out, retained status); see docs/MQTT.md')
    .option('--config <file>', 'configuration file (JSON or YAML); flags and SETOKIM_* variables override it')
    .option('--broker <url>', 'mqtt://host:1883 or mqtts://host:8883 (SETOKIM_BROKER)')
    .option('--models <dir>', 'model set directory (SETOKIM_MODELS); with --store, served only while the store has no active set')
    .option('--store <dir>', 'model store: serve its active set and take fleet update jobs into it (SETOKIM_STORE; with --update-pubkey)')
    .option('--update-pubkey <pem>', 'public key update bundles must be signed with (SETOKIM_UPDATE_PUBKEY; with --store)')
    .option('--fleet <name>', 'fleet name, one topic level (SETOKIM_FLEET; default "default")')
    .option('--device <id>', 'device id, one topic level (SETOKIM_DEVICE; default the host name)')
    .option('--mqtt-version <v>', '5 (default) or 4 for MQTT 3.1.1 brokers')
    .option('--username <name>', 'broker user name')
    .option('--password <secret>', 'broker password (prefer SETOKIM_PASSWORD: flags show in ps)')
    .option('--ca <pem>', 'CA certificate that signed the broker (mqtts)')
    .option('--cert <pem>', 'client certificate (mqtts, with --key)')
    .option('--key <pem>', 'client key (mqtts, with --cert)')
    .option('--insecure', 'do not verify the broker certificate (testing only)')
    .option('--fleet-subscription <how>', 'shared (default, $share/<fleet>/...), plain (brokers without shared subscriptions), off')
    .option('--queue-size <n>', 'queries waiting at most, beyond which the agent answers BUSY (default 16)')
    .option('--concurrency <n>', 'queries running at once (default 1)')
    .option('--max-image-bytes <n>', 'larger images are refused with PAYLOAD_TOO_LARGE (default 8 MiB)')
    .option('--max-tokens <n>', 'cap on new tokens per query')
    .option('--max-prompt-tokens <n>', 'longer prompts are refused with PROMPT_TOO_LONG before they take a slot')
    .option('--metrics-port <port>', 'Prometheus metrics on 127.0.0.1:<port>/metrics (default 9464, 0 = any free port)')
    .option('--no-metrics', 'no metrics endpoint')
    .option('--backend <name>', 'only this backend (onnxruntime-cpu, tensorrt)')
    .option('--threads <n>', 'CPU threads per stage session')
    .option('--vision-cache-bytes <n>', 'vision tokens kept per image (SETOKIM_VISION_CACHE_BYTES; 64 MiB, 0 = off)')
    .option('--conversation-idle-ms <ms>', 'a conversation idle this long ends (SETOKIM_CONVERSATION_IDLE_MS; 600000)')
    .option('--no-verify', 'skip the sha256 check of the model files at start')
    .option('--verbose', 'log every dropped duplicate and other debug lines')
    .action(async (raw: unknown) => {
      const flags = parseFlags(AgentFlags, raw, 'agent');
      const { hostname } = await import('node:os');
      const device = hostname().replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64) || 'device';
      const config = loadAgentConfig({ ...(flags.config ? { file: flags.config } : {}), defaults: { fleet: 'default', device }, overrides: mapFlags(flags) });
      const log = stderrLogger(flags.verbose ?? false);
      // A bad key fails here, before the model set opens and the broker sees us.
      if (config.updates) await loadPublicKey(config.updates.pubkey);
      const models = await startingModels(config, log);
      log('info', `opening the model set ${models}`);
      const opened = await openServingSet(config, models);
      const agent = new Agent({ config, pipeline: opened.pipeline, log, version: process.env.npm_package_version ?? '0.1.0', ...(opened.countTokens ? { countTokens: opened.countTokens } : {}) });
      let updates: UpdateService | undefined;
      let stopping: Promise<void> | undefined;
      let stopped!: () => void;
      const finished = new Promise<void>((resolve) => (stopped = resolve));
      const stop = (signal: string): void => {
        if (stopping) {
          log('warn', `${signal} again: cancelling in-flight queries now`);
          void agent.stop(0);
          return;
        }
        log('info', `${signal}: taking no new work, finishing ${agent.inFlight} in flight and ${agent.queueDepth} queued`);
        // Update jobs first (no switch may start), then the queries.
        stopping = Promise.resolve(updates?.stop())
          .then(() => agent.stop())
          .finally(stopped);
      };
      const onTerm = (): void => stop('SIGTERM');
      const onInt = (): void => stop('SIGINT');
      process.on('SIGTERM', onTerm);
      process.on('SIGINT', onInt);
      try {
        // A signal while start() still waits for an unreachable broker ends the wait too.
        await Promise.race([agent.start(), finished]);
        if (stopping) return await finished;
        if (config.updates) {
          try {
            updates = await startUpdates(agent, { open: (dir) => openServingSet(config, dir), log });
          } catch (err) {
            await agent.stop(0); // e.g. an unreadable public key: leave nothing running
            throw err;
          }
          if (stopping) await updates.stop(); // a signal came while it subscribed
        }
        if (agent.metricsPort) log('info', `metrics on http://${config.metrics.host}:${agent.metricsPort}/metrics`);
        log('info', `serving ${agent.topics.query}${config.fleetSubscription === 'off' ? '' : ` and ${config.fleetSubscription === 'shared' ? agent.topics.sharedFleetQuery : agent.topics.fleetQuery}`}`);
        await finished;
      } finally {
        process.off('SIGTERM', onTerm);
        process.off('SIGINT', onInt);
        // The pipeline serving last (a replaced one was closed when it drained).
        await agent.pipeline.close();
      }
    });
}
