/**
 * An exclusive lock on a file by flock(2) (the native addon's `flock`): held while this process
 * keeps the file open, dropped by the kernel when the process dies (a crash, kill -9) and gone
 * after a reboot. So a lock is never stale, and nothing guesses staleness from a pid that may have
 * been recycled. The holder writes a note into the file (its pid, since when) for messages only:
 * the note never decides who holds the lock, so an empty or old note cannot free it. Linux (and
 * any POSIX system with flock); not for network file systems without lock support.
 */
import { constants } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { ErrorCodes, SetokimError } from '../errors.js';
import { loadNative } from './native.js';

/** What the lock file says about its holder, when someone else holds it. */
export interface LockHolder {
  /** The holder's note as written, trimmed; null when the file is empty (it is being written). */
  note: string | null;
}

export class FileLock {
  private handle: FileHandle | null;

  private constructor(
    readonly path: string,
    handle: FileHandle,
  ) {
    this.handle = handle;
  }

  /** Takes the lock without waiting and writes `note` into the file; or says who holds it. */
  static async tryAcquire(path: string, note: string): Promise<FileLock | LockHolder> {
    const flock = loadNative().flock;
    if (typeof flock !== 'function') {
      const fix = 'rebuild it with `npm run build:native`';
      throw new SetokimError(ErrorCodes.NATIVE_MISSING, `the native addon has no flock (an older build); ${fix}`);
    }
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    let held = false;
    try {
      held = flock(fh.fd, 'exclusive');
      if (!held) return { note: (await readFile(path, 'utf8')).trim() || null };
      await fh.truncate(0);
      await fh.write(note, 0);
      return new FileLock(path, fh);
    } catch (err) {
      held = false;
      throw err;
    } finally {
      if (!held) await fh.close().catch(() => {}); // closing drops a lock taken before a failed write
    }
  }

  /** Releases this lock (and only it: another holder's lock is another open file). Safe to repeat. */
  async release(): Promise<void> {
    const fh = this.handle;
    if (!fh) return;
    this.handle = null;
    try {
      await fh.truncate(0); // under the lock: the next reader sees no stale note
    } finally {
      await fh.close(); // closing the file drops the flock
    }
  }
}
