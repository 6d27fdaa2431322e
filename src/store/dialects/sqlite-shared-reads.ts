import type BetterSqlite3 from 'better-sqlite3';

/**
 * Reads outside a transaction share one read transaction per turn of the event loop (the embedded store).
 *
 * Why: on SQLite in WAL mode every statement outside a transaction is a transaction of its own, and each one takes
 * and drops a read lock in the WAL's shared-memory file — a read after a commit also moves a read mark first: two to
 * four `fcntl` calls, ~1.2 µs each on the machine of bench/README.md. A point read costs ~7.5 µs that way against
 * ~2 µs inside a transaction (a loop on a copy of a registration store). Under load the requests of one turn (a
 * device's register, another's poll, a portal page) all read outside transactions: they now share one.
 *
 * The rules that keep it invisible:
 * - A plain read (a `select` or `with` that SQLite calls read-only) with no transaction open on the connection opens
 *   one, and the read transaction ends at the end of the turn (`setImmediate`).
 * - Any other statement — a write, `begin`, `savepoint`, a pragma, a checkpoint — ends it first. So a write outside a
 *   transaction still commits on its own the moment it returns, and a transaction begins as it did.
 * - Only this process writes the file while it serves (the data-directory lock; `provisiond backup` only reads): a
 *   read sees what it would have seen as its own transaction, but for another connection's commit made earlier in
 *   the same turn.
 * The read transaction's own statements have texts of their own ({@link SHARED_READ_BEGIN}, {@link SHARED_READ_END}),
 * not `begin` and `commit`: nothing is written, and a count of commits or of a registration's statements (bench,
 * tests) tells them from the statements that do the work.
 */
const sharedReads = new WeakSet<BetterSqlite3.Database>();

/** The text that opens a turn's shared read transaction (SQLite's default, deferred, spelled out). */
export const SHARED_READ_BEGIN = 'begin deferred';
/** The text that ends it (SQLite's synonym of `commit`; a read transaction has nothing to commit). */
export const SHARED_READ_END = 'end';

/**
 * Installs the sharing on the connection: its `prepare` (with the statement cache already installed, dialects/sqlite.ts)
 * classifies each SQL text once; `pragma` and `exec`, which better-sqlite3 runs without `prepare`, end a shared read
 * first like any statement that is not a plain read.
 */
export function shareReadTransactions(database: BetterSqlite3.Database): void {
  const prepare = database.prepare.bind(database);
  const pragma = database.pragma.bind(database);
  const exec = database.exec.bind(database);
  const begin = prepare(SHARED_READ_BEGIN);
  const end = prepare(SHARED_READ_END);
  const plainRead = new Map<string, boolean>();
  const endSharedRead = (): void => {
    if (!sharedReads.delete(database)) return;
    // The connection may have been closed during the turn (closing ends the transaction with it).
    if (database.open && database.inTransaction) end.run();
  };
  database.prepare = ((sql: string) => {
    const statement = prepare(sql);
    let read = plainRead.get(sql);
    if (read === undefined) {
      read = statement.readonly && /^\s*(select|with)\b/i.test(sql);
      if (plainRead.size < 4000) plainRead.set(sql, read);
    }
    if (!read) endSharedRead();
    else if (!database.inTransaction) {
      begin.run();
      sharedReads.add(database);
      setImmediate(endSharedRead);
    }
    return statement;
  }) as typeof database.prepare;
  database.pragma = ((source: string, options?: BetterSqlite3.PragmaOptions) => {
    endSharedRead();
    return pragma(source, options);
  }) as typeof database.pragma;
  database.exec = ((source: string) => {
    endSharedRead();
    return exec(source);
  }) as typeof database.exec;
}

/**
 * True when the connection's open transaction is one that the caller began (or a writer's), not a shared read: the
 * statements of a transaction's owner run on it directly, others wait for its end (hot-statements.ts `directSqlite`).
 */
export function inOwnTransaction(database: BetterSqlite3.Database): boolean {
  return database.inTransaction && !sharedReads.has(database);
}
