import { setTimeout as sleep } from 'node:timers/promises';
import { dpsTimestamp } from '../domain/time.js';
import type { ServiceDeps } from './deps.js';

/**
 * Rows one purge statement deletes. A batch holds the database (SQLite: the one connection, and the event loop while
 * better-sqlite3 runs it) for a few milliseconds, so registrations and polls get in between batches; bench/README.md
 * "Scale paths" has the measured stall.
 */
export const PURGE_BATCH_ROWS = 1000;

/**
 * Runs `deleteBatch` until it deletes less than a full batch, giving the event loop back between batches: a purge of
 * a million rows never stalls the devices being served (issue 12). Returns how many rows went.
 */
export async function deleteInBatches(deleteBatch: (limit: number) => Promise<number>, batchRows = PURGE_BATCH_ROWS): Promise<number> {
  let deleted = 0;
  for (;;) {
    const count = await deleteBatch(batchRows);
    deleted += count;
    if (count < batchRows) return deleted;
    // A timer, not setImmediate: requests whose bytes arrive while a batch runs are read and answered first.
    await sleep(1);
  }
}

/** Deletes operations that finished longer ago than `operationRetentionMs` (their devices can no longer poll them). */
export async function purgeExpiredOperations(deps: ServiceDeps): Promise<number> {
  const cutoff = dpsTimestamp(new Date(deps.now().getTime() - deps.config.operationRetentionMs));
  return deleteInBatches((limit) => deps.store.deleteOperationsBefore(cutoff, limit));
}
