/**
 * `setokim agent`: serve a model set over MQTT until SIGTERM or SIGINT, then stop gracefully
 * (no new work, finish in-flight queries, publish offline). Configuration: --config FILE (JSON or
 * YAML), SETOKIM_* variables, and flags, in rising priority.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { Agent, type LogLevel } from '../agent/agent.js';
import { agentSettings, loadAgentConfig } from '../agent/config.js';
import { openServingSet, startingModels, startUpdates, type UpdateService } from '../agent/updates.js';
import { SystemdNotifier } from '../agent/watchdog.js';
import { startStreams, type StreamService } from '../agent/streams.js';
import { describeTarget, detectTarget } from '../engine/target.js';
import { loadPublicKey } from '../fleet/keys.js';
import { redactUrl } from '../redact.js';
import { fromFlags, group, parseCommandSettings, registerFlags, setting } from '../settings.js';

/** The flags of `setokim agent` beside its settings: the config file and log verbosity. */
const commandSettings = group({
  config: setting({
    schema: z.string().min(1),
    flag: '--config <file>',
    help: 'configuration file (JSON or YAML); flags and SETOKIM_* variables override it',
  }),
  verbose: setting({
    schema: z.boolean(),
    default: false,
    flag: '--verbose',
    help: 'log every dropped duplicate and other debug lines',
  }),
});

/** Commander's options mapped onto the config's paths (BAD_ARGUMENT naming a flag whose value does not read). */
export function flagsToConfig(raw: Record<string, unknown>): Record<string, unknown> {
  return fromFlags(agentSettings, raw, 'agent');
}

export function stderrLogger(verbose: boolean) {
  return (level: LogLevel, message: string): void => {
    if (level === 'debug' && !verbose) return;
    process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${message}\n`);
  };
}

export function registerAgent(program: Command): void {
  const cmd = program
    .command('agent')
    .description('serve a model set over MQTT (queries in, streamed answers out, retained status); see docs/MQTT.md');
  registerFlags(registerFlags(cmd, commandSettings), agentSettings).action(async (raw: Record<string, unknown>) => {
    const flags = parseCommandSettings(commandSettings, raw, 'agent');
    const { hostname } = await import('node:os');
    const device =
      hostname()
        .replace(/[^A-Za-z0-9_.-]/g, '-')
        .slice(0, 64) || 'device';
    const config = loadAgentConfig({
      ...(flags.config ? { file: flags.config } : {}),
      defaults: { fleet: 'default', device },
      overrides: flagsToConfig(raw),
    });
    const log = stderrLogger(flags.verbose);
    // A bad key fails here, before the model set opens and the broker sees us.
    if (config.updates) await loadPublicKey(config.updates.pubkey);
    const models = await startingModels(config, log);
    log('info', `opening the model set ${models}`);
    const opened = await openServingSet(config, models);
    const target = await detectTarget();
    log('info', `target ${describeTarget(target)}`);
    const agent = new Agent({
      config,
      pipeline: opened.pipeline,
      log,
      target: target.id,
      ...(opened.countTokens ? { countTokens: opened.countTokens } : {}),
    });
    // Under systemd (Type=notify, WatchdogSec=): ready once the set is open; the broker may come and go.
    const systemd = SystemdNotifier.fromEnv({ log });
    systemd?.ready(`serving ${opened.pipeline.info.modelSetId}; connecting to ${redactUrl(config.broker.url)}`);
    systemd?.startWatchdog();
    agent.on('ready', ({ reconnect }) => {
      const set = agent.pipeline.info.modelSetId;
      systemd?.status(`serving ${set}; ${reconnect ? 're' : ''}connected to ${redactUrl(config.broker.url)}`);
    });
    let updates: UpdateService | undefined;
    let streams: StreamService | undefined;
    let stopping: Promise<void> | undefined;
    let stopped!: () => void;
    const finished = new Promise<void>((resolve) => (stopped = resolve));
    const stop = (signal: string): void => {
      if (stopping) {
        log('warn', `${signal} again: cancelling in-flight queries now`);
        void agent.stop(0);
        return;
      }
      log(
        'info',
        `${signal}: taking no new work, finishing ${agent.inFlight} in flight and ${agent.queueDepth} queued`,
      );
      systemd?.stopping(`${signal}: finishing ${agent.inFlight} in flight and ${agent.queueDepth} queued`);
      // Update jobs first (no switch may start), then the streams, then the queries.
      stopping = Promise.resolve(updates?.stop())
        .then(() => streams?.stop())
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
      try {
        streams = await startStreams(agent, { log });
      } catch (err) {
        await agent.stop(0);
        throw err;
      }
      if (stopping) await streams.stop(); // a signal came while it subscribed
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
      log(
        'info',
        `serving ${agent.topics.query}${config.fleetSubscription === 'off' ? '' : ` and ${config.fleetSubscription === 'shared' ? agent.topics.sharedFleetQuery : agent.topics.fleetQuery}`}`,
      );
      await finished;
    } finally {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      systemd?.close();
      // The pipeline serving last (a replaced one was closed when it drained).
      await agent.pipeline.close();
    }
  });
}
