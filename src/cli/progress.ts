/**
 * Progress on stderr for the CLI: a byte bar (unpacking, bundling, verifying) and engine builds,
 * drawn as bars when stderr is a terminal, else (engines) one line per stage started and built.
 */
import { Presets, SingleBar } from 'cli-progress';
import type { ByteProgress } from '../fleet/bundle.js';
import type { EngineProgress } from '../fleet/engines.js';

/** A byte-progress bar on stderr when it is a terminal; null otherwise (or with --no-progress). */
export function progressBar(label: string, enabled: boolean): { onProgress?: ByteProgress; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { stop: () => {} };
  const bar = new SingleBar(
    { format: `${label} {bar} {percentage}% {mib}/{totalMib} MiB {file}`, hideCursor: true, stream: process.stderr },
    Presets.shades_classic,
  );
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  return {
    onProgress: (done, total, file) => {
      if (!bar.isActive) bar.start(total, 0, { mib: '0.0', totalMib: mib(total), file });
      bar.update(done, { mib: mib(done), totalMib: mib(total), file });
    },
    stop: () => bar.stop(),
  };
}

/** Runs `work` with a progress bar, stopped however the work ends. */
export async function withProgressBar<T>(
  label: string,
  enabled: boolean,
  work: (bar: ReturnType<typeof progressBar>) => Promise<T>,
): Promise<T> {
  const bar = progressBar(label, enabled);
  try {
    return await work(bar);
  } finally {
    bar.stop();
  }
}

/**
 * An install's engine builds on stderr: a bar per stage (its builder phase and steps) on a
 * terminal, else `[engines] 3/7 llm: building` and `... built` lines (logs stay readable).
 */
export function engineProgress(enabled: boolean): (p: EngineProgress) => void {
  let bar: SingleBar | null = null;
  return (p) => {
    const head = `${p.index}/${p.count} ${p.stage}`;
    if (!enabled) return;
    if (!process.stderr.isTTY) {
      if (p.phase === 'start' || p.phase === 'done')
        process.stderr.write(`[engines] ${head}: ${p.phase === 'start' ? 'building' : 'built'}\n`);
      return;
    }
    if (p.phase === 'start') {
      bar?.stop();
      bar = new SingleBar(
        { format: `engine ${head} {bar} {value}/{total} {phase}`, hideCursor: true, stream: process.stderr },
        Presets.shades_classic,
      );
      bar.start(1, 0, { phase: 'starting' });
    } else if (p.phase === 'done') {
      bar?.update(bar.getTotal(), { phase: 'built' });
      bar?.stop();
      bar = null;
    } else {
      bar?.setTotal(Math.max(p.steps, 1));
      bar?.update(p.step, { phase: p.phase });
    }
  };
}
