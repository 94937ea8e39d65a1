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
import type { Target } from '../mqtt/topics.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { ConversationIdSchema } from '../pipeline/request.js';
import { generationOf, requestSettings } from '../pipeline/settings.js';
import type { QueryRequest } from '../pipeline/types.js';
import { summary } from './run.js';
import { credentialOptions, brokerGroup, deviceSetting, fleetSetting } from '../mqtt/connection.js';
import { group, parseCommandSettings, registerFlags, setting, type OutputOf } from '../settings.js';

/** Every flag of `setokim query`, declared once (src/settings.ts): schema, default, help, variable. */
const querySettings = group({
  broker: brokerGroup({}),
  fleet: fleetSetting({ default: 'default' }),
  device: deviceSetting({ optional: true }, 'without it any agent of the fleet answers'),
  ...requestSettings,
  out: setting({
    schema: z.string().min(1),
    flag: '--out <dir>',
    help: 'where to write pictures (default: the current directory)',
  }),
  timeout: setting({
    schema: z.number().positive(),
    default: 60,
    flag: '--timeout <s>',
    read: 'number',
    help: 'give up after this many seconds (also sent as the query deadline)',
  }),
  json: setting({
    schema: z.boolean(),
    default: false,
    flag: '--json',
    help: 'one JSON line per reply event (pictures as file paths)',
  }),
  conversation: setting({
    schema: ConversationIdSchema,
    flag: '--conversation <id>',
    help: 'start (with --image) or continue a conversation; follow-ups to the same --device',
  }),
});
type QueryOpts = OutputOf<typeof querySettings>;

export function registerQuery(program: Command): void {
  const cmd = program
    .command('query')
    .description('ask an agent over MQTT: stream the answer, save the pictures (see docs/MQTT.md)');
  registerFlags(cmd, querySettings).action(async (raw: Record<string, unknown>) => {
    await sendQuery(parseCommandSettings(querySettings, raw, 'query'));
  });
}

async function readInput(file: string | undefined, what: string): Promise<Uint8Array | undefined> {
  if (!file) return undefined;
  try {
    return new Uint8Array(await readFile(file));
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read ${what} ${file}: ${(err as Error).message}`, {
      cause: err,
    });
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
  const client = await QueryClient.connect({
    url: o.broker.url,
    ...credentialOptions(o.broker),
    protocolVersion: o.broker.protocolVersion,
  });
  const target: Target = o.device ? { fleet: o.fleet, device: o.device } : { fleet: o.fleet };
  const request: QueryRequest = { id: newQueryId(), task: o.task };
  if (o.prompt !== undefined) request.prompt = o.prompt;
  if (image) request.image = image;
  if (o.conversation) request.conversation = o.conversation;
  const generation = generationOf(o);
  if (generation) request.generation = generation;
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
        process.stdout.write(
          JSON.stringify(e, (k, v) => (v instanceof Uint8Array || k === 'correlation' ? undefined : v)).replace(
            /}$/,
            file ? `,"file":${JSON.stringify(file)}}` : '}',
          ) + '\n',
        );
        continue;
      }
      if (e.type === 'accepted') process.stderr.write(`[accepted by ${e.device}]\n`);
      else if (e.type === 'clustered')
        process.stderr.write(`[${e.visionTokens} vision tokens from ${e.patches} patches]\n`);
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
