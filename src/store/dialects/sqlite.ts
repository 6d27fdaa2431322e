import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Kysely } from 'kysely';
import type { Database as Schema } from '../schema.js';
import type { DialectCapabilities, OpenedDialect } from './dialect.js';
import { shareReadTransactions } from './sqlite-shared-reads.js';
import { DirectSqliteDialect } from './sqlite-direct.js';

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
    return { db: new Kysely<Schema>({ dialect: new DirectSqliteDialect(database) }), capabilities: SQLITE_CAPABILITIES };
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
  // Temporary structures in memory, not in temporary files. The group commit runs each registration of a batch in a
  // savepoint, and SQLite copies every page a savepoint changes for the first time into a sub-journal, which spills
  // to an (unlinked) temporary file past 64 KiB: a batch of eight made 29–41 extra writes per registration there, and
  // created and deleted a file per commit (bench/README.md "session 21, H1"). In memory the sub-journal holds at most
  // the pages of one batch (a few MiB at 64 registrations), and no page image of a device outlives its transaction in
  // a temporary file on disk.
  database.pragma('temp_store = MEMORY');
  // A checkpoint runs inside the commit that crosses this many WAL frames, on the event loop, and syncs the database
  // file. At SQLite's default of 1,000 a registration burst checkpointed every ~100 registrations; at 4,000 the pages
  // that every commit dirties (index tails, interior pages) are copied back once per ~400, and a page read still
  // searches a single WAL-index hash table (4,062 frames each). Measured per registration (bench/README.md "session 21,
  // H1"): pwrite 29.6 → 27.3, pread 4.7 → 2.5, fsync 0.037 → 0.010. The WAL file grows to ~16 MiB instead of ~4 MiB.
  database.pragma('wal_autocheckpoint = 4000');
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
  // Reads outside a transaction share one read transaction per turn of the event loop (sqlite-shared-reads.ts).
  shareReadTransactions(database);
  return { db: new Kysely<Schema>({ dialect: new DirectSqliteDialect(database) }), capabilities: SQLITE_CAPABILITIES };
}
