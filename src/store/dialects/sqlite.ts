import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Kysely, SqliteDialect } from 'kysely';
import type { Database as Schema } from '../schema.js';
import type { DialectCapabilities, OpenedDialect } from './dialect.js';

export const SQLITE_CAPABILITIES: DialectCapabilities = Object.freeze({
  name: 'sqlite',
  // Kysely's SQLite driver holds one connection behind a mutex: transactions run one after another.
  singleWriter: true,
  // There is no other node to coordinate with: the data-directory lock keeps a second server off the file.
  advisoryLocks: false,
  vacuumAfterErase: false,
});

/**
 * The embedded database: one file in WAL mode (or `:memory:` for tests). `readOnly` opens an existing file without
 * creating or changing anything (`provisiond info` beside a running server).
 */
export function openSqliteDialect(file: string, options: { readOnly?: boolean } = {}): OpenedDialect {
  if (options.readOnly === true) {
    const database = new Database(file, { readonly: true, fileMustExist: true });
    database.pragma('busy_timeout = 5000');
    return { db: new Kysely<Schema>({ dialect: new SqliteDialect({ database }) }), capabilities: SQLITE_CAPABILITIES };
  }
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
  return { db: new Kysely<Schema>({ dialect: new SqliteDialect({ database }) }), capabilities: SQLITE_CAPABILITIES };
}
