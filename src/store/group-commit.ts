import type { Store } from './store.js';

/**
 * Group commit (issue 12): the write transactions of concurrent registrations share one BEGIN…COMMIT. On SQLite a
 * transaction costs mostly its COMMIT (the WAL append, and the single connection held from BEGIN to COMMIT), not its
 * statements, so registrations that arrive while a commit is in progress wait for it to end and then commit together.
 *
 * - Each unit of work runs in its own SAVEPOINT: one that fails rolls back only itself, and its caller gets its error.
 * - Every caller hears its outcome only after the COMMIT returned: a registration is acknowledged only once durable.
 *   A failed COMMIT fails every unit of the batch (nothing of it was written).
 * - A batch is what arrived while the previous one ran, plus what arrives in the same turn of the event loop (or
 *   within `windowMs`), at most `maxBatch` units; an idle server commits a lone registration at once, without a
 *   savepoint.
 *
 * PostgreSQL needs none of this (one transaction per registration on a pool of connections, and its own
 * commit_delay): `committerFor` hands it plain transactions.
 */
export interface Committer {
  /** Runs `work` on a transaction; resolves (or rejects) once that transaction has committed (or rolled back). */
  run<T>(work: (transaction: Store) => Promise<T>): Promise<T>;
}

export interface GroupCommitOptions {
  /** Most units of work in one transaction. */
  maxBatch: number;
  /** How long the first unit of an idle batcher waits for company; 0: only what arrives in the same event-loop turn. */
  windowMs: number;
}

/** Measured in bench/README.md ("H1"): a window costs an idle server latency and saves a loaded one little. */
export const DEFAULT_GROUP_COMMIT: GroupCommitOptions = Object.freeze({ maxBatch: 64, windowMs: 0 });

interface Unit {
  work: (transaction: Store) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

export class GroupCommit implements Committer {
  readonly #store: Store;
  readonly #options: GroupCommitOptions;
  #pending: Unit[] = [];
  /** A batch is scheduled or running: new units join the next one. */
  #busy = false;
  #batches = 0;
  #units = 0;

  constructor(store: Store, options: GroupCommitOptions = DEFAULT_GROUP_COMMIT) {
    this.#store = store;
    this.#options = options;
  }

  run<T>(work: (transaction: Store) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ work, resolve: resolve as (value: unknown) => void, reject });
      if (this.#busy) return;
      this.#busy = true;
      if (this.#options.windowMs > 0) setTimeout(() => void this.#drain(), this.#options.windowMs);
      else setImmediate(() => void this.#drain());
    });
  }

  /** Transactions committed and units of work they carried (bench and tests: the average batch size). */
  get stats(): { batches: number; units: number } {
    return { batches: this.#batches, units: this.#units };
  }

  async #drain(): Promise<void> {
    // Units that arrived while a batch ran have waited one commit already: the next batch starts at once.
    while (this.#pending.length > 0) {
      const batch = this.#pending.splice(0, this.#options.maxBatch);
      await this.#commit(batch);
    }
    this.#busy = false;
  }

  async #commit(batch: Unit[]): Promise<void> {
    const outcomes: Outcome[] = [];
    try {
      await this.#store.transaction(async (transaction) => {
        if (batch.length === 1) {
          // Alone: the transaction is the unit's own, and its failure rolls it back (no savepoint needed).
          outcomes.push({ ok: true, value: await (batch[0] as Unit).work(transaction) });
          return;
        }
        for (const unit of batch) {
          try {
            outcomes.push({ ok: true, value: await transaction.atomically(unit.work) });
          } catch (error) {
            outcomes.push({ ok: false, error });
          }
        }
      });
    } catch (error) {
      // The COMMIT (or, alone, the unit) failed: nothing of the batch was written.
      for (const unit of batch) unit.reject(error);
      return;
    }
    this.#batches += 1;
    this.#units += batch.length;
    batch.forEach((unit, index) => {
      const outcome = outcomes[index];
      if (outcome === undefined) unit.reject(new Error('group commit: a unit of work did not run'));
      else if (outcome.ok) unit.resolve(outcome.value);
      else unit.reject(outcome.error);
    });
  }
}

/** Plain transactions, one per unit of work (PostgreSQL). */
export class TransactionPerUnit implements Committer {
  readonly #store: Store;
  constructor(store: Store) {
    this.#store = store;
  }
  run<T>(work: (transaction: Store) => Promise<T>): Promise<T> {
    return this.#store.transaction(work);
  }
}

/** Group commit where the store has one writer (SQLite); a transaction per unit where connections run in parallel. */
export function committerFor(store: Store, options: GroupCommitOptions = DEFAULT_GROUP_COMMIT): Committer {
  return store.capabilities.singleWriter ? new GroupCommit(store, options) : new TransactionPerUnit(store);
}
