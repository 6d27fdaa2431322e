import type { KyselyPlugin } from 'kysely';
import { existsSync } from 'node:fs';
import { sqliteFile, usesPostgres, type Config } from '../config/config.js';
import type { OpenedDialect } from './dialects/dialect.js';
import { openSqliteDialect } from './dialects/sqlite.js';
import { KyselyHubStore, type BuiltInHubStore } from './hub-store.js';
import { KyselyStore } from './kysely-store.js';
import type { Store } from './store.js';

export interface OpenedStore {
  store: Store;
  hubStore: BuiltInHubStore;
  /** The Kysely instance beneath both (operational counts and migration status read it directly). */
  db: OpenedDialect['db'];
}

/**
 * Opens and migrates the database the configuration names: the embedded SQLite file (WAL) by default, or a shared
 * PostgreSQL database for several nodes. Only this file and the dialect adapters know which one is in use.
 */
export async function openStore(config: Config, onPoolError: (error: Error) => void = () => undefined, plugins: readonly KyselyPlugin[] = []): Promise<OpenedStore> {
  if (usesPostgres(config)) {
    // Loaded only for PostgreSQL: node-postgres costs a SQLite server memory it never uses (issue 12, P6).
    const { openPostgresDialect } = await import('./dialects/postgres.js');
    return fromDialect(openPostgresDialect({ url: config.store, poolSize: config.storePoolSize, statementTimeoutMs: config.storeStatementTimeoutMs, onPoolError }), true, plugins);
  }
  return fromDialect(openSqliteDialect(sqliteFile(config)), true, plugins);
}

/**
 * Opens the store to read only: no file, table or migration is created. Undefined when there is nothing to read
 * (no SQLite file yet); a database without provisiond's tables fails on the first read.
 */
export async function openStoreReadOnly(config: Config): Promise<OpenedStore | undefined> {
  if (usesPostgres(config)) {
    const { openPostgresDialect } = await import('./dialects/postgres.js');
    const opened = openPostgresDialect({ url: config.store, poolSize: 1, statementTimeoutMs: config.storeStatementTimeoutMs, onPoolError: () => undefined });
    return fromDialect(opened, false);
  }
  const file = sqliteFile(config);
  if (!existsSync(file)) return undefined;
  return fromDialect(openSqliteDialect(file, { readOnly: true }), false);
}

/** `plugins` (e.g. the metrics' query timer) wrap every query of the store and the hub store, not the migrations. */
async function fromDialect(opened: OpenedDialect, migrate = true, plugins: readonly KyselyPlugin[] = []): Promise<OpenedStore> {
  try {
    if (migrate) await KyselyStore.migrate(opened.db, opened.capabilities);
  } catch (error) {
    await opened.close?.();
    await opened.db.destroy();
    throw error;
  }
  const db = plugins.reduce((current, plugin) => current.withPlugin(plugin), opened.db);
  return {
    db,
    store: new KyselyStore(db, {
      capabilities: opened.capabilities,
      ...(opened.withLock === undefined ? {} : { withLock: opened.withLock }),
      ...(opened.close === undefined ? {} : { close: opened.close }),
    }),
    hubStore: new KyselyHubStore(db, opened.capabilities.singleWriter),
  };
}

/** Tests and tools: a migrated SQLite store on a file or `:memory:`. */
export async function openSqliteStore(file: string): Promise<Store> {
  return (await fromDialect(openSqliteDialect(file))).store;
}

/** Tests: the SQLite Kysely instance, migrated (the built-in hub store's own tests). */
export async function openSqliteDatabase(file: string): Promise<OpenedDialect['db']> {
  const opened = openSqliteDialect(file);
  await KyselyStore.migrate(opened.db, opened.capabilities);
  return opened.db;
}
