import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Migrator, sql, type Kysely } from 'kysely';
import { chromium, type Browser, type Page } from 'playwright-core';
import { loadConfig } from '../src/config/config.js';
import { openPostgresDialect } from '../src/store/dialects/postgres.js';
import { openSqliteDialect } from '../src/store/dialects/sqlite.js';
import { migrationProvider } from '../src/store/migrations.js';
import { openSqliteStore, openStore } from '../src/store/open-store.js';
import type { Store } from '../src/store/store.js';
import { cliRunners } from './cli-runner.js';
import type { Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';
import { dropPostgresDatabase, freshPostgresDatabase } from './postgres.js';

/**
 * The system log as an operator reads it (docs/customer-data.md "The system log"): every event is an access or a
 * change, filters and timelines honour that, a read that finds nothing is neutral, and the console reading the log
 * (the portal's pages, `provisiond audit query`) does not flood the log with itself, while who read a device's data
 * stays recorded. Driven over real sockets: the service API, the CLI, and the portal in Debian's Chromium.
 */
const API = 'api-version=2021-10-01';
const OWNER = 'provisioningserviceowner';
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ORIGIN = 'https://localhost';
const DEVICE = 'log-dev-1';

let server: TestServer;
/** A second policy that reads the log for the assertions, so its own reads are told apart from the owner's. */
let auditorKey = '';

before(async () => {
  server = await startServer();
  const policy = await owner('PUT', '/accessPolicies/auditor', { rights: 'EnrollmentRead, RegistrationStatusRead' });
  assert.equal(policy.status, 200, JSON.stringify(policy.body));
  auditorKey = String((policy.body as Json).primaryKey);
  assert.equal((await owner('PUT', `/enrollments/${DEVICE}`, { registrationId: DEVICE, attestation: { type: 'symmetricKey' } })).status, 200);
});

after(async () => {
  await server?.close();
});

async function owner(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const url = `${path}${path.includes('?') ? '&' : '?'}${API}`;
  return call(method, url, { headers: { authorization: server.token(), ...headers }, ...(body === undefined ? {} : { body }) });
}

/** The owner's events since `from`, oldest first, read by the auditor policy (every page). */
async function ownerEventsSince(from: string, filter: Json = {}, actor = OWNER): Promise<Json[]> {
  const events: Json[] = [];
  let continuation: string | undefined;
  do {
    const headers: Record<string, string> = { authorization: server.token({ keyName: 'auditor', key: auditorKey }), 'x-ms-max-item-count': '1000' };
    if (continuation !== undefined) headers['x-ms-continuation'] = continuation;
    const page = await call('POST', `/auditEvents/query?${API}`, { headers, body: { actor, from, ...filter } });
    assert.equal(page.status, 200, page.text);
    events.push(...(page.body as Json[]));
    continuation = page.headers.get('x-ms-continuation') ?? undefined;
  } while (continuation !== undefined);
  return events.reverse();
}

async function bulkCreate(prefix: string, count: number): Promise<void> {
  for (let start = 0; start < count; start += 50) {
    const enrollments = Array.from({ length: Math.min(50, count - start) }, (_, i) => ({ registrationId: `${prefix}-${start + i}`, attestation: { type: 'symmetricKey' } }));
    const result = await owner('POST', '/enrollments', { mode: 'create', enrollments });
    assert.equal(result.status, 200, result.text);
  }
}

/**
 * The start of a scenario's window of the log, after the calls before it: events are stamped to the millisecond, so
 * a call answered in the millisecond the window starts would fall inside it. A 2 ms wait first puts them before it.
 */
async function windowStart(): Promise<string> {
  await new Promise((resolve) => setTimeout(resolve, 2));
  return new Date().toISOString();
}

describe('the service API', () => {
  test("a call's log entry is in the log when the call's answer arrives (written before the answer, not after)", async () => {
    // Before the entry was written in an onResponse hook, after the answer had left: a read of the log right after a
    // call could miss it (seen on PostgreSQL, where the insert is a round trip the client's next request can outrun).
    const from = await windowStart();
    for (let i = 1; i <= 30; i++) {
      assert.equal((await owner('GET', `/enrollments/${DEVICE}`)).status, 200);
      const reads = await ownerEventsSince(from, { subject: DEVICE, class: 'access' });
      // Repeated reads by one reader may be one event that counts them (details.repeats): count reads, not events.
      const counted = reads.filter((event) => event.operation === 'IndividualEnrollment_Get').reduce((sum, event) => sum + Number((event.details as Json).repeats ?? 1), 0);
      assert.equal(counted, i, `the read number ${i} is in the log`);
    }
  });

  test('every event is an access or a change; class filters; a read that finds nothing is neutral', async () => {
    const from = await windowStart();
    assert.equal((await owner('PUT', `/enrollments/log-dev-2`, { registrationId: 'log-dev-2', attestation: { type: 'symmetricKey' } })).status, 200);
    assert.equal((await owner('GET', '/enrollments/log-dev-2')).status, 200);
    assert.equal((await owner('GET', '/enrollments/log-nosuch')).status, 404);
    assert.equal((await owner('DELETE', '/enrollments/log-gone')).status, 404);

    const events = await ownerEventsSince(from);
    const summary = events.map((event) => [event.operation, event.class, event.outcome, (event.subject as Json).registrationId]);
    assert.deepEqual(summary, [
      ['IndividualEnrollment_CreateOrUpdate', 'change', 'success', 'log-dev-2'],
      ['IndividualEnrollment_Get', 'access', 'success', 'log-dev-2'],
      ['IndividualEnrollment_Get', 'access', 'notFound', 'log-nosuch'],
      // A change that finds nothing to change did not happen: that stays a failure.
      ['IndividualEnrollment_Delete', 'change', 'failure', 'log-gone'],
    ]);
    const notFound = events[2] as Json;
    assert.equal(notFound.errorCode, 404201, 'the DPS error code stays on the neutral event');

    const changes = await ownerEventsSince(from, { class: 'change' });
    assert.deepEqual(
      changes.map((event) => event.operation),
      ['IndividualEnrollment_CreateOrUpdate', 'IndividualEnrollment_Delete'],
    );
    const accesses = await ownerEventsSince(from, { class: 'access' });
    assert.deepEqual(
      accesses.map((event) => event.outcome),
      ['success', 'notFound'],
    );
    assert.deepEqual((await ownerEventsSince(from, { outcome: 'failure' })).map((event) => event.operation), ['IndividualEnrollment_Delete'], 'a not-found read is not a failure');
    assert.deepEqual((await ownerEventsSince(from, { outcome: 'notFound' })).map((event) => event.operation), ['IndividualEnrollment_Get']);

    const bad = await owner('POST', '/auditEvents/query', { class: 'reads' });
    assert.equal(bad.status, 400, bad.text);
  });

  test('reading the log writes one event per query, not one per page', async () => {
    await bulkCreate('log-page', 5);
    const from = await windowStart();
    let continuation: string | undefined;
    let pages = 0;
    do {
      const headers: Record<string, string> = { 'x-ms-max-item-count': '2' };
      if (continuation !== undefined) headers['x-ms-continuation'] = continuation;
      const page = await owner('POST', '/auditEvents/query', { kind: 'serviceApi' }, headers);
      assert.equal(page.status, 200, page.text);
      pages += 1;
      continuation = page.headers.get('x-ms-continuation') ?? undefined;
    } while (continuation !== undefined && pages < 4);
    assert.equal(pages, 4);
    const reads = (await ownerEventsSince(from)).filter((event) => event.operation === 'AuditEvent_Query');
    assert.equal(reads.length, 1, JSON.stringify(reads));
    assert.equal(reads[0]?.class, 'access');
  });

  test('repeated reads of one device by one reader are one event that counts them; a change in between starts a new one', async () => {
    for (const id of ['log-dev-3', 'log-dev-4']) assert.equal((await owner('PUT', `/enrollments/${id}`, { registrationId: id, attestation: { type: 'symmetricKey' } })).status, 200);
    const from = await windowStart();
    for (let i = 0; i < 3; i += 1) assert.equal((await owner('GET', '/enrollments/log-dev-3')).status, 200);
    assert.equal((await owner('GET', '/registrations/log-dev-3')).status, 404);
    assert.equal((await owner('GET', '/enrollments/log-dev-4')).status, 200);
    assert.equal((await owner('PUT', '/enrollments/log-dev-3', { registrationId: 'log-dev-3', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' })).status, 200);
    assert.equal((await owner('GET', '/enrollments/log-dev-3')).status, 200);
    const events = await ownerEventsSince(from);
    assert.deepEqual(
      events.map((event) => [event.operation, (event.subject as Json).registrationId, event.class, event.outcome]),
      [
        ['IndividualEnrollment_Get', 'log-dev-3', 'access', 'success'],
        ['IndividualEnrollment_Get', 'log-dev-4', 'access', 'success'],
        ['IndividualEnrollment_CreateOrUpdate', 'log-dev-3', 'change', 'success'],
        ['IndividualEnrollment_Get', 'log-dev-3', 'access', 'success'],
      ],
    );
    const details = (events[0] as Json).details as Json;
    assert.equal(details.repeats, 3, JSON.stringify(details));
    assert.deepEqual(details.alsoRead, [{ operation: 'DeviceRegistrationState_Get', outcome: 'notFound' }]);
    assert.equal(typeof details.lastTimeUtc, 'string');
    assert.equal(((events[3] as Json).details as Json).repeats, undefined);
  });

  test('reads that name no subject fold per operation, other reads in between or not', async () => {
    const from = await windowStart();
    // Each read folds into the reader's event of its operation: the newest access (a repeat) or one further back.
    const reads: Array<[string, string, string, unknown?]> = [
      ['AccessPolicy_List', 'GET', '/accessPolicies'],
      ['AccessPolicy_List', 'GET', '/accessPolicies'],
      ['LinkedHub_List', 'GET', '/linkedHubs'],
      ['AccessPolicy_List', 'GET', '/accessPolicies'],
      ['EnrollmentGroup_Query', 'POST', '/enrollmentGroups/query', { query: 'SELECT *' }],
      ['AccessPolicy_List', 'GET', '/accessPolicies'],
      ['LinkedHub_List', 'GET', '/linkedHubs'],
    ];
    for (const [operation, method, path, body] of reads) assert.equal((await owner(method, path, body)).status, 200, operation);
    const events = await ownerEventsSince(from);
    assert.deepEqual(
      events.map((event) => [event.operation, event.class, event.subject, ((event.details as Json).repeats as number | undefined) ?? 0]),
      [
        ['AccessPolicy_List', 'access', {}, 3],
        ['LinkedHub_List', 'access', {}, 1],
        ['EnrollmentGroup_Query', 'access', {}, 0],
      ],
    );
  });
});

describe('the CLI', () => {
  /** An operator policy of its own, so the CLI's reads are told apart from the other scenarios' (same address). */
  let connectionString = '';
  before(async () => {
    const policy = await owner('PUT', '/accessPolicies/operator', { rights: 'EnrollmentRead, EnrollmentWrite, RegistrationStatusRead' });
    assert.equal(policy.status, 200, policy.text);
    connectionString = `HostName=localhost;SharedAccessKeyName=operator;SharedAccessKey=${String((policy.body as Json).primaryKey)}`;
  });
  const { runInProcess } = cliRunners(() => connectionString);
  async function cli(args: string[]): Promise<string> {
    const result = await runInProcess(args);
    assert.equal(result.code, 0, `provisiond ${args.join(' ')} failed: ${result.stderr}`);
    return result.stdout;
  }

  test('audit query writes one event however many pages it fetches', async () => {
    await bulkCreate('log-cli-page', 230);
    const from = await windowStart();
    const events = JSON.parse(await cli(['audit', 'query', '--json'])) as Json[];
    assert.ok(events.length > 200, `the query needed several pages: ${events.length}`);
    const reads = (await ownerEventsSince(from, {}, 'operator')).filter((event) => event.operation === 'AuditEvent_Query');
    assert.equal(reads.length, 1, JSON.stringify(reads));
  });

  test('enrollment create does not start the timeline with a failed read; --class and the table show classes', async () => {
    await cli(['enrollment', 'create', 'log-cli-1']);
    const timeline = JSON.parse(await cli(['audit', 'query', '--subject', 'log-cli-1', '--json'])) as Json[];
    assert.deepEqual(
      timeline.filter((event) => event.outcome === 'failure'),
      [],
      `no failure in a new device's timeline: ${JSON.stringify(timeline)}`,
    );
    const changes = JSON.parse(await cli(['audit', 'query', '--subject', 'log-cli-1', '--class', 'change', '--json'])) as Json[];
    assert.deepEqual(
      changes.map((event) => [event.operation, event.class, event.outcome]),
      [['IndividualEnrollment_CreateOrUpdate', 'change', 'success']],
    );
    const table = await cli(['audit', 'query', '--subject', 'log-cli-1']);
    assert.match(table, /^TIME +CLASS +KIND +OPERATION +ACTOR +SUBJECT +OUTCOME +ERROR\n/);
    // The timeline's one read: the two queries above (one event). The create wrote with If-None-Match: * and read
    // nothing before.
    assert.match(table, /\n\S+Z +access +serviceApi +AuditEvent_Query +operator +id=log-cli-1 +success +-\n/);
    assert.deepEqual(
      timeline.filter((event) => event.operation !== 'AuditEvent_Query').map((event) => [event.operation, event.outcome]),
      [['IndividualEnrollment_CreateOrUpdate', 'success']],
    );
    assert.match(table, /\n\S+Z +change +serviceApi +IndividualEnrollment_CreateOrUpdate +operator +registrationId=log-cli-1 +success +-\n/);
    const missing = await runInProcess(['enrollment', 'show', 'log-cli-missing']);
    assert.equal(missing.code, 1);
    const neutral = await cli(['audit', 'query', '--subject', 'log-cli-missing', '--outcome', 'notFound']);
    assert.match(neutral, /\n\S+Z +access +serviceApi +IndividualEnrollment_Get +operator +registrationId=log-cli-missing +notFound +404201 /);
  });
});

describe('the portal', () => {
  let browser: Browser;
  before(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
  });
  after(async () => {
    await browser?.close();
  });

  async function signedIn(): Promise<Page> {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 }, locale: 'en-US', timezoneId: 'UTC' });
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    await page.goto(`${ORIGIN}/portal/`);
    await page.getByLabel('Service connection string').fill(server.connectionString);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('link', { name: 'System log' }).first().waitFor();
    await page.waitForLoadState('networkidle');
    return page;
  }

  test('a device page view is one event; its timeline shows changes unless reads are asked for', async () => {
    assert.equal((await owner('PUT', '/enrollments/log-portal-1', { registrationId: 'log-portal-1', attestation: { type: 'symmetricKey' } })).status, 200);
    const page = await signedIn();
    try {
      const from = await windowStart();
      await page.goto(`${ORIGIN}/portal/enrollments/log-portal-1`);
      const timeline = page.getByTestId('timeline');
      await timeline.waitFor();
      await page.waitForLoadState('networkidle');
      const written = await ownerEventsSince(from);
      assert.deepEqual(
        written.map((event) => [event.class, (event.subject as Json).registrationId]),
        [['access', 'log-portal-1']],
        'one page view, one access event naming the device',
      );
      assert.equal(await timeline.getByText('Enrollment read').count(), 0, 'the timeline shows changes first');
      assert.ok((await timeline.getByText('Enrollment created or updated').count()) >= 1);
      await page.getByLabel('Show reads').check();
      await timeline.getByText('Enrollment read').first().waitFor();
    } finally {
      await page.context().close();
    }
  });

  test('the system log filters by class, and a not-found read is neutral, not a failure', async () => {
    assert.equal((await owner('GET', '/enrollments/log-portal-nosuch')).status, 404);
    const page = await signedIn();
    try {
      await page.goto(`${ORIGIN}/portal/log`);
      await page.getByTestId('audit-events').waitFor();
      await page.getByLabel('Class').selectOption('change');
      await page.getByRole('button', { name: 'Apply' }).click();
      await page.waitForLoadState('networkidle');
      const rows = page.getByTestId('audit-events').locator('tbody tr');
      await rows.first().waitFor();
      const titles = await rows.locator('td:nth-child(2)').allInnerTexts();
      assert.ok(titles.length > 0);
      assert.deepEqual(titles.filter((title) => /\bread\b|queried/.test(title)), [], 'the changes filter shows no reads');

      await page.getByLabel('Class').selectOption('');
      await page.getByLabel('Subject (registration, device or group ID)').fill('log-portal-nosuch');
      await page.getByRole('button', { name: 'Apply' }).click();
      const row = page.getByTestId('audit-events').locator('tbody tr').filter({ hasText: 'Enrollment read' });
      await row.first().waitFor();
      assert.equal(await row.count(), 1);
      assert.match(await row.innerText(), /not found/i);
      assert.equal(await row.getAttribute('class'), 'row-neutral');
      assert.doesNotMatch(await row.innerText(), /failure/i);
    } finally {
      await page.context().close();
    }
  });
});

/**
 * A database left at migration 0011 (before log classes) by each dialect: `prepare` migrates it there and hands back
 * its Kysely handle, `open` opens it as the server would (running 0012 onwards), `dispose` removes it.
 */
interface OldDatabase {
  prepare(): Promise<{ db: Kysely<unknown>; done(): Promise<void> }>;
  open(): Promise<Store>;
  dispose(): Promise<void>;
}

async function sqliteAt0011(): Promise<OldDatabase> {
  const dir = mkdtempSync(join(tmpdir(), 'provisiond-0015-'));
  const file = join(dir, 'provisiond.db');
  return {
    async prepare() {
      const opened = openSqliteDialect(file);
      const migrated = await new Migrator({ db: opened.db, provider: migrationProvider(opened.capabilities) }).migrateTo('0011_store_for_nodes');
      assert.equal(migrated.error, undefined);
      return { db: opened.db as unknown as Kysely<unknown>, done: () => opened.db.destroy() };
    },
    open: () => openSqliteStore(file),
    dispose: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

async function postgresAt0011(): Promise<OldDatabase> {
  const url = await freshPostgresDatabase();
  return {
    async prepare() {
      const opened = openPostgresDialect({ url, poolSize: 2, statementTimeoutMs: 30_000, onPoolError: () => undefined });
      const migrated = await new Migrator({ db: opened.db, provider: migrationProvider(opened.capabilities) }).migrateTo('0011_store_for_nodes');
      assert.equal(migrated.error, undefined);
      return {
        db: opened.db as unknown as Kysely<unknown>,
        done: async () => {
          await opened.db.destroy();
          await opened.close?.();
        },
      };
    },
    open: async () => (await openStore(loadConfig({ flags: { store: url, storePoolSize: 2 } }))).store,
    dispose: () => dropPostgresDatabase(url),
  };
}

for (const [dialect, at0011] of [
  ['SQLite', sqliteAt0011],
  ['PostgreSQL', postgresAt0011],
] as const) {
  test(`migration 0015 classifies the events stored before classes existed, by operation name, and makes not-found reads neutral (${dialect})`, async () => {
    const database = await at0011();
    try {
      const { db, done } = await database.prepare();
      const old = (eventId: string, kind: string, operation: string, outcome: string, extra: Json = {}) => {
        const doc = { eventId, timeUtc: `2026-01-01T00:00:0${eventId.slice(-1)}.0000000Z`, kind, operation, actor: 'owner', subject: { registrationId: 'old-1' }, outcome, ...extra };
        return sql`insert into audit_events (instance_id, event_id, time_utc, kind, actor, outcome, registration_id_key, device_id_key, group_id_key, doc)
          values ('i1', ${eventId}, ${doc.timeUtc}, ${kind}, 'owner', ${outcome}, 'old-1', '', '', ${JSON.stringify(doc)})`.execute(db);
      };
      try {
        await old('e1', 'serviceApi', 'IndividualEnrollment_CreateOrUpdate', 'success');
        await old('e2', 'serviceApi', 'IndividualEnrollment_Get', 'failure', { errorCode: 404201 });
        await old('e3', 'serviceApi', 'IndividualEnrollment_Delete', 'failure', { errorCode: 404201 });
        await old('e4', 'registration', 'register', 'success');
        await old('e5', 'dataRequest', 'export', 'success');
        await old('e6', 'serviceApi', 'AuditEvent_Query', 'failure', { errorCode: 401002 });
      } finally {
        await done();
      }

      const store = await database.open();
      try {
        const events = (await store.queryAuditEvents('i1', { limit: 10 })).items.reverse();
        assert.deepEqual(
          events.map((event) => [event.eventId, event.class, event.outcome]),
          [
            ['e1', 'change', 'success'],
            ['e2', 'access', 'notFound'],
            ['e3', 'change', 'failure'],
            ['e4', 'change', 'success'],
            ['e5', 'access', 'success'],
            ['e6', 'access', 'failure'],
          ],
        );
        assert.deepEqual((await store.queryAuditEvents('i1', { limit: 10, eventClass: 'access', outcome: 'notFound' })).items.map((event) => event.eventId), ['e2']);
      } finally {
        await store.close();
      }
    } finally {
      await database.dispose();
    }
  });
}
