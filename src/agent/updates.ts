/**
 * Fleet updates served by the agent (docs/FLEET.md, "Wiring into the agent"): update jobs on
 * `setokim/v1/<fleet>/<device>/update` run through an UpdateHandler (download, verify, install
 * with a canary, commit or roll back); once a release is committed the agent opens the new set
 * and replacePipeline drains the old one. A failed job leaves the agent serving what it served; so
 * does a committed set it cannot open, and the job's state says so (warning UPDATE_HOOK_FAILED).
 * At start the agent serves the store's active set, after recovering an interrupted install.
 */
import { ModelStore } from '../engine/modelset.js';
import { ErrorCodes, SetokimError, errorCode } from '../errors.js';
import { canaryQuery, loadPublicKey, recoverStore, serveUpdates, UpdateHandler, type HealthCheck, type InstallResult, type UpdateEvent, type UpdateHandlerOptions } from '../fleet/index.js';
import { createPipeline, loadTokenizer } from '../pipeline/index.js';
import type { Pipeline } from '../pipeline/types.js';
import { BROKER_STOP_WAIT_MS, within, type Agent, type Logger } from './agent.js';
import type { AgentConfig } from './config.js';

/** What the agent serves: a pipeline, and its set's prompt counter for limits.maxPromptTokens. */
export interface OpenedSet {
  pipeline: Pipeline;
  countTokens?: (text: string) => number;
}

/** The settings of `o` among `keys` that are set. */
function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Partial<Pick<T, K>> {
  return Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]])) as Partial<Pick<T, K>>;
}

/** Opens a model set directory the way the agent serves it (start, and after an update commits). */
export async function openServingSet(config: AgentConfig, dir: string): Promise<OpenedSet> {
  const pipeline = await createPipeline({
    modelsDir: dir,
    maxInFlight: config.limits.concurrency,
    ...(config.limits.maxTokens !== undefined ? { maxTokens: config.limits.maxTokens } : {}),
    ...(config.pipeline.backend ? { backend: config.pipeline.backend } : {}),
    ...(config.pipeline.threads ? { threads: config.pipeline.threads } : {}),
    ...pick(config.pipeline, ['visionCacheBytes', 'conversationIdleMs']),
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
    throw new SetokimError(ErrorCodes.BAD_CONFIG, 'no model set: give --models (SETOKIM_MODELS) or a model store with --store and --update-pubkey');
  }
  const { store } = config.updates;
  const recovered = await recoverStore(store);
  if (recovered.action !== 'none') {
    log('warn', `model store ${store}: an interrupted install of release ${recovered.journal?.release} (${recovered.journal?.modelSetId}) was ${recovered.action === 'completed' ? 'completed' : 'rolled back'}`);
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
}

export interface UpdateService {
  /** Takes no further jobs (unsubscribes). A job already running finishes on its own; if the process dies first, the next start recovers the store. */
  stop(): Promise<void>;
  /** Resolves when no job runs and no switch to a committed set is under way. */
  idle(): Promise<void>;
  /** A job or a switch is under way. */
  readonly busy: boolean;
}

/** An UpdateHandler whose jobs are tracked from the moment they arrive (serveUpdates calls run). */
class TrackedHandler extends UpdateHandler {
  constructor(
    private readonly track: (p: Promise<unknown>) => void,
    o: UpdateHandlerOptions,
  ) {
    super(o);
  }

  override run(raw: unknown, emit: (e: UpdateEvent) => void): Promise<InstallResult> {
    const p = super.run(raw, emit);
    this.track(p);
    return p;
  }
}

/** Subscribes the agent's connection to its update topic; call after agent.start(). */
export async function startUpdates(agent: Agent, o: UpdateServiceOptions): Promise<UpdateService> {
  const { config } = agent;
  const { log } = o;
  if (!config.updates) throw new SetokimError(ErrorCodes.BAD_CONFIG, 'updates are off: set updates.store and updates.pubkey (--store, --update-pubkey)');
  const client = agent.mqtt;
  if (!client) throw new SetokimError(ErrorCodes.INTERNAL, 'startUpdates before agent.start()');
  const pending = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>) => {
    const settled = p.then(() => undefined, () => undefined);
    pending.add(settled);
    void settled.finally(() => pending.delete(settled));
  };
  const store = new ModelStore(config.updates.store);
  const backend = config.pipeline.backend;
  const handler = new TrackedHandler(track, {
    store: store.root,
    pubkey: await loadPublicKey(config.updates.pubkey),
    health: o.health ?? ((dir) => canaryQuery(dir, backend ? { backend } : {})),
  });

  let stopped = false;
  // Switches run one at a time, in commit order: a slow open must not put an older set back.
  let switches: Promise<void> = Promise.resolve();
  // Rejects when the committed set could not be served: serveUpdates then republishes the job's
  // `committed` state with warning UPDATE_HOOK_FAILED, so the fleet hears the device still serves
  // the old set. The agent keeps serving it either way.
  const switchTo = async (r: InstallResult): Promise<void> => {
    if (stopped) return; // the next start serves the store's active set
    const serving = agent.pipeline.info.modelSetId;
    const fail = (err: unknown, what: string): SetokimError => {
      const message = `release ${r.release} (${r.modelSetId}) is committed but ${what}: ${(err as Error)?.message ?? String(err)}; still serving ${serving}; restart the agent to serve the store's active set`;
      log('error', `[${errorCode(err)}] ${message}`);
      return new SetokimError(errorCode(err), message, { cause: err });
    };
    let opened: OpenedSet;
    try {
      opened = await o.open(store.dirOf(r.modelSetId));
    } catch (err) {
      throw fail(err, 'could not be opened');
    }
    // Swaps at once; the returned promise settles when the old pipeline has drained and closed.
    const replaced = agent.replacePipeline(opened.pipeline, opened.countTokens ? { countTokens: opened.countTokens } : {});
    track(replaced);
    if (agent.pipeline === opened.pipeline) return;
    // Not swapped: the agent is stopping (it closed the new set), or the replace failed before the swap.
    try {
      await replaced;
    } catch (err) {
      await opened.pipeline.close().catch(() => undefined);
      throw fail(err, 'could not be switched to');
    }
  };
  const onCommitted = (r: InstallResult): Promise<void> => {
    const p = switches.then(() => switchTo(r));
    switches = p.catch(() => undefined); // a failed switch does not hold back the next one
    track(p);
    return p;
  };
  const onEvent = (e: UpdateEvent): void => {
    o.onEvent?.(e);
    if (e.done !== undefined && e.state !== 'committed') return log('debug', `update ${e.jobId}: ${e.state} ${e.done}/${e.total}`);
    const what = [e.modelSetId && `${e.modelSetId} release ${e.release}`, e.code, e.message, e.warning && `warning ${e.warning.code}: ${e.warning.message}`].filter(Boolean).join(' ');
    log(e.state === 'failed' || e.state === 'rolled-back' || e.warning ? 'warn' : 'info', `update ${e.jobId}: ${e.state}${what ? ` ${what}` : ''}`);
  };

  const served = await serveUpdates(client, handler, { fleet: config.fleet, device: config.device, onCommitted, onEvent });
  log('info', `taking update jobs on setokim/v1/${config.fleet}/${config.device}/update (store ${store.root})`);
  return {
    stop: async () => {
      stopped = true;
      await within(served.stop(), BROKER_STOP_WAIT_MS); // the broker may be gone at shutdown
      if (pending.size) log('info', 'an update job is still running: it finishes on its own, or the next start recovers the store');
    },
    idle: async () => {
      while (pending.size) await Promise.all(pending);
    },
    get busy() {
      return pending.size > 0;
    },
  };
}
