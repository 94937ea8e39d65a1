/** Validation of a QueryRequest at the pipeline's edge (zod), and the defaults each task gets. */
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { TASKS, type QueryRequest, type Task } from './types.js';

export const DESCRIBE_PROMPT = 'Describe the image in detail.';

/** A request id's longest (the agent's codec refuses longer ones as BAD_MESSAGE). */
export const MAX_ID_CHARS = 128;
/** The longest prompt a pipeline takes, in characters (PROMPT_TOO_LONG); the agent caps bytes before this. */
export const MAX_PROMPT_CHARS = 16384;
/** A conversation id's longest (the agent's codec refuses longer ones as BAD_MESSAGE). */
export const MAX_CONVERSATION_CHARS = 128;
/** A conversation id: what the client chose, printable ASCII without spaces. */
export const ConversationIdSchema = z
  .string()
  .min(1)
  .max(MAX_CONVERSATION_CHARS)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');

/** Generation parameters; the agent's codec checks a query's with this very schema (BAD_MESSAGE). */
export const GenerationSchema = z
  .object({
    maxTokens: z.number().int().positive().optional(),
    temperature: z.number().min(0).max(10).optional(),
    topK: z.number().int().min(0).optional(),
    topP: z.number().gt(0).max(1).optional(),
    seed: z.number().int().min(0).max(0xffffffff).optional(),
    stop: z.array(z.string().min(1).max(64)).max(8).optional(),
  })
  .strict();

const RequestSchema = z.object({
  id: z.string().min(1).max(MAX_ID_CHARS),
  task: z.string(),
  prompt: z.string().optional(),
  image: z.instanceof(Uint8Array).optional(),
  generation: GenerationSchema.optional(),
  conversation: ConversationIdSchema.optional(),
});

export interface CheckedRequest {
  id: string;
  task: Task;
  prompt: string;
  image: Uint8Array | undefined;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  stop: string[];
  conversation: string | undefined;
}

/** Tasks that may run in a conversation: text answers about its image. */
const CONVERSATION_TASKS: readonly Task[] = ['ask', 'describe'];

export interface RequestDefaults {
  /** New tokens per query: the default, and the cap a request cannot raise. */
  maxTokens: number;
}

/**
 * Throws BAD_ARGUMENT / BAD_INPUT / UNKNOWN_TASK / PROMPT_TOO_LONG with a message that says what to fix. `withVision`:
 * the caller brings vision tokens (RunOptions.vision) in place of an image.
 */
export function checkRequest(request: QueryRequest, defaults: RequestDefaults, withVision = false): CheckedRequest {
  const parsed = RequestSchema.safeParse(request);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `invalid request: ${issue.path.join('.') || 'request'}: ${issue.message}`,
    );
  }
  const r = parsed.data;
  if (r.prompt && r.prompt.length > MAX_PROMPT_CHARS) {
    const why = `the prompt is ${r.prompt.length} characters; a query takes at most ${MAX_PROMPT_CHARS}; shorten it`;
    throw new SetokimError(ErrorCodes.PROMPT_TOO_LONG, why);
  }
  if (!(TASKS as readonly string[]).includes(r.task))
    throw new SetokimError(ErrorCodes.UNKNOWN_TASK, `unknown task '${r.task}'; use one of ${TASKS.join(', ')}`);
  const task = r.task as Task;
  if (r.conversation && !CONVERSATION_TASKS.includes(task)) {
    const takes = CONVERSATION_TASKS.join(' and ');
    throw new SetokimError(ErrorCodes.BAD_INPUT, `task '${task}' cannot run in a conversation (only ${takes} can)`);
  }
  if (withVision && (r.image || r.conversation || (task !== 'ask' && task !== 'describe'))) {
    const also = r.image ? ' with an image' : r.conversation ? ' in a conversation' : '';
    const serve = "vision tokens given with the request serve 'ask' and 'describe' without an image";
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${serve}, not '${task}'${also}`);
  }
  // A conversation's follow-up carries no image: the conversation has it.
  const needsImage = task !== 'generate' && !r.conversation && !withVision;
  if (needsImage && !r.image)
    throw new SetokimError(ErrorCodes.BAD_INPUT, `task '${task}' needs an image; send JPEG, PNG or WebP bytes`);
  if (task === 'generate' && r.image)
    throw new SetokimError(ErrorCodes.BAD_INPUT, "task 'generate' takes no image; use 'edit' to change an image");
  const prompt = r.prompt?.trim() ? r.prompt : task === 'describe' ? DESCRIBE_PROMPT : '';
  if (!prompt) throw new SetokimError(ErrorCodes.BAD_INPUT, `task '${task}' needs a prompt`);
  const g = r.generation ?? {};
  return {
    id: r.id,
    task,
    prompt,
    image: r.image,
    maxTokens: Math.min(g.maxTokens ?? defaults.maxTokens, defaults.maxTokens),
    temperature: g.temperature ?? 0,
    topK: g.topK ?? 0,
    topP: g.topP ?? 1,
    seed: g.seed ?? 0,
    stop: g.stop ?? [],
    conversation: r.conversation,
  };
}
