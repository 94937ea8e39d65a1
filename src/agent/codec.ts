/**
 * Protobuf encoding of the wire messages (proto/setokim.proto) and zod validation of everything
 * decoded: bytes from the network are untrusted until they pass here. A query's sizes are checked
 * on the wire, before its prompt or image is decoded (QueryDecoder, against the agent's limits).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { z } from 'zod';
import { ErrorCodes, SetokimError, type ErrorCode } from '../errors.js';
import { GenerationSchema, MAX_CONVERSATION_CHARS, MAX_ID_CHARS } from '../pipeline/request.js';
import type { GenerationParams, PipelineEvent } from '../pipeline/types.js';
import type { HealthSummary } from './health.js';
import { isSafeReplyTopic, MAX_REPLY_TOPIC, REPLY_FILTER, topicMatches } from '../mqtt/topics.js';

/** A message as protobufjs decodes it: untyped; each decoder checks the fields it reads (zod for queries). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the codec's one untyped shape
type Decoded = Record<string, any>;

/** Finds proto/setokim.proto above this file, from src/ (tsx, tap) or dist/src/ (compiled). */
function protoPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'proto', 'setokim.proto');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new SetokimError(
    ErrorCodes.INTERNAL,
    'proto/setokim.proto is missing from the installation; reinstall setokim-edge.',
  );
}

const root = protobuf.loadSync(protoPath());
/** The wire format's types, for the messages other modules encode (stream-codec.ts). */
export const wireFormat = root;
const QueryType = root.lookupType('setokim.v1.Query');
const CancelType = root.lookupType('setokim.v1.Cancel');
const ReplyType = root.lookupType('setokim.v1.Reply');
const StatusType = root.lookupType('setokim.v1.Status');
const toObjectOptions = { longs: Number, defaults: true, oneofs: true } as const;

/** A query as it travels: the pipeline request plus what only the wire needs. */
export interface WireQuery {
  id: string;
  task: string; // validated against TASKS by admission (UNKNOWN_TASK), not here
  prompt?: string;
  image?: Uint8Array;
  generation?: GenerationParams;
  deadlineUnixMs?: number;
  replyTopic?: string;
  correlation?: Uint8Array;
  conversation?: string;
}

/** The longest correlation an agent echoes: the `correlation` field and MQTT 5 Correlation Data alike. */
export const MAX_CORRELATION_BYTES = 256;
/** What a query carries beside image and prompt (id, task, generation, reply address, MQTT header, properties). */
export const QUERY_OVERHEAD_BYTES = 16 * 1024;
/** The default of limits.maxPromptBytes (src/agent/config.ts), for decoders without an agent's limits. */
export const DEFAULT_MAX_PROMPT_BYTES = 16 * 1024;
/** MQTT's own largest packet (a Remaining Length of four bytes). */
const MQTT_MAX_PACKET = 268_435_455;

/** The largest query packet an agent with these limits takes: its MQTT 5 Maximum Packet Size. */
export function maxQueryPacketBytes(limits: { maxImageBytes: number; maxPromptBytes: number }): number {
  return Math.min(limits.maxImageBytes + limits.maxPromptBytes + QUERY_OVERHEAD_BYTES, MQTT_MAX_PACKET);
}

/** What a query is checked against: the agent's limits and where it publishes replies. */
export interface QueryRules {
  maxPromptBytes: number;
  maxImageBytes: number;
  /** Whether the agent publishes replies to this topic (replies.ts ReplyTopics). */
  replyTopic: (topic: string) => boolean;
}

/** Without an agent's configuration: the default limits, replies to setokim/v1/replies/... only. */
export const DEFAULT_QUERY_RULES: QueryRules = {
  maxPromptBytes: DEFAULT_MAX_PROMPT_BYTES,
  maxImageBytes: 8 * 1024 * 1024,
  replyTopic: (t) => isSafeReplyTopic(t) && topicMatches(REPLY_FILTER, t),
};

const bytes = z.instanceof(Uint8Array);

/** The wire rules of a Query, for an agent's QueryRules. */
export function querySchema(rules: QueryRules) {
  return z.object({
    id: z
      .string()
      .min(1, 'the query has no id')
      .max(MAX_ID_CHARS, `the query id is longer than ${MAX_ID_CHARS} characters`),
    task: z.string(), // anything but the five tasks is UNKNOWN_TASK (the agent's check)
    prompt: z.string(),
    image: bytes,
    // The pipeline's own schema: what passes here is never its BAD_ARGUMENT.
    generation: GenerationSchema.nullable(),
    deadlineUnixMs: z.number().int().min(0),
    replyTopic: replyTopicSchema(rules),
    correlation: bytes.refine(
      (b) => b.length <= MAX_CORRELATION_BYTES,
      `correlation is longer than ${MAX_CORRELATION_BYTES} bytes`,
    ),
    conversation: z
      .string()
      .max(MAX_CONVERSATION_CHARS, `the conversation id is longer than ${MAX_CONVERSATION_CHARS} characters`),
  });
}

function replyTopicSchema(rules: QueryRules) {
  return z
    .string()
    .refine(
      (t) => t === '' || rules.replyTopic(t),
      `reply_topic is not a topic this agent publishes replies to (${REPLY_FILTER} or one of its replyTopics; ` +
        'concrete, no leading $)',
    );
}

/** A query's fields as its schema gives them: every field present. */
type QueryFields = z.output<ReturnType<typeof querySchema>>;

/** The query the agent works with: only the fields that say something. */
function wireQuery(p: QueryFields): WireQuery {
  const query: WireQuery = { id: p.id, task: p.task };
  if (p.prompt) query.prompt = p.prompt;
  if (p.image.length) query.image = p.image;
  if (p.generation) {
    const { stop, ...rest } = p.generation;
    query.generation = { ...rest, ...(stop?.length ? { stop } : {}) };
  }
  if (p.deadlineUnixMs) query.deadlineUnixMs = p.deadlineUnixMs;
  if (p.replyTopic) query.replyTopic = p.replyTopic;
  if (p.correlation.length) query.correlation = p.correlation;
  if (p.conversation) query.conversation = p.conversation;
  return query;
}

/**
 * Whether a decoded query (QueryDecoder's plain form) certainly passes its schema: the common query,
 * without generation parameters (their rules are the pipeline's), checked field by field at a
 * fraction of zod's cost on the agent's hot path. It answers false whenever in doubt (a string's
 * UTF-16 length is never below zod's count); such a query, and every refusal with its message,
 * goes through the schema. test/agent/codec.test.ts checks it never accepts what the schema refuses.
 */
export function plainlyValid(raw: Decoded, rules: QueryRules): boolean {
  const { id, deadlineUnixMs: deadline, replyTopic, correlation, conversation } = raw;
  return (
    raw.generation === null &&
    typeof id === 'string' &&
    id.length >= 1 &&
    id.length <= MAX_ID_CHARS &&
    typeof raw.task === 'string' &&
    typeof raw.prompt === 'string' &&
    raw.image instanceof Uint8Array &&
    Number.isSafeInteger(deadline) &&
    deadline >= 0 &&
    typeof replyTopic === 'string' &&
    (replyTopic === '' || rules.replyTopic(replyTopic)) &&
    correlation instanceof Uint8Array &&
    correlation.length <= MAX_CORRELATION_BYTES &&
    typeof conversation === 'string' &&
    conversation.length <= MAX_CONVERSATION_CHARS
  );
}

/** What decodeQuery salvages from a message it rejects, so the error can still be answered. */
export interface Salvage {
  id: string;
  replyTopic?: string;
  correlation?: Uint8Array;
}

export type DecodedQuery = { ok: true; query: WireQuery } | { ok: false; error: SetokimError; salvage: Salvage };

/**
 * The messages are encoded from plain objects of the right shape (protobufjs writes them as they
 * are; fromObject would copy and convert every field first, which costs as much as the encoding).
 */
export function encodeQuery(q: WireQuery): Uint8Array {
  return QueryType.encode(q).finish();
}

/** Query field numbers, from the .proto. */
const FIELD = {
  id: QueryType.fields.id!.id,
  prompt: QueryType.fields.prompt!.id,
  image: QueryType.fields.image!.id,
  replyTopic: QueryType.fields.replyTopic!.id,
  correlation: QueryType.fields.correlation!.id,
};

/** Where each length-delimited top-level field of a message lies (its last occurrence) and its largest length. */
type Spans = Map<number, { start: number; end: number; max: number }>;

/** The top-level fields of a message without decoding any of them; undefined if it is not protobuf. */
function fieldSpans(payload: Uint8Array): Spans | undefined {
  const spans: Spans = new Map();
  const reader = protobuf.Reader.create(payload);
  try {
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if ((tag & 7) !== 2) {
        reader.skipType(tag & 7);
        continue;
      }
      const length = reader.uint32();
      const start = reader.pos;
      reader.skip(length);
      const field = tag >>> 3;
      spans.set(field, { start, end: start + length, max: Math.max(length, spans.get(field)?.max ?? 0) });
    }
  } catch {
    return undefined;
  }
  return spans;
}

const utf8 = new TextDecoder();

/** uint64 milliseconds as a number (protobufjs gives a Long when long.js is installed). */
function toNumber(v: number | { toNumber(): number }): number {
  return typeof v === 'number' ? v : v.toNumber();
}

/**
 * Decodes queries against an agent's limits: the prompt's and the image's sizes are read off the wire
 * first (PROMPT_TOO_LONG, PAYLOAD_TOO_LARGE before a byte of them is decoded), then the message is
 * decoded and checked with its zod schema (BAD_MESSAGE). Every refusal salvages what it can of the
 * reply address, so the error can be answered.
 */
export class QueryDecoder {
  private readonly schema: ReturnType<typeof querySchema>;
  private readonly replyTopic: ReturnType<typeof replyTopicSchema>;

  constructor(private readonly rules: QueryRules = DEFAULT_QUERY_RULES) {
    this.schema = querySchema(rules);
    this.replyTopic = replyTopicSchema(rules);
  }

  decode(payload: Uint8Array): DecodedQuery {
    const spans = fieldSpans(payload);
    const tooLarge = spans && this.sizeProblem(spans);
    if (spans && tooLarge) return { ok: false, error: tooLarge, salvage: this.salvageSpans(payload, spans) };
    let m: protobuf.Message & Decoded;
    try {
      m = QueryType.decode(payload) as protobuf.Message & Decoded;
    } catch (err) {
      const why = `the payload is not a setokim.v1.Query protobuf (${(err as Error).message}); see docs/MQTT.md`;
      return { ok: false, error: new SetokimError(ErrorCodes.BAD_MESSAGE, why), salvage: { id: '' } };
    }
    const raw = this.plain(m);
    if (plainlyValid(raw, this.rules)) return { ok: true, query: wireQuery(raw as QueryFields) };
    const parsed = this.schema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join('.')}: ` : '';
      const error = new SetokimError(ErrorCodes.BAD_MESSAGE, `invalid query: ${where}${issue?.message ?? 'malformed'}`);
      return { ok: false, error, salvage: this.salvage(raw.id, raw.replyTopic, raw.correlation) };
    }
    return { ok: true, query: wireQuery(parsed.data) };
  }

  /** The prompt or image over its limit, measured on the wire. */
  private sizeProblem(spans: Spans): SetokimError | undefined {
    const prompt = spans.get(FIELD.prompt)?.max ?? 0;
    const { maxPromptBytes, maxImageBytes } = this.rules;
    if (prompt > maxPromptBytes) {
      const why = `the prompt is ${prompt} bytes; this device takes at most ${maxPromptBytes} (limits.maxPromptBytes)`;
      return new SetokimError(ErrorCodes.PROMPT_TOO_LONG, why);
    }
    const image = spans.get(FIELD.image)?.max ?? 0;
    if (image > maxImageBytes) {
      const why = `the image is ${image} bytes; this device takes at most ${maxImageBytes} (limits.maxImageBytes); resize it`;
      return new SetokimError(ErrorCodes.PAYLOAD_TOO_LARGE, why);
    }
    return undefined;
  }

  /** The decoded message as the schema's input: every field present, bytes as Uint8Array, uint64 as a number. */
  private plain(m: Decoded): Decoded {
    const g = m.generation;
    const generation = g && {
      ...(g.maxTokens != null ? { maxTokens: g.maxTokens } : {}),
      ...(g.temperature != null ? { temperature: g.temperature } : {}),
      ...(g.topK != null ? { topK: g.topK } : {}),
      ...(g.topP != null ? { topP: g.topP } : {}),
      ...(g.seed != null ? { seed: g.seed } : {}),
      stop: g.stop,
    };
    const asBytes = (b: Uint8Array | number[]) => (b instanceof Uint8Array ? b : EMPTY);
    return {
      id: m.id,
      task: m.task,
      prompt: m.prompt,
      image: asBytes(m.image),
      generation: generation ?? null,
      deadlineUnixMs: toNumber(m.deadlineUnixMs),
      replyTopic: m.replyTopic,
      correlation: asBytes(m.correlation),
      conversation: m.conversation,
    };
  }

  private salvageSpans(payload: Uint8Array, spans: Spans): Salvage {
    const text = (field: number, max: number) => {
      const s = spans.get(field);
      return s && s.end - s.start <= max ? utf8.decode(payload.subarray(s.start, s.end)) : undefined;
    };
    const c = spans.get(FIELD.correlation);
    const correlation = c && payload.subarray(c.start, c.end);
    return this.salvage(text(FIELD.id, 800) ?? '', text(FIELD.replyTopic, 4 * MAX_REPLY_TOPIC), correlation);
  }

  /** What of a refused query's reply address may be used: an allowed reply topic, a correlation within its limit. */
  private salvage(id: unknown, replyTopic: unknown, correlation: unknown): Salvage {
    const salvage: Salvage = { id: typeof id === 'string' ? id.slice(0, 200) : '' };
    if (typeof replyTopic === 'string' && replyTopic !== '' && this.replyTopic.safeParse(replyTopic).success) {
      salvage.replyTopic = replyTopic;
    }
    if (correlation instanceof Uint8Array && correlation.length > 0 && correlation.length <= MAX_CORRELATION_BYTES) {
      salvage.correlation = correlation;
    }
    return salvage;
  }
}

const EMPTY = new Uint8Array(0);
const defaultDecoder = new QueryDecoder();

/** Decodes a query with the default rules (QueryDecoder for an agent's own). */
export function decodeQuery(payload: Uint8Array, rules?: QueryRules): DecodedQuery {
  return rules ? new QueryDecoder(rules).decode(payload) : defaultDecoder.decode(payload);
}

export function encodeCancel(id: string): Uint8Array {
  return CancelType.encode(CancelType.fromObject({ id })).finish();
}

export function decodeCancel(payload: Uint8Array): string {
  try {
    const { id } = CancelType.toObject(CancelType.decode(payload), toObjectOptions) as { id: string };
    if (id) return id;
  } catch {
    // fall through: same answer as an empty id
  }
  throw new SetokimError(ErrorCodes.BAD_MESSAGE, 'the payload is not a setokim.v1.Cancel with an id');
}

/** A reply as the client sees it: one pipeline event plus its place in the stream. */
export type ReplyEvent = PipelineEvent & { seq: number; device: string; correlation?: Uint8Array };

export interface ReplyMeta {
  seq: number;
  device: string;
  correlation?: Uint8Array;
}

export function encodeReply(event: PipelineEvent, meta: ReplyMeta): Uint8Array {
  const msg: Record<string, unknown> = {
    id: event.id,
    seq: meta.seq,
    device: meta.device,
    correlation: meta.correlation,
  };
  switch (event.type) {
    case 'accepted':
      msg.accepted = {};
      break;
    case 'clustered':
      msg.clustered = { visionTokens: event.visionTokens, patches: event.patches, maskPng: event.maskPng };
      break;
    case 'text':
      msg.text = { delta: event.delta };
      break;
    case 'mask':
      msg.mask = {
        index: event.index,
        referring: event.referring,
        png: event.png,
        width: event.width,
        height: event.height,
      };
      break;
    case 'image':
      msg.image = { png: event.png, width: event.width, height: event.height };
      break;
    case 'done':
      msg.done = {
        visionTokens: event.visionTokens,
        promptTokens: event.promptTokens,
        generatedTokens: event.generatedTokens,
        finishReason: event.finishReason,
        stagesMs: event.stages,
        totalMs: event.totalMs,
        ...(event.firstTokenMs !== undefined ? { firstTokenMs: event.firstTokenMs } : {}),
        ...(event.energyMj !== undefined ? { energyMj: event.energyMj } : {}),
      };
      break;
    case 'error':
      msg.error = { code: event.code, message: event.message };
      break;
  }
  return ReplyType.encode(msg).finish();
}

const finishReasons = ['stop', 'length', 'eos'] as const;

/** A decoded bytes field: protobufjs leaves an absent one as an empty plain array. */
const bytesOf = (b: Uint8Array | number[] | null | undefined): Uint8Array => (b instanceof Uint8Array ? b : EMPTY);

/**
 * Reads the decoded message's fields directly (toObject would first copy every field, defaults
 * included), into one object built field by field (object spreads made it ten times slower).
 */
export function decodeReply(payload: Uint8Array): ReplyEvent {
  let r: Decoded;
  try {
    r = ReplyType.decode(payload) as protobuf.Message & Decoded;
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_MESSAGE,
      `the payload is not a setokim.v1.Reply protobuf (${(err as Error).message})`,
    );
  }
  const e: Record<string, unknown> = { id: r.id, seq: r.seq, device: r.device, type: r.event };
  if (r.correlation?.length) e.correlation = bytesOf(r.correlation);
  switch (r.event) {
    case 'accepted':
      break;
    case 'clustered':
      e.visionTokens = r.clustered.visionTokens;
      e.patches = r.clustered.patches;
      e.maskPng = bytesOf(r.clustered.maskPng);
      break;
    case 'text':
      e.delta = r.text.delta;
      break;
    case 'mask':
      e.index = r.mask.index;
      e.referring = r.mask.referring;
      e.png = bytesOf(r.mask.png);
      e.width = r.mask.width;
      e.height = r.mask.height;
      break;
    case 'image':
      e.png = bytesOf(r.image.png);
      e.width = r.image.width;
      e.height = r.image.height;
      break;
    case 'done': {
      const d = r.done;
      e.visionTokens = d.visionTokens;
      e.promptTokens = d.promptTokens;
      e.generatedTokens = d.generatedTokens;
      e.finishReason = finishReasons.includes(d.finishReason) ? d.finishReason : 'stop';
      e.stages = { ...d.stagesMs };
      e.totalMs = d.totalMs;
      if (d.firstTokenMs != null) e.firstTokenMs = d.firstTokenMs;
      if (d.energyMj != null) e.energyMj = d.energyMj;
      break;
    }
    case 'error':
      e.code = (r.error.code || ErrorCodes.INTERNAL) as ErrorCode;
      e.message = r.error.message;
      break;
    default:
      throw new SetokimError(ErrorCodes.BAD_MESSAGE, 'the reply carries no event (sent by a newer agent?)');
  }
  return e as ReplyEvent;
}

export interface AgentStatus {
  fleet: string;
  device: string;
  online: boolean;
  modelSetId: string;
  backend: string;
  tasks: string[];
  queueDepth: number;
  inFlight: number;
  queueSize: number;
  concurrency: number;
  maxImageBytes: number;
  maxTokens: number;
  maxContext: number;
  updatedUnixMs: number;
  version: string;
  /** The device's latest health reading (a Jetson's tegrastats); absent elsewhere. */
  health?: HealthSummary;
  /** Video streams running, and the most the agent takes (streams.max, 0: none); docs/STREAMS.md. */
  streams: number;
  maxStreams: number;
  /** The device's target (src/engine/target.ts); absent from agents that predate it. */
  target?: string;
}

export function encodeStatus(s: AgentStatus): Uint8Array {
  return StatusType.encode(StatusType.fromObject(s)).finish();
}

const HEALTH_FIELDS = [
  'ramUsedMib',
  'ramTotalMib',
  'gpuLoadPct',
  'emcLoadPct',
  'tempC',
  'tempSensor',
  'powerMw',
  'powerRail',
] as const;

/** The set fields only (protobufjs adds null defaults and `_field` oneof markers for optional ones). */
function decodeHealth(h: Record<string, unknown> | null | undefined): HealthSummary | undefined {
  if (!h) return undefined;
  const out: Record<string, unknown> = { sampledUnixMs: h.sampledUnixMs };
  for (const k of HEALTH_FIELDS) if (h[k] != null) out[k] = h[k];
  return out as unknown as HealthSummary;
}

export function decodeStatus(payload: Uint8Array): AgentStatus {
  let raw: Record<string, unknown>;
  try {
    raw = StatusType.toObject(StatusType.decode(payload), toObjectOptions);
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_MESSAGE,
      `the payload is not a setokim.v1.Status protobuf (${(err as Error).message})`,
    );
  }
  const { health, ...status } = raw;
  const summary = decodeHealth(health as Record<string, unknown> | null);
  return { ...(status as unknown as AgentStatus), ...(summary ? { health: summary } : {}) };
}
