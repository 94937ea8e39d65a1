/**
 * The settings every command that runs the pipeline or asks it something shares, declared once
 * (src/settings.ts): where the model set is and how it runs (the agent, `setokim run`, `setokim
 * watch`), and what one query asks (`setokim run`, `setokim query`; `watch` takes --max-tokens).
 * The generation settings take their bounds from GenerationSchema, which checks every request
 * the agent receives, so a flag accepts exactly what the wire does.
 */
import { z } from 'zod';
import { PRECISIONS } from '../engine/manifest.js';
import { setting, sharedSetting } from '../settings.js';
import { GenerationSchema } from './request.js';
import { TASKS } from './types.js';

/**
 * `--models` (SETOKIM_MODELS): the model set directory; `required` where the command needs it,
 * optional for the agent (whose update store may serve a set instead); `note` adds what is particular.
 */
export const modelsSetting = <P extends { required: true } | { optional: true }>(presence: P, note?: string) =>
  sharedSetting(
    {
      schema: z.string().min(1),
      flag: '--models <dir>',
      env: 'SETOKIM_MODELS',
      help: `model set directory (manifest.json + stages)${note ? `; ${note}` : ''}`,
    },
    presence,
  );

/** How a model set runs here (createPipeline's backend, threads and verify). */
export const runtimeSettings = {
  backend: setting({
    schema: z.string().min(1),
    flag: '--backend <name>',
    env: 'SETOKIM_BACKEND',
    help: 'only this backend (onnxruntime-cpu, tensorrt)',
  }),
  threads: setting({
    schema: z.number().int().positive(),
    flag: '--threads <n>',
    env: 'SETOKIM_THREADS',
    read: 'number',
    help: 'CPU threads per stage session',
  }),
  verify: setting({
    schema: z.boolean(),
    default: true,
    flag: '--no-verify',
    help: 'skip the sha256 check of the model files when the set opens',
  }),
} as const;

/** Which build of each stage runs (a stage without it runs its main file). */
export const precisionSetting = setting({
  schema: z.enum(PRECISIONS),
  flag: '--precision <p>',
  help: `which build of each stage (${PRECISIONS.join(' | ')}); a stage without it runs its main file`,
});

const generation = GenerationSchema.shape;

/** How the answer is generated: the request's `generation` fields, with the wire's bounds. */
export const generationSettings = {
  maxTokens: setting({
    schema: generation.maxTokens.unwrap(),
    flag: '--max-tokens <n>',
    read: 'number',
    help: 'new tokens at most',
  }),
  temperature: setting({
    schema: generation.temperature.unwrap(),
    flag: '--temperature <t>',
    read: 'number',
    help: '0 = greedy (the default)',
  }),
  topK: setting({
    schema: generation.topK.unwrap(),
    flag: '--top-k <k>',
    read: 'number',
    help: 'sample among the k best tokens (0 = off)',
  }),
  topP: setting({
    schema: generation.topP.unwrap(),
    flag: '--top-p <p>',
    read: 'number',
    help: 'nucleus sampling mass (1 = off)',
  }),
  seed: setting({
    schema: generation.seed.unwrap(),
    flag: '--seed <n>',
    read: 'number',
    help: 'sampling seed: the same seed gives the same answer and pictures',
  }),
  stop: setting({
    schema: generation.stop.unwrap(),
    flag: '--stop <text...>',
    help: 'stop strings',
  }),
} as const;

/** What one query asks: the task, its image and prompt, and how the answer is generated. */
export const requestSettings = {
  image: setting({
    schema: z.string().min(1),
    flag: '--image <file>',
    help: 'JPEG, PNG or WebP image (every task but generate)',
  }),
  prompt: setting({
    schema: z.string(),
    flag: '--prompt <text>',
    help: 'the question or instruction (describe has a default)',
  }),
  task: setting({ schema: z.enum(TASKS), default: 'ask', flag: '--task <task>', help: `one of ${TASKS.join(', ')}` }),
  ...generationSettings,
} as const;

type Generation = z.infer<typeof GenerationSchema>;

/** The request's `generation` from parsed settings: the generation fields given, undefined when none is. */
export function generationOf(o: Generation): Generation | undefined {
  const given = (Object.keys(generationSettings) as (keyof Generation)[]).filter((k) => o[k] !== undefined);
  return given.length ? Object.fromEntries(given.map((k) => [k, o[k]])) : undefined;
}
