/** Test fixtures: the `tiny` reference model set synthesised into a temp dir, and test images (tools/export/sample-images.ts). */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { synthesize } from '../../tools/export/synth.js';

/** Writes the tiny set (seed 1) into a fresh temp dir; `cleanup` removes it. */
export async function tinySet(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'setokim-pipeline-tiny-'));
  await synthesize({ config: 'tiny', seed: 1, out: dir });
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export { busyImage, flatImage } from '../../tools/export/sample-images.js';

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const e of it) out.push(e);
  return out;
}
