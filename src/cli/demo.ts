/**
 * `setokim demo`: the whole runtime on one machine in one command. Builds the `tiny` model set if
 * it is missing, starts the embedded broker and an agent, generates sample images, sends queries
 * over MQTT, streams the answers, writes the token-mask pictures, and ends with a table of vision
 * tokens per image and time per stage.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import sharp from 'sharp';
import { z } from 'zod';
import { Agent } from '../agent/agent.js';
import { startEmbeddedBroker } from '../agent/broker.js';
import { QueryClient, newQueryId } from '../agent/client.js';
import { parseAgentConfig } from '../agent/config.js';
import type { ReplyEvent } from '../agent/codec.js';
import { ErrorCodes, SetokimError } from '../errors.js';
import { createPipeline, type QueryRequest } from '../pipeline/index.js';
import { synthesize } from '../../tools/export/synth.js';
import { CONFIGS } from '../../tools/export/configs.js';
import { stageSignature } from '../engine/contract.js';
import { savePicture } from './query.js';
import { group, parseCommandSettings, registerFlags, setting, type OutputOf } from '../settings.js';

/** Every flag of `setokim demo`, declared once (src/settings.ts). */
const demoSettings = group({
  models: setting({
    schema: z.string().min(1),
    default: path.join('models', 'tiny'),
    flag: '--models <dir>',
    help: 'where the tiny model set is kept (built there if missing)',
  }),
  out: setting({
    schema: z.string().min(1),
    default: path.join('out', 'demo'),
    flag: '--out <dir>',
    help: 'where pictures are written',
  }),
  seed: setting({
    schema: z.number().int().min(0).max(0xffffffff),
    default: 1,
    flag: '--seed <n>',
    read: 'number',
    help: 'weight seed of the tiny model set',
  }),
  maxTokens: setting({
    schema: z.number().int().positive().max(512),
    default: 24,
    flag: '--max-tokens <n>',
    read: 'number',
    help: 'new tokens per answer',
  }),
  color: setting({ schema: z.boolean(), default: true, flag: '--no-color', help: 'plain output' }),
});
type DemoOpts = OutputOf<typeof demoSettings>;

export function registerDemo(program: Command): void {
  const cmd = program
    .command('demo')
    .description(
      'see it work: build the tiny model set, start a broker and an agent, send image queries over MQTT, show tokens and timings',
    );
  registerFlags(cmd, demoSettings).action(async (raw: Record<string, unknown>) => {
    const opts = parseCommandSettings(demoSettings, raw, 'demo');
    try {
      await demo(opts);
    } catch (err) {
      // The demo is the first thing people run: a missing piece is one clear line, never a stack.
      if (err instanceof SetokimError) throw err;
      if (process.env.SETOKIM_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
      throw new SetokimError(
        ErrorCodes.INTERNAL,
        `demo failed: ${(err as Error)?.message ?? String(err)}. Run \`setokim doctor\` to see what this machine lacks (SETOKIM_DEBUG=1 shows the stack).`,
        { cause: err },
      );
    }
  });
}

type Paint = (s: string) => string;
function palette(on: boolean): Record<'bold' | 'dim' | 'green' | 'red' | 'cyan' | 'yellow', Paint> {
  const wrap =
    (code: number): Paint =>
    (s) =>
      on ? `\u001b[${code}m${s}\u001b[0m` : s;
  return { bold: wrap(1), dim: wrap(2), green: wrap(32), red: wrap(31), cyan: wrap(36), yellow: wrap(33) };
}

/** Three pictures SeTok should treat very differently: flat, a few objects, texture everywhere. */
async function sampleImages(dir: string): Promise<Array<{ name: string; png: Buffer }>> {
  const W = 384;
  const H = 384;
  const svg = (body: string): Buffer =>
    Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}">${body}</svg>`);
  const sky = await sharp(
    svg(
      `<defs><linearGradient id="g" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="#4a8fe0"/><stop offset="1" stop-color="#bcdcf7"/></linearGradient></defs><rect width="${W}" height="${H}" fill="url(#g)"/>`,
    ),
  )
    .png()
    .toBuffer();
  const shapes = await sharp(
    svg(
      `<rect width="${W}" height="${H}" fill="#f4f1ea"/><circle cx="110" cy="120" r="70" fill="#d83a34"/>` +
        `<rect x="210" y="60" width="130" height="110" fill="#2f6fd0"/><polygon points="190,340 290,190 370,340" fill="#3a9b4a"/>`,
    ),
  )
    .png()
    .toBuffer();
  // A seeded busy pattern: stripes, checks and noise, so every patch looks different.
  const raw = Buffer.alloc(W * H * 3);
  let s = 12345;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      s = (s * 1103515245 + 12345) >>> 0;
      const noise = (s >>> 24) & 0x3f;
      const i = (y * W + x) * 3;
      raw[i] = ((x * 7) ^ (y * 3)) & 0xff;
      raw[i + 1] = (((x >> 4) + (y >> 4)) & 1 ? 200 : 40) + noise - 32;
      raw[i + 2] = Math.round(128 + 120 * Math.sin((x + y) / 9)) ^ noise;
    }
  }
  const busy = await sharp(raw, { raw: { width: W, height: H, channels: 3 } })
    .png()
    .toBuffer();
  const images = [
    { name: 'sky', png: sky },
    { name: 'shapes', png: shapes },
    { name: 'busy', png: busy },
  ];
  await mkdir(dir, { recursive: true });
  for (const img of images) await writeFile(path.join(dir, `${img.name}.png`), img.png);
  return images;
}

/**
 * Whether the cached tiny set in `dir` follows this version's stage contract: one written before
 * the contract changed (the LLM's KV cache) is rebuilt rather than refused at load.
 */
export async function followsContract(dir: string): Promise<boolean> {
  const m = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8'));
  return isDeepStrictEqual(m.stages?.llm?.signature, stageSignature('llm', CONFIGS.tiny));
}

async function ensureModels(dir: string, seed: number, c: ReturnType<typeof palette>): Promise<void> {
  if (existsSync(path.join(dir, 'manifest.json'))) {
    if (await followsContract(dir)) {
      process.stdout.write(`  model set   ${dir} ${c.dim('(cached)')}\n`);
      return;
    }
    process.stdout.write(`  model set   ${dir} follows an older stage contract\n`);
  }
  process.stdout.write(`  model set   building the tiny set in ${dir} (seeded weights, once)\n`);
  const bar = process.stdout.isTTY
    ? new SingleBar(
        { format: '              {bar} {value}/{total} {stage}', hideCursor: true, clearOnComplete: true },
        Presets.shades_classic,
      )
    : undefined;
  await synthesize({
    config: 'tiny',
    seed,
    out: dir,
    onProgress: (e) => {
      if (bar && !bar.isActive) bar.start(e.total, 0, { stage: '' });
      if (bar) bar.update(e.done, { stage: e.stage ?? 'done' });
      else if (e.stage && e.bytes === undefined)
        process.stdout.write(`              ${e.done + 1}/${e.total} ${e.stage}\n`);
    },
  });
  bar?.stop();
  process.stdout.write(`              ${c.green('✓')} built\n`);
}

interface Row {
  label: string;
  image?: string;
  size?: string;
  patches?: number;
  visionTokens?: number;
  stages?: Record<string, number>;
  totalMs?: number;
  error?: string;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    '  ' + cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
  return [line(header), '  ' + widths.map((w) => '─'.repeat(w)).join('  '), ...rows.map(line)].join('\n') + '\n';
}

async function demo(o: DemoOpts): Promise<void> {
  const c = palette(o.color && process.stdout.isTTY && !process.env.NO_COLOR);
  const out = path.resolve(o.out);
  process.stdout.write(
    `${c.bold('setokim demo')} ${c.dim('— SeTok vision tokens + LLM, served over MQTT, all on this machine')}\n\n`,
  );
  await ensureModels(o.models, o.seed, c);

  const pipeline = await createPipeline({ modelsDir: o.models, maxTokens: o.maxTokens, maxInFlight: 1 });
  const broker = await startEmbeddedBroker();
  process.stdout.write(`  broker      ${broker.url} ${c.dim('(embedded aedes, MQTT 3.1.1)')}\n`);
  const config = parseAgentConfig({
    fleet: 'demo',
    device: 'edge-1',
    models: o.models,
    fleetSubscription: 'plain', // aedes has no shared subscriptions
    broker: { url: broker.url, protocolVersion: broker.protocolVersion },
    limits: { concurrency: 1, queueSize: 8, maxTokens: o.maxTokens },
    metrics: { port: 0 },
  });
  const agent = new Agent({ config, pipeline });
  let client: QueryClient | undefined;
  const rows: Row[] = [];
  try {
    await agent.start();
    process.stdout.write(
      `  agent       demo/edge-1 · ${pipeline.info.modelSetId} · ${pipeline.info.backend} · metrics http://127.0.0.1:${agent.metricsPort}/metrics\n`,
    );
    const images = await sampleImages(path.join(out, 'samples'));
    process.stdout.write(
      `  samples     ${images.map((i) => i.name + '.png').join(', ')} → ${path.relative(process.cwd(), path.join(out, 'samples')) || '.'}\n`,
    );
    client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
    process.stdout.write(
      c.dim(
        `\n  (the tiny model set has random weights: its words are noise; the tokens, pictures and timings are real)\n`,
      ),
    );

    const byName = new Map(images.map((i) => [i.name, i.png]));
    const queries: Array<{ task: QueryRequest['task']; image?: string; prompt?: string }> = [
      { task: 'describe', image: 'sky' },
      { task: 'ask', image: 'shapes', prompt: 'How many shapes are there, and what colours?' },
      { task: 'describe', image: 'busy' },
      { task: 'segment', image: 'shapes', prompt: 'the red circle' },
      { task: 'generate', prompt: 'a lighthouse at dusk' },
    ];
    for (const q of queries) {
      const label = `${q.task}${q.image ? ` ${q.image}.png` : ''}`;
      process.stdout.write(`\n${c.cyan('▶ ' + label)}${q.prompt ? c.dim(`  "${q.prompt}"`) : ''}\n`);
      const request: QueryRequest = { id: newQueryId(), task: q.task, generation: { maxTokens: o.maxTokens, seed: 7 } };
      if (q.prompt) request.prompt = q.prompt;
      if (q.image) request.image = byName.get(q.image)!;
      const row: Row = { label, ...(q.image ? { image: q.image } : {}) };
      rows.push(row);
      let notes: string[] = [];
      const masks: string[] = [];
      let inText = false;
      const base = q.image ? `${q.image}-${q.task}` : q.task;
      for await (const e of client.query({ fleet: 'demo', device: 'edge-1' }, request, { timeoutMs: 120_000 })) {
        const file = await savePicture(e as ReplyEvent, out, base);
        const rel = file ? path.relative(process.cwd(), file) : '';
        if (e.type === 'clustered') {
          row.patches = e.patches;
          row.visionTokens = e.visionTokens;
          process.stdout.write(
            c.yellow(`  [${e.visionTokens} vision tokens from ${e.patches} patches → ${rel}]`) + '\n',
          );
        } else if (e.type === 'text') {
          process.stdout.write((inText ? '' : '  ') + e.delta.replace(/\n/g, '\n  '));
          inText = true;
        } else if (e.type === 'mask') masks.push(rel);
        else if (e.type === 'image') notes.push(`image ${e.width}x${e.height} → ${rel}`);
        else if (e.type === 'done') {
          row.stages = e.stages;
          row.totalMs = e.totalMs;
          notes.push(`${c.green('✓')} ${e.generatedTokens} tokens, ${e.totalMs.toFixed(0)} ms`);
        } else if (e.type === 'error') {
          row.error = e.code;
          notes.push(`${c.red('✗')} ${e.code}: ${e.message}`);
        }
      }
      if (masks.length)
        notes.unshift(
          `${masks.length} masks → ${masks[0]}${masks.length > 1 ? ` … ${path.basename(masks.at(-1)!)}` : ''}`,
        );
      process.stdout.write((inText ? '\n' : '') + notes.map((n) => `  ${n}\n`).join(''));
      notes = [];
    }
  } finally {
    await client?.close();
    await agent.stop(5_000);
    await broker.close();
    await pipeline.close();
  }

  const withImages = new Map<string, Row>();
  for (const r of rows)
    if (r.image && r.visionTokens !== undefined && !withImages.has(r.image)) withImages.set(r.image, r);
  process.stdout.write(
    `\n${c.bold('Vision tokens per image')} ${c.dim('(SeTok merges patches into as many tokens as the picture needs)')}\n`,
  );
  process.stdout.write(
    table(
      ['image', 'patches', 'vision tokens'],
      [...withImages.values()].map((r) => [`${r.image}.png`, String(r.patches), String(r.visionTokens)]),
    ),
  );
  const stageNames = [...new Set(rows.flatMap((r) => Object.keys(r.stages ?? {})))];
  process.stdout.write(`\n${c.bold('Time per stage (ms)')}\n`);
  process.stdout.write(
    table(
      ['query', ...stageNames, 'total'],
      rows.map((r) => [
        r.label,
        ...stageNames.map((s) => (r.stages?.[s] !== undefined ? r.stages[s]!.toFixed(1) : '')),
        r.error ?? r.totalMs?.toFixed(0) ?? '',
      ]),
    ),
  );
  process.stdout.write(
    `\n  pictures in ${path.relative(process.cwd(), out) || '.'}/  ·  next: setokim agent --help, setokim query --help, docs/MQTT.md\n`,
  );
  const failed = rows.filter((r) => r.error);
  if (failed.length === rows.length)
    throw new SetokimError(
      ErrorCodes.INTERNAL,
      `every demo query failed (first: ${failed[0]?.error}); run setokim doctor`,
    );
}
