/**
 * Fleet updates served by the agent (docs/FLEET.md, "Wiring into the agent"): update jobs on
 * `setokim/v1/<fleet>/<device>/update`, taken on the agent's own connection (Agent.subscribe), run
 * through an UpdateHandler held to the agent's `updates` settings (allowed URLs, signed jobs, time
 * limit, download cap); once a release is committed the agent opens the new set and
 * replacePipeline drains the old one. A failed job leaves the agent serving what it served; so
 * does a committed set it cannot open, and the job's state says so (warning UPDATE_HOOK_FAILED).
 * At start the agent serves the store's active set, after recovering an interrupted install.
 */
import { ModelStore } from '../engine/modelset.js';
import { ErrorCodes, SetokimError, errorCode } from '../errors.js';
import {
  canaryQuery,
  JobListener,
  loadPublicKey,
  recoverStore,
  UpdateHandler,
  type HealthCheck,
  type InstallResult,
  type UpdateEvent,
} from '../fleet/index.js';
import type { EngineEnvironment } from '../fleet/engine-env.js';
import { createPipeline, loadTokenizer } from '../pipeline/index.js';
import type { Pipeline } from '../pipeline/types.js';
import { BROKER_STOP_WAIT_MS, within, type Agent, type Logger } from './agent.js';
import type { AgentConfig } from './config.js';

/** What the agent serves: a pipeline, and its set's prompt counter for limits.maxPromptTokens. */
export interface OpenedSet {
  pipeline: Pipeline;
  countTokens?: (text: string) => number;
}

/** Opens a model set directory the way the agent serves it (start, and after an update commits). */
export async function openServingSet(config: AgentConfig, dir: string): Promise<OpenedSet> {
  const pipeline = await createPipeline({
    modelsDir: dir,
    maxInFlight: config.limits.concurrency,
    ...(config.limits.maxTokens !== undefined ? { maxTokens: config.limits.maxTokens } : {}),
    ...(config.pipeline.backend ? { backend: config.pipeline.backend } : {}),
    ...(config.pipeline.threads ? { threads: config.pipeline.threads } : {}),
    visionCacheBytes: config.pipeline.visionCacheBytes,
    conversationIdleMs: config.pipeline.conversationIdleMs,
    verify: config.pipeline.verify,
  });
  try {
    const tokenizer = config.limits.maxPromptTokens !== undefined ? await loadTokenizer(dir) : undefined;
    return { pipeline, ...(tokenizer ? { countTokens: (text: string) => tokenizer.encode(text).length } : {}) };
  } catch (err) {
    await pipeline.close();
    throw err;
  }
}

/**
 * The model set directory the agent opens at start. With `updates`: recover the store first (an
 * install cut off by a crash is finished or rolled back), then its active set, else `models`
 * (a store nothing was installed into yet), else BAD_CONFIG. Without: `models`.
 */
export async function startingModels(config: AgentConfig, log: Logger): Promise<string> {
  if (!config.updates) {
    if (config.models) return config.models;
    throw new SetokimError(
      ErrorCodes.BAD_CONFIG,
      'no model set: give --models (SETOKIM_MODELS) or a model store with --store and --update-pubkey',
    );
  }
  const { store } = config.updates;
  const recovered = await recoverStore(store);
  if (recovered.action !== 'none') {
    log(
      'warn',
      `model store ${store}: an interrupted install of release ${recovered.journal?.release} (${recovered.journal?.modelSetId}) was ${recovered.action === 'completed' ? 'completed' : 'rolled back'}`,
    );
  }
  if (recovered.active) return new ModelStore(store).dirOf(recovered.active);
  if (config.models) {
    log('info', `model store ${store} has no active set yet; serving ${config.models} until a bundle is installed`);
    return config.models;
  }
  throw new SetokimError(
    ErrorCodes.BAD_CONFIG,
    `the model store ${store} has no active model set and no --models was given; install a bundle first (setokim bundle install BUNDLE --store ${store} --pubkey PEM) or give --models`,
  );
}

export interface UpdateServiceOptions {
  /** Opens a model set directory the way the agent serves it (same backend, threads, limits). */
  open: (dir: string) => Promise<OpenedSet>;
  log: Logger;
  /** Default: a canary query on config.pipeline.backend. */
  health?: HealthCheck;
  /** Every update event (tests, logs). */
  onEvent?: (e: UpdateEvent) => void;
  /** A download that receives nothing for this long is DOWNLOAD_STALLED (default 30 s; tests). */
  stallMs?: number;
  /** The device the engine step builds for (default: detected here); tests give a target whose builder is a test double. */
  engineEnv?: EngineEnvironment;
}

/** The agent's update service: its job topic, the handler, and the switch to each committed set. */
export class UpdateService {
  /** Switches (and the old sets' drains) under way. */
  private readonly pending = new Set<Promise<unknown>>();
  /** Switches run one at a time, in commit order: a slow open must not put an older set back. */
  private switches: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly listener: JobListener;

  private constructor(
    private readonly agent: Agent,
    private readonly handler: UpdateHandler,
    private readonly store: ModelStore,
    private readonly o: UpdateServiceOptions,
  ) {
    const { fleet, device } = agent.config;
    this.listener = new JobListener(agent, handler, {
      fleet,
      device,
      onCommitted: (r) => this.onCommitted(r),
      onEvent: (e) => this.onEvent(e),
      log: o.log,
    });
  }

  /** Takes the agent's update topic; call after agent.start(). */
  static async start(agent: Agent, o: UpdateServiceOptions): Promise<UpdateService> {
    const { config } = agent;
    const u = config.updates;
    if (!u)
      throw new SetokimError(
        ErrorCodes.BAD_CONFIG,
        'updates are off: set updates.store and updates.pubkey (--store, --update-pubkey)',
      );
    const store = new ModelStore(u.store);
    const backend = config.pipeline.backend;
    const handler = new UpdateHandler({
      store: store.root,
      pubkey: await loadPublicKey(u.pubkey),
      // the target is detected at install time
      binding: { device: { fleet: config.fleet }, maxReleaseJump: u.maxReleaseJump },
      // The canary runs where the set will serve: the configured backend, else the one the
      // install prepared (tensorrt once engines are ready for this device's target).
      health: o.health ?? ((dir, ctx) => canaryQuery(dir, { ...ctx, ...(backend ? { backend } : {}) })),
      // An agent held to another backend serves no engine: none is built for it.
      engines:
        backend && backend !== 'tensorrt'
          ? false
          : {
              buildTimeoutMs: u.buildTimeoutS * 1000,
              workspaceBytes: u.workspaceMib * 2 ** 20,
              ...(o.engineEnv ? { env: o.engineEnv } : {}),
            },
      urls: { allowUrls: u.allowUrls, allowHttp: u.allowHttp },
      jobsFor: { fleet: config.fleet, device: config.device },
      signedJobs: u.signedJobs,
      jobTimeoutMs: u.jobTimeoutS * 1000,
      maxDownloadBytes: u.maxDownloadMib * 2 ** 20,
      log: o.log,
      ...(o.stallMs !== undefined ? { stallMs: o.stallMs } : {}),
    });
    const service = new UpdateService(agent, handler, store, o);
    await service.listener.start();
    const allowed = u.allowUrls.length ? u.allowUrls.join(', ') : 'none (set updates.allowUrls): every job is refused';
    o.log(
      'info',
      `taking update jobs on setokim/v1/${config.fleet}/${config.device}/update (store ${store.root}; URLs allowed: ${allowed})`,
    );
    return service;
  }

  /** A job or a switch is under way. */
  get busy(): boolean {
    return this.handler.busy || this.pending.size > 0;
  }

  /** Resolves when no job runs and no switch to a committed set is under way. */
  async idle(): Promise<void> {
    while (this.busy) {
      await this.handler.idle();
      await Promise.all(this.pending);
    }
  }

  /**
   * Takes no further jobs (unsubscribes); a download under way stops at once, an install not yet
   * committed rolls back at its next step (waited for up to shutdownGraceMs; if the process dies
   * first, the next start recovers the store).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    await within(this.listener.stop(), BROKER_STOP_WAIT_MS); // the broker may be gone at shutdown
    if ((await within(this.handler.stop(), this.agent.config.shutdownGraceMs)) === 'timeout') {
      this.o.log(
        'warn',
        'an update job is still installing: it finishes or rolls back on its own, or the next start recovers the store',
      );
    }
  }

  private track(p: Promise<unknown>): void {
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.pending.add(settled);
    void settled.finally(() => this.pending.delete(settled));
  }

  /**
   * Rejects when the committed set could not be served: the listener then republishes the job's
   * `committed` state with warning UPDATE_HOOK_FAILED, so the fleet hears the device still serves
   * the old set. The agent keeps serving it either way.
   */
  private onCommitted(r: InstallResult): Promise<void> {
    const p = this.switches.then(() => this.switchTo(r));
    this.switches = p.catch(() => undefined); // a failed switch does not hold back the next one
    this.track(p);
    return p;
  }

  private async switchTo(r: InstallResult): Promise<void> {
    if (this.stopped) return; // the next start serves the store's active set
    const serving = this.agent.pipeline.info.modelSetId;
    let opened: OpenedSet;
    try {
      opened = await this.o.open(this.store.dirOf(r.modelSetId));
    } catch (err) {
      throw this.switchFailed(r, err, 'could not be opened', serving);
    }
    // Swaps at once; the returned promise settles when the old pipeline has drained and closed.
    const replaced = this.agent.replacePipeline(
      opened.pipeline,
      opened.countTokens ? { countTokens: opened.countTokens } : {},
    );
    this.track(replaced);
    if (this.agent.pipeline === opened.pipeline) return;
    // Not swapped: the agent is stopping (it closed the new set), or the replace failed before the swap.
    try {
      await replaced;
    } catch (err) {
      await opened.pipeline.close().catch(() => undefined);
      throw this.switchFailed(r, err, 'could not be switched to', serving);
    }
  }

  private switchFailed(r: InstallResult, err: unknown, what: string, serving: string): SetokimError {
    const message = `release ${r.release} (${r.modelSetId}) is committed but ${what}: ${(err as Error)?.message ?? String(err)}; still serving ${serving}; restart the agent to serve the store's active set`;
    this.o.log('error', `[${errorCode(err)}] ${message}`);
    return new SetokimError(errorCode(err), message, { cause: err });
  }

  private onEvent(e: UpdateEvent): void {
    this.o.onEvent?.(e);
    const { log } = this.o;
    if (e.done !== undefined && e.state !== 'committed')
      return log('debug', `update ${e.jobId}: ${e.state} ${e.done}/${e.total}`);
    const what = [
      e.modelSetId && `${e.modelSetId} release ${e.release}`,
      e.code,
      e.message,
      e.warning && `warning ${e.warning.code}: ${e.warning.message}`,
    ]
      .filter(Boolean)
      .join(' ');
    log(
      e.state === 'failed' || e.state === 'rolled-back' || e.warning ? 'warn' : 'info',
      `update ${e.jobId}: ${e.state}${what ? ` ${what}` : ''}`,
    );
  }
}

/** Starts the agent's update service (UpdateService.start). */
export function startUpdates(agent: Agent, o: UpdateServiceOptions): Promise<UpdateService> {
  return UpdateService.start(agent, o);
}
