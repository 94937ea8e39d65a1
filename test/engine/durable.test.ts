/**
 * Durable writes: the file's data is on disk (fsync) before the rename makes it visible, whatever
 * Node version runs. Node before 20.10 ignores writeFile's `flush` option without a word; the test
 * runs writeFileDurable under that behaviour (fs/promises' writeFile with `flush` dropped) and
 * records every fsync, with the path and the content the synced file held at that moment.
 */
import { readFile, readlink } from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import t from 'tap';
import { writeFileDurable } from '../../src/engine/durable.js';

const fsp = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');

t.test(
  'writeFileDurable fsyncs the whole new content before renaming it into place, even where `flush` is ignored',
  async (t) => {
    const dir = t.testdir();
    const target = join(dir, 'active');
    const synced: Array<{ path: string; content: string | null }> = [];
    const fh = await fsp.open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(fh) as { sync: () => Promise<void> };
    await fh.close();
    const { sync } = proto;
    const { writeFile } = fsp;
    proto.sync = async function (this: { fd: number }) {
      const path = await readlink(`/proc/self/fd/${this.fd}`);
      synced.push({ path, content: await readFile(path, 'utf8').catch(() => null) });
      return sync.call(this);
    };
    // Node < 20.10: { flush: true } is accepted and ignored.
    fsp.writeFile = ((p: never, data: never, o?: Record<string, unknown>) =>
      writeFile(p, data, { ...o, flush: false })) as typeof fsp.writeFile;
    syncBuiltinESMExports();
    t.teardown(() => {
      proto.sync = sync;
      fsp.writeFile = writeFile;
      syncBuiltinESMExports();
    });

    await writeFileDurable(target, 'setokim-tiny-seed2\n');
    t.equal(await readFile(target, 'utf8'), 'setokim-tiny-seed2\n');
    const file = synced.find((s) => s.path === `${target}.tmp`);
    t.ok(file, `the temp file was fsynced (synced: ${synced.map((s) => s.path).join(', ') || 'nothing'})`);
    t.equal(file?.content, 'setokim-tiny-seed2\n', 'with its whole content, before the rename');
    t.ok(
      synced.some((s) => s.path === dir),
      'then the directory, for the rename',
    );
  },
);

t.test(
  "no source relies on writeFile's `flush` option (ignored before Node 20.10): they use writeFileSynced",
  async (t) => {
    const { readdir } = fsp;
    const root = new URL('../../', import.meta.url).pathname;
    const offenders: string[] = [];
    for (const top of ['src', 'tools']) {
      for (const e of await readdir(join(root, top), { recursive: true, withFileTypes: true })) {
        if (!e.isFile() || !/\.(ts|mjs)$/.test(e.name)) continue;
        const text = await readFile(join(e.parentPath, e.name), 'utf8');
        if (/flush:\s*true/.test(text)) offenders.push(join(e.parentPath, e.name).slice(root.length));
      }
    }
    t.same(offenders, []);
  },
);
