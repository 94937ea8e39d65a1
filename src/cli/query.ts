/**
 * `setokim query`: send one image query to a device or a fleet over MQTT, stream the answer to the
 * terminal as it is generated, and save the pictures (token mask, masks, generated image).
 * Ctrl-C sends a cancel, so the agent frees its slot.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { QueryClient, newQueryId } from '../agent/client.js';
import type { ReplyEvent } from '../agent/codec.js';
import { levelName, type Target } from '../mqtt/topics.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { TASKS, type QueryRequest } from '../pipeline/types.js';
import { summary } from './run.js';
import { parseFlags } from '../flags.js';

const QueryFlags = z.object({
  broker: z.string().regex(/^(mqtts?|wss?|tcp|ssl):\/\//, 'must start with mqtt://, mqtts://, ws:// or wss://'),
  fleet: levelName,
  device: levelName.optional(),
  image: z.string().min(1).optional(),
  prompt: z.string().optional(),
  task: z.enum(TASKS),
  out: z.string().min(1).optional(),
  mqttVersion: z.coerce.number().pipe(z.union([z.literal(4), z.literal(5)])),
  timeout: z.coerce.number().positive(),
  maxTokens: z.coerce.number().int().positive().optional(),
  temperature: z.coerce.number().min(0).optional(),
  seed: z.coerce.number().int().min(0).max(0xffffffff).optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  ca: z.string().optional(),
  json: z.boolean().optional(),
  conversation: z.string().min(1).max(128).optional(),
});
type QueryOpts = z.infer<typeof QueryFlags>;

export function registerQuery(program: Command): void {
  program
    .command('query')
    .description('ask an agent over MQTT: stream the answer, save the pictures (see docs/MQTT.md)')
    .requiredOption('--broker <url>', 'mqtt://host:1883 or mqtts://host:8883')
    .option('--fleet <name>', 'fleet name', 'default')
    .option('--device <id>', 'one device; without it any agent of the fleet answers')
    .option('--image <file>', 'JPEG, PNG or WebP image (every task but generate)')
    .option('--prompt <text>', 'the question or instruction (describe has a default)')
    .option('--task <task>', `one of ${TASKS.join(', ')}`, 'ask')
    .option('--out <dir>', 'where to write pictures (default: the current directory)')
    .option('--mqtt-version <v>', '5 (default) or 4 for MQTT 3.1.1 brokers such as the embedded one', '5')
    .option('--timeout <s>', 'give up after this many seconds (also sent as the query deadline)', '60')
    .option('--max-tokens <n>', 'new tokens at most')
    .option('--temperature <t>', '0 = greedy')
    .option('--seed <n>', 'sampling seed')
    .option('--username <name>', 'broker user name')
    .option('--password <secret>', 'broker password')
    .option('--ca <pem>', 'CA certificate that signed the broker (mqtts)')
    .option('--json', 'one JSON line per reply event (pictures as file paths)')
    .option('--conversation <id>', 'start (with --image) or continue a conversation; follow-ups to the same --device')
    .action(async (raw: unknown) => {
      await sendQuery(parseFlags(QueryFlags, raw, 'query'));
    });
}

async function readInput(file: string | undefined, what: string): Promise<Uint8Array | undefined> {
  if (!file) return undefined;
  try {
    return new Uint8Array(await readFile(file));
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** Writes the pictures of one reply event; returns the file written, if any. */
export async function savePicture(e: ReplyEvent, outDir: string, base: string): Promise<string | undefined> {
  let name: string | undefined;
  let png: Uint8Array | undefined;
  if (e.type === 'clustered') [name, png] = ['tokens', e.maskPng];
  else if (e.type === 'mask') [name, png] = [e.referring ? 'mask-referring' : `mask-${e.index}`, e.png];
  else if (e.type === 'image') [name, png] = ['image', e.png];
  if (!name || !png?.length) return undefined;
  await mkdir(outDir, { recursive: true });
  const file = path.join(outDir, `${base}.${name}.png`);
  await writeFile(file, png);
  return file;
}

async function sendQuery(o: QueryOpts): Promise<void> {
  const image = await readInput(o.image, '--image');
  const ca = o.ca ? Buffer.from((await readInput(o.ca, '--ca'))!) : undefined;
  const client = await QueryClient.connect({
    url: o.broker,
    protocolVersion: o.mqttVersion as 4 | 5,
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
    ...(ca ? { ca } : {}),
  });
  const target: Target = o.device ? { fleet: o.fleet, device: o.device } : { fleet: o.fleet };
  const request: QueryRequest = { id: newQueryId(), task: o.task };
  if (o.prompt !== undefined) request.prompt = o.prompt;
  if (image) request.image = image;
  if (o.conversation) request.conversation = o.conversation;
  const generation = { maxTokens: o.maxTokens, temperature: o.temperature, seed: o.seed };
  if (Object.values(generation).some((v) => v !== undefined)) request.generation = JSON.parse(JSON.stringify(generation));
  const outDir = o.out ?? process.cwd();
  const base = o.image ? path.basename(o.image).replace(/\.[^.]+$/, '') : 'generated';
  const ac = new AbortController();
  const onSigint = (): void => {
    void client.cancel(target, request.id).finally(() => ac.abort());
  };
  process.once('SIGINT', onSigint);
  const files: string[] = [];
  let failure: Extract<ReplyEvent, { type: 'error' }> | undefined;
  try {
    for await (const e of client.query(target, request, { timeoutMs: o.timeout * 1000, signal: ac.signal })) {
      const file = await savePicture(e, outDir, base);
      if (file) files.push(file);
      if (o.json) {
        process.stdout.write(JSON.stringify(e, (k, v) => (v instanceof Uint8Array || k === 'correlation' ? undefined : v)).replace(/}$/, file ? `,"file":${JSON.stringify(file)}}` : '}') + '\n');
        continue;
      }
      if (e.type === 'accepted') process.stderr.write(`[accepted by ${e.device}]\n`);
      else if (e.type === 'clustered') process.stderr.write(`[${e.visionTokens} vision tokens from ${e.patches} patches]\n`);
      else if (e.type === 'text') process.stdout.write(e.delta);
      else if (e.type === 'done') process.stdout.write('\n' + summary(e, files));
      else if (e.type === 'error') failure = e;
    }
  } finally {
    process.off('SIGINT', onSigint);
    await client.close();
  }
  if (failure) throw new SetokimError(failure.code, `${failure.device ? `${failure.device}: ` : ''}${failure.message}`);
}
