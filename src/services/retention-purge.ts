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

/**
 * How long a rate-limit bucket in the store may go untaken before the purge deletes it. A bucket refills to its burst
 * (twice its rate) within 2 s at any rate the configuration allows (whole tokens a second), so one untaken for an hour
 * is full: deleting it changes no limit (the next take starts a full bucket).
 */
export const IDLE_RATE_BUCKET_MS = 3_600_000;

/**
 * Deletes the store's rate-limit buckets nothing has taken from for {@link IDLE_RATE_BUCKET_MS} (several nodes; a
 * single node keeps its buckets in memory): one per device that ever polled would otherwise stay, its registration
 * ID in the key, long after the device was gone.
 */
export async function purgeIdleRateBuckets(deps: ServiceDeps): Promise<number> {
  if (deps.store.capabilities.singleWriter) return 0;
  const before = deps.now().getTime() - IDLE_RATE_BUCKET_MS;
  let deleted = 0;
  let after: string | undefined = '';
  while (after !== undefined) {
    const batch = await deps.store.deleteRateBucketsIdleSince(before, PURGE_BATCH_ROWS, after);
    deleted += batch.deleted;
    after = batch.lastKey;
    // As deleteInBatches: the event loop between batches.
    if (after !== undefined) await sleep(1);
  }
  return deleted;
}
