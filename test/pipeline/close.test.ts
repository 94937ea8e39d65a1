import t from 'tap';
import { createPipeline } from '../../src/pipeline/pipeline.js';
import type { PipelineEvent } from '../../src/pipeline/types.js';
import { busyImage, collect, tinySet } from './fixtures.js';

t.test('close cancels the requests in flight and waiting, frees their KV cache, and refuses new ones', async (t) => {
  const set = await tinySet();
  t.teardown(set.cleanup);
  const p = await createPipeline({ modelsDir: set.dir, threads: 1, maxInFlight: 1 });
  const image = await busyImage();
  const req = (id: string) => ({
    id,
    task: 'ask' as const,
    prompt: 'Tell me everything.',
    image,
    generation: { maxTokens: 400 },
  });
  const running = p.run(req('running'));
  const waiting = collect(p.run(req('waiting'))); // admitted after 'running' (maxInFlight 1)
  const events: PipelineEvent[] = [];
  let closing: Promise<void> | undefined;
  for await (const e of running) {
    events.push(e);
    if (e.type === 'text' && !closing) closing = p.close();
  }
  await closing;
  const other = await waiting;
  for (const [name, ev] of [
    ['running', events],
    ['waiting', other],
  ] as const) {
    const last = ev.at(-1)!;
    t.equal(last.type, 'error', `${name} ends with an error: ${JSON.stringify(last).slice(0, 200)}`);
    t.equal(last.type === 'error' && last.code, 'CANCELLED', name);
    t.equal(ev.filter((e) => e.type === 'done').length, 0);
  }
  t.equal(p.kv.used, 0, 'no KV cache held');
  t.equal(p.inFlight, 0);
  const after = await collect(p.run(req('late')));
  t.same(
    after.map((e) => e.type),
    ['error'],
  );
  t.equal(after[0]!.type === 'error' && after[0]!.code, 'BUSY');
});
