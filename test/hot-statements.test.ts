import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { sql } from 'kysely';
import { loadConfig } from '../src/config/config.js';
import { compileHot, runHot } from '../src/store/hot-statements.js';
import { KyselyStore } from '../src/store/kysely-store.js';
import { openSqliteDatabase, openStore } from '../src/store/open-store.js';
import { freshPostgresDatabase } from './postgres.js';

/** Counts the statements a store runs (every execution passes the plugins' transformQuery). */
function counter(): { plugin: KyselyPlugin; texts: string[]; reset: () => void } {
  const texts: string[] = [];
  return {
    texts,
    reset: () => void texts.splice(0),
    plugin: {
      transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
        texts.push(args.node.kind);
        return args.node;
      },
      async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
        return args.result;
      },
    },
  };
}

test('a compiled statement binds its arguments where they were marked, with constants kept', async () => {
  const db = await openSqliteDatabase(':memory:');
  await db.insertInto('change_counters').values([{ name: 'a', version: 1 }, { name: 'b', version: 2 }]).execute();
  const statement = compileHot((p) => db.selectFrom('change_counters').select('version').where('name', '=', p(1)).where('version', '>', 0).limit(5));
  assert.deepEqual(statement.slots.length, 3);
  assert.deepEqual((await runHot<{ version: number }>(db, statement, ['unused', 'b'])).rows, [{ version: 2 }]);
  assert.deepEqual((await runHot<{ version: number }>(db, statement, ['unused', 'c'])).rows, []);
  await db.destroy();
});

test('findEraseFence: a probe of one ID per kind is one statement; a bulk probe one statement per 500 IDs of all kinds', async () => {
  const db = await openSqliteDatabase(':memory:');
  const count = counter();
  const store = new KyselyStore(db.withPlugin(count.plugin));
  const fence = (kind: 'registrationId' | 'deviceId' | 'enrollmentGroupId', id: string) => ({ kind, id, requestId: `req-${id}`, subjectHash: `hash-${id}` });
  await store.putEraseFences('i1', [fence('registrationId', 'Reg-1'), fence('deviceId', 'dev-2'), fence('enrollmentGroupId', 'grp-3')]);

  for (const [probe, requestId] of [
    [{ registrationIds: ['REG-1'], deviceIds: ['other'], groupIds: ['other'] }, 'req-Reg-1'],
    [{ registrationIds: ['other'], deviceIds: ['dev-2'], groupIds: ['other'] }, 'req-dev-2'],
    [{ registrationIds: ['other'], deviceIds: ['other'], groupIds: ['grp-3'] }, 'req-grp-3'],
    [{ registrationIds: ['other'], deviceIds: ['other'], groupIds: ['other'] }, undefined],
    [{ deviceIds: ['dev-2'] }, 'req-dev-2'],
  ] as const) {
    count.reset();
    assert.equal((await store.findEraseFence('i1', probe))?.requestId, requestId);
    assert.equal(count.texts.length, 1, `one statement for ${JSON.stringify(probe)}`);
  }
  // Another instance's fences never answer.
  assert.equal(await store.findEraseFence('i2', { registrationIds: ['reg-1'], deviceIds: ['dev-2'], groupIds: ['grp-3'] }), undefined);

  // 1,200 IDs over three kinds: three statements of at most 500 IDs, whichever kind the match is in.
  const ids = (prefix: string) => Array.from({ length: 400 }, (_, i) => `${prefix}-${i}`);
  count.reset();
  assert.equal((await store.findEraseFence('i1', { registrationIds: ids('r'), deviceIds: ids('d'), groupIds: [...ids('g'), 'grp-3'] }))?.requestId, 'req-grp-3');
  assert.equal(count.texts.length, 3);
  count.reset();
  assert.equal(await store.findEraseFence('i1', { registrationIds: ids('r'), deviceIds: ids('d'), groupIds: ids('g') }), undefined);
  assert.equal(count.texts.length, 3);
  await db.destroy();
});

test('PostgreSQL runs the hot statements as named prepared statements, inside transactions too', async () => {
  const url = await freshPostgresDatabase(async (fresh) => (await openStore(loadConfig({ flags: { store: fresh, storePoolSize: 1 } }))).store.close());
  // One connection: the statements below and the look at pg_prepared_statements (per session) share it.
  const { store, db } = await openStore(loadConfig({ flags: { store: url, storePoolSize: 1 } }));
  try {
    const prepared = async () =>
      (await sql<{ name: string; statement: string }>`select name, statement from pg_prepared_statements order by name`.execute(db)).rows.filter((row) => row.name.startsWith('provisiond_hot_'));
    const before = (await prepared()).length;
    assert.equal(await store.getEnrollment('i1', 'nobody'), undefined);
    const afterRead = await prepared();
    assert.equal(afterRead.length, before + 1);
    assert.match(afterRead.map((row) => row.statement).join('\n'), /from "enrollments" where "instance_id" = \$1 and "registration_id_key" = \$2/);
    // Run again and inside a transaction: the one prepared statement serves, and a rolled-back write is gone.
    await store.transaction(async (trx) => {
      await trx.putOperation('i1', { operationId: 'op-1', registrationId: 'dev-1', status: 'assigning', createdDateTimeUtc: 'x', lastUpdatedDateTimeUtc: 'x' });
      assert.equal((await trx.getOperation('i1', 'op-1'))?.operationId, 'op-1');
    });
    await assert.rejects(
      store.transaction(async (trx) => {
        await trx.putOperation('i1', { operationId: 'op-2', registrationId: 'dev-1', status: 'assigning', createdDateTimeUtc: 'x', lastUpdatedDateTimeUtc: 'x' });
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.equal((await store.getOperation('i1', 'op-1'))?.operationId, 'op-1');
    assert.equal(await store.getOperation('i1', 'op-2'), undefined);
    assert.equal(await store.getEnrollment('i1', 'nobody'), undefined);
    // The operation upsert is a deferred write: inside a transaction it travels, as literals, with the transaction's
    // next statement (src/store/pg-round-trips.ts), so it is never prepared there; outside one it is.
    assert.equal((await prepared()).length, before + 2, 'enrollment read, operation read: each prepared once');
    await store.putOperation('i1', { operationId: 'op-3', registrationId: 'dev-1', status: 'assigning', createdDateTimeUtc: 'x', lastUpdatedDateTimeUtc: 'x' });
    assert.equal((await prepared()).length, before + 3, 'the operation upsert outside a transaction: prepared');
  } finally {
    await store.close();
  }
});
