import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Kysely, SqliteDialect } from 'kysely';
import { KyselyStore } from './kysely-store.js';
import type { Database as Schema } from './schema.js';
import type { Store } from './store.js';

/**
 * Opens the database the configuration names: the embedded SQLite file (WAL) by default, migrated. Only this file
 * and app.ts know which dialect is in use.
 */
export async function openSqliteDatabase(file: string): Promise<Kysely<Schema>> {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
  const database = new Database(file);
  // WAL: readers never wait for the writer; NORMAL sync is durable across application crashes in WAL mode.
  database.pragma('journal_mode = WAL');
  database.pragma('synchronous = NORMAL');
  database.pragma('busy_timeout = 5000');
  // Deleted rows are overwritten with zeros, so an erased device's bytes do not linger in free space inside pages
  // (docs/customer-data.md "What remains"; its cost is measured in bench/README.md).
  database.pragma('secure_delete = ON');
  // Kysely prepares every statement anew; better-sqlite3 statements are reusable, so keep one per SQL text.
  const statements = new Map<string, Database.Statement>();
  const prepare = database.prepare.bind(database);
  database.prepare = ((sql: string) => {
    let statement = statements.get(sql);
    if (statement === undefined) {
      statement = prepare(sql);
      if (statements.size < 2000) statements.set(sql, statement);
    }
    return statement;
  }) as typeof database.prepare;
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database }) });
  await KyselyStore.migrate(db);
  return db;
}

export async function openSqliteStore(file: string): Promise<Store> {
  return new KyselyStore(await openSqliteDatabase(file));
}
