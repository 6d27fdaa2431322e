import type { Kysely } from 'kysely';
import type { Database } from '../schema.js';

/**
 * What the store needs to know about the database under it. Everything else is the same Kysely code on both
 * dialects; each flag names one real difference, and the adapter that sets it says why.
 */
export interface DialectCapabilities {
  name: 'sqlite' | 'postgres';
  /**
   * One writer at a time, in this process only (SQLite behind one connection). Transactions never interleave, so a
   * read-then-write inside one is already serialized; cross-process locks are neither needed nor available.
   */
  singleWriter: boolean;
  /** Session-level advisory locks (PostgreSQL `pg_advisory_lock`) that serialize work across nodes. */
  advisoryLocks: boolean;
  /**
   * Dead row versions of deleted rows stay in table pages until VACUUM (PostgreSQL MVCC). SQLite overwrites freed
   * pages itself (`secure_delete`, issue 8), so it needs nothing after an erase.
   */
  vacuumAfterErase: boolean;
}

/**
 * Runs `work` holding the named lock. `read`, when given, is a statement run right after the lock is taken, on the
 * lock's own connection and in the lock's round trip (issue 11): `work` gets its rows, as they were once the lock was
 * held (a statement after the lock sees every transaction committed before the lock was granted).
 */
export type LockRunner = <T>(name: string, work: (rows: readonly Record<string, unknown>[] | undefined) => Promise<T>, read?: LockedRead) => Promise<T>;

/** A statement run under a lock as it is taken: its SQL text and its bound values. */
export interface LockedRead {
  readonly text: string;
  readonly values: readonly unknown[];
}

export interface OpenedDialect {
  db: Kysely<Database>;
  capabilities: DialectCapabilities;
  /** Cross-node named locks, where the dialect has them. */
  withLock?: LockRunner;
  /** Closes what the adapter opened besides `db`. */
  close?: () => Promise<void>;
}
