import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { after, test } from 'node:test';
import BetterSqlite from 'better-sqlite3';
import { sql, type Kysely } from 'kysely';
import { openSqliteDialect } from '../src/store/dialects/sqlite.js';
import { directSqlite } from '../src/store/hot-statements.js';

/**
 * The embedded store's reads outside a transaction share one read transaction per turn of the event loop
 * (src/store/dialects/sqlite-shared-reads.ts). What must hold: the sharing is there (one snapshot per turn), and it is
 * invisible to everything else — a write outside a transaction is committed when it returns, transactions and
 * checkpoints run as before, and a connection closed mid-turn does not fail later. A second connection to the same
 * file (as `provisiond backup` opens one) sees what is committed.
 */
const dir = mkdtempSync(join(tmpdir(), 'provisiond-shared-reads-'));
let files = 0;
after(() => rmSync(dir, { recursive: true, force: true }));

interface Tables {
  items: { id: string; version: number };
}

async function open(): Promise<{ db: Kysely<Tables>; file: string; other: BetterSqlite.Database; close: () => Promise<void> }> {
  const file = join(dir, `shared-${(files += 1)}`, 'provisiond.db');
  const db = openSqliteDialect(file).db as unknown as Kysely<Tables>;
  await sql`create table items (id text primary key, version integer not null)`.execute(db);
  await db.insertInto('items').values({ id: 'a', version: 1 }).execute();
  const other = new BetterSqlite(file);
  other.pragma('busy_timeout = 5000');
  return {
    db,
    file,
    other,
    close: async () => {
      other.close();
      await db.destroy();
    },
  };
}

const versionOf = async (db: Kysely<Tables>) => (await db.selectFrom('items').select('version').where('id', '=', 'a').executeTakeFirstOrThrow()).version;
const otherVersion = (other: BetterSqlite.Database) => (other.prepare(`select version from items where id = 'a'`).get() as { version: number }).version;

test('reads in one turn of the event loop see one snapshot; the next turn sees what was committed since', async () => {
  const { db, other, close } = await open();
  try {
    await nextTurn();
    assert.equal(await versionOf(db), 1);
    // Another connection commits during the turn: the turn's reads keep their snapshot (each read was its own
    // transaction before, and saw 2 here).
    other.prepare(`update items set version = 2 where id = 'a'`).run();
    assert.equal(await versionOf(db), 1);
    await nextTurn();
    assert.equal(await versionOf(db), 2);
  } finally {
    await close();
  }
});

test('a write after a read in the same turn is committed when it returns, not at the end of the turn', async () => {
  const { db, other, close } = await open();
  try {
    await nextTurn();
    assert.equal(await versionOf(db), 1);
    await db.updateTable('items').set({ version: 3 }).where('id', '=', 'a').execute();
    const connection = directSqlite(db as never);
    assert.equal(connection?.inTransaction, false, 'no transaction left open after the write');
    assert.equal(otherVersion(other), 3, 'another connection sees the write at once');
    // A hot statement's path (the connection directly) likewise.
    assert.equal(await versionOf(db), 3);
    connection?.prepare(`update items set version = 4 where id = 'a'`).run();
    assert.equal(connection?.inTransaction, false);
    assert.equal(otherVersion(other), 4);
  } finally {
    await close();
  }
});

test('a transaction begun after a read in the same turn runs and commits as before', async () => {
  const { db, other, close } = await open();
  try {
    await nextTurn();
    assert.equal(await versionOf(db), 1);
    // The root's statements may run on the connection directly during the turn's shared read, not during a transaction.
    assert.notEqual(directSqlite(db as never), undefined);
    await db.transaction().execute(async (trx) => {
      assert.equal(directSqlite(db as never), undefined, 'the root waits while a transaction is open');
      assert.notEqual(directSqlite(trx as never), undefined, 'the transaction runs its statements directly');
      await trx.updateTable('items').set({ version: 5 }).where('id', '=', 'a').execute();
      await trx.insertInto('items').values({ id: 'b', version: 1 }).execute();
    });
    assert.equal(otherVersion(other), 5);
    assert.equal(await versionOf(db), 5);
    // A rolled-back transaction after a read leaves nothing either.
    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await trx.updateTable('items').set({ version: 99 }).where('id', '=', 'a').execute();
        throw new Error('undo');
      }),
      /undo/,
    );
    assert.equal(await versionOf(db), 5);
    assert.equal(otherVersion(other), 5);
  } finally {
    await close();
  }
});

test('a checkpoint after a read in the same turn copies the whole WAL back and truncates it', async () => {
  const { db, file, other, close } = await open();
  try {
    await nextTurn();
    for (let i = 0; i < 20; i += 1) await db.insertInto('items').values({ id: `c${i}`, version: i }).execute();
    assert.ok(statSync(`${file}-wal`).size > 0);
    assert.equal(await versionOf(db), 1);
    const [result] = (await sql<{ busy: number; log: number; checkpointed: number }>`PRAGMA wal_checkpoint(TRUNCATE)`.execute(db)).rows;
    assert.equal(result?.busy, 0, 'no read transaction of this connection held the checkpoint back');
    assert.equal(statSync(`${file}-wal`).size, 0);
    assert.equal(otherVersion(other), 1);
  } finally {
    await close();
  }
});

test('a connection closed during a turn with a shared read open does not fail at the end of the turn', async () => {
  const { db, other } = await open();
  other.close();
  const failures: unknown[] = [];
  const onError = (error: unknown) => failures.push(error);
  process.on('uncaughtException', onError);
  try {
    await nextTurn();
    assert.equal(await versionOf(db), 1);
    await db.destroy();
    await nextTurn();
    await nextTurn();
    assert.deepEqual(failures, []);
  } finally {
    process.off('uncaughtException', onError);
  }
});
