/**
 * The agent: serves queries that arrive over MQTT with a Pipeline, streams the events back, and
 * keeps a retained status with a Last Will. One connection; reconnects with exponential backoff and
 * subscribes again on every connect (a restarted broker has forgotten us); SIGTERM-style stop()
 * takes no new work, finishes what is in flight, and publishes offline.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError, errorCode, type ErrorCode } from '../errors.js';
import { TASKS, type Pipeline, type PipelineEvent, type QueryRequest, type Task } from '../pipeline/types.js';
import { Admission, SeenIds } from './admission.js';
import { decodeCancel, decodeQuery, encodeStatus, type AgentStatus, type WireQuery } from './codec.js';
import type { AgentConfig } from './config.js';
import { AgentMetrics } from './metrics.js';
import { ReplyStream, replyAddress, type ReplyAddress } from './replies.js';
import { deviceTopics, refusedSubscriptions, type DeviceTopics } from '../mqtt/topics.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Logger = (level: LogLevel, message: string) => void;

export interface AgentEvents {
  /** Connected (first time or again) and subscribed. */
  ready: [{ reconnect: boolean }];
  offline: [];
  /** A query was admitted (started or queued). */
  query: [{ id: string; task: Task }];
  /**
   * A query ended: its last reply (done or error) has been handed to the client library.
   * `modelSetId`: the set of the pipeline it ran on (absent when it was refused before running).
   */
  answered: [{ id: string; code?: ErrorCode; modelSetId?: string }];
  /** replacePipeline: new queries now start on `to`; `draining` queries still run on `from`. */
  switched: [{ from: string; to: string; draining: number }];
  /** The replaced pipeline's last query ended and it was closed. */
  retired: [{ modelSetId: string }];
  /** A message that no reply could be sent for (no reply address). */
  unaddressable: [{ topic: string; reason: string }];
}

interface Ticket {
  id: string;
  deadline?: number;
  request: QueryRequest;
  address: ReplyAddress;
  receivedAt: number;
}

const ABORTED = Symbol('aborted');

/** The pipeline queries start on, with the prompt counter of its set and its running count. */
interface Serving {
  pipeline: Pipeline;
  countTokens?: (text: string) => number;
  running: number;
  /** Set while the pipeline is being replaced: called when its last query has stopped. */
  drained?: () => void;
}

export interface ReplaceOptions {
  /** Counts a prompt's tokens with the new set's tokenizer (limits.maxPromptTokens). */
  countTokens?: (text: string) => number;
}

/** How long stop() waits for the broker at each step (unsubscribe; offline status and DISCONNECT). */
export const BROKER_STOP_WAIT_MS = 2_000;
/** An unchanged status is still republished every this many status intervals, as a heartbeat. */
export const STATUS_HEARTBEAT_INTERVALS = 12;

/** What `p` resolves to, 'failed' if it rejects, or 'timeout' after ms. */
export function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout' | 'failed'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  return Promise.race([p.catch(() => 'failed' as const), late]).finally(() => clearTimeout(timer));
}

/** JPEG, PNG or WebP, by magic bytes: cheap, and catches text sent as an image early. */
function looksLikeImage(b: Uint8Array): boolean {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return true;
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return true;
  return b.length >= 12 && String.fromCharCode(...b.subarray(0, 4)) === 'RIFF' && String.fromCharCode(...b.subarray(8, 12)) === 'WEBP';
}

function readPem(path: string | undefined, what: string): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_CONFIG, `cannot read the ${what} ${path}: ${(err as Error).message}`);
  }
}

/** Replies are small and streamed: without this, Nagle + delayed ACK add ~40 ms per round trip. */
export function noDelay(client: MqttClient): void {
  (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
}

export interface AgentOptions {
  config: AgentConfig;
  pipeline: Pipeline;
  log?: Logger;
  version?: string;
  /** Counts a prompt's tokens (the model set's tokenizer) for limits.maxPromptTokens. */
  countTokens?: (text: string) => number;
}

export class Agent extends EventEmitter<AgentEvents> {
  readonly config: AgentConfig;
  readonly topics: DeviceTopics;
  readonly metrics = new AgentMetrics();
  /** Replaced by replacePipeline; a query keeps the Serving it started on (drain, then close). */
  private serving: Serving;
  /** Replaced pipelines not closed yet (stop() waits for them). */
  private readonly retiring = new Set<Promise<void>>();
  private readonly log: Logger;
  private readonly version: string;
  private readonly admission: Admission<Ticket>;
  private readonly seen: SeenIds;
  private client?: MqttClient;
  private backoffMs: number;
  private stopping = false;
  private stopped?: Promise<void>;
  private statusTicker?: NodeJS.Timeout;
  /** The load the last published status showed, and when it went out. */
  private published?: { depth: number; inFlight: number; at: number };
  private connects = 0;
  metricsPort?: number;

  constructor(opts: AgentOptions) {
    super();
    this.config = opts.config;
    this.serving = { pipeline: opts.pipeline, running: 0, ...(opts.countTokens ? { countTokens: opts.countTokens } : {}) };
    this.log = opts.log ?? (() => undefined);
    this.version = opts.version ?? '0.1.0';
    this.topics = deviceTopics(this.config.fleet, this.config.device);
    this.backoffMs = this.config.broker.reconnectMinMs;
    this.seen = new SeenIds(this.config.limits.dedupeWindow);
    this.metrics.trackCaches(() => ({ pipeline: this.serving.pipeline, stats: this.serving.pipeline.cacheStats?.() }));
    this.admission = new Admission<Ticket>({
      queueSize: this.config.limits.queueSize,
      concurrency: this.config.limits.concurrency,
      run: (t, signal) => this.runQuery(t, signal),
      dropped: (t, reason) => this.replyError(t.address, t.id, reason.code, reason.message),
      changed: () => this.queueChanged(),
    });
  }

  get queueDepth(): number {
    return this.admission.depth;
  }

  get inFlight(): number {
    return this.admission.inFlight;
  }

  /**
   * Connects and resolves once subscribed (it keeps retrying while the broker is unreachable).
   * Rejects with BAD_CONFIG for refused credentials and BROKER_REFUSED for a refused subscription.
   */
  async start(): Promise<void> {
    const { config } = this;
    if (config.metrics.enabled) this.metricsPort = await this.metrics.listen(config.metrics.port, config.metrics.host);
    try {
      await this.connectBroker();
    } catch (err) {
      // A failed start leaves nothing running: the process must be able to exit with the error.
      await this.client?.endAsync(true).catch(() => undefined);
      await this.metrics.close();
      throw err;
    }
    if (!this.stopping) this.startStatusTicker();
  }

  private async connectBroker(): Promise<void> {
    const { config } = this;
    const b = config.broker;
    const options: IClientOptions = {
      protocolVersion: b.protocolVersion,
      clientId: b.clientId ?? `setokim-${config.fleet}-${config.device}`,
      clean: true,
      keepalive: b.keepaliveS,
      reconnectPeriod: b.reconnectMinMs,
      connectTimeout: 10_000,
      resubscribe: false, // we subscribe on every connect ourselves
      will: { topic: this.topics.status, payload: Buffer.from(encodeStatus(this.status(false))), qos: 1, retain: true },
      ...(b.username !== undefined ? { username: b.username } : {}),
      ...(b.password !== undefined ? { password: b.password } : {}),
      ...(b.ca ? { ca: readPem(b.ca, 'CA certificate') } : {}),
      ...(b.cert ? { cert: readPem(b.cert, 'client certificate') } : {}),
      ...(b.key ? { key: readPem(b.key, 'client key') } : {}),
      rejectUnauthorized: b.rejectUnauthorized,
    };
    const client = connect(b.url, options);
    this.client = client;
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
    client.on('connect', () => noDelay(client));
    client.on('close', () => {
      this.metrics.connected.set(0);
      if (this.stopping) return;
      // Exponential backoff with jitter; mqtt.js reads reconnectPeriod each time it schedules.
      client.options.reconnectPeriod = Math.round(this.backoffMs * (0.75 + Math.random() * 0.5));
      this.backoffMs = Math.min(this.backoffMs * 2, b.reconnectMaxMs);
    });
    client.on('offline', () => {
      this.log('warn', `lost the broker ${b.url}; reconnecting with backoff`);
      this.emit('offline');
    });
    client.on('error', (err) => this.log('warn', `mqtt: ${err.message}`));

    await new Promise<void>((resolve, reject) => {
      const onConnect = (): void => {
        if (this.stopping) {
          // A reconnect while stop() drains must not take work again (stop() unsubscribed): say offline only.
          this.metrics.connected.set(1);
          void this.publishStatus();
          resolve();
          return;
        }
        this.subscribeAll().then(
          () => {
            this.backoffMs = b.reconnectMinMs;
            client.options.reconnectPeriod = b.reconnectMinMs;
            this.metrics.connected.set(1);
            const reconnect = this.connects++ > 0;
            this.publishStatus();
            this.log('info', `${reconnect ? 're' : ''}connected to ${b.url} as ${config.fleet}/${config.device}`);
            this.emit('ready', { reconnect });
            resolve();
          },
          (err: Error) => {
            // A subscription the broker refuses (an ACL) will be refused again: fail start() with it.
            if (this.connects === 0 && err instanceof SetokimError) reject(err);
            else this.log('error', `subscribing failed: ${err.message}; will retry on the next connect`);
          },
        );
      };
      client.on('connect', onConnect);
      // Refused credentials will not get better by retrying: fail start() with a clear message.
      client.on('error', (err: Error & { code?: number }) => {
        if (this.connects === 0 && (err.code === 4 || err.code === 5 || err.code === 134 || err.code === 135)) {
          reject(new SetokimError(ErrorCodes.BAD_CONFIG, `the broker ${b.url} refused the credentials (${err.message}); check broker.username, broker.password or the client certificate`));
        }
      });
    });
  }

  /** Subscribes to every topic the agent serves; a refused one is a BROKER_REFUSED naming it. */
  private subscribeAll(): Promise<void> {
    const client = this.client!;
    const t = this.topics;
    const topics: Record<string, { qos: 0 | 1 }> = { [t.query]: { qos: 1 }, [t.cancel]: { qos: 1 }, [t.fleetCancel]: { qos: 1 } };
    if (this.config.fleetSubscription === 'shared') topics[t.sharedFleetQuery] = { qos: 1 };
    if (this.config.fleetSubscription === 'plain') topics[t.fleetQuery] = { qos: 1 };
    return new Promise((resolve, reject) => {
      // The callback, not subscribeAsync: its error keeps only the last reason code, not which topic.
      client.subscribe(topics, (err, _granted, packet) => {
        const refused = refusedSubscriptions(Object.keys(topics), (packet as { granted?: unknown[] } | undefined)?.granted);
        if (refused.length) {
          const shared = this.config.fleetSubscription === 'shared' && refused.some((r) => r.startsWith('$share/'));
          reject(
            new SetokimError(
              ErrorCodes.BROKER_REFUSED,
              `the broker ${this.config.broker.url} refused the subscription to ${refused.join(', ')}; allow this client to subscribe to ${refused.length > 1 ? 'these topics' : 'it'} in the broker's ACL` +
                (shared ? ', or set fleetSubscription to plain (a broker without shared subscriptions) or off' : ''),
            ),
          );
        } else if (err) reject(err);
        else resolve();
      });
    });
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (topic === this.topics.cancel || topic === this.topics.fleetCancel) {
      try {
        const id = decodeCancel(payload);
        if (this.admission.cancel(id)) this.log('info', `cancelled ${id}`);
      } catch (err) {
        this.metrics.errors.inc({ code: errorCode(err) });
        this.log('warn', `ignored a cancel on ${topic}: ${(err as Error).message}`);
      }
      return;
    }
    this.onQuery(topic, payload, packet);
  }

  private onQuery(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const receivedAt = Date.now();
    const decoded = decodeQuery(payload);
    const salvage = decoded.ok ? { id: decoded.query.id, replyTopic: decoded.query.replyTopic, correlation: decoded.query.correlation } : decoded.salvage;
    const address = replyAddress(packet, salvage);
    if (!address) {
      const reason = decoded.ok ? 'the query has no reply address (MQTT 5 Response Topic or reply_topic)' : decoded.error.message;
      this.metrics.unaddressable.inc();
      this.metrics.errors.inc({ code: decoded.ok ? ErrorCodes.BAD_MESSAGE : decoded.error.code });
      this.log('warn', `dropped a message on ${topic} with no reply address (${payload.length} bytes): ${reason}`);
      this.emit('unaddressable', { topic, reason });
      return;
    }
    // A redelivered id is answered once, whether the first copy was served or refused.
    if (salvage.id && this.seen.check(salvage.id)) {
      this.metrics.duplicates.inc();
      this.log('debug', `dropped a second delivery of query ${salvage.id}`);
      return;
    }
    if (!decoded.ok) return this.refuse(address, salvage.id, decoded.error.code, decoded.error.message);
    const q = decoded.query;
    this.metrics.queries.inc({ task: (TASKS as readonly string[]).includes(q.task) ? q.task : 'unknown' });
    const problem = this.check(q);
    if (problem) return this.refuse(address, q.id, problem.code, problem.message);

    const expiry = packet.properties?.messageExpiryInterval;
    const deadlines = [q.deadlineUnixMs, expiry !== undefined ? receivedAt + expiry * 1000 : undefined].filter((d): d is number => d !== undefined);
    const deadline = deadlines.length ? Math.min(...deadlines) : undefined;
    const request: QueryRequest = { id: q.id, task: q.task as Task };
    if (q.prompt !== undefined) request.prompt = q.prompt;
    if (q.image) request.image = q.image;
    if (q.conversation) request.conversation = q.conversation;
    const generation = { ...q.generation };
    if (this.config.limits.maxTokens !== undefined) generation.maxTokens = Math.min(generation.maxTokens ?? Infinity, this.config.limits.maxTokens);
    if (Object.keys(generation).length) request.generation = generation;
    const ticket: Ticket = { id: q.id, request, address, receivedAt, ...(deadline !== undefined ? { deadline } : {}) };

    switch (this.admission.admit(ticket, receivedAt)) {
      case 'started':
      case 'queued':
        this.emit('query', { id: q.id, task: request.task });
        return;
      case 'busy':
        return this.refuse(address, q.id, ErrorCodes.BUSY, `device ${this.config.device} is busy (${this.config.limits.queueSize} queued, ${this.config.limits.concurrency} running); retry later, with a new id, or send to the fleet topic`);
      case 'expired':
        return this.refuse(address, q.id, ErrorCodes.EXPIRED, `query ${q.id} arrived after its deadline (or its MQTT message expiry); send it again with a later deadline`);
      case 'closed':
        return this.refuse(address, q.id, ErrorCodes.BUSY, `device ${this.config.device} is shutting down; send the query to another device or to the fleet topic`);
      case 'duplicate':
        this.metrics.duplicates.inc();
        return;
    }
  }

  /** Cheap checks before a query takes a slot; the pipeline does the rest (decoding, prompt length). */
  private check(q: WireQuery): SetokimError | undefined {
    if (!(TASKS as readonly string[]).includes(q.task)) {
      return new SetokimError(ErrorCodes.UNKNOWN_TASK, `unknown task "${q.task.slice(0, 64)}"; use one of ${TASKS.join(', ')}`);
    }
    const max = this.config.limits.maxImageBytes;
    if (q.image && q.image.length > max) {
      return new SetokimError(ErrorCodes.PAYLOAD_TOO_LARGE, `the image is ${q.image.length} bytes; this device takes at most ${max} (limits.maxImageBytes); resize it first`);
    }
    if (q.image && !looksLikeImage(q.image)) return new SetokimError(ErrorCodes.BAD_IMAGE, 'the image is not JPEG, PNG or WebP');
    const maxPrompt = this.config.limits.maxPromptTokens;
    const countTokens = this.serving.countTokens;
    if (maxPrompt !== undefined && q.prompt && countTokens) {
      const n = countTokens(q.prompt);
      if (n > maxPrompt) return new SetokimError(ErrorCodes.PROMPT_TOO_LONG, `the prompt is ${n} tokens; this device takes at most ${maxPrompt} (limits.maxPromptTokens); shorten it`);
    }
    return undefined;
  }

  private refuse(address: ReplyAddress, id: string, code: ErrorCode, message: string): void {
    this.replyError(address, id, code, message);
  }

  private replyError(address: ReplyAddress, id: string, code: ErrorCode, message: string): void {
    if (!this.client) return;
    this.metrics.errors.inc({ code });
    new ReplyStream(this.client, address, this.config.device).send({ type: 'error', id, code, message });
    this.emit('answered', { id, code });
  }

  private async runQuery(ticket: Ticket, signal: AbortSignal): Promise<void> {
    // Bound here, when the query starts: a replacement never moves a running query.
    const serving = this.serving;
    serving.running++;
    const stream = new ReplyStream(this.client!, ticket.address, this.config.device);
    let iterator: AsyncIterator<PipelineEvent> | undefined;
    const aborted = new Promise<typeof ABORTED>((resolve) => {
      if (signal.aborted) resolve(ABORTED);
      else signal.addEventListener('abort', () => resolve(ABORTED), { once: true });
    });
    let last: PipelineEvent | undefined;
    try {
      // Inside the try: a pipeline that throws on the call still gets the query its error reply.
      iterator = serving.pipeline.run(ticket.request, { signal })[Symbol.asyncIterator]();
      while (!stream.finished) {
        const step = await Promise.race([iterator.next(), aborted]);
        if (step === ABORTED) {
          const reason = signal.reason as SetokimError;
          last = { type: 'error', id: ticket.id, code: errorCode(reason), message: reason.message };
        } else if (step.done) {
          last = { type: 'error', id: ticket.id, code: ErrorCodes.INTERNAL, message: 'the pipeline ended without done or error; this is a bug, please report it' };
        } else {
          last = { ...step.value, id: ticket.id } as PipelineEvent;
        }
        this.observe(last);
        stream.send(last);
      }
    } catch (err) {
      last = { type: 'error', id: ticket.id, code: errorCode(err), message: (err as Error).message };
      this.observe(last);
      stream.send(last);
    } finally {
      this.metrics.querySeconds.observe((Date.now() - ticket.receivedAt) / 1000);
      this.emit('answered', { id: ticket.id, ...(last?.type === 'error' ? { code: last.code } : {}), modelSetId: serving.pipeline.info.modelSetId });
      // The slot is free only once the pipeline has really stopped (it checks the signal).
      await Promise.resolve(iterator?.return?.()).catch(() => undefined);
      if (--serving.running === 0) serving.drained?.();
    }
  }

  /** The pipeline new queries start on. */
  get pipeline(): Pipeline {
    return this.serving.pipeline;
  }

  /**
   * Points new queries (and queued ones, which have not started) at `next` at once; queries
   * already running finish on the old pipeline, which is closed once the last of them has
   * stopped (FIELD.md: drain, then switch; never a swap inside an inference). The retained
   * status (and the Last Will for later reconnects) names the new set straight away. Resolves
   * when the old pipeline is closed. A second replace while one drains is safe: each drains and
   * closes the pipeline it replaced. While stopping, `next` is closed unused (the store's
   * active set is served on the next start).
   */
  async replacePipeline(next: Pipeline, opts: ReplaceOptions = {}): Promise<void> {
    if (this.stopping) {
      this.log('info', `not switching to ${next.info.modelSetId}: the agent is stopping`);
      await next.close().catch((err: Error) => this.log('warn', `closing ${next.info.modelSetId} failed: ${err.message}`));
      return;
    }
    const old = this.serving;
    this.serving = { pipeline: next, running: 0, ...(opts.countTokens ? { countTokens: opts.countTokens } : {}) };
    const from = old.pipeline.info.modelSetId;
    const to = next.info.modelSetId;
    if (this.client) this.client.options.will = { ...this.client.options.will!, payload: Buffer.from(encodeStatus(this.status(false))) };
    void this.publishStatus();
    this.log('info', `serving ${to}; ${old.running} quer${old.running === 1 ? 'y' : 'ies'} finishing on ${from}`);
    this.emit('switched', { from, to, draining: old.running });
    const retired = (async () => {
      if (old.running > 0) await new Promise<void>((resolve) => (old.drained = resolve));
      await old.pipeline.close().catch((err: Error) => this.log('warn', `closing the replaced model set ${from} failed: ${err.message}`));
      this.log('info', `closed the replaced model set ${from}`);
      this.emit('retired', { modelSetId: from });
    })();
    this.retiring.add(retired);
    try {
      await retired;
    } finally {
      this.retiring.delete(retired);
    }
  }

  private observe(event: PipelineEvent): void {
    if (event.type === 'error') this.metrics.errors.inc({ code: event.code });
    if (event.type !== 'done') return;
    this.metrics.answered.inc();
    for (const [stage, ms] of Object.entries(event.stages)) this.metrics.stageSeconds.observe({ stage }, ms / 1000);
    const decodeMs = event.stages.decode ?? event.totalMs;
    if (event.generatedTokens > 0 && decodeMs > 0) this.metrics.tokensPerSecond.observe(event.generatedTokens / (decodeMs / 1000));
  }

  private status(online: boolean): AgentStatus {
    const info = this.serving.pipeline.info;
    return {
      fleet: this.config.fleet,
      device: this.config.device,
      online,
      modelSetId: info.modelSetId,
      backend: info.backend,
      tasks: [...TASKS],
      queueDepth: online ? this.admission.depth : 0,
      inFlight: online ? this.admission.inFlight : 0,
      queueSize: this.config.limits.queueSize,
      concurrency: this.config.limits.concurrency,
      maxImageBytes: this.config.limits.maxImageBytes,
      maxTokens: Math.min(info.maxTokens, this.config.limits.maxTokens ?? Infinity),
      maxContext: info.maxContext,
      updatedUnixMs: Date.now(),
      version: this.version,
    };
  }

  private publishStatus(): Promise<void> {
    const client = this.client;
    if (!client?.connected) return Promise.resolve();
    const status = this.status(!this.stopping);
    this.published = { depth: status.queueDepth, inFlight: status.inFlight, at: status.updatedUnixMs };
    const payload = Buffer.from(encodeStatus(status));
    return client.publishAsync(this.topics.status, payload, { qos: 1, retain: true }).then(
      () => undefined,
      (err: Error) => this.log('warn', `publishing status failed: ${err.message}`),
    );
  }

  private queueChanged(): void {
    this.metrics.queueDepth.set(this.admission.depth);
    this.metrics.inFlight.set(this.admission.inFlight);
  }

  /**
   * Every statusIntervalMs: republish the retained status when the load (queue depth, in flight)
   * differs from the last one published, so a dashboard sees it without one message per query, and
   * every STATUS_HEARTBEAT_INTERVALS intervals regardless, so a stale updated_unix_ms means trouble.
   */
  private startStatusTicker(): void {
    const every = this.config.statusIntervalMs;
    this.statusTicker = setInterval(() => {
      const last = this.published;
      const changed = !last || last.depth !== this.admission.depth || last.inFlight !== this.admission.inFlight;
      if (changed || Date.now() - last.at >= every * STATUS_HEARTBEAT_INTERVALS) void this.publishStatus();
    }, every);
    this.statusTicker.unref(); // never what keeps the process alive
  }

  /**
   * Graceful stop: unsubscribe so the broker sends fleet work elsewhere, answer what still arrives
   * with BUSY, finish in-flight queries (cancelled past graceMs), publish offline, disconnect.
   */
  stop(graceMs = this.config.shutdownGraceMs): Promise<void> {
    // A second call (a second SIGTERM) with no grace cancels what still runs, then joins the first.
    if (this.stopped) {
      if (graceMs <= 0) this.admission.abortAll(this.shutdownError());
      return this.stopped;
    }
    this.stopped = this.drain(graceMs);
    return this.stopped;
  }

  private shutdownError(): SetokimError {
    return new SetokimError(ErrorCodes.CANCELLED, `device ${this.config.device} shut down before the query finished; send it again`);
  }

  private async drain(graceMs: number): Promise<void> {
    this.stopping = true;
    this.admission.close();
    clearInterval(this.statusTicker);
    this.statusTicker = undefined;
    const client = this.client;
    if (client?.connected) {
      const t = this.topics;
      await within(client.unsubscribeAsync([t.query, t.sharedFleetQuery, t.fleetQuery]), BROKER_STOP_WAIT_MS);
    }
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
    if ((await Promise.race([this.admission.idle(), graceOver])) === 'timeout') {
      this.log('warn', `in-flight queries still running after ${graceMs} ms; cancelling them`);
      this.admission.abortAll(this.shutdownError());
      await this.admission.idle();
    }
    clearTimeout(timer);
    await Promise.all(this.retiring); // every query has stopped: replaced pipelines close now
    const published = client ? await this.disconnect(client) : false;
    await this.metrics.close();
    this.log('info', published ? `stopped; published offline on ${this.topics.status}` : 'stopped');
  }

  /**
   * Offline status and a clean DISCONNECT when the broker answers within BROKER_STOP_WAIT_MS;
   * otherwise drop the connection (and the replies still waiting for it): the broker then publishes
   * the Last Will, the same status with online = false, once it notices the connection is gone.
   */
  private async disconnect(client: MqttClient): Promise<boolean> {
    const outcome = client.connected ? await within(this.publishStatus().then(() => client.endAsync()), BROKER_STOP_WAIT_MS) : 'timeout';
    if (outcome !== 'timeout' && outcome !== 'failed') return true;
    this.log('warn', `the broker ${this.config.broker.url} is unreachable: could not publish offline; its Last Will marks ${this.config.device} offline`);
    const ended = client.endAsync(true); // resolves at once when a clean end is already under way...
    client.stream?.destroy(); // ...which this unblocks: it waited for a broker that does not answer
    await within(ended, BROKER_STOP_WAIT_MS);
    return false;
  }

  /** Tests and benchmarks: the underlying connection. */
  get mqtt(): MqttClient | undefined {
    return this.client;
  }
}
