/**
 * `setokim agent` as a process on a real mosquitto with the real tiny pipeline: SIGTERM in the
 * middle of a query lets it finish, publishes offline and exits 0; `setokim query` streams an
 * answer and exits with the code's status on an error reply, and holds a conversation
 * (--conversation); a bad config is one BAD_CONFIG line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { childEnv } from '../helpers/child-env.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { synthesize } from '../../tools/export/synth.js';
import { brokerKinds, startBroker } from './brokers.js';
import { samplePng } from './stub-pipeline.js';

const cli = fileURLToPath(new URL('./fixtures/cli.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'setokim-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const models = join(dir, 'tiny');
await synthesize({ config: 'tiny', seed: 3, out: models });

function run(
  args: string[],
  env: Record<string, string> = {},
): { child: ChildProcess; stderr: () => string; stdout: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], {
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stderr: () => err, stdout: () => out, exit };
}

function waitFor(text: () => string, pattern: RegExp, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (pattern.test(text())) {
        child.stderr!.off('data', check);
        child.off('exit', fail);
        resolve();
      }
    };
    const fail = (): void => reject(new Error(`exited before ${pattern}:\n${text()}`));
    child.stderr!.on('data', check);
    child.once('exit', fail);
    check();
  });
}

const kind = brokerKinds[0]!;

t.test(`${kind}: SIGTERM finishes the query in flight, publishes offline, exits 0`, async (t) => {
  const broker = await startBroker(kind);
  t.teardown(() => broker.close());
  const agent = run([
    'agent',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(broker.protocolVersion),
    '--models',
    models,
    '--fleet',
    'cli',
    '--device',
    'dev',
    '--metrics-port',
    '0',
    '--no-verify',
    '--fleet-subscription',
    broker.shared ? 'shared' : 'plain',
  ]);
  t.teardown(() => agent.child.kill('SIGKILL'));
  await waitFor(agent.stderr, /serving setokim\/v1\/cli\/dev\/query/, agent.child);
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(() => client.close());
  const types: string[] = [];
  for await (const e of client.query(
    { fleet: 'cli', device: 'dev' },
    { id: newQueryId(), task: 'ask', prompt: 'what is this?', image: await samplePng(), generation: { maxTokens: 12 } },
  )) {
    types.push(e.type);
    if (e.type === 'accepted') agent.child.kill('SIGTERM');
  }
  t.equal(types.at(-1), 'done', 'the query in flight finished after SIGTERM');
  t.equal(await agent.exit, 0, 'exit status 0');
  t.match(agent.stderr(), /SIGTERM: taking no new work/);
  t.equal((await client.status('cli', 'dev'))?.online, false, 'offline status retained');
});

t.test(`${kind}: setokim query streams an answer and saves the token mask`, async (t) => {
  const broker = await startBroker(kind);
  t.teardown(() => broker.close());
  writeFileSync(
    join(dir, 'agent.yaml'),
    `fleet: cli\ndevice: q1\nmodels: ${models}\nbroker:\n  url: ${broker.url}\n  protocolVersion: ${broker.protocolVersion}\nfleetSubscription: ${broker.shared ? 'shared' : 'plain'}\nmetrics:\n  enabled: false\npipeline:\n  verify: false\n`,
  );
  const served = run(['agent', '--config', join(dir, 'agent.yaml')]);
  t.teardown(() => served.child.kill('SIGKILL'));
  await waitFor(served.stderr, /serving/, served.child);
  const image = join(dir, 'photo.png');
  writeFileSync(image, await samplePng(48, 32));
  const q = run([
    'query',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(broker.protocolVersion),
    '--fleet',
    'cli',
    '--image',
    image,
    '--prompt',
    'hello',
    '--max-tokens',
    '3',
    '--out',
    join(dir, 'pics'),
  ]);
  t.equal(await q.exit, 0, 'exit 0');
  t.match(q.stderr(), /\[accepted by q1\]/);
  t.match(q.stdout(), /tokens: \d+ vision, \d+ prompt, 3 generated/);
  t.same([...readFileSync(join(dir, 'pics', 'photo.tokens.png')).subarray(1, 4)], [0x50, 0x4e, 0x47]);
  const bad = run([
    'query',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(broker.protocolVersion),
    '--fleet',
    'cli',
    '--device',
    'q1',
    '--image',
    '/etc/hostname',
    '--prompt',
    'x',
  ]);
  t.equal(await bad.exit, 2, 'BAD_IMAGE exits 2');
  t.match(bad.stderr(), /error \[BAD_IMAGE\]: q1: the image is not JPEG, PNG or WebP/);
  t.notMatch(bad.stderr(), /\n\s+at /, 'no stack trace');
  // A conversation: the first turn carries the image, the follow-up only its question.
  const base = [
    'query',
    '--broker',
    broker.url,
    '--mqtt-version',
    String(broker.protocolVersion),
    '--fleet',
    'cli',
    '--device',
    'q1',
    '--max-tokens',
    '2',
    '--json',
  ];
  const first = run([
    ...base,
    '--conversation',
    'desk',
    '--image',
    image,
    '--prompt',
    'hello',
    '--out',
    join(dir, 'pics'),
  ]);
  t.equal(await first.exit, 0, first.stderr());
  const follow = run([...base, '--conversation', 'desk', '--prompt', 'and then?']);
  t.equal(await follow.exit, 0, follow.stderr());
  const done = (out: string) =>
    JSON.parse(
      out
        .trim()
        .split('\n')
        .find((l) => l.includes('"type":"done"'))!,
    );
  t.ok(done(follow.stdout()).promptTokens > done(first.stdout()).promptTokens, 'the follow-up sees the first turn');
  t.equal(done(follow.stdout()).visionTokens, done(first.stdout()).visionTokens, 'and the image of the first');
  const gone = run([...base.filter((a) => a !== '--json'), '--conversation', 'never', '--prompt', 'x']);
  t.equal(await gone.exit, 4, 'CONVERSATION_UNKNOWN exits 4');
  t.match(gone.stderr(), /error \[CONVERSATION_UNKNOWN\]: q1: conversation 'never' is not held here/);
  // The generation flags reach the agent: sampling at temperature 1 among the 1 best tokens is greedy
  // (over the whole vocabulary it would not be), and the same seed gives the same answer.
  const answer = async (...flags: string[]) => {
    const r = run([
      ...base,
      '--image',
      image,
      '--prompt',
      'hello',
      '--max-tokens',
      '4',
      '--out',
      join(dir, 'pics'),
      ...flags,
    ]);
    t.equal(await r.exit, 0, r.stderr());
    return r
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; delta?: string })
      .filter((e) => e.type === 'text')
      .map((e) => e.delta)
      .join('');
  };
  const greedy = await answer('--temperature', '0');
  t.equal(await answer('--temperature', '1', '--top-k', '1', '--seed', '5'), greedy, '--top-k 1 is greedy');
  const sampled = await answer('--temperature', '1', '--top-p', '1', '--seed', '5');
  t.equal(await answer('--temperature', '1', '--top-p', '1', '--seed', '5'), sampled, 'the same seed, the same answer');
  t.not(sampled, greedy, 'sampling over the whole vocabulary is not greedy');
  served.child.kill('SIGTERM');
  t.equal(await served.exit, 0);
});

t.test('a bad configuration is one BAD_CONFIG message, exit 2', async (t) => {
  const r = run(['agent', '--broker', 'http://nope', '--models', models, '--fleet', 'a/b']);
  t.equal(await r.exit, 2);
  t.match(r.stderr(), /error \[BAD_CONFIG\]: invalid agent configuration/);
  t.match(r.stderr(), /fleet: use letters/);
  t.match(r.stderr(), /broker\.url: must start with mqtt/);
  t.notMatch(r.stderr(), /\n\s+at /, 'no stack trace');
});
