import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import BetterSqlite from 'better-sqlite3';
import { CompiledQuery, Kysely, Migrator, SqliteDialect, sql } from 'kysely';
import { openSqliteDialect } from '../src/store/dialects/sqlite.js';
import { KyselyHubStore } from '../src/store/hub-store.js';
import { KyselyStore } from '../src/store/kysely-store.js';
import { migrationProvider } from '../src/store/migrations.js';
import type { Database } from '../src/store/schema.js';
import { openSqliteDatabase, openSqliteStore } from '../src/store/open-store.js';
import { runHubStoreContract } from './hub-store-contract.js';
import { runStoreContract } from './store-contract.js';

const dir = mkdtempSync(join(tmpdir(), 'provisiond-store-'));
let files = 0;
after(() => rmSync(dir, { recursive: true, force: true }));

runStoreContract('SQLite in memory', () => openSqliteStore(':memory:'));
runStoreContract('SQLite file (WAL)', () => openSqliteStore(join(dir, `store-${(files += 1)}`, 'provisiond.db')));

const openHubStore = async (file: string) => {
  const db = await openSqliteDatabase(file);
  return { hubStore: new KyselyHubStore(db), store: new KyselyStore(db), close: () => db.destroy() };
};
runHubStoreContract('SQLite in memory', () => openHubStore(':memory:'));
runHubStoreContract('SQLite file (WAL)', () => openHubStore(join(dir, `hubs-${(files += 1)}`, 'provisiond.db')));

test('SQLite file: data survives a reopen and migrations run once', async () => {
  const file = join(dir, 'reopen', 'provisiond.db');
  const first = await openSqliteStore(file);
  const instance = {
    id: 'i1',
    name: 'default',
    idScope: '0ne00000001',
    serviceHostNames: ['localhost'],
    allocationPolicy: 'hashed' as const,
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
  };
  await first.insertInstance(instance);
  await first.close();
  const second = await openSqliteStore(file);
  try {
    assert.deepEqual(await second.listInstances(), [instance]);
    assert.deepEqual(await second.findInstanceByHostName('LOCALHOST'), instance);
  } finally {
    await second.close();
  }
});

test('saving a data request again with the same status and subject writes its row, not its index entries', async () => {
  // An erase saves its request eight times, most of them progress only (issue 12 P5); each page written goes to the WAL
  // and is copied back by the erase's closing checkpoint. An upsert rewrote the row's three index entries every time.
  const file = join(dir, 'request-saves', 'provisiond.db');
  const store = await openSqliteStore(file);
  const walPages = () => statSync(`${file}-wal`).size / (4096 + 24);
  try {
    const request = (status: string, subjectId: string, note: string) => ({
      requestId: 'R1',
      subjectId,
      sortKey: '0001:r1',
      status,
      type: 'erase',
      doc: { requestId: 'R1', status, note: note.repeat(2000) },
    });
    await store.putDataRequest('i1', request('running', 'dev-1', 'a'));
    const before = walPages();
    await store.putDataRequest('i1', request('running', 'dev-1', 'b'));
    assert.equal(walPages() - before, 1, 'one page: the row');
    assert.equal((await store.getDataRequest('i1', 'r1'))?.doc.note, 'b'.repeat(2000));
    // A save that changes an indexed column still moves its index entries.
    await store.putDataRequest('i1', request('completed', '', 'c'));
    assert.deepEqual(
      (await store.listDataRequestsByStatus(['completed'])).map((found) => [found.requestId, found.status]),
      [['R1', 'completed']],
    );
    assert.deepEqual(await store.findDataRequestsAbout('i1', ['dev-1']), []);
  } finally {
    await store.close();
  }
});

test('rewriting a log event with its actor, outcome and class unchanged writes its row and subject indexes, not the class index', async () => {
  // An erase pseudonymizes each of the subject's log events, and every folded read rewrites its access event (issue 12
  // P5): both keep the actor, the outcome and the class. An UPDATE that sets a column rewrites that column's index
  // entries even with the same value: the class index's page went to the WAL too, for the erase's checkpoint to copy.
  const file = join(dir, 'event-rewrites', 'provisiond.db');
  const store = await openSqliteStore(file);
  const walPages = () => statSync(`${file}-wal`).size / (4096 + 24);
  try {
    const event = { eventId: '018c0000000000000001', timeUtc: '2024-01-01T00:00:00.0000000Z', kind: 'registration', operation: 'register', actor: 'device', outcome: 'success', subject: { registrationId: 'dev-1', deviceId: 'dev-1' } } as const;
    await store.appendAuditEvent('i1', { ...event, class: 'change' });
    const before = walPages();
    await store.replaceAuditEvents('i1', [{ ...event, class: 'change', subject: { hash: 'h1' } }]);
    assert.equal(walPages() - before, 3, 'three pages: the row and the two subject indexes it leaves');
    assert.deepEqual(await store.findAuditEventsAbout('i1', { registrationIds: ['dev-1'], deviceIds: ['dev-1'], groupIds: [] }), []);
    // A rewrite that changes the class or the outcome still moves the event in their indexes.
    await store.replaceAuditEvents('i1', [{ ...event, class: 'access', outcome: 'failure', subject: { hash: 'h1' } }]);
    assert.deepEqual(
      (await store.queryAuditEvents('i1', { eventClass: 'access', limit: 10 })).items.map((found) => [found.eventId, found.class, found.outcome]),
      [[event.eventId, 'access', 'failure']],
    );
    assert.deepEqual((await store.queryAuditEvents('i1', { eventClass: 'change', limit: 10 })).items, []);
    assert.deepEqual((await store.queryAuditEvents('i1', { outcome: 'failure', limit: 10 })).items.map((found) => found.eventId), [event.eventId]);
  } finally {
    await store.close();
  }
});

test('migration 0012 backfills the subject→hub-device links from the records, and the subject keys of requests and outbox events', async () => {
  const file = join(dir, 'backfill', 'provisiond.db');
  const opened = openSqliteDialect(file);
  const migrator = new Migrator({ db: opened.db, provider: migrationProvider(opened.capabilities) });
  const upTo11 = await migrator.migrateTo('0011_store_for_nodes');
  assert.equal(upTo11.error, undefined);
  // Rows as the code before 0012 wrote them.
  const record = { registrationId: 'Old-1', deviceId: 'Old-1-Dev', assignedHub: 'localhost', enrollmentGroupId: 'Grp', status: 'assigned', lastUpdatedDateTimeUtc: '2024-01-01T00:00:00.0000000Z' };
  await sql`insert into registrations (instance_id, registration_id_key, device_id_key, group_id_key, status, assigned_hub_key, etag, doc)
    values ('i1', 'old-1', 'old-1-dev', 'grp', 'assigned', 'localhost', 'e', ${JSON.stringify(record)}),
           ('i1', 'old-2', '', '', 'failed', '', 'e', ${JSON.stringify({ registrationId: 'old-2', status: 'failed' })})`.execute(opened.db);
  await sql`insert into data_requests (instance_id, request_id_key, sort_key, status, type, doc)
    values ('i1', 'r1', '1', 'completed', 'export', ${JSON.stringify({ requestId: 'r1', subject: { kind: 'registrationId', id: 'Old-1' } })})`.execute(opened.db);
  await sql`insert into event_outbox (instance_id, event_id, doc) values ('i1', 'ev1', ${JSON.stringify({ data: { registrationId: 'Old-1', deviceId: 'Old-1-Dev' } })})`.execute(opened.db);
  await opened.db.destroy();

  const store = await openSqliteStore(file);
  try {
    const none = { registrationIds: [], deviceIds: [], groupIds: [] };
    assert.deepEqual(await store.findHubDeviceLinks('i1', { ...none, registrationIds: ['old-1', 'old-2'] }), [
      { registrationId: 'Old-1', enrollmentGroupId: 'Grp', hub: 'localhost', deviceId: 'Old-1-Dev', linkedDateTimeUtc: '2024-01-01T00:00:00.0000000Z' },
    ]);
    assert.deepEqual((await store.findDataRequestsAbout('i1', ['old-1'])).map((request) => request.requestId), ['r1']);
    assert.deepEqual((await store.findOutboxEventsAbout('i1', { ...none, deviceIds: ['OLD-1-DEV'] })).map((event) => event.eventId), ['ev1']);
  } finally {
    await store.close();
  }
});

/** A store on an empty in-memory SQLite database whose statements are captured, for their query plans. */
async function capturingStore(): Promise<{ captured: CompiledQuery[]; db: Kysely<Database>; store: KyselyStore }> {
  const captured: CompiledQuery[] = [];
  const db = new Kysely<Database>({
    dialect: new SqliteDialect({ database: new BetterSqlite(':memory:') }),
    log: (event) => {
      if (event.level === 'query') captured.push(event.query);
    },
  });
  await KyselyStore.migrate(db);
  return { captured, db, store: new KyselyStore(db) };
}

/**
 * Issue 12, P5: at a million rows, a lookup that walks the primary key of a whole instance in list order, testing
 * every row, takes seconds (a query by device ID 1.2 s, an export's operations 1.7–2.7 s, the log of one subject 12 s).
 * provisiond never gathers SQLite statistics, so the plan depends on the schema and the statement alone: an empty
 * database shows the plan a full one gets. The store's own statements are captured and explained.
 */
test('lookups by device, by subject and of a registration’s operations use their indexes, never a walk of the whole instance', async () => {
  const { captured, db, store } = await capturingStore();
  const lookups: Record<string, () => Promise<unknown>> = {
    'enrollments by device ID': () => store.queryEnrollments('i1', { filters: [{ field: 'deviceId', op: 'eq', values: ['d'] }], limit: 100 }),
    'records by device ID': () => store.queryRegistrations('i1', { filters: [{ field: 'deviceId', op: 'eq', values: ['d'] }], limit: 1000 }),
    'operations of a registration': () => store.listOperationsOfRegistration('i1', 'r'),
    'the log of one subject': () => store.queryAuditEvents('i1', { subject: 'd', limit: 100 }),
    'the log of one subject, changes only': () => store.queryAuditEvents('i1', { subject: 'd', eventClass: 'change', limit: 1 }),
    'the events an export or erase finds': () => store.findAuditEventsAbout('i1', { registrationIds: ['r'], deviceIds: ['d'], groupIds: ['g'] }),
    'a day of the log': () => store.queryAuditEvents('i1', { from: '2026-01-01T00:00:00.0000000Z', to: '2026-01-02T00:00:00.0000000Z', limit: 100 }),
    'the log retention purge': () => store.deleteAuditEventsBefore('i1', '2026-01-01T00:00:00.0000000Z', 1000),
    // Every export and erase looks for the earlier requests about its subject; ordered by the request list's index,
    // the planner walked every request of the instance (with their bundles) to find a subject's few.
    'the earlier data requests about a subject': () => store.findDataRequestsAbout('i1', ['r', 'd']),
    'undelivered lifecycle events about a subject': () => store.findOutboxEventsAbout('i1', { registrationIds: ['r'], deviceIds: ['d'], groupIds: ['g'] }),
    'the hub devices made for a subject': () => store.findHubDeviceLinks('i1', { registrationIds: ['r'], deviceIds: ['d'], groupIds: ['g'] }),
  };
  // A scan, or a search of any index by the instance alone: every row of the instance, in some order.
  const walk = /^(SCAN \w+|SEARCH \w+ USING (COVERING )?INDEX \w+ \(instance_id=\?\))$/;
  for (const [name, lookup] of Object.entries(lookups)) {
    captured.length = 0;
    await lookup();
    const statements = captured.splice(0);
    assert.ok(statements.length > 0, name);
    for (const query of statements) {
      const plan = (await db.executeQuery(CompiledQuery.raw(`explain query plan ${query.sql}`, [...query.parameters]))).rows.map((row) => (row as { detail: string }).detail);
      assert.ok(!plan.some((detail) => walk.test(detail)), `${name}: ${plan.join(' / ')}`);
    }
  }
  await db.destroy();
});

/**
 * Issue 12, P5: a page of the log's failures (the system log page's filter) read every event of its 5,000-event window
 * from the table to test its outcome — one day's failures took 64 ms (p50, load 3–8) at 4M events, 0.4 s from cold pages. The
 * failures have a partial index of their own (migration 0017): the page reads them alone.
 */
test('a page of the log’s failures reads the failures’ own index', async () => {
  const { captured, db, store } = await capturingStore();
  const pages: Record<string, () => Promise<unknown>> = {
    'the failures': () => store.queryAuditEvents('i1', { outcome: 'failure', limit: 100, scanLimit: 5000 }),
    'one day’s failures': () =>
      store.queryAuditEvents('i1', { outcome: 'failure', from: '2026-01-01T00:00:00.0000000Z', to: '2026-01-02T00:00:00.0000000Z', limit: 100, scanLimit: 5000 }),
  };
  for (const [name, page] of Object.entries(pages)) {
    captured.length = 0;
    await page();
    const main = captured.filter((query) => /^select [^()]*"doc"[^()]* from "audit_events"/.test(query.sql));
    assert.equal(main.length, 1, name);
    for (const query of main) {
      const plan = (await db.executeQuery(CompiledQuery.raw(`explain query plan ${query.sql}`, [...query.parameters]))).rows.map((row) => (row as { detail: string }).detail);
      assert.ok(plan.some((detail) => detail.includes('INDEX audit_events_failures')), `${name}: ${plan.join(' / ')}`);
    }
  }
  await db.destroy();
});

/**
 * Issue 12 (session 21): the group commit runs every registration of a batch in its own savepoint. better-sqlite3
 * statements are prepared once per SQL text and kept (dialects/sqlite.ts, up to 2,000 texts); a savepoint named from a
 * counter made two new texts per unit, so each was parsed anew, and after ~1,000 group-committed registrations the
 * cache was full of one-off savepoint texts (held for the process's life) and no statement first seen later was kept.
 */
test('a unit of work’s savepoint is one SQL text, prepared once, however many units run', async () => {
  const file = join(dir, 'savepoints', 'provisiond.db');
  const prepared: string[] = [];
  const prototype = BetterSqlite.prototype as unknown as { prepare: (source: string) => unknown };
  const original = prototype.prepare;
  prototype.prepare = function (this: unknown, source: string) {
    prepared.push(source);
    return original.call(this, source);
  };
  let store: Awaited<ReturnType<typeof openSqliteStore>>;
  try {
    store = await openSqliteStore(file);
  } finally {
    prototype.prepare = original;
  }
  try {
    const units = 60;
    await store.transaction(async (transaction) => {
      for (let i = 0; i < units; i += 1) {
        // Nested, as a bulk item inside a unit would be, and one that fails and rolls back to its own savepoint.
        await transaction.atomically((unit) => unit.atomically(async () => undefined));
        await assert.rejects(transaction.atomically(() => Promise.reject(new Error('unit failed'))), /unit failed/);
      }
    });
    const savepointTexts = new Set(prepared.filter((source) => /savepoint/i.test(source)));
    assert.ok(savepointTexts.size <= 3, `savepoint texts prepared: ${savepointTexts.size} (${[...savepointTexts].slice(0, 4).join(' | ')}…)`);
  } finally {
    await store.close();
  }
});

/**
 * Issue 12 (session 21): SQLite journals each page a savepoint changes first, and a sub-journal past 64 KiB spilled to
 * an unlinked temporary file — one per group commit of a few registrations, ~29 extra writes per registration, and page
 * images of devices in a file outside the data directory (docs/customer-data.md "What remains"). The journal stays in
 * memory: while a savepoint has changed ~200 existing pages, the process holds no SQLite temporary file open.
 */
test('a unit of work’s savepoint journal stays in memory, never in a temporary file', async () => {
  const store = await openSqliteStore(join(dir, 'subjournal', 'provisiond.db'));
  const record = (id: string, status: 'assigned' | 'failed') => ({
    registrationId: id,
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    assignedHub: 'hub1.example.net',
    deviceId: id,
    status,
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:01.0000000Z',
    etag: `"${id}-${status}"`,
    attestationType: 'symmetricKey' as const,
    payload: { padding: 'x'.repeat(3000) },
  });
  try {
    const ids = Array.from({ length: 200 }, (_, i) => `journal-${String(i).padStart(3, '0')}`);
    await store.transaction(async (transaction) => {
      for (const id of ids) await transaction.putRegistration('i1', record(id, 'assigned'));
    });
    const temporaryFiles = await store.transaction((transaction) =>
      transaction.atomically(async (unit) => {
        for (const id of ids) await unit.putRegistration('i1', record(id, 'failed'));
        // SQLite names its temporary files etilqs_…, unlinked once open: an open descriptor is the only trace.
        return readdirSync('/proc/self/fd')
          .map((fd) => {
            try {
              return readlinkSync(`/proc/self/fd/${fd}`);
            } catch {
              return '';
            }
          })
          .filter((target) => target.includes('etilqs_'));
      }),
    );
    assert.deepEqual(temporaryFiles, []);
    assert.equal((await store.getRegistration('i1', 'journal-199'))?.status, 'failed');
  } finally {
    await store.close();
  }
});

/**
 * Issue 12, P4: a log row keeps its ID, time, kind, actor, outcome and class in columns only — the document repeated
 * them (~170 of its ~400 bytes, and a bulk import writes one event per item). A read puts them back; a row written
 * before, with them in its document too, reads as it did, its columns winning where they differ (migration 0015
 * reclassified old events in the columns only).
 */
test('a log row keeps its column fields out of its document, and rows written either way read whole', async () => {
  const { db, store } = await capturingStore();
  const event = (n: number) => ({
    eventId: `0000000000${n}0`,
    timeUtc: `2026-01-01T00:00:0${n}.0000000Z`,
    kind: 'registration' as const,
    operation: 'register',
    actor: 'device',
    source: '127.0.0.1',
    subject: { registrationId: `Dev-${n}` },
    outcome: 'success' as const,
    transport: 'https',
  });
  await store.appendAuditEvent('i1', event(1));
  await store.appendAuditEvents('i1', [event(2), event(3)]);
  const docs = (await sql<{ doc: string }>`select doc from audit_events order by event_id`.execute(db)).rows.map((row) => JSON.parse(row.doc) as Record<string, unknown>);
  assert.equal(docs.length, 3);
  for (const doc of docs) assert.deepEqual(Object.keys(doc).sort(), ['operation', 'source', 'subject', 'transport']);
  // As a row was written before: every field in the document, and a class and outcome the columns have changed since.
  const old = { ...event(4), class: 'change', outcome: 'notFound' };
  await sql`insert into audit_events (instance_id, event_id, time_utc, kind, actor, outcome, event_class, registration_id_key, device_id_key, group_id_key, doc)
    values ('i1', ${old.eventId}, ${old.timeUtc}, 'registration', 'device', 'success', 'access', 'dev-4', '', '', ${JSON.stringify(old)})`.execute(db);
  const read = (await store.queryAuditEvents('i1', { limit: 10 })).items;
  assert.deepEqual(read.at(-1), { ...event(1), class: 'change' }, 'a lean row reads whole');
  assert.deepEqual(read[0], { ...event(4), class: 'access', outcome: 'success' }, 'an old row reads whole, its columns winning');
  // A response lists an event's fields in one order: an old row's as its document had them, a lean row's document
  // fields, then the columns'.
  assert.deepEqual(Object.keys(read[0] ?? {}), Object.keys(old));
  assert.deepEqual(Object.keys(read.at(-1) ?? {}), ['operation', 'source', 'subject', 'transport', 'eventId', 'timeUtc', 'kind', 'actor', 'outcome', 'class']);
  assert.deepEqual(await store.findAuditEventsAbout('i1', { registrationIds: ['dev-2'], deviceIds: [], groupIds: [] }), [{ ...event(2), class: 'change' }]);
  await db.destroy();
});
