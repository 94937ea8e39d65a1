/** Small file-system helpers for the model store: durable writes (the active-set pointer, a journal or a state file must survive power loss once written) and free space. */
import { open, rename, rm, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';

/** fsync a directory so a rename or a new entry in it is on disk (Linux; a no-op where unsupported). */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on a directory; the data files were synced already.
  } finally {
    await fh?.close();
  }
}

/** fsync a file written through a stream. */
export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes `path` and fsyncs it before returning. Explicitly, on the file handle: writeFile's
 * `flush` option needs Node >= 20.10, and the Node 20 releases before it accept and ignore it.
 */
export async function writeFileSynced(path: string, data: string | Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `path` so that after a crash it holds either the old or the new content, whole. */
export async function writeFileDurable(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFileSynced(tmp, data);
  await rename(tmp, path);
  await fsyncDir(dirname(path));
}

export async function removeDurable(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
  await fsyncDir(dirname(path));
}

/** Bytes an unprivileged writer may still use on the filesystem holding `path`. */
export async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.bavail * s.bsize;
}
