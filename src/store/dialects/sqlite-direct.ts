import type BetterSqlite3 from 'better-sqlite3';
import { SqliteDialect, type DialectAdapter } from 'kysely';

/**
 * The embedded database's connection, found from a Kysely instance's dialect adapter (one per database, shared by
 * its transactions and plugin copies), so the hot statements (../hot-statements.ts) can run on it directly: better-sqlite3
 * is synchronous, and Kysely's executor costs more than the statement (a connection provider, a chain of async
 * closures and result objects per execution: a quarter of the bytes a registration allocated, bench/README.md
 * "session 21"). Everything else keeps Kysely's path.
 */
const connections = new WeakMap<DialectAdapter, BetterSqlite3.Database>();

/** Kysely's SQLite dialect, with its adapter registered to the connection it serves. */
export class DirectSqliteDialect extends SqliteDialect {
  readonly #database: BetterSqlite3.Database;

  constructor(database: BetterSqlite3.Database) {
    super({ database });
    this.#database = database;
  }

  override createAdapter(): DialectAdapter {
    const adapter = super.createAdapter();
    connections.set(adapter, this.#database);
    return adapter;
  }
}

/** The SQLite connection behind a Kysely instance's adapter, or undefined for any other dialect. */
export function sqliteConnectionOf(adapter: DialectAdapter): BetterSqlite3.Database | undefined {
  return connections.get(adapter);
}
