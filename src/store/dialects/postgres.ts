import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Database as Schema } from '../schema.js';
import { isDeferredWrite, preparedStatementName } from '../hot-statements.js';
import { savingRoundTrips } from '../pg-round-trips.js';
import type { DialectCapabilities, OpenedDialect } from './dialect.js';

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
    async withLock<T>(name: string, work: () => Promise<T>): Promise<T> {
      const client = await lockPool.connect();
      try {
        // hashtextextended: a stable 64-bit key for any name; a collision only serializes two unrelated names.
        await client.query('select pg_advisory_lock(hashtextextended($1, 0))', [name]);
      } catch (error) {
        client.release(error instanceof Error ? error : new Error(String(error)));
        throw error;
      }
      try {
        return await work();
      } finally {
        // A connection that cannot unlock is destroyed: closing the session releases the lock.
        const failed = await client.query('select pg_advisory_unlock(hashtextextended($1, 0))', [name]).then(
          () => undefined,
          (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
        );
        client.release(failed);
      }
    },
    close: () => lockPool.end(),
  };
}

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
