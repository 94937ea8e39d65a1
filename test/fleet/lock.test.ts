/**
 * The store lock with real processes: a child that holds it, one killed while holding it (a
 * crash), a lock file left from before a power loss whose pid now belongs to another process, a
 * lock file emptied while its holder holds it, and a release called after someone else took it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { lockStore } from '../../src/fleet/journal.js';
import { recoverStore } from '../../src/fleet/index.js';
import { childEnv } from '../helpers/child-env.js';

const lockChild = fileURLToPath(new URL('./fixtures/lock-child.ts', import.meta.url));
const lockFile = (root: string) => path.join(root, '.fleet', 'lock');

/** A child process holding `root`'s lock; resolves once it holds it. */
function holder(root: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', lockChild, root], {
      env: childEnv(),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('locked')) resolve(p);
    });
    p.stderr!.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('exit', (code) => reject(new Error(`lock child exited ${code} before locking: ${err}`)));
  });
}

const exited = (p: ChildProcess) =>
  new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())));

t.test(
  'a process holding the lock refuses recovery (UPDATE_CONFLICT naming it); killed, it holds nothing',
  async (t) => {
    const root = t.testdir();
    const child = await holder(root);
    t.teardown(() => void child.kill('SIGKILL'));
    await t.rejects(recoverStore(root), { code: 'UPDATE_CONFLICT', message: new RegExp(`process ${child.pid}\\b`) });
    child.kill('SIGKILL'); // a crash: no cleanup runs, the lock file stays
    await exited(child);
    t.match(await readFile(lockFile(root), 'utf8'), String(child.pid), 'the dead holder is still named in the file');
    t.equal((await recoverStore(root)).action, 'none', 'its lock went with it');
  },
);

t.test(
  "an emptied lock file does not free a lock its holder still holds (a lock being written can't be stolen)",
  async (t) => {
    const root = t.testdir();
    const child = await holder(root);
    t.teardown(() => void child.kill('SIGKILL'));
    await writeFile(lockFile(root), '');
    await t.rejects(recoverStore(root), { code: 'UPDATE_CONFLICT' });
    child.stdin!.end(); // it releases and exits
    await exited(child);
    t.equal((await recoverStore(root)).action, 'none');
  },
);

t.test('a lock left before a power loss, whose pid now belongs to a running process, does not block', async (t) => {
  const root = t.testdir();
  await mkdir(path.join(root, '.fleet'));
  // The pid recycled: an unrelated process runs under the number the old lock names.
  const other = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => void other.kill('SIGKILL'));
  for (const content of [
    `${other.pid}\n`,
    `${process.pid}\n`,
    `{"pid":${other.pid},"bootId":"00000000-0000-0000-0000-000000000000"}\n`,
  ]) {
    await writeFile(lockFile(root), content);
    t.equal((await recoverStore(root)).action, 'none', JSON.stringify(content));
  }
  const unlock = await lockStore(root);
  t.match(await readFile(lockFile(root), 'utf8'), String(process.pid), 'the new holder is named');
  await unlock();
});

t.test('a release frees only its own lock: called again after another process took it, that lock stands', async (t) => {
  const root = t.testdir();
  const unlock = await lockStore(root);
  await t.rejects(lockStore(root), { code: 'UPDATE_CONFLICT' }, 'a second lock in the same process is refused too');
  await unlock();
  const child = await holder(root);
  t.teardown(() => void child.kill('SIGKILL'));
  await unlock(); // e.g. a finally block running twice
  await t.rejects(recoverStore(root), { code: 'UPDATE_CONFLICT', message: new RegExp(`process ${child.pid}\\b`) });
  child.kill('SIGKILL');
  await exited(child);
});
