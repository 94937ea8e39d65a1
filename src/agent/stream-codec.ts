/**
 * Protobuf encoding of the stream messages (proto/setokim.proto: StreamStart, StreamControl,
 * StreamEvent) with zod validation of everything decoded, as codec.ts does for queries.
 */
import { z } from 'zod';
import { ErrorCodes, SetokimError, isErrorCode, type ErrorCode } from '../errors.js';
import { isSafeReplyTopic } from '../mqtt/topics.js';
import type { StreamEvent } from '../pipeline/stream/index.js';
import { wireFormat, type Salvage } from './codec.js';

const StartType = wireFormat.lookupType('setokim.v1.StreamStart');
const ControlType = wireFormat.lookupType('setokim.v1.StreamControl');
const EventType = wireFormat.lookupType('setokim.v1.StreamEvent');
const toObjectOptions = { longs: Number, defaults: true, oneofs: true } as const;

const bytes = z.instanceof(Uint8Array);
const name = z.string().max(200);

/** A StreamStart as the agent takes it (defaults are protobuf's zeros: "the agent's default"). */
const StreamStartSchema = z.object({
  id: z.string().min(1, 'the stream has no id').max(200, 'the stream id is longer than 200 characters'),
  source: z.string().min(1, 'the stream names no source').max(200),
  prompt: z.string().max(16384),
  fps: z.number().min(0).max(240),
  everyS: z.number().min(0).max(86_400),
  change: z.number().min(0).max(1),
  maskEveryS: z.number().min(0).max(86_400),
  leaseMs: z.number().int().min(0),
  replyTopic: z
    .string()
    .refine(
      (t) => t === '' || isSafeReplyTopic(t),
      'reply_topic must be a concrete topic outside setokim/ (or under setokim/v1/replies/), ' +
        'without # + or a leading $',
    ),
  correlation: bytes.refine((b) => b.length <= 256, 'correlation is longer than 256 bytes'),
  generation: z
    .object({
      maxTokens: z.number().int().min(1).optional(),
      temperature: z.number().min(0).max(10).optional(),
      topK: z.number().int().min(0).optional(),
      topP: z.number().gt(0).max(1).optional(),
      seed: z.number().int().min(0).optional(),
      stop: z.array(z.string().min(1).max(64)).max(8),
    })
    .nullable(),
  owner: name,
});
export type WireStreamStart = z.infer<typeof StreamStartSchema>;

const StreamControlSchema = z
  .object({ id: name, owner: name })
  .refine((c) => c.id !== '' || c.owner !== '', 'a StreamControl names a stream id or an owner');
export type StreamControl = z.infer<typeof StreamControlSchema>;

export type DecodedStart = { ok: true; start: WireStreamStart } | { ok: false; error: SetokimError; salvage: Salvage };

function issueText(e: z.ZodError): string {
  const issue = e.issues[0];
  return `${issue?.path.length ? `${issue.path.join('.')}: ` : ''}${issue?.message ?? 'malformed'}`;
}

export function decodeStreamStart(payload: Uint8Array): DecodedStart {
  let raw: Record<string, unknown>;
  try {
    raw = StartType.toObject(StartType.decode(payload), toObjectOptions);
  } catch (err) {
    return {
      ok: false,
      error: new SetokimError(
        ErrorCodes.BAD_MESSAGE,
        `the payload is not a setokim.v1.StreamStart protobuf (${(err as Error).message}); see docs/STREAMS.md`,
      ),
      salvage: { id: '' },
    };
  }
  const parsed = StreamStartSchema.safeParse(raw);
  if (!parsed.success) {
    const salvage: Salvage = { id: typeof raw.id === 'string' ? raw.id.slice(0, 200) : '' };
    if (typeof raw.replyTopic === 'string' && raw.replyTopic && isSafeReplyTopic(raw.replyTopic))
      salvage.replyTopic = raw.replyTopic;
    if (raw.correlation instanceof Uint8Array && raw.correlation.length <= 256) salvage.correlation = raw.correlation;
    return {
      ok: false,
      error: new SetokimError(ErrorCodes.BAD_MESSAGE, `invalid stream start: ${issueText(parsed.error)}`),
      salvage,
    };
  }
  return { ok: true, start: parsed.data };
}

/** What a client sends; unset numbers are the agent's defaults. */
export type StreamStartInput = Partial<Omit<WireStreamStart, 'generation'>> &
  Pick<WireStreamStart, 'id' | 'source'> & { generation?: Partial<NonNullable<WireStreamStart['generation']>> };

export function encodeStreamStart(s: StreamStartInput): Uint8Array {
  const { correlation, ...rest } = s;
  return StartType.encode(
    StartType.fromObject({ ...rest, ...(correlation ? { correlation: Buffer.from(correlation) } : {}) }),
  ).finish();
}

export function encodeStreamControl(c: Partial<StreamControl>): Uint8Array {
  return ControlType.encode(ControlType.fromObject(c)).finish();
}

export function decodeStreamControl(payload: Uint8Array): StreamControl {
  let raw: unknown;
  try {
    raw = ControlType.toObject(ControlType.decode(payload), toObjectOptions);
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_MESSAGE,
      `the payload is not a setokim.v1.StreamControl protobuf (${(err as Error).message})`,
    );
  }
  const parsed = StreamControlSchema.safeParse(raw);
  if (!parsed.success)
    throw new SetokimError(ErrorCodes.BAD_MESSAGE, `invalid stream control: ${issueText(parsed.error)}`);
  return parsed.data;
}

/** An event as it goes out: the stream's started event names the allow-list entry and the lease. */
export type OutgoingStreamEvent =
  | Exclude<StreamEvent, { type: 'started' } | { type: 'error' }>
  | { type: 'started'; id: string; source: string; tool: string; width: number; height: number; leaseMs: number }
  | { type: 'error'; id: string; code: ErrorCode; message: string; fatal: boolean };

export interface StreamEventMeta {
  seq: number;
  device: string;
  correlation?: Uint8Array;
}

export function encodeStreamEvent(e: OutgoingStreamEvent, meta: StreamEventMeta): Uint8Array {
  const msg: Record<string, unknown> = {
    id: e.id,
    seq: meta.seq,
    device: meta.device,
    ...(meta.correlation ? { correlation: Buffer.from(meta.correlation) } : {}),
  };
  switch (e.type) {
    case 'started':
      msg.started = { source: e.source, width: e.width, height: e.height, tool: e.tool, leaseMs: e.leaseMs };
      break;
    case 'tokens':
      msg.tokens = {
        frame: e.frame,
        count: e.count,
        ids: e.ids,
        added: e.added,
        removed: e.removed,
        kept: e.kept,
        relabelled: e.relabelled,
        changedPatches: e.changedPatches,
        latencyMs: e.latencyMs,
        ...(e.region ? { region: e.region } : {}),
        ...(e.maskPng ? { maskPng: Buffer.from(e.maskPng) } : {}),
      };
      break;
    case 'text':
      msg.text = { answer: e.answer, delta: e.delta };
      break;
    case 'answer':
      msg.answer = {
        answer: e.answer,
        frame: e.frame,
        trigger: e.trigger,
        text: e.text,
        visionTokens: e.visionTokens,
        promptTokens: e.promptTokens,
        generatedTokens: e.generatedTokens,
        totalMs: e.totalMs,
      };
      break;
    case 'source':
      msg.source = { state: e.state, attempt: e.attempt, delayMs: e.delayMs, reason: e.reason };
      break;
    case 'error':
      msg.error = { code: e.code, message: e.message, fatal: e.fatal };
      break;
    case 'ended':
      msg.ended = { reason: e.reason, stats: e.stats };
      break;
  }
  return EventType.encode(EventType.fromObject(msg)).finish();
}

const int = z.number().int();
const ids = z.array(int);
const Region = z.object({ row0: int, col0: int, row1: int, col1: int });
const Stats = z.object({
  received: int,
  delivered: int,
  dropped: int,
  restarts: int,
  processed: int,
  unchanged: int,
  failed: int,
  answers: int,
});
const Meta = { id: z.string(), seq: int, device: z.string(), correlation: bytes.optional() };

/** A StreamEvent as a client reads it. */
const StreamReplySchema = z.discriminatedUnion('type', [
  z.object({
    ...Meta,
    type: z.literal('started'),
    source: z.string(),
    width: int,
    height: int,
    tool: z.string(),
    leaseMs: int,
  }),
  z.object({
    ...Meta,
    type: z.literal('tokens'),
    frame: int,
    count: int,
    ids,
    added: ids,
    removed: ids,
    kept: ids,
    relabelled: int,
    region: Region.optional(),
    changedPatches: int,
    latencyMs: z.number(),
    maskPng: bytes.optional(),
  }),
  z.object({ ...Meta, type: z.literal('text'), answer: int, delta: z.string() }),
  z.object({
    ...Meta,
    type: z.literal('answer'),
    answer: int,
    frame: int,
    trigger: z.enum(['first', 'change', 'interval']),
    text: z.string(),
    visionTokens: int,
    promptTokens: int,
    generatedTokens: int,
    totalMs: z.number(),
  }),
  z.object({
    ...Meta,
    type: z.literal('source'),
    state: z.literal('restarting'),
    attempt: int,
    delayMs: int,
    reason: z.string(),
  }),
  z.object({
    ...Meta,
    type: z.literal('error'),
    code: z.string().transform((c): ErrorCode => (isErrorCode(c) ? c : ErrorCodes.INTERNAL)),
    message: z.string(),
    fatal: z.boolean(),
  }),
  z.object({ ...Meta, type: z.literal('ended'), reason: z.enum(['source-ended', 'stopped', 'failed']), stats: Stats }),
]);
export type StreamReply = z.infer<typeof StreamReplySchema>;

export function decodeStreamEvent(payload: Uint8Array): StreamReply {
  let r: Record<string, unknown> & { event?: string; correlation?: Uint8Array };
  try {
    r = EventType.toObject(EventType.decode(payload), { ...toObjectOptions, arrays: true });
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_MESSAGE,
      `the payload is not a setokim.v1.StreamEvent protobuf (${(err as Error).message})`,
    );
  }
  const type = r.event;
  if (!type)
    throw new SetokimError(ErrorCodes.BAD_MESSAGE, 'the stream event carries no event (sent by a newer agent?)');
  const body = { ...(r[type] as Record<string, unknown>) };
  if (body.region === null) delete body.region; // optional in the message, null in the defaults
  if (body.maskPng instanceof Uint8Array && body.maskPng.length === 0) delete body.maskPng;
  const parsed = StreamReplySchema.safeParse({
    id: r.id,
    seq: r.seq,
    device: r.device,
    ...(r.correlation?.length ? { correlation: r.correlation } : {}),
    type,
    ...body,
  });
  if (!parsed.success)
    throw new SetokimError(ErrorCodes.BAD_MESSAGE, `invalid stream event: ${issueText(parsed.error)}`);
  return parsed.data;
}
