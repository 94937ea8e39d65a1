/**
 * Video streams served by the agent (docs/STREAMS.md). On the agent's connection it takes
 *   setokim/v1/<fleet>/<device>/stream/start   StreamStart: a source from the allow-list, a prompt, a rate
 *   .../stream/stop, .../stream/renew          StreamControl naming the stream
 *   setokim/v1/<fleet>/stream/stop             StreamControl naming an owner: a client's Last Will
 * and publishes each stream's StreamEvents to its reply address. Streams count in the retained
 * status (streams, max_streams) and against streams.max (BUSY beyond it). A stream whose client
 * stops renewing its lease, or whose client's Last Will arrives (MQTT 5: after the will delay, so a
 * quick reconnect keeps it), is stopped. Bad requests get one coded error; queries go on either way.
 */
import type { IPublishPacket, MqttClient } from 'mqtt';
import { ErrorCodes, SetokimError, errorCode, type ErrorCode } from '../errors.js';
import { FrameSource } from '../media/source.js';
import { refusedSubscriptions, streamTopics, type StreamTopics } from '../mqtt/topics.js';
import type { LocalPipeline } from '../pipeline/pipeline.js';
import { meanColour, StreamSession } from '../pipeline/stream/index.js';
import type { Pipeline } from '../pipeline/types.js';
import { BROKER_STOP_WAIT_MS, within, type Agent, type Logger } from './agent.js';
import type { AgentConfig } from './config.js';
import { replyAddress, type ReplyAddress } from './replies.js';
import {
  decodeStreamControl,
  decodeStreamStart,
  encodeStreamEvent,
  type OutgoingStreamEvent,
  type WireStreamStart,
} from './stream-codec.js';

/** How often leases are checked. */
const LEASE_TICK_MS = 200;

/** Publishes one stream's events in order, numbered; nothing after its last event. */
class StreamReplies {
  private seq = 0;
  private ended = false;
  constructor(
    private readonly client: MqttClient,
    private readonly address: ReplyAddress,
    private readonly device: string,
  ) {}

  send(e: OutgoingStreamEvent): void {
    if (this.ended) return;
    if (e.type === 'ended' || (e.type === 'error' && e.fatal && this.seq === 0)) this.ended = true;
    const payload = encodeStreamEvent(e, {
      seq: this.seq++,
      device: this.device,
      ...(this.address.correlation ? { correlation: this.address.correlation } : {}),
    });
    const properties = this.address.correlationData ? { correlationData: this.address.correlationData } : undefined;
    this.client.publish(
      this.address.topic,
      Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      { qos: 1, ...(properties ? { properties } : {}) },
      () => undefined,
    );
  }
}

interface RunningStream {
  id: string;
  owner: string;
  source: string;
  session: StreamSession;
  replies: StreamReplies;
  leaseMs: number;
  leaseUntil: number;
  done: Promise<unknown>;
}

export interface StreamService {
  /** Streams running now. */
  readonly running: number;
  /** Stops one stream (or every stream of an owner) with a fatal error event first; returns how many. */
  stopStreams(match: { id?: string; owner?: string }, why?: SetokimError): number;
  /** Takes no more streams (unsubscribes), stops the running ones, and waits for their ends. */
  stop(): Promise<void>;
}

/** The pipeline a stream can run on: one with its stages at hand (createPipeline's). */
function streamable(p: Pipeline): p is LocalPipeline {
  const m = (p as Partial<LocalPipeline>).models;
  return !!m?.stages.encoder && !!m.stages.merger;
}

class AgentStreams implements StreamService {
  private readonly streams = new Map<string, RunningStream>();
  private readonly topics: StreamTopics;
  private readonly cfg: AgentConfig['streams'];
  private closing = false;
  private readonly leaseTimer: NodeJS.Timeout;
  private readonly onMessage = (topic: string, payload: Buffer, packet: IPublishPacket): void =>
    this.route(topic, payload, packet);
  private readonly onConnect = (): void =>
    void this.subscribe().catch((err: Error) =>
      this.log('warn', `stream topics: ${err.message}; the next reconnect tries again`),
    );
  private readonly onSwitched = ({ to }: { to: string }): void => {
    this.stopStreams(
      {},
      new SetokimError(
        ErrorCodes.BUSY,
        `device ${this.agent.config.device} switched to model set ${to}; start the stream again`,
      ),
    );
  };

  constructor(
    private readonly agent: Agent,
    private readonly client: MqttClient,
    private readonly log: Logger,
  ) {
    this.cfg = agent.config.streams;
    this.topics = streamTopics(agent.config.fleet, agent.config.device);
    this.leaseTimer = setInterval(() => this.expireLeases(), LEASE_TICK_MS);
    this.leaseTimer.unref();
    agent.addStatusSource(() => ({
      streams: this.closing ? 0 : this.streams.size,
      maxStreams: this.cfg.sources.length ? this.cfg.max : 0,
    }));
  }

  get running(): number {
    return this.streams.size;
  }

  async attach(): Promise<void> {
    this.client.on('message', this.onMessage);
    this.client.on('connect', this.onConnect);
    this.agent.on('switched', this.onSwitched);
    try {
      await this.subscribe();
    } catch (err) {
      this.detach();
      throw err;
    }
  }

  private detach(): void {
    clearInterval(this.leaseTimer);
    this.client.off('message', this.onMessage);
    this.client.off('connect', this.onConnect);
    this.agent.off('switched', this.onSwitched);
  }

  private subscribe(): Promise<void> {
    const t = this.topics;
    const topics = [t.start, t.stop, t.renew, t.fleetStop];
    return new Promise((resolve, reject) => {
      this.client.subscribe(
        Object.fromEntries(topics.map((x) => [x, { qos: 1 as const }])),
        (err, _granted, packet) => {
          const refused = refusedSubscriptions(topics, (packet as { granted?: unknown[] } | undefined)?.granted);
          if (refused.length)
            reject(
              new SetokimError(
                ErrorCodes.BROKER_REFUSED,
                `the broker refused the subscription to ${refused.join(', ')}; ` +
                  "allow this client to subscribe to it in the broker's ACL",
              ),
            );
          else if (err) reject(err);
          else resolve();
        },
      );
    });
  }

  private route(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const t = this.topics;
    if (topic === t.start) return this.onStart(payload, packet);
    if (topic !== t.stop && topic !== t.renew && topic !== t.fleetStop) return;
    try {
      const c = decodeStreamControl(payload);
      if (topic === t.renew) return this.renew(c.id);
      const n = this.stopStreams(
        c.id ? { id: c.id } : { owner: c.owner },
        c.id
          ? undefined
          : new SetokimError(ErrorCodes.CANCELLED, `the client ${c.owner} is gone (its Last Will arrived)`),
      );
      if (n)
        this.log('info', `stopped ${n} stream${n > 1 ? 's' : ''} (${c.id ? `stream ${c.id}` : `owner ${c.owner}`})`);
    } catch (err) {
      this.agent.metrics.errors.inc({ code: errorCode(err) });
      this.log('warn', `ignored a message on ${topic}: ${(err as Error).message}`);
    }
  }

  private renew(id: string): void {
    const s = this.streams.get(id);
    if (s) s.leaseUntil = Date.now() + s.leaseMs;
  }

  private onStart(payload: Buffer, packet: IPublishPacket): void {
    const decoded = decodeStreamStart(payload);
    const salvage = decoded.ok
      ? {
          id: decoded.start.id,
          replyTopic: decoded.start.replyTopic,
          correlation: decoded.start.correlation.length ? decoded.start.correlation : undefined,
        }
      : decoded.salvage;
    const addressing = replyAddress(
      packet,
      {
        id: salvage.id,
        ...(salvage.replyTopic ? { replyTopic: salvage.replyTopic } : {}),
        ...(salvage.correlation ? { correlation: salvage.correlation } : {}),
      },
      this.agent.replyTopics,
    );
    if (!addressing.address) {
      this.agent.metrics.unaddressable.inc();
      this.log('warn', `dropped a stream start with no reply address: ${addressing.reason}`);
      return;
    }
    const replies = new StreamReplies(this.client, addressing.address, this.agent.config.device);
    const refuse = (code: ErrorCode, message: string): void => {
      this.agent.metrics.errors.inc({ code });
      this.log('info', `refused stream ${salvage.id || '(no id)'}: [${code}] ${message}`);
      replies.send({ type: 'error', id: salvage.id, code, message, fatal: true });
    };
    if (!decoded.ok) return refuse(decoded.error.code, decoded.error.message);
    if (addressing.problem) return refuse(addressing.problem.code, addressing.problem.message);
    try {
      this.open(decoded.start, replies);
    } catch (err) {
      refuse(errorCode(err), (err as Error).message);
    }
  }

  /** Checks a start against the allow-list and the limits, then runs it; throws a coded error. */
  private open(req: WireStreamStart, replies: StreamReplies): void {
    const device = this.agent.config.device;
    if (this.closing)
      throw new SetokimError(ErrorCodes.BUSY, `device ${device} is shutting down; start the stream on another device`);
    if (!this.cfg.sources.length)
      throw new SetokimError(
        ErrorCodes.STREAM_REFUSED,
        `device ${device} takes no streams: its operator has allowed no sources ` +
          '(streams.sources, --stream-source name=source)',
      );
    const entry = this.cfg.sources.find((s) => s.name === req.source);
    if (!entry) {
      throw new SetokimError(
        ErrorCodes.STREAM_REFUSED,
        `source "${req.source.slice(0, 64)}" is not on device ${device}'s allow-list; ` +
          `use one of: ${this.cfg.sources.map((s) => s.name).join(', ')}`,
      );
    }
    if (this.streams.has(req.id))
      throw new SetokimError(ErrorCodes.DUPLICATE, `stream ${req.id} is running already; stop it or use another id`);
    if (this.streams.size >= this.cfg.max)
      throw new SetokimError(
        ErrorCodes.BUSY,
        `device ${device} runs ${this.streams.size} of its ${this.cfg.max} streams (streams.max); ` +
          'stop one or try another device',
      );
    const pipeline = this.agent.pipeline;
    if (!streamable(pipeline))
      throw new SetokimError(ErrorCodes.STREAM_REFUSED, `device ${device}'s pipeline cannot tokenize video frames`);
    const a = pipeline.models.arch;
    const source = new FrameSource({
      source: entry.source,
      size: { width: a.image.size, height: a.image.size },
      fps: req.fps > 0 ? Math.min(req.fps, this.cfg.fps) : this.cfg.fps,
      pad: meanColour(a),
      stallMs: 15_000,
    });
    const session = new StreamSession({
      pipeline,
      source,
      id: req.id,
      change: req.change || 0.25,
      ...(req.prompt ? { prompt: req.prompt } : {}),
      ...(req.everyS ? { everyMs: req.everyS * 1000 } : {}),
      ...(req.maskEveryS ? { maskEveryMs: req.maskEveryS * 1000 } : {}),
      ...(req.generation
        ? { generation: { ...req.generation, stop: req.generation.stop.length ? req.generation.stop : undefined } }
        : {}),
    });
    const leaseMs = req.leaseMs > 0 ? Math.min(req.leaseMs, this.cfg.leaseMs) : this.cfg.leaseMs;
    const s: RunningStream = {
      id: req.id,
      owner: req.owner,
      source: entry.name,
      session,
      replies,
      leaseMs,
      leaseUntil: Date.now() + leaseMs,
      done: Promise.resolve(),
    };
    session.on('event', (e) => {
      if (e.type === 'started') replies.send({ ...e, source: entry.name, leaseMs });
      else replies.send(e);
    });
    this.streams.set(req.id, s);
    this.log(
      'info',
      `stream ${req.id} started on ${entry.name}${req.owner ? ` for ${req.owner}` : ''} ` +
        `(${this.streams.size} of ${this.cfg.max})`,
    );
    void this.agent.refreshStatus();
    s.done = session
      .run()
      .then(
        (end) =>
          this.log(
            'info',
            `stream ${req.id} ended: ${end.reason} (${end.stats.received} frames, ` +
              `${end.stats.dropped} dropped, ${end.stats.answers} answers)`,
          ),
        (err: Error) => this.log('error', `stream ${req.id} failed: ${err.message}`),
      )
      .finally(() => {
        this.streams.delete(req.id);
        void this.agent.refreshStatus();
      });
  }

  stopStreams(match: { id?: string; owner?: string }, why?: SetokimError): number {
    let n = 0;
    for (const s of this.streams.values()) {
      if ((match.id !== undefined && s.id !== match.id) || (match.owner !== undefined && s.owner !== match.owner))
        continue;
      if (why) s.replies.send({ type: 'error', id: s.id, code: why.code, message: why.message, fatal: true });
      s.session.stop();
      n++;
    }
    return n;
  }

  private expireLeases(): void {
    const now = Date.now();
    for (const s of this.streams.values()) {
      if (now <= s.leaseUntil) continue;
      s.leaseUntil = Infinity; // stopped once
      this.log('info', `stream ${s.id}: its lease ran out (no renew within ${s.leaseMs} ms); stopping it`);
      this.stopStreams(
        { id: s.id },
        new SetokimError(
          ErrorCodes.EXPIRED,
          `stream ${s.id} was not renewed within ${s.leaseMs} ms (the client is gone?); it is stopped`,
        ),
      );
    }
  }

  async stop(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.detach();
    const t = this.topics;
    if (this.client.connected)
      await within(this.client.unsubscribeAsync([t.start, t.stop, t.renew, t.fleetStop]), BROKER_STOP_WAIT_MS);
    const ends = [...this.streams.values()].map((s) => s.done);
    this.stopStreams({}, new SetokimError(ErrorCodes.CANCELLED, `device ${this.agent.config.device} is shutting down`));
    await Promise.all(ends);
  }
}

/** Takes stream requests on the agent's connection; call after agent.start(). */
export async function startStreams(agent: Agent, o: { log: Logger }): Promise<StreamService> {
  const client = agent.mqtt;
  if (!client) throw new SetokimError(ErrorCodes.INTERNAL, 'startStreams before agent.start()');
  const service = new AgentStreams(agent, client, o.log);
  await service.attach();
  const { sources, max } = agent.config.streams;
  o.log(
    'info',
    sources.length
      ? `taking streams on ${streamTopics(agent.config.fleet, agent.config.device).start} ` +
          `from ${sources.map((s) => s.name).join(', ')} (at most ${max})`
      : 'streams are off (no streams.sources)',
  );
  return service;
}
