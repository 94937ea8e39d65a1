/**
 * Protobuf encoding of the wire messages (proto/setokim.proto) and zod validation of everything
 * decoded: bytes from the network are untrusted until they pass here.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { z } from 'zod';
import { ErrorCodes, SetokimError, type ErrorCode } from '../errors.js';
import type { GenerationParams, PipelineEvent } from '../pipeline/types.js';
import { isSafeReplyTopic } from '../mqtt/topics.js';

/** Finds proto/setokim.proto above this file, from src/ (tsx, tap) or dist/src/ (compiled). */
function protoPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'proto', 'setokim.proto');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new SetokimError(ErrorCodes.INTERNAL, 'proto/setokim.proto is missing from the installation; reinstall setokim-edge.');
}

const root = protobuf.loadSync(protoPath());
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

const bytes = z.instanceof(Uint8Array);
const topicName = z
  .string()
  .refine((t) => t === '' || isSafeReplyTopic(t), 'reply_topic must be a concrete topic outside setokim/ (or under setokim/v1/replies/), without # + or a leading $');
const decodedQuery = z.object({
  id: z.string().min(1, 'the query has no id').max(200, 'the query id is longer than 200 characters'),
  task: z.string().max(64),
  prompt: z.string(),
  image: bytes,
  generation: z
    .object({
      maxTokens: z.number().int().min(1).optional(),
      temperature: z.number().min(0).max(10).optional(),
      topK: z.number().int().min(0).optional(),
      topP: z.number().min(0).max(1).optional(),
      seed: z.number().int().min(0).optional(),
      stop: z.array(z.string().max(256)).max(16),
    })
    .nullable(),
  deadlineUnixMs: z.number().int().min(0),
  replyTopic: topicName,
  correlation: bytes.refine((b) => b.length <= 256, 'correlation is longer than 256 bytes'),
  conversation: z.string().max(128, 'the conversation id is longer than 128 characters'),
});

/** What decodeQuery salvages from a message it rejects, so the error can still be answered. */
export interface Salvage {
  id: string;
  replyTopic?: string;
  correlation?: Uint8Array;
  conversation?: string;
}

export type DecodedQuery =
  | { ok: true; query: WireQuery }
  | { ok: false; error: SetokimError; salvage: Salvage };

export function encodeQuery(q: WireQuery): Uint8Array {
  return QueryType.encode(QueryType.fromObject({ ...q, image: q.image ? Buffer.from(q.image.buffer, q.image.byteOffset, q.image.byteLength) : undefined })).finish();
}

export function decodeQuery(payload: Uint8Array): DecodedQuery {
  let raw: Record<string, unknown>;
  try {
    raw = QueryType.toObject(QueryType.decode(payload), toObjectOptions);
  } catch (err) {
    const error = new SetokimError(ErrorCodes.BAD_MESSAGE, `the payload is not a setokim.v1.Query protobuf (${(err as Error).message}); see docs/MQTT.md`);
    return { ok: false, error, salvage: { id: '' } };
  }
  const parsed = decodedQuery.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join('.')}: ` : '';
    const error = new SetokimError(ErrorCodes.BAD_MESSAGE, `invalid query: ${where}${issue?.message ?? 'malformed'}`);
    const salvage: Salvage = { id: typeof raw.id === 'string' ? raw.id.slice(0, 200) : '' };
    if (topicName.safeParse(raw.replyTopic).success && raw.replyTopic) salvage.replyTopic = raw.replyTopic as string;
    if (raw.correlation instanceof Uint8Array && raw.correlation.length <= 256) salvage.correlation = raw.correlation;
    return { ok: false, error, salvage };
  }
  const p = parsed.data;
  const query: WireQuery = { id: p.id, task: p.task };
  if (p.prompt) query.prompt = p.prompt;
  if (p.image.length) query.image = p.image;
  if (p.generation) {
    const { stop, ...rest } = p.generation;
    query.generation = { ...rest, ...(stop.length ? { stop } : {}) };
  }
  if (p.deadlineUnixMs) query.deadlineUnixMs = p.deadlineUnixMs;
  if (p.replyTopic) query.replyTopic = p.replyTopic;
  if (p.correlation.length) query.correlation = p.correlation;
  if (p.conversation) query.conversation = p.conversation;
  return { ok: true, query };
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
  const msg: Record<string, unknown> = { id: event.id, seq: meta.seq, device: meta.device, correlation: meta.correlation };
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
      msg.mask = { index: event.index, referring: event.referring, png: event.png, width: event.width, height: event.height };
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
      };
      break;
    case 'error':
      msg.error = { code: event.code, message: event.message };
      break;
  }
  return ReplyType.encode(ReplyType.fromObject(msg)).finish();
}

const finishReasons = ['stop', 'length', 'eos'] as const;

export function decodeReply(payload: Uint8Array): ReplyEvent {
  let r: Record<string, any>;
  try {
    r = ReplyType.toObject(ReplyType.decode(payload), toObjectOptions);
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_MESSAGE, `the payload is not a setokim.v1.Reply protobuf (${(err as Error).message})`);
  }
  const base = { id: r.id as string, seq: r.seq as number, device: r.device as string, ...(r.correlation?.length ? { correlation: r.correlation as Uint8Array } : {}) };
  switch (r.event) {
    case 'accepted':
      return { ...base, type: 'accepted' };
    case 'clustered':
      return { ...base, type: 'clustered', visionTokens: r.clustered.visionTokens, patches: r.clustered.patches, maskPng: r.clustered.maskPng };
    case 'text':
      return { ...base, type: 'text', delta: r.text.delta };
    case 'mask':
      return { ...base, type: 'mask', index: r.mask.index, referring: r.mask.referring, png: r.mask.png, width: r.mask.width, height: r.mask.height };
    case 'image':
      return { ...base, type: 'image', png: r.image.png, width: r.image.width, height: r.image.height };
    case 'done': {
      const d = r.done;
      const finishReason = finishReasons.includes(d.finishReason) ? d.finishReason : 'stop';
      return { ...base, type: 'done', visionTokens: d.visionTokens, promptTokens: d.promptTokens, generatedTokens: d.generatedTokens, finishReason, stages: d.stagesMs, totalMs: d.totalMs, ...(d.firstTokenMs != null ? { firstTokenMs: d.firstTokenMs } : {}) };
    }
    case 'error':
      return { ...base, type: 'error', code: (r.error.code || ErrorCodes.INTERNAL) as ErrorCode, message: r.error.message };
    default:
      throw new SetokimError(ErrorCodes.BAD_MESSAGE, 'the reply carries no event (sent by a newer agent?)');
  }
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
}

export function encodeStatus(s: AgentStatus): Uint8Array {
  return StatusType.encode(StatusType.fromObject(s)).finish();
}

export function decodeStatus(payload: Uint8Array): AgentStatus {
  try {
    return StatusType.toObject(StatusType.decode(payload), toObjectOptions) as AgentStatus;
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_MESSAGE, `the payload is not a setokim.v1.Status protobuf (${(err as Error).message})`);
  }
}
