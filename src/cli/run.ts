/**
 * `setokim run`: one local query, no broker. Streams the answer to stdout as it is generated,
 * writes the pictures (token masks, masks, generated image) beside the image or into --out, and
 * ends with a summary (token counts, time per stage). --json prints one JSON object per event.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { createPipeline, probeImage, type PipelineEvent, type QueryRequest } from '../pipeline/index.js';
import {
  generationOf,
  modelsSetting,
  precisionSetting,
  requestSettings,
  runtimeSettings,
} from '../pipeline/settings.js';
import { group, parseCommandSettings, registerFlags, setting, type OutputOf } from '../settings.js';

/** Every flag of `setokim run`, declared once (src/settings.ts and src/pipeline/settings.ts). */
const runSettings = group({
  models: modelsSetting({ required: true }),
  ...requestSettings,
  json: setting({
    schema: z.boolean(),
    default: false,
    flag: '--json',
    help: 'print every event as one JSON line (pictures as file paths)',
  }),
  out: setting({
    schema: z.string().min(1),
    flag: '--out <dir>',
    help: 'where to write pictures (default: beside the image, or the current directory)',
  }),
  ...runtimeSettings,
  precision: precisionSetting,
});
type RunOpts = OutputOf<typeof runSettings>;

export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('answer one query locally (no broker): stream the text, write token masks, masks and images');
  registerFlags(cmd, runSettings).action(async (raw: Record<string, unknown>) => {
    await runQuery(parseCommandSettings(runSettings, raw, 'run'));
  });
}

async function runQuery(o: RunOpts): Promise<void> {
  let image: Uint8Array | undefined;
  if (o.image) {
    try {
      image = new Uint8Array(await readFile(o.image));
    } catch (err) {
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read --image ${o.image}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    await probeImage(image); // a broken image fails before the models load
  }
  const outDir = o.out ?? (o.image ? path.dirname(path.resolve(o.image)) : process.cwd());
  const base = o.image ? path.basename(o.image).replace(/\.[^.]+$/, '') : 'generated';
  const pipeline = await createPipeline({
    modelsDir: o.models,
    backend: o.backend,
    threads: o.threads,
    maxInFlight: 1,
    verify: o.verify,
    precision: o.precision,
  });
  const request: QueryRequest = {
    id: `cli-${process.pid}`,
    task: o.task,
    prompt: o.prompt,
    image,
    generation: generationOf(o),
  };
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  const write = async (name: string, png: Uint8Array) => {
    await mkdir(outDir, { recursive: true });
    const file = path.join(outDir, `${base}.${name}.png`);
    await writeFile(file, png);
    return file;
  };
  const files: string[] = [];
  let failure: Extract<PipelineEvent, { type: 'error' }> | undefined;
  let done: Extract<PipelineEvent, { type: 'done' }> | undefined;
  try {
    for await (const e of pipeline.run(request, { signal: ac.signal })) {
      let file: string | undefined;
      if (e.type === 'clustered') file = await write('tokens', e.maskPng);
      else if (e.type === 'mask') file = await write(e.referring ? 'mask-referring' : `mask-${e.index}`, e.png);
      else if (e.type === 'image') file = await write('image', e.png);
      if (file) files.push(file);
      if (e.type === 'error') failure = e;
      if (e.type === 'done') done = e;
      if (o.json) {
        process.stdout.write(
          JSON.stringify(e, (k, v) => (v instanceof Uint8Array ? undefined : v)).replace(
            /}$/,
            file ? `,"file":${JSON.stringify(file)}}` : '}',
          ) + '\n',
        );
      } else if (e.type === 'text') {
        process.stdout.write(e.delta);
      } else if (e.type === 'clustered') {
        process.stderr.write(`[${e.visionTokens} vision tokens from ${e.patches} patches]\n`);
      }
    }
  } finally {
    process.off('SIGINT', onSigint);
    await pipeline.close();
  }
  if (failure) throw new SetokimError(failure.code, failure.message);
  if (!o.json && done) process.stdout.write('\n' + summary(done, files));
}

export function summary(d: Extract<PipelineEvent, { type: 'done' }>, files: readonly string[]): string {
  const decode = d.stages.decode ?? 0;
  const rate =
    decode > 0 && d.generatedTokens > 1
      ? ` (${((d.generatedTokens - 1) / (decode / 1000)).toFixed(1)} tokens/s decode)`
      : '';
  const stages = Object.entries(d.stages)
    .map(([s, ms]) => `${s} ${ms.toFixed(1)}`)
    .join(', ');
  const lines = [
    `--`,
    `tokens: ${d.visionTokens} vision, ${d.promptTokens} prompt, ${d.generatedTokens} generated (${d.finishReason})${rate}`,
    `time: ${d.totalMs.toFixed(0)} ms total${d.firstTokenMs !== undefined ? `, first token at ${d.firstTokenMs.toFixed(0)} ms` : ''}`,
    `stages (ms): ${stages}`,
    ...files.map((f) => `wrote ${f}`),
  ];
  return lines.join('\n') + '\n';
}
