/**
 * One declaration per setting (src/settings.ts): the schema, the variables, the flags, their
 * mapping and their help are all derived from one tree. These tests check each derivation on a
 * small tree, then that the real commands' trees are consistent (no flag or variable twice).
 */
import { Command } from 'commander';
import t from 'tap';
import { z } from 'zod';
import { agentSettings } from '../src/agent/config.js';
import {
  flagOf,
  fromEnv,
  fromFlags,
  group,
  leaves,
  parseCommandSettings,
  parseSettings,
  registerFlags,
  schemaOf,
  setting,
} from '../src/settings.js';

const tree = group({
  name: setting({
    schema: z.string().min(1),
    required: true,
    flag: '--name <n>',
    env: 'SETOKIM_T_NAME',
    help: 'a name',
  }),
  size: setting({
    schema: z.number().int().min(1),
    default: 4,
    flag: '--size <n>',
    env: 'SETOKIM_T_SIZE',
    read: 'number',
    help: 'a size',
  }),
  on: setting({
    schema: z.boolean(),
    default: true,
    flag: '--no-on',
    env: 'SETOKIM_T_ON',
    read: 'boolean',
    help: 'turn it off',
  }),
  strict: setting({ schema: z.boolean(), default: true, flag: '--lax', switchValue: false, help: 'not strict' }),
  allow: setting({
    schema: z.array(z.string().min(1)),
    default: [],
    flag: '--allow <prefix>',
    env: 'SETOKIM_T_ALLOW',
    read: 'list',
    help: 'prefixes',
  }),
  extra: group(
    { a: setting({ schema: z.string(), required: true, help: 'needed when extra is given' }) },
    { optional: true },
  ),
});

t.test('the schema: defaults filled in, required settings required, optional groups absent', async (t) => {
  const s = schemaOf(tree);
  t.same(s.parse({ name: 'x' }), { name: 'x', size: 4, on: true, strict: true, allow: [] });
  t.notOk(s.safeParse({}).success, 'name is required');
  t.notOk(s.safeParse({ name: 'x', extra: {} }).success, 'a given optional group needs its required settings');
  t.notOk(s.safeParse({ name: 'x', bogus: 1 }).success, 'unknown keys are refused');
  t.same(s.parse({ name: 'x', extra: { a: 'y' } }).extra, { a: 'y' });
});

t.test('variables: read by kind, set on their paths; one that does not read is BAD_CONFIG naming it', async (t) => {
  t.same(
    fromEnv(tree, {
      SETOKIM_T_SIZE: '8',
      SETOKIM_T_ON: 'no',
      SETOKIM_T_ALLOW: 'https://a/, https://b/',
      SETOKIM_T_NAME: '',
    }),
    {
      size: 8,
      on: false,
      allow: ['https://a/', 'https://b/'],
    },
  );
  t.throws(() => fromEnv(tree, { SETOKIM_T_SIZE: 'many' }), {
    code: 'BAD_CONFIG',
    message: 'SETOKIM_T_SIZE=many is not a number.',
  });
  t.throws(() => fromEnv(tree, { SETOKIM_T_ON: 'maybe' }), {
    code: 'BAD_CONFIG',
    message: 'SETOKIM_T_ON=maybe: use true or false.',
  });
});

t.test(
  'flags through commander: values, switches both ways, repeated lists; help names the variable and default',
  async (t) => {
    const parse = (argv: string[]) => {
      const cmd = registerFlags(new Command('t').exitOverride(), tree);
      cmd.parse(argv, { from: 'user' });
      return fromFlags(tree, cmd.opts(), 't');
    };
    t.same(parse([]), {}, 'nothing given: nothing set, so lower sources show through');
    t.same(parse(['--name', 'n', '--size', '2', '--no-on', '--lax', '--allow', 'a,b', '--allow', 'c']), {
      name: 'n',
      size: 2,
      on: false,
      strict: false,
      allow: ['a', 'b', 'c'],
    });
    t.throws(() => parse(['--size', '']), { code: 'BAD_ARGUMENT', message: 't: --size:  is not a number' });
    t.throws(() => parse(['--size', '3x']), { code: 'BAD_ARGUMENT', message: 't: --size: 3x is not a number' });
    const help = registerFlags(new Command('t').configureHelp({ helpWidth: 1000 }), tree).helpInformation();
    t.match(help, /--size <n>\s+a size \(SETOKIM_T_SIZE; default 4\)/);
    t.match(help, /--no-on\s+turn it off \(SETOKIM_T_ON; default true\)/);
  },
);

t.test('a command: variables below flags, errors name the flag (BAD_ARGUMENT)', async (t) => {
  const env = { SETOKIM_T_NAME: 'from-env', SETOKIM_T_SIZE: '5' };
  t.same(parseCommandSettings(tree, { size: '6' }, 't', env), {
    name: 'from-env',
    size: 6,
    on: true,
    strict: true,
    allow: [],
  });
  t.throws(() => parseCommandSettings(tree, { size: '0' }, 't', {}), {
    code: 'BAD_ARGUMENT',
    message: /^t: --name: .*; --size: /,
  });
});

t.test(
  'a variadic flag keeps every value; a default goes through the schema; an item names its flag; switch help',
  async (t) => {
    const more = group({
      dirs: setting({ schema: z.array(z.string().min(1)).min(1), flag: '--dirs <dirs...>', help: 'directories' }),
      block: setting({
        schema: z.enum(['32', '64']).transform(Number),
        default: '32',
        flag: '--block <k>',
        help: 'a block size',
      }),
      tags: setting({
        schema: z.array(z.string().regex(/^[a-z]+$/, 'lowercase letters')),
        flag: '--tag <t>',
        read: 'list',
        help: 'tags',
      }),
      quiet: setting({ schema: z.boolean(), default: true, flag: '--no-quiet', help: 'talk' }),
    });
    const parse = (argv: string[]) => {
      const cmd = registerFlags(new Command('t').exitOverride(), more);
      cmd.parse(argv, { from: 'user' });
      return parseCommandSettings(more, cmd.opts(), 't', {});
    };
    // Before: only the first directory was kept, and the default '32' came out as text, not 32.
    t.same(parse(['--dirs', 'a,b', 'c', '--dirs', 'd']), { dirs: ['a,b', 'c', 'd'], block: 32, quiet: true });
    t.same(parse(['--block', '64', '--no-quiet']), { block: 64, quiet: false });
    // Before: the message named the path `tags.1` instead of the flag.
    t.throws(() => parse(['--tag', 'ok', '--tag', 'NO']), {
      code: 'BAD_ARGUMENT',
      message: 't: --tag: lowercase letters',
    });
    t.throws(() => parse(['--dirs', '']), { code: 'BAD_ARGUMENT', message: /^t: --dirs: / });
    const help = registerFlags(new Command('t').configureHelp({ helpWidth: 1000 }), more).helpInformation();
    t.match(help, /--block <k>\s+a block size \(default "32"\)/);
    t.match(help, /--no-quiet\s+talk\n/, 'a switch without a variable shows no default: its spelling says it');
  },
);

t.test('a configuration error names the path, its flag and its variable (BAD_CONFIG)', async (t) => {
  t.throws(
    () => parseSettings(tree, schemaOf(tree), { name: 'x', size: 0 }, { what: 'test config', hint: 'see the docs' }),
    {
      code: 'BAD_CONFIG',
      message: /^invalid test config:\n {2}size: .* \(--size, SETOKIM_T_SIZE\)\nsee the docs$/,
    },
  );
});

t.test("the agent's settings: every flag and variable is declared once", async (t) => {
  const all = leaves(agentSettings);
  const flags = all.map((p) => flagOf(p.leaf)).filter((f): f is string => !!f);
  const envs = all.map((p) => p.leaf.env).filter((e): e is string => !!e);
  t.same(flags.length, new Set(flags).size, `${flags.length} flags, none twice`);
  t.same(envs.length, new Set(envs).size, `${envs.length} variables, none twice`);
  t.ok(
    envs.every((e) => /^SETOKIM_[A-Z0-9_]+$/.test(e)),
    'every variable is SETOKIM_*',
  );
  t.ok(flags.length >= 20 && envs.length >= 20, 'the agent has its flags and variables');
  const help = registerFlags(new Command('agent').configureHelp({ helpWidth: 1000 }), agentSettings).helpInformation();
  for (const f of flags) t.match(help, f, `--help lists ${f}`);
  t.match(help, /--queue-size <n>.*\(SETOKIM_QUEUE_SIZE; default 16\)/);
  t.notMatch(help, /--password <secret>.*default/, 'no default shown for a secret');
});

t.test('docs/MQTT.md names every variable the agent reads', async (t) => {
  const { readFileSync } = await import('node:fs');
  const doc = readFileSync(new URL('../docs/MQTT.md', import.meta.url), 'utf8');
  const missing = leaves(agentSettings).flatMap((p) =>
    p.leaf.env && !doc.includes(`\`${p.leaf.env}\``) ? [p.leaf.env] : [],
  );
  t.same(missing, [], 'variables missing from docs/MQTT.md');
});

t.test('--fleet and --device: one declaration, required, defaulted or optional per command', async (t) => {
  const { deviceSetting, fleetSetting } = await import('../src/mqtt/connection.js');
  const client = group({ fleet: fleetSetting({ default: 'default' }), device: deviceSetting({ optional: true }) });
  t.same(parseCommandSettings(client, {}, 'q', {}), { fleet: 'default' }, 'the default; no device');
  t.same(parseCommandSettings(client, { device: 'cam-2' }, 'q', { SETOKIM_FLEET: 'plant', SETOKIM_DEVICE: 'cam-1' }), {
    fleet: 'plant',
    device: 'cam-2',
  });
  t.throws(() => parseCommandSettings(client, { fleet: 'a/b' }, 'q', {}), {
    code: 'BAD_ARGUMENT',
    message: /^q: --fleet: .*one MQTT topic level/,
  });
  t.throws(() => parseCommandSettings(client, {}, 'q', { SETOKIM_DEVICE: '+' }), {
    code: 'BAD_ARGUMENT',
    message: /--device, SETOKIM_DEVICE|--device: /,
  });
  const operator = group({ fleet: fleetSetting({ required: true }, 'required') });
  t.throws(() => parseCommandSettings(operator, {}, 'f', {}), { code: 'BAD_ARGUMENT', message: /^f: --fleet: / });

  // Every command that takes one fleet or one device takes it the same way (bundle create's
  // repeatable --fleet is another setting: the fleets a bundle is signed for).
  const { commands } = await import('../src/cli/commands.js');
  const program = new Command('setokim');
  for (const register of commands) register(program);
  const seen: string[] = [];
  const walk = (cmd: Command, name: string): void => {
    for (const o of cmd.options) {
      const env = { '--fleet': 'SETOKIM_FLEET', '--device': 'SETOKIM_DEVICE' }[o.long ?? ''];
      if (!env || name === 'setokim bundle create') continue;
      seen.push(`${name} ${o.long}`);
      t.match(o.description, /one MQTT topic level/, `${name} ${o.long}: the shared help`);
      t.match(o.description, new RegExp(`\\(${env}[;)]`), `${name} ${o.long} reads ${env}`);
    }
    for (const sub of cmd.commands) walk(sub, `${name} ${sub.name()}`);
  };
  walk(program, 'setokim');
  t.same(seen.sort(), [
    'setokim agent --device',
    'setokim agent --fleet',
    'setokim bundle install --fleet',
    'setokim fleet rollout --fleet',
    'setokim fleet status --fleet',
    'setokim query --device',
    'setokim query --fleet',
  ]);
});

t.test('the model set, runtime and request flags: one declaration for agent, run, watch and query', async (t) => {
  const { commands } = await import('../src/cli/commands.js');
  const { GenerationSchema } = await import('../src/pipeline/request.js');
  const { generationOf, requestSettings, runtimeSettings } = await import('../src/pipeline/settings.js');
  const program = new Command('setokim');
  for (const register of commands) register(program);
  // The commands that take each shared setting (the agent's --max-tokens is its cap, limits.maxTokens,
  // and watch's --prompt its standing prompt: other settings under the same flag).
  const takers = new Map<string, string[]>([
    ...Object.values(runtimeSettings).map((l) => [flagOf(l)!, ['agent', 'run', 'watch']] as [string, string[]]),
    ['--models', ['agent', 'run', 'watch']],
    ...Object.values(requestSettings).map((l) => [flagOf(l)!, ['query', 'run']] as [string, string[]]),
    ['--max-tokens', ['query', 'run', 'watch']],
  ]);
  const help = new Map<string, Map<string, string>>(); // flag -> command -> description
  for (const [flag, names] of takers) {
    help.set(flag, new Map());
    for (const name of names) {
      const o = program.commands.find((c) => c.name() === name)!.options.find((o) => o.long === flag);
      if (o) help.get(flag)!.set(name, o.description);
    }
  }
  for (const [flag, by] of help) {
    t.same([...by.keys()].sort(), [...takers.get(flag)!].sort(), `${flag} in every command that shares it`);
    // The agent's --models adds what the update store changes.
    const texts = new Set([...by.values()].map((d) => d.replace(/; with --store[^(]*(?= \()/, '')));
    t.equal(texts.size, 1, `${flag}: the same help in ${[...by.keys()].join(', ')}`);
  }
  t.match(help.get('--threads')!.get('run')!, /\(SETOKIM_THREADS\)/, 'run reads the variable the agent reads');

  // A flag takes exactly what a request on the wire may carry (GenerationSchema's bounds).
  const request = group(requestSettings);
  for (const [flag, key, value] of [
    ['--temperature', 'temperature', '11'],
    ['--top-p', 'topP', '0'],
    ['--seed', 'seed', String(2 ** 32)],
    ['--max-tokens', 'maxTokens', '0'],
  ] as const) {
    t.notOk(GenerationSchema.safeParse({ [key]: Number(value) }).success, `the wire refuses ${key} ${value}`);
    t.throws(() => parseCommandSettings(request, { [key]: value }, 'run', {}), {
      code: 'BAD_ARGUMENT',
      message: new RegExp(`^run: ${flag}: `),
    });
  }
  t.throws(() => parseCommandSettings(request, { stop: Array.from({ length: 9 }, (_, i) => `s${i}`) }, 'run', {}), {
    code: 'BAD_ARGUMENT',
    message: /^run: --stop: /,
  });
  const o = parseCommandSettings(request, { topK: '5', stop: ['END', '###'], temperature: '0.7' }, 'query', {});
  t.same(generationOf(o), { temperature: 0.7, topK: 5, stop: ['END', '###'] }, 'only the fields given');
  t.ok(GenerationSchema.safeParse(generationOf(o)).success);
  t.equal(generationOf(parseCommandSettings(request, {}, 'query', {})), undefined, 'none given: no generation');
  t.same(parseCommandSettings(group(runtimeSettings), {}, 'run', { SETOKIM_THREADS: '3' }), {
    threads: 3,
    verify: true,
  });
});
