import { closeSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/**
 * One data directory, one server (as PostgreSQL's postmaster.pid): `provisiond serve` holds `<dataDir>/provisiond.pid`
 * while it runs. A second server on the same directory refuses at once, naming the PID that holds it; a lock left by a
 * process that no longer exists (killed, crashed) is taken over.
 */
export const LOCK_FILE = 'provisiond.pid';

export class DataDirLockedError extends Error {
  constructor(dataDir: string, pid: number) {
    super(
      `the data directory ${dataDir} is in use by another provisiond server (PID ${pid}); stop that server first, or give this one its own --data-dir`,
    );
    this.name = 'DataDirLockedError';
  }
}

export interface DataDirLock {
  release(): void;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else — still a live holder.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderOf(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, 'utf8').split('\n')[0] ?? '', 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Locks a server's data directory (creating it); throws DataDirLockedError when a live server holds it. */
export function lockDataDir(dataDir: string): DataDirLock {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, LOCK_FILE);
  const token = `${process.pid}\n${new Date().toISOString()}\n${Math.random().toString(36).slice(2)}\n`;
  const temporary = join(dataDir, `.${LOCK_FILE}.${process.pid}.${Math.random().toString(36).slice(2)}`);
  const fd = openSync(temporary, 'wx', 0o600);
  try {
    writeSync(fd, token);
  } finally {
    closeSync(fd);
  }
  try {
    for (let attempt = 0; ; attempt += 1) {
      try {
        // link() fails if the lock exists: of two servers starting together, exactly one gets it, complete.
        linkSync(temporary, path);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 5) throw error;
      }
      const holder = holderOf(path);
      // This very process counts as a holder too: a second server in one process is as wrong as in two.
      if (holder !== undefined && isRunning(holder)) throw new DataDirLockedError(dataDir, holder);
      // Stale: its server is gone. Moved aside (atomically) rather than deleted, so only one taker removes it.
      const aside = `${temporary}.stale`;
      try {
        renameSync(path, aside);
      } catch {
        continue; // another starter moved it first; the next link() tells who holds it now
      }
      const moved = holderOf(aside);
      if (moved !== undefined && moved !== holder && isRunning(moved)) {
        // Between our read and our move, another starter replaced the stale lock with its live one: put it back.
        try {
          linkSync(aside, path);
        } finally {
          unlinkSync(aside);
        }
        throw new DataDirLockedError(dataDir, moved);
      }
      unlinkSync(aside);
    }
  } finally {
    unlinkSync(temporary);
  }
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      try {
        // Only our own lock: never remove one a later server wrote after ours was taken over.
        if (readFileSync(path, 'utf8') === token) unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}
