/**
 * `setokim demo` end to end on a fresh directory: builds the tiny set, serves it over the embedded
 * broker, writes the pictures and prints the two tables, and exits 0.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { main } from '../../src/cli/main.js';
import { followsContract } from '../../src/cli/demo.js';

t.test('setokim demo on a fresh directory', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'setokim-demo-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const models = join(dir, 'models', 'tiny');
  const out = join(dir, 'out');
  const run = async (args: string[]): Promise<{ status: number; printed: string }> => {
    let printed = '';
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((chunk: string | Uint8Array) => {
      printed += chunk.toString();
      return true;
    }) as typeof process.stdout.write;
    try {
      return { status: await main(['demo', '--models', models, '--out', out, '--no-color', ...args]), printed };
    } finally {
      process.stdout.write = write;
    }
  };
  const { status, printed } = await run(['--max-tokens', '4']);
  t.equal(status, 0, 'exits 0');
  t.ok(existsSync(join(models, 'manifest.json')), 'built the tiny model set');
  t.match(printed, /building the tiny set/);
  t.notMatch(printed, /\n\s+at .+\(.*:\d+:\d+\)/, 'no stack trace');
  for (const file of [
    'sky-describe.tokens.png',
    'busy-describe.tokens.png',
    'shapes-segment.mask-0.png',
    'generate.image.png',
  ]) {
    const png = readFileSync(join(out, file));
    t.same([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], `${file} is a PNG`);
  }
  t.ok(readdirSync(join(out, 'samples')).length === 3, 'three sample images');
  const tokens = (name: string): number => Number(new RegExp(`${name}\\.png\\s+(\\d+)\\s+(\\d+)`).exec(printed)?.[2]);
  t.ok(tokens('sky') >= 1, 'the table lists vision tokens for the flat sky');
  t.ok(
    tokens('busy') > tokens('sky'),
    `the busy pattern needs more vision tokens than the flat sky (${tokens('busy')} > ${tokens('sky')})`,
  );
  t.match(printed, /Time per stage \(ms\)[\s\S]*describe sky\.png\s+[\d.]+/);
  const again = await run(['--max-tokens', '2']);
  t.equal(again.status, 0);
  t.match(again.printed, /model set .*\(cached\)/, 'the second run reuses the cached set');
  // A set cached before the LLM's stage contract changed is rebuilt, not refused at load.
  t.equal(await followsContract(models), true);
  const manifest = JSON.parse(readFileSync(join(models, 'manifest.json'), 'utf8'));
  manifest.stages.llm.signature.inputs = [{ name: 'past_keys', dtype: 'float32', shape: [2, 1, 4, 'P', 16] }];
  writeFileSync(join(models, 'manifest.json'), JSON.stringify(manifest));
  t.equal(await followsContract(models), false, 'an older contract is noticed');
});
