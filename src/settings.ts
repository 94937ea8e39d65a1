/**
 * One declaration per setting. A command's settings are a tree of `setting(...)` leaves inside
 * `group(...)`s that mirrors the shape of its configuration; each leaf says once what the value is
 * (a zod schema and its default), its flag, its environment variable and its help. Everything else
 * is derived from that tree: the zod schema of the whole configuration, the SETOKIM_* variables it
 * reads, the commander options (with their help and defaults) and the mapping of flags onto the
 * configuration's paths. Bottom layer: the agent, the query client and the fleet commands use it.
 */
import { Option, type Command } from 'commander';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from './errors.js';

/** How a flag's or a variable's text becomes a value. */
export type Reader = 'string' | 'number' | 'boolean' | 'list';

/** Whether a setting must be given, has a default, or may be absent. */
export type Presence = 'required' | 'default' | 'optional';

export interface Leaf<S extends z.ZodType = z.ZodType, P extends Presence = Presence> {
  readonly kind: 'leaf';
  /** The value's schema, without its default. */
  readonly schema: S;
  readonly presence: P;
  readonly default?: unknown;
  readonly help: string;
  /**
   * `--queue-size <n>` takes a value; `--insecure` or `--no-metrics` is a switch that sets
   * `switchValue` (default: true, or false for a `--no-` flag). A `list` setting's flag repeats;
   * a variadic one (`--engines <dirs...>`) takes every value up to the next flag, as an array.
   */
  readonly flag?: string;
  readonly switchValue?: unknown;
  readonly env?: string;
  readonly read: Reader;
  /** Never logged or echoed (passwords). */
  readonly secret?: boolean;
}

export interface Group<
  C extends Readonly<Record<string, Node>> = Readonly<Record<string, Node>>,
  O extends boolean = boolean,
> {
  readonly kind: 'group';
  readonly children: C;
  /** Absent unless configured (e.g. `updates`): then its settings without defaults are required. */
  readonly optional: O;
  /** Checks across the group's settings (e.g. a certificate needs its key). */
  readonly refine?: (schema: z.ZodType) => z.ZodType;
}

export type Node = Leaf | Group;

interface LeafOptions<S extends z.ZodType> {
  schema: S;
  help: string;
  flag?: string;
  switchValue?: unknown;
  env?: string;
  read?: Reader;
  secret?: boolean;
}

/** A setting with a default. */
export function setting<S extends z.ZodType>(o: LeafOptions<S> & { default: z.input<S> }): Leaf<S, 'default'>;
/** A setting that must be given. */
export function setting<S extends z.ZodType>(o: LeafOptions<S> & { required: true }): Leaf<S, 'required'>;
/** A setting that may be absent. */
export function setting<S extends z.ZodType>(o: LeafOptions<S>): Leaf<S, 'optional'>;
export function setting(o: LeafOptions<z.ZodType> & { default?: unknown; required?: boolean }): Leaf {
  const { required, ...rest } = o;
  const presence: Presence = o.default !== undefined ? 'default' : required ? 'required' : 'optional';
  return { kind: 'leaf', ...rest, read: o.read ?? 'string', presence };
}

/** How one command takes a setting declared for several: it must be given, falls back to a default, or may be absent. */
export type PresenceChoice<D = unknown> = { required: true } | { default: D } | { optional: true };
/** The Presence a PresenceChoice gives. */
export type PresenceOf<P extends PresenceChoice> = P extends { required: true }
  ? 'required'
  : P extends { default: unknown }
    ? 'default'
    : 'optional';

/**
 * A setting declared once for several commands (its schema, flag, variable and help), each command
 * choosing its presence (fleetSetting, modelsSetting).
 */
export function sharedSetting<S extends z.ZodType, P extends PresenceChoice<z.input<S>>>(
  o: LeafOptions<S>,
  presence: P,
): Leaf<S, PresenceOf<P>> {
  const { optional: _, ...given } = presence as { optional?: true; required?: true; default?: z.input<S> };
  return setting({ ...o, ...given }) as Leaf<S, PresenceOf<P>>;
}

/** Settings that are absent unless configured (then the ones without defaults are required). */
export function group<C extends Readonly<Record<string, Node>>>(
  children: C,
  o: { optional: true; refine?: Group['refine'] },
): Group<C, true>;
/** Settings always present (each one's default where it has one). */
export function group<C extends Readonly<Record<string, Node>>>(
  children: C,
  o?: { refine?: Group['refine'] },
): Group<C, false>;
export function group(
  children: Readonly<Record<string, Node>>,
  o: { optional?: boolean; refine?: Group['refine'] } = {},
): Group {
  return { kind: 'group', children, optional: o.optional ?? false, ...(o.refine ? { refine: o.refine } : {}) };
}

type Flat<T> = { [K in keyof T]: T[K] } & {};

/** The parsed value of a tree: what the config holds after defaults. */
export type OutputOf<N> =
  N extends Leaf<infer S, infer P>
    ? P extends 'optional'
      ? z.output<S> | undefined
      : z.output<S>
    : N extends Group<infer C, infer O>
      ? O extends true
        ? GroupOutput<C> | undefined
        : GroupOutput<C>
      : never;
type AbsentOut<N> =
  N extends Leaf<z.ZodType, 'optional'> ? true : N extends Group<Readonly<Record<string, Node>>, true> ? true : false;
type GroupOutput<C> = Flat<
  { [K in keyof C as AbsentOut<C[K]> extends true ? never : K]: OutputOf<C[K]> } & {
    [K in keyof C as AbsentOut<C[K]> extends true ? K : never]?: OutputOf<C[K]>;
  }
>;

/** What may be written in a config file or passed to the parser: settings with defaults may be left out. */
export type InputOf<N> =
  N extends Leaf<infer S, Presence> ? z.input<S> : N extends Group<infer C, boolean> ? GroupInput<C> : never;
type NeededIn<N> = N extends Leaf<z.ZodType, 'required'> ? true : false;
type GroupInput<C> = Flat<
  { [K in keyof C as NeededIn<C[K]> extends true ? K : never]: InputOf<C[K]> } & {
    [K in keyof C as NeededIn<C[K]> extends true ? never : K]?: InputOf<C[K]>;
  }
>;

type Json = Record<string, unknown>;

interface Placed {
  path: string[];
  leaf: Leaf;
}

/** Every leaf with its path, in declaration order. */
export function leaves(node: Node, path: string[] = []): Placed[] {
  if (node.kind === 'leaf') return [{ path, leaf: node }];
  return Object.entries(node.children).flatMap(([k, child]) => leaves(child, [...path, k]));
}

/** The zod schema of a whole tree: strict objects, defaults filled in, optional groups absent unless given. */
export function schemaOf<N extends Node>(node: N): z.ZodType<OutputOf<N>, InputOf<N>> {
  return buildSchema(node) as z.ZodType<OutputOf<N>, InputOf<N>>;
}

function buildSchema(node: Node): z.ZodType {
  if (node.kind === 'leaf') {
    // prefault, not default: the default is an input (`'32'` for a flag read as text) and goes
    // through the schema's own transforms like a given value does.
    if (node.presence === 'default') return node.schema.prefault(node.default as never);
    return node.presence === 'required' ? node.schema : node.schema.optional();
  }
  const shape = Object.fromEntries(Object.entries(node.children).map(([k, child]) => [k, buildSchema(child)]));
  let s: z.ZodType = z.strictObject(shape);
  if (node.refine) s = node.refine(s);
  return node.optional ? s.optional() : s.prefault({});
}

function setPath(target: Json, path: readonly string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Json;
  }
  node[path[path.length - 1]!] = value;
}

/** Merges `over` into `base`, objects key by key, `undefined` leaving the base value. */
export function merge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    const bothObjects =
      v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b);
    out[k] = bothObjects ? merge(b as Json, v as Json) : v;
  }
  return out;
}

/** A text as a value of the leaf's kind, or the reason it is not one. */
function readText(read: Reader, text: string): { value: unknown } | { problem: string } {
  switch (read) {
    case 'string':
      return { value: text };
    case 'number': {
      const n = Number(text);
      // Number('') and Number('  ') are 0: an empty value must not quietly become zero.
      return text.trim() !== '' && Number.isFinite(n) ? { value: n } : { problem: `${text} is not a number` };
    }
    case 'boolean':
      if (!/^(1|0|true|false|yes|no)$/i.test(text)) return { problem: `${text}: use true or false` };
      return { value: /^(1|true|yes)$/i.test(text) };
    case 'list':
      return {
        value: text
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean),
      };
  }
}

/** The SETOKIM_* variables of a tree, set on their paths; BAD_CONFIG naming a variable that does not read. */
export function fromEnv(node: Node, env: NodeJS.ProcessEnv): Json {
  const out: Json = {};
  for (const { path, leaf } of leaves(node)) {
    const raw = leaf.env ? env[leaf.env] : undefined;
    if (raw === undefined || raw === '') continue;
    const r = readText(leaf.read, raw);
    // The problem starts with the text itself: SETOKIM_QUEUE_SIZE=many is not a number.
    if ('problem' in r) throw new SetokimError(ErrorCodes.BAD_CONFIG, `${leaf.env}=${r.problem}.`);
    setPath(out, path, r.value);
  }
  return out;
}

interface ParsedFlag {
  /** commander's key for it: `--queue-size` -> queueSize, `--no-metrics` -> metrics. */
  key: string;
  /** `--queue-size <n>` takes a value; a switch does not. */
  takesValue: boolean;
  /** `--engines <dirs...>` takes every value up to the next flag (commander's variadic option). */
  variadic: boolean;
  negated: boolean;
}

function parseFlag(flag: string): ParsedFlag {
  const m = /^--(no-)?([a-z0-9-]+)(\s+<[^>]+?(\.\.\.)?>)?$/.exec(flag);
  if (!m) throw new Error(`settings: bad flag spelling ${flag}`);
  const key = m[2]!.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  return { key, takesValue: !!m[3], variadic: !!m[4], negated: !!m[1] };
}

/** The flag's name alone, as a person types it: `--queue-size`. */
export function flagOf(leaf: Leaf): string | undefined {
  return leaf.flag?.split(/\s/)[0];
}

function helpOf(leaf: Leaf): string {
  // A switch's default is what its spelling implies (`--no-progress`: on unless given); it is
  // shown only where a variable may set it either way.
  const isSwitch = !!leaf.flag && !parseFlag(leaf.flag).takesValue;
  const showDefault = leaf.default !== undefined && !leaf.secret && (!isSwitch || !!leaf.env);
  const extra = [leaf.env, showDefault ? `default ${JSON.stringify(leaf.default)}` : undefined].filter(Boolean);
  return extra.length ? `${leaf.help} (${extra.join('; ')})` : leaf.help;
}

/** Registers the tree's flags on a commander command, with their help (variable and default derived). */
export function registerFlags(cmd: Command, node: Node): Command {
  for (const { leaf } of leaves(node)) {
    if (!leaf.flag) continue;
    const option = new Option(leaf.flag, helpOf(leaf));
    if (leaf.read === 'list') option.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    cmd.addOption(option);
  }
  return cmd;
}

/**
 * Commander's parsed options (every value a string, a switch a boolean, a list an array) set on
 * the tree's paths; BAD_ARGUMENT naming the flag whose value does not read. Flags not given are
 * left out, so lower sources (file, environment, defaults) show through.
 */
export function fromFlags(node: Node, raw: Record<string, unknown>, command: string): Json {
  const out: Json = {};
  for (const { path, leaf } of leaves(node)) {
    if (!leaf.flag) continue;
    const f = parseFlag(leaf.flag);
    const given = raw[f.key];
    if (given === undefined) continue;
    if (!f.takesValue) {
      // `--x` is true when given; `--no-x` is false when given (commander's key is true otherwise).
      if (given !== !f.negated) continue;
      setPath(out, path, leaf.switchValue ?? !f.negated);
      continue;
    }
    const texts = Array.isArray(given) ? given.map(String) : [String(given)];
    const values: unknown[] = [];
    for (const text of texts) {
      const r = readText(leaf.read, text);
      if ('problem' in r) throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${command}: ${flagOf(leaf)}: ${r.problem}`);
      values.push(r.value);
    }
    setPath(out, path, leaf.read === 'list' ? values.flat() : f.variadic ? values : values[0]);
  }
  return out;
}

/** The keys commander uses for a tree's flags (for commands that add flags of their own beside them). */
export function flagKeys(node: Node): string[] {
  return leaves(node).flatMap(({ leaf }) => (leaf.flag ? [parseFlag(leaf.flag).key] : []));
}

/**
 * Where a setting comes from, for messages: `--queue-size, SETOKIM_QUEUE_SIZE`. An issue inside a
 * setting's value (the second item of a list: `devices.1`) names the setting's own flag.
 */
function sourcesOf(node: Node, path: readonly PropertyKey[]): string {
  const within = (p: Placed) => p.path.length <= path.length && p.path.every((k, i) => k === String(path[i]));
  const found = leaves(node).find(within);
  return [found && flagOf(found.leaf), found?.leaf.env].filter(Boolean).join(', ');
}

/**
 * Validates a merged configuration against the tree's schema. A configuration (file, variables
 * and flags) is BAD_CONFIG naming each bad setting's path and its flag and variable; a command's
 * flags alone are BAD_ARGUMENT naming the flag.
 */
export function parseSettings<T>(
  node: Node,
  schema: z.ZodType<T>,
  input: unknown,
  o: { what: string; hint?: string; flagsOnly?: boolean },
): T {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  if (o.flagsOnly) {
    const msg = parsed.error.issues
      .map((i) => `${sourcesOf(node, i.path).split(',')[0] || i.path.join('.')}: ${i.message}`)
      .join('; ');
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${o.what}: ${msg}`);
  }
  const lines = parsed.error.issues.map((i) => {
    const from = sourcesOf(node, i.path);
    return `  ${i.path.join('.') || '(top level)'}: ${i.message}${from ? ` (${from})` : ''}`;
  });
  throw new SetokimError(
    ErrorCodes.BAD_CONFIG,
    `invalid ${o.what}:\n${lines.join('\n')}${o.hint ? `\n${o.hint}` : ''}`,
  );
}

/**
 * A command whose settings come from its flags and SETOKIM_* variables alone (no config file):
 * variables below flags, checked against the tree's schema; BAD_ARGUMENT naming the flag.
 */
export function parseCommandSettings<N extends Node>(
  node: N,
  raw: Record<string, unknown>,
  command: string,
  env: NodeJS.ProcessEnv = process.env,
): OutputOf<N> {
  const input = merge(fromEnv(node, env), fromFlags(node, raw, command));
  return parseSettings(node, schemaOf(node), input, { what: command, flagsOnly: true });
}

/**
 * `--no-progress`, the same on every command that shows progress bars (bundle create, verify and
 * install; export synth, engine and quantize): bars are on unless it is given.
 */
export const progressSetting = setting({
  schema: z.boolean(),
  default: true,
  flag: '--no-progress',
  help: 'no progress bars (also off when stderr is not a terminal)',
});
