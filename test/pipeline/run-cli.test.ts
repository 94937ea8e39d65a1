import t from 'tap';
import { childEnv } from '../helpers/child-env.js';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import sharp from 'sharp';
import { busyImage, tinySet } from './fixtures.js';

// The CLI through its main(), in a child process (tsx), as a user runs it.
const script = `import { main } from ${JSON.stringify(new URL('../../src/cli/main.ts', import.meta.url).href)};
process.exitCode = await main(process.argv.slice(1));`;
const cli = (args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', ...args], {
    encoding: 'utf8',
    env: childEnv(),
  });

t.test('setokim run streams the answer, writes pictures beside the image and prints a summary', async (t) => {
  const set = await tinySet();
  const work = await mkdtemp(path.join(tmpdir(), 'setokim-run-'));
  t.teardown(async () => {
    await set.cleanup();
    await rm(work, { recursive: true, force: true });
  });
  const image = path.join(work, 'shapes.jpg');
  await writeFile(image, await busyImage());
  const r = cli([
    'run',
    '--models',
    set.dir,
    '--image',
    image,
    '--prompt',
    'Segment the circle',
    '--task',
    'segment',
    '--max-tokens',
    '6',
    '--seed',
    '3',
  ]);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /tokens: \d+ vision, \d+ prompt, 6 generated \(length\)/);
  t.match(r.stdout, /stages \(ms\): preprocess/);
  const L = Number(/\[(\d+) vision tokens from 256 patches\]/.exec(r.stderr)?.[1]);
  t.ok(L >= 1, r.stderr);
  const files = (await readdir(work)).filter((f) => f.endsWith('.png')).sort();
  t.same(
    files,
    [
      'shapes.mask-referring.png',
      ...Array.from({ length: L }, (_, i) => `shapes.mask-${i}.png`),
      'shapes.tokens.png',
    ].sort(),
  );
  t.equal((await sharp(path.join(work, 'shapes.tokens.png')).metadata()).width, 448);

  const g = cli([
    'run',
    '--models',
    set.dir,
    '--task',
    'generate',
    '--prompt',
    'a boat',
    '--json',
    '--max-tokens',
    '8',
    '--out',
    path.join(work, 'gen'),
    '--no-verify',
  ]);
  t.equal(g.status, 0, g.stderr);
  const events = g.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.same(
    events.map((e) => e.type),
    ['accepted', 'image', 'done'],
  );
  t.equal(events[1].file, path.join(work, 'gen', 'generated.image.png'));

  const bad = cli([
    'run',
    '--models',
    set.dir,
    '--image',
    path.join(work, 'gen', '..', 'missing.png'),
    '--prompt',
    'x',
    '--no-verify',
  ]);
  t.equal(bad.status, 2);
  t.match(bad.stderr, /\[BAD_ARGUMENT\]: cannot read --image/);
  await writeFile(path.join(work, 'empty.png'), '');
  const empty = cli([
    'run',
    '--models',
    set.dir,
    '--image',
    path.join(work, 'empty.png'),
    '--prompt',
    'x',
    '--no-verify',
  ]);
  t.equal(empty.status, 2);
  t.match(empty.stderr, /\[BAD_IMAGE\].*empty/);
});
