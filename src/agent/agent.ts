/**
 * The agent: serves queries that arrive over MQTT with a Pipeline, streams the events back, and
 * keeps a retained status with a Last Will. One connection (AgentConnection, connection.ts:
 * reconnects, subscriptions, routing by topic); SIGTERM-style stop() takes no new work, finishes
 * what is in flight, and publishes offline.
 */
import { EventEmitter } from 'node:events';
import type { IPublishPacket, MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError, errorCode, type ErrorCode } from '../errors.js';
import { packageVersion } from '../engine/native.js';
import { TASKS, type Pipeline, type PipelineEvent, type QueryRequest, type Task } from '../pipeline/types.js';
import { Admission, SeenIds } from './admission.js';
import { decodeCancel, encodeStatus, QueryDecoder, type AgentStatus, type WireQuery } from './codec.js';
import type { AgentConfig } from './config.js';
import { DeviceHealth, type HealthSummary } from './health.js';
import { AgentMetrics } from './metrics.js';
import { ReplyStream, ReplyTopics, replyAddress, type ReplyAddress } from './replies.js';
import { AgentConnection, agentSubscriptions } from './connection.js';
import {
  TopicRoutes,
  type SubscribeOptions,
  type TopicHandler,
  type TopicLink,
  type TopicSubscription,
} from '../mqtt/subscriptions.js';
import { deviceTopics, type DeviceTopics } from '../mqtt/topics.js';

export { BROKER_STOP_WAIT_MS, noDelay, within } from './connection.js';

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

/** An unchanged status is still republished every this many status intervals, as a heartbeat. */
export const STATUS_HEARTBEAT_INTERVALS = 12;

/** JPEG, PNG or WebP, by magic bytes: cheap, and catches text sent as an image early. */
function looksLikeImage(b: Uint8Array): boolean {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return true;
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return true;
  return (
    b.length >= 12 &&
    String.fromCharCode(...b.subarray(0, 4)) === 'RIFF' &&
    String.fromCharCode(...b.subarray(8, 12)) === 'WEBP'
  );
}

export interface AgentOptions {
  config: AgentConfig;
  pipeline: Pipeline;
  log?: Logger;
  version?: string;
  /** Counts a prompt's tokens (the model set's tokenizer) for limits.maxPromptTokens. */
  countTokens?: (text: string) => number;
  /** This device's target (detectTarget().id), reported in the retained status. */
  target?: string;
}

export class Agent extends EventEmitter<AgentEvents> implements TopicLink {
  readonly config: AgentConfig;
  readonly topics: DeviceTopics;
  readonly metrics = new AgentMetrics();
  /** Replaced by replacePipeline; a query keeps the Serving it started on (drain, then close). */
  private serving: Serving;
  /** Replaced pipelines not closed yet (stop() waits for them). */
  private readonly retiring = new Set<Promise<void>>();
  private readonly log: Logger;
  private readonly version: string;
  private readonly target?: string;
  private readonly admission: Admission<Ticket>;
  private readonly seen: SeenIds;
  /** Where replies may go (setokim/v1/replies/# and replyTopics): the query and stream services both check it. */
  readonly replyTopics: ReplyTopics;
  private readonly decoder: QueryDecoder;
  private connection?: AgentConnection;
  /** Topics that services beside the queries took with subscribe(): routed by exact topic, never read as queries. */
  private routes?: TopicRoutes;
  private stopping = false;
  private stopped?: Promise<void>;
  private statusTicker?: NodeJS.Timeout;
  /** The load the last published status showed, and when it went out. */
  private published?: { depth: number; inFlight: number; at: number };
  private connects = 0;
  /** tegrastats readings on a Jetson (src/agent/health.ts); absent when turned off. */
  private readonly health?: DeviceHealth;
  /** Fields services add to the retained status (e.g. the stream count). */
  private readonly statusSources: (() => Partial<AgentStatus>)[] = [];
  metricsPort?: number;

  constructor(opts: AgentOptions) {
    super();
    this.config = opts.config;
    this.serving = {
      pipeline: opts.pipeline,
      running: 0,
      ...(opts.countTokens ? { countTokens: opts.countTokens } : {}),
    };
    this.log = opts.log ?? (() => undefined);
    this.version = opts.version ?? packageVersion();
    if (opts.target) this.target = opts.target;
    this.topics = deviceTopics(this.config.fleet, this.config.device);
    this.seen = new SeenIds(this.config.limits.dedupeWindow);
    this.metrics.trackCaches(() => ({ pipeline: this.serving.pipeline, stats: this.serving.pipeline.cacheStats?.() }));
    const h = this.config.health;
    if (h.enabled) {
      const { tegrastats, intervalMs, energyRails } = h;
      this.health = new DeviceHealth({ tegrastats, intervalMs, energyRails, metrics: this.metrics, log: this.log });
    }
    this.replyTopics = new ReplyTopics(this.config.replyTopics);
    const { maxPromptBytes, maxImageBytes } = this.config.limits;
    this.decoder = new QueryDecoder({ maxPromptBytes, maxImageBytes, replyTopic: (t) => this.replyTopics.allows(t) });
    this.admission = new Admission<Ticket>({
      queueSize: this.config.limits.queueSize,
      concurrency: this.config.limits.concurrency,
      run: (t, signal, aborted) => this.runQuery(t, signal, aborted),
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
    this.health?.start();
    try {
      // Reading the TLS files can fail here (BAD_CONFIG): inside the try, like the connect.
      this.connection = new AgentConnection({
        config,
        topics: this.topics,
        subscriptions: agentSubscriptions(this.topics, config.fleetSubscription),
        handlers: {
          query: (payload, packet) => this.onQuery(packet.topic, payload, packet),
          cancel: (payload, packet) => this.onCancel(packet.topic, payload),
        },
        will: () => Buffer.from(encodeStatus(this.status(false))),
        log: this.log,
        metrics: this.metrics,
        onConnected: ({ reconnect, stopping }) => {
          void this.publishStatus();
          if (!stopping) this.emit('ready', { reconnect });
        },
        onOffline: () => this.emit('offline'),
        other: (topic, payload, packet) => this.routes?.dispatch(topic, payload, packet),
      });
      await this.connection.started();
    } catch (err) {
      // A failed start leaves nothing running: the process must be able to exit with the error.
      this.health?.stop();
      await this.connection?.abort();
      await this.metrics.close();
      throw err;
    }
    if (!this.stopping) this.startStatusTicker();
  }

  private get client(): MqttClient | undefined {
    return this.connection?.client;
  }

  private onCancel(topic: string, payload: Buffer): void {
    try {
      const id = decodeCancel(payload);
      if (this.admission.cancel(id)) this.log('info', `cancelled ${id}`);
    } catch (err) {
      this.metrics.errors.inc({ code: errorCode(err) });
      this.log('warn', `ignored a cancel on ${topic}: ${(err as Error).message}`);
    }
  }

  private onQuery(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const receivedAt = Date.now();
    const decoded = this.decoder.decode(payload);
    const salvage = decoded.ok
      ? { id: decoded.query.id, replyTopic: decoded.query.replyTopic, correlation: decoded.query.correlation }
      : decoded.salvage;
    const addressing = replyAddress(packet, salvage, this.replyTopics);
    const address = addressing.address;
    if (!address) {
      const reason = decoded.ok ? addressing.reason : `${decoded.error.message}; ${addressing.reason}`;
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
    const { problem: wrongAddress } = addressing;
    if (wrongAddress) return this.refuse(address, salvage.id, wrongAddress.code, wrongAddress.message);
    const q = decoded.query;
    this.metrics.queryOf(q.task).inc();
    const problem = this.check(q);
    if (problem) return this.refuse(address, q.id, problem.code, problem.message);

    const ticket: Ticket = { id: q.id, request: this.request(q), address, receivedAt };
    const expiry = packet.properties?.messageExpiryInterval;
    const expires = expiry !== undefined ? receivedAt + expiry * 1000 : undefined;
    if (q.deadlineUnixMs !== undefined || expires !== undefined) {
      ticket.deadline = Math.min(q.deadlineUnixMs ?? Infinity, expires ?? Infinity);
    }
    const { request } = ticket;

    switch (this.admission.admit(ticket, receivedAt)) {
      case 'started':
      case 'queued':
        this.emit('query', { id: q.id, task: request.task });
        return;
      case 'busy':
        return this.refuse(
          address,
          q.id,
          ErrorCodes.BUSY,
          `device ${this.config.device} is busy (${this.config.limits.queueSize} queued, ${this.config.limits.concurrency} running); retry later, with a new id, or send to the fleet topic`,
        );
      case 'expired':
        return this.refuse(
          address,
          q.id,
          ErrorCodes.EXPIRED,
          `query ${q.id} arrived after its deadline (or its MQTT message expiry); send it again with a later deadline`,
        );
      case 'closed':
        return this.refuse(
          address,
          q.id,
          ErrorCodes.BUSY,
          `device ${this.config.device} is shutting down; send the query to another device or to the fleet topic`,
        );
      case 'duplicate':
        this.metrics.duplicates.inc();
        return;
    }
  }

  /**
   * The pipeline's request for a query, generation capped by limits.maxTokens. (No object spreads on
   * this path: they cost more than the rest.)
   */
  private request(q: WireQuery): QueryRequest {
    const request: QueryRequest = { id: q.id, task: q.task as Task };
    if (q.prompt !== undefined) request.prompt = q.prompt;
    if (q.image) request.image = q.image;
    if (q.conversation) request.conversation = q.conversation;
    const cap = this.config.limits.maxTokens;
    if (q.generation || cap !== undefined) {
      const generation = Object.assign({}, q.generation);
      if (cap !== undefined) generation.maxTokens = Math.min(generation.maxTokens ?? Infinity, cap);
      request.generation = generation;
    }
    return request;
  }

  /**
   * Cheap checks before a query takes a slot (the sizes were checked as it was decoded); the pipeline
   * does the rest (decoding the image, whether the prompt fits the context).
   */
  private check(q: WireQuery): SetokimError | undefined {
    if (!(TASKS as readonly string[]).includes(q.task)) {
      return new SetokimError(
        ErrorCodes.UNKNOWN_TASK,
        `unknown task "${q.task.slice(0, 64)}"; use one of ${TASKS.join(', ')}`,
      );
    }
    if (q.image && !looksLikeImage(q.image))
      return new SetokimError(ErrorCodes.BAD_IMAGE, 'the image is not JPEG, PNG or WebP');
    const maxPrompt = this.config.limits.maxPromptTokens;
    const countTokens = this.serving.countTokens;
    if (maxPrompt !== undefined && q.prompt && countTokens) {
      const n = countTokens(q.prompt);
      if (n > maxPrompt)
        return new SetokimError(
          ErrorCodes.PROMPT_TOO_LONG,
          `the prompt is ${n} tokens; this device takes at most ${maxPrompt} (limits.maxPromptTokens); shorten it`,
        );
    }
    return undefined;
  }

  private refuse(address: ReplyAddress, id: string, code: ErrorCode, message: string): void {
    this.replyError(address, id, code, message);
  }

  /** The replies of one query; its last one is written at once, with the PUBACK and the rest held with it. */
  private replyStream(address: ReplyAddress): ReplyStream {
    return new ReplyStream(this.client!, address, this.config.device, () => this.connection?.flush());
  }

  private replyError(address: ReplyAddress, id: string, code: ErrorCode, message: string): void {
    if (!this.client) return;
    this.metrics.errors.inc({ code });
    this.replyStream(address).send({ type: 'error', id, code, message });
    this.emit('answered', { id, code });
  }

  private async runQuery(ticket: Ticket, signal: AbortSignal, aborted: Promise<SetokimError>): Promise<void> {
    // Bound here, when the query starts: a replacement never moves a running query.
    const serving = this.serving;
    serving.running++;
    const startedAt = Date.now();
    const stream = this.replyStream(ticket.address);
    let iterator: AsyncIterator<PipelineEvent> | undefined;
    let last: PipelineEvent | undefined;
    try {
      // Inside the try: a pipeline that throws on the call still gets the query its error reply.
      iterator = serving.pipeline.run(ticket.request, { signal })[Symbol.asyncIterator]();
      while (!stream.finished) {
        const step = await Promise.race([iterator.next(), aborted]);
        if (step instanceof SetokimError) {
          last = { type: 'error', id: ticket.id, code: step.code, message: step.message };
        } else if (step.done) {
          last = {
            type: 'error',
            id: ticket.id,
            code: ErrorCodes.INTERNAL,
            message: 'the pipeline ended without done or error; this is a bug, please report it',
          };
        } else {
          last = step.value.id === ticket.id ? step.value : ({ ...step.value, id: ticket.id } as PipelineEvent);
          if (last.type === 'done') last = this.withEnergy(last, startedAt);
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
      const answered: AgentEvents['answered'][0] = { id: ticket.id, modelSetId: serving.pipeline.info.modelSetId };
      if (last?.type === 'error') answered.code = last.code;
      this.emit('answered', answered);
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
   * stopped (docs/FLEET.md, "Wiring into the agent": drain, then switch; never a swap inside an inference). The retained
   * status (and the Last Will for later reconnects) names the new set straight away. Resolves
   * when the old pipeline is closed. A second replace while one drains is safe: each drains and
   * closes the pipeline it replaced. While stopping, `next` is closed unused (the store's
   * active set is served on the next start).
   */
  async replacePipeline(next: Pipeline, opts: ReplaceOptions = {}): Promise<void> {
    if (this.stopping) {
      this.log('info', `not switching to ${next.info.modelSetId}: the agent is stopping`);
      await next
        .close()
        .catch((err: Error) => this.log('warn', `closing ${next.info.modelSetId} failed: ${err.message}`));
      return;
    }
    const old = this.serving;
    this.serving = { pipeline: next, running: 0, ...(opts.countTokens ? { countTokens: opts.countTokens } : {}) };
    const from = old.pipeline.info.modelSetId;
    const to = next.info.modelSetId;
    if (this.connection) this.connection.will = Buffer.from(encodeStatus(this.status(false)));
    void this.publishStatus();
    this.log('info', `serving ${to}; ${old.running} quer${old.running === 1 ? 'y' : 'ies'} finishing on ${from}`);
    this.emit('switched', { from, to, draining: old.running });
    const retired = (async () => {
      if (old.running > 0) await new Promise<void>((resolve) => (old.drained = resolve));
      await old.pipeline
        .close()
        .catch((err: Error) => this.log('warn', `closing the replaced model set ${from} failed: ${err.message}`));
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

  /** The board energy the query took, where power rails are read (a Jetson); the event as it was elsewhere. */
  private withEnergy(done: Extract<PipelineEvent, { type: 'done' }>, startedAt: number): PipelineEvent {
    const mJ = this.health?.energyMj(startedAt, Date.now());
    if (mJ === undefined) return done;
    this.metrics.device().queryEnergy.observe(mJ / 1000);
    return { ...done, energyMj: Math.round(mJ * 10) / 10 };
  }

  private observe(event: PipelineEvent): void {
    if (event.type === 'error') this.metrics.errors.inc({ code: event.code });
    if (event.type !== 'done') return;
    this.metrics.answered.inc();
    for (const [stage, ms] of Object.entries(event.stages)) this.metrics.stageSeconds.observe({ stage }, ms / 1000);
    const decodeMs = event.stages.decode ?? event.totalMs;
    if (event.generatedTokens > 0 && decodeMs > 0)
      this.metrics.tokensPerSecond.observe(event.generatedTokens / (decodeMs / 1000));
  }

  /** Adds fields to the retained status (a service's own counts); refreshStatus() republishes it. */
  addStatusSource(fields: () => Partial<AgentStatus>): void {
    this.statusSources.push(fields);
  }

  /** Republishes the retained status now (a service's counts changed). */
  refreshStatus(): Promise<void> {
    return this.publishStatus();
  }

  private status(online: boolean): AgentStatus {
    const info = this.serving.pipeline.info;
    const extra = online ? Object.assign({}, ...this.statusSources.map((f) => f())) : {};
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
      ...this.healthSummary(online),
      streams: 0,
      maxStreams: 0,
      ...(this.target ? { target: this.target } : {}),
      ...extra,
    };
  }

  /** The device's latest reading for the retained status while online (a Last Will would carry a stale one). */
  private healthSummary(online: boolean): { health?: HealthSummary } {
    const health = online ? this.health?.summary() : undefined;
    return health ? { health } : {};
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
    return new SetokimError(
      ErrorCodes.CANCELLED,
      `device ${this.config.device} shut down before the query finished; send it again`,
    );
  }

  private async drain(graceMs: number): Promise<void> {
    this.stopping = true;
    this.admission.close();
    clearInterval(this.statusTicker);
    this.statusTicker = undefined;
    await this.connection?.takeNoWork();
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
    if ((await Promise.race([this.admission.idle(), graceOver])) === 'timeout') {
      this.log('warn', `in-flight queries still running after ${graceMs} ms; cancelling them`);
      this.admission.abortAll(this.shutdownError());
      await this.admission.idle();
    }
    clearTimeout(timer);
    await Promise.all(this.retiring); // every query has stopped: replaced pipelines close now
    this.health?.stop();
    const published = (await this.connection?.close(() => this.publishStatus())) ?? false;
    await this.metrics.close();
    this.log('info', published ? `stopped; published offline on ${this.topics.status}` : 'stopped');
  }

  /**
   * A service beside the queries (fleet updates) takes an exact topic on the agent's connection
   * (TopicLink, src/mqtt/subscriptions.ts): subscribed now and after every reconnect, its messages
   * go to `handler` only. Call after start(); BROKER_REFUSED when the broker refuses it.
   */
  subscribe(topic: string, handler: TopicHandler, o?: SubscribeOptions): Promise<TopicSubscription> {
    if (!this.client) {
      return Promise.reject(new SetokimError(ErrorCodes.INTERNAL, `Agent.subscribe(${topic}) before start()`));
    }
    this.routes ??= new TopicRoutes(this.client, { listen: false });
    return this.routes.subscribe(topic, handler, o);
  }

  /** Publishes on the agent's connection (a service's messages, e.g. update states). */
  publish(topic: string, payload: string | Buffer, o: { qos: 0 | 1; retain?: boolean }): void {
    if (!this.client) throw new SetokimError(ErrorCodes.INTERNAL, `Agent.publish(${topic}) before start()`);
    this.client.publish(topic, payload, { qos: o.qos, retain: o.retain ?? false });
  }

  /** Tests and benchmarks: the underlying connection. */
  get mqtt(): MqttClient | undefined {
    return this.client;
  }
}
