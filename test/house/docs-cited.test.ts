/**
 * Every document the code cites is in the repository, where a reader of the code can open it:
 * a markdown file named in src/, native/, tools/, bench/, scripts/ or test/ must be a tracked file
 * of the repository (docs/SETOK.md, README.md, bench/RESULTS.md ...), found by its path or name.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import t from 'tap';

const ROOT = resolve(import.meta.dirname, '../..');
const DIRS = ['src', 'native', 'tools', 'bench', 'scripts', 'test'];

function* files(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (/\.(ts|mts|mjs|js|cc|h|cu|inc|sh|py|txt)$/.test(e.name)) yield p;
  }
}

/** The markdown files a text cites: `docs/FLEET.md`, `FLEET.md`, `README.md`. */
export function citedDocs(text: string): string[] {
  return [...text.matchAll(/\b((?:docs\/)?[A-Z][A-Z0-9_]*\.md)\b/g)].map((m) => m[1]!);
}

t.test('the citation finder', async (t) => {
  t.same(citedDocs('see docs/FLEET.md and SETOK.md, README.md; not notes.md'), [
    'docs/FLEET.md',
    'SETOK.md',
    'README.md',
  ]);
});

t.test('every cited doc exists in the repository', async (t) => {
  const tracked = execFileSync('git', ['ls-files', '*.md'], { cwd: ROOT, encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);
  const have = new Set([...tracked, ...tracked.map((f) => f.split('/').at(-1)!)]);
  const self = relative(ROOT, import.meta.filename);
  const missing: string[] = [];
  let cites = 0;
  for (const dir of DIRS) {
    for (const file of files(join(ROOT, dir))) {
      for (const doc of citedDocs(readFileSync(file, 'utf8'))) {
        cites++;
        if (relative(ROOT, file) === self) continue; // its own examples
        if (!have.has(doc)) missing.push(`${relative(ROOT, file)} cites ${doc}`);
      }
    }
  }
  t.ok(cites > 20, `${cites} citations checked`);
  t.same(missing, [], 'citations of documents the repository does not hold');
});
