/** Validation of a QueryRequest at the pipeline's edge (zod), and the defaults each task gets. */
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { TASKS, type QueryRequest, type Task } from './types.js';

export const DESCRIBE_PROMPT = 'Describe the image in detail.';

const GenerationSchema = z
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
  id: z.string().min(1).max(128),
  task: z.string(),
  prompt: z.string().max(16384).optional(),
  image: z.instanceof(Uint8Array).optional(),
  generation: GenerationSchema.optional(),
  conversation: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces')
    .optional(),
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

/** Throws BAD_ARGUMENT / BAD_INPUT / UNKNOWN_TASK with a message that says what to fix. */
export function checkRequest(request: QueryRequest, defaults: RequestDefaults): CheckedRequest {
  const parsed = RequestSchema.safeParse(request);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `invalid request: ${issue.path.join('.') || 'request'}: ${issue.message}`);
  }
  const r = parsed.data;
  if (!(TASKS as readonly string[]).includes(r.task))
    throw new SetokimError(ErrorCodes.UNKNOWN_TASK, `unknown task '${r.task}'; use one of ${TASKS.join(', ')}`);
  const task = r.task as Task;
  if (r.conversation && !CONVERSATION_TASKS.includes(task)) {
    const takes = CONVERSATION_TASKS.join(' and ');
    throw new SetokimError(ErrorCodes.BAD_INPUT, `task '${task}' cannot run in a conversation (only ${takes} can)`);
  }
  // A conversation's follow-up carries no image: the conversation has it.
  const needsImage = task !== 'generate' && !r.conversation;
  if (needsImage && !r.image) throw new SetokimError(ErrorCodes.BAD_INPUT, `task '${task}' needs an image; send JPEG, PNG or WebP bytes`);
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
