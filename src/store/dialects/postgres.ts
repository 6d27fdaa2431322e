import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Database as Schema } from '../schema.js';
import { isDeferredWrite, preparedStatementName } from '../hot-statements.js';
import { runBatch, savingRoundTrips, type BatchedStatement } from '../pg-round-trips.js';
import type { DialectCapabilities, LockedRead, OpenedDialect } from './dialect.js';

export const POSTGRES_CAPABILITIES: DialectCapabilities = Object.freeze({
  name: 'postgres',
  // A pool of connections, and other nodes on the same database: transactions interleave (READ COMMITTED), so every
  // guarded write must be one conditional statement and cross-node work is serialized by locks.
  singleWriter: false,
  advisoryLocks: true,
  // MVCC keeps a deleted row's old version in the table until VACUUM reclaims it.
  vacuumAfterErase: true,
});

export interface PostgresOptions {
  url: string;
  poolSize: number;
  statementTimeoutMs: number;
  /** Where an idle connection's failure (the server restarted, the network dropped) is reported. */
  onPoolError: (error: Error) => void;
}

/** A shared PostgreSQL database reached through a pool (node-postgres). */
export function openPostgresDialect(options: PostgresOptions): OpenedDialect {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolSize,
    // A statement stuck behind a lock or a runaway query fails instead of holding a registration forever.
    statement_timeout: options.statementTimeoutMs,
    application_name: 'provisiond',
  });
  // Without a listener, an idle client's error (e.g. the server was restarted) would crash the process; the pool
  // drops that client and opens a new one on the next query.
  pool.on('error', options.onPoolError);
  // Advisory locks are held by a session, across the statements (and hub calls) of the work they guard, so each
  // held lock pins a connection. They get a pool of their own: were they taken from the query pool, N registrations
  // holding N locks could starve their own work of connections and wait forever.
  const lockPool = new pg.Pool({ connectionString: options.url, max: options.poolSize, application_name: 'provisiond-locks' });
  lockPool.on('error', options.onPoolError);
  /** Per lock connection, the name whose unlock has not been sent yet. */
  const pendingUnlocks = new WeakMap<pg.PoolClient, string>();
  /** Lock connections whose unlock failed: destroyed when next checked out (closing the session releases its locks). */
  const broken = new WeakSet<pg.PoolClient>();
  const connectForLock = async (): Promise<pg.PoolClient> => {
    for (;;) {
      const client = await lockPool.connect();
      if (!broken.has(client)) return client;
      client.release(new Error('its advisory unlock failed'));
    }
  };
  let closing = false;
  const flushUnlock = (client: pg.PoolClient): void => {
    const name = pendingUnlocks.get(client);
    // (Closing ends every lock session, which releases its locks.)
    if (name === undefined || closing) return;
    pendingUnlocks.delete(client);
    client.query({ ...UNLOCK, values: [name] }).catch((error: unknown) => {
      broken.add(client);
      options.onPoolError(error instanceof Error ? error : new Error(String(error)));
    });
  };
  return {
    db: new Kysely<Schema>({
      dialect: new PostgresDialect({
        pool: {
          connect: async () => savingRoundTrips(await pool.connect(), ROUND_TRIPS),
          end: () => pool.end(),
        },
      }),
    }),
    capabilities: POSTGRES_CAPABILITIES,
    async withLock<T>(name: string, work: (rows: readonly Record<string, unknown>[] | undefined) => Promise<T>, read?: LockedRead): Promise<T> {
      const client = await connectForLock();
      // The previous holder's unlock, when it has not gone yet, travels in front of this lock, and the read after it:
      // one round trip for all three. The read is a statement of its own after the lock (READ COMMITTED: its snapshot
      // is taken once the lock is granted), prepared once per connection like a hot statement.
      const unlock = pendingUnlocks.get(client);
      pendingUnlocks.delete(client);
      let rows: readonly Record<string, unknown>[] | undefined;
      try {
        const statements: BatchedStatement[] = [];
        if (unlock !== undefined) statements.push({ ...UNLOCK, values: [unlock] });
        statements.push({ ...LOCK, values: [name] });
        if (read !== undefined) statements.push({ name: preparedStatementName(read.text), text: read.text, values: read.values });
        if (statements.length === 1) await client.query({ ...LOCK, values: [name] });
        else {
          const result = await runBatch(client, statements);
          if (read !== undefined) rows = result.rows as Record<string, unknown>[];
        }
      } catch (error) {
        // Destroyed: closing the session releases whatever it held.
        client.release(error instanceof Error ? error : new Error(String(error)));
        throw error;
      }
      try {
        return await work(rows);
      } finally {
        // The unlock is not awaited here: it goes with the connection's next lock when a registration is waiting for
        // one (under load, at once), else alone at the next turn of the event loop. Either way before any later
        // statement of this session, so the lock is never held past the moment the connection is next used or idle.
        pendingUnlocks.set(client, name);
        client.release();
        setImmediate(() => flushUnlock(client));
      }
    },
    close: () => {
      closing = true;
      return lockPool.end();
    },
  };
}

// The lock connections' two statements, prepared once per connection like the hot statements.
const LOCK = { name: 'provisiond_lock', text: 'select pg_advisory_lock(hashtextextended($1, 0))' } as const;
const UNLOCK = { name: 'provisiond_unlock', text: 'select pg_advisory_unlock(hashtextextended($1, 0))' } as const;

/**
 * The store's hot statements (../hot-statements.ts) run as named prepared statements: PostgreSQL parses and plans
 * each once per connection instead of on every execution. Kysely's driver passes (text, values); a hot text gets its
 * name, any other text runs unnamed. Inside a transaction, BEGIN and the deferred writes travel with the next statement
 * (../pg-round-trips.ts).
 */
const ROUND_TRIPS = { isDeferred: isDeferredWrite, preparedName: preparedStatementName };

/** True when the configured store names a PostgreSQL database. */
export function isPostgresUrl(store: string): boolean {
  return /^postgres(ql)?:\/\//i.test(store);
}

/** The URL with its password replaced, for messages and logs. */
export function redactPostgresUrl(store: string): string {
  try {
    const url = new URL(store);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return 'postgres://(unparseable URL)';
  }
}
