/**
 * Every import points down the layers (README.md, "Layout"): a module may
 * import its own area and areas of a lower rank, never one of the same rank or above. Areas of one
 * rank sit side by side (quant and fleet both use the pipeline; tools/export and the agent both sit
 * under the CLI) and must not know each other.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';

const ROOT = resolve(import.meta.dirname, '../..');

/** Rank of each area; a file's area is its first directory under src/ (or tools/export). */
const RANK: Record<string, number> = {
  'src/errors.ts': 0,
  'src/redact.ts': 0,
  'src/settings.ts': 1,
  'src/mqtt': 2,
  'src/engine': 3,
  'src/media': 3,
  'src/setok': 4,
  'src/pipeline': 5,
  'src/quant': 6,
  'src/fleet': 6,
  'tools/export': 7,
  'src/agent': 7,
  'tools/flashkit': 8,
  'src/cli': 9,
  'src/index.ts': 10,
};

function areaOf(file: string): string | undefined {
  // Imports name the compiled file (../errors.js); the source is the .ts beside it.
  const rel = relative(ROOT, file).split('\\').join('/').replace(/\.js$/, '.ts');
  return Object.keys(RANK).find((a) => rel === a || rel.startsWith(`${a}/`));
}

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (/\.(ts|mts|mjs)$/.test(e.name) && !e.name.endsWith('.d.ts')) yield p;
  }
}

/** Every relative import of a file: static `from '...'`, side-effect `import '...'` and dynamic `import('...')`. */
export function importsOf(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g)) out.push(m[1]!);
  return out;
}

t.test('the import finder sees static, side-effect and dynamic imports', async (t) => {
  t.same(
    importsOf(
      `import { a } from '../x.js';\nimport '../y.js';\nconst z = await import('./z.js');\nimport b from 'zod';`,
    ),
    ['../x.js', '../y.js', './z.js'],
  );
});

t.test('every import points to the same area or a lower layer', async (t) => {
  const files = ['src', 'tools/export', 'tools/flashkit'].flatMap((d) => [...sources(join(ROOT, d))]);
  t.ok(files.length > 50, `found ${files.length} source files`);
  const wrong: string[] = [];
  for (const file of files) {
    const from = areaOf(file);
    if (!from) {
      wrong.push(`${relative(ROOT, file)} belongs to no layer: add its area to RANK`);
      continue;
    }
    for (const spec of importsOf(readFileSync(file, 'utf8'))) {
      const target = resolve(dirname(file), spec);
      const to = areaOf(target);
      if (!to) continue; // outside src/ and tools/export (e.g. the package.json)
      if (to !== from && RANK[to]! >= RANK[from]!)
        wrong.push(`${relative(ROOT, file)} (${from}, rank ${RANK[from]}) imports ${spec} (${to}, rank ${RANK[to]})`);
    }
  }
  t.same(wrong, [], 'imports that point up or sideways');
});
