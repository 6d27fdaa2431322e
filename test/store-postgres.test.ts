import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import { loadConfig } from '../src/config/config.js';
import { openStore } from '../src/store/open-store.js';
import { freshPostgresDatabase } from './postgres.js';
import { runHubStoreContract } from './hub-store-contract.js';
import { runStoreContract } from './store-contract.js';
import type { AuditEvent } from '../src/store/store.js';

const openBoth = async (url: string) => openStore(loadConfig({ flags: { store: url, storePoolSize: 4 } }));
const open = async (url: string) => (await openBoth(url)).store;

runStoreContract('PostgreSQL', async () => open(await freshPostgresDatabase(async (url) => (await open(url)).close())));

runHubStoreContract('PostgreSQL', async () => {
  const { store, hubStore } = await openBoth(await freshPostgresDatabase(async (url) => (await open(url)).close()));
  return { store, hubStore, close: () => store.close() };
});

/**
 * An erase ends with VACUUM of the tables it touched (docs/customer-data.md). PostgreSQL's plain VACUUM may skip the
 * indexes when few pages hold dead rows (INDEX_CLEANUP AUTO, PostgreSQL 14+): the erased rows' index entries would
 * then stay live in the index, keyed by the erased IDs, until some later VACUUM cleans the indexes. Read with
 * pageinspect: after the reclaim, no index of the log holds an entry with the erased ID.
 */
test('PostgreSQL: the VACUUM after an erase cleans the indexes too, however few rows it removed', async () => {
  const url = await freshPostgresDatabase(async (target) => (await open(target)).close());
  const store = await open(url);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const instanceId = 'vacuum-instance';
    const ms = Date.parse('2024-01-01T00:00:00.000Z');
    const event = (i: number, registrationId: string): AuditEvent => ({
      eventId: `${ms.toString(16).padStart(12, '0')}${String(i).padStart(5, '0')}`,
      timeUtc: '2024-01-01T00:00:00.0000000Z',
      kind: 'serviceApi',
      operation: 'IndividualEnrollment_Get',
      actor: 'owner',
      subject: { registrationId, deviceId: registrationId },
      outcome: 'success',
    });
    const target = 'erased-subject-7q3x';
    // Enough other rows that three dead ones sit on far fewer than 2% of the table's pages.
    const others = Array.from({ length: 6000 }, (_, i) => event(i, `kept-device-${i}`));
    await store.appendAuditEvents(instanceId, [...others.slice(0, 3000), event(90001, target), event(90002, target), event(90003, target), ...others.slice(3000)]);
    await client.query('vacuum audit_events');
    const erased = await store.findAuditEventsAbout(instanceId, { registrationIds: [target], deviceIds: [], groupIds: [] });
    assert.equal(erased.length, 3);
    assert.equal(await store.deleteAuditEvents(instanceId, erased.map((entry) => entry.eventId)), 3);
    await store.reclaimDeleted(['audit_events']);

    await client.query('create extension if not exists pageinspect');
    const { rows: indexes } = await client.query<{ name: string }>("select indexrelid::regclass::text as name from pg_index where indrelid = 'audit_events'::regclass");
    assert.ok(indexes.length >= 3, 'the log has its subject indexes');
    const needle = Buffer.from(target).toString('hex');
    for (const { name } of indexes) {
      const { rows } = await client.query<{ hits: string }>(
        `select count(*) as hits from generate_series(1, (pg_relation_size($1::text::regclass) / 8192)::int - 1) as block,
           lateral bt_page_items($1::text, block) as item where item.data like '%' || $2 || '%'`,
        [name, needle.replace(/(..)/g, '$1 ').trim()],
      );
      assert.equal(Number(rows[0]?.hits), 0, `no entry of ${name} still names the erased subject`);
    }
  } finally {
    await client.end();
    await store.close();
  }
});
