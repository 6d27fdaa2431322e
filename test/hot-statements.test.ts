import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { CompiledQuery, sql } from 'kysely';
import { loadConfig } from '../src/config/config.js';
import { compileHot, hubStatements, runHot, storeStatements } from '../src/store/hot-statements.js';
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

test('findEraseFence: a probe of one ID per kind is one statement; a bulk probe one while the instance has no fence, else one more per 500 IDs of all kinds', async () => {
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

  // 1,200 IDs over three kinds while the instance has fences: whether it has any, then three statements of at most 500
  // IDs, whichever kind the match is in.
  const ids = (prefix: string) => Array.from({ length: 400 }, (_, i) => `${prefix}-${i}`);
  // (The bulk statements are compiled at their first use, and a compilation passes the plugins too: that one apart.)
  await store.findEraseFence('i3', { registrationIds: ids('r') });
  count.reset();
  assert.equal((await store.findEraseFence('i1', { registrationIds: ids('r'), deviceIds: ids('d'), groupIds: [...ids('g'), 'grp-3'] }))?.requestId, 'req-grp-3');
  assert.equal(count.texts.length, 4);
  count.reset();
  assert.equal(await store.findEraseFence('i1', { registrationIds: ids('r'), deviceIds: ids('d'), groupIds: ids('g') }), undefined);
  assert.equal(count.texts.length, 4);
  // An instance without fences (the everyday bulk import): one statement says so, however many IDs.
  count.reset();
  assert.equal(await store.findEraseFence('i2', { registrationIds: [...ids('r'), 'reg-1'], deviceIds: [...ids('d'), 'dev-2'], groupIds: [...ids('g'), 'grp-3'] }), undefined);
  assert.equal(count.texts.length, 1);
  // A fence written since (by another node, on PostgreSQL) is found by the next probe: nothing is remembered.
  await store.putEraseFences('i2', [fence('deviceId', 'd-7')]);
  count.reset();
  assert.equal((await store.findEraseFence('i2', { registrationIds: ids('r'), deviceIds: ids('d') }))?.requestId, 'req-d-7');
  assert.equal(count.texts.length, 2, 'whether it has any, then the first 500 IDs (d-7 among them)');
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
    // The operation upsert is a deferred write: inside a transaction it travels with the transaction's next statement
    // (src/store/pg-round-trips.ts), as the same prepared statement it is outside one.
    assert.equal((await prepared()).length, before + 3, 'enrollment read, operation upsert, operation read: each prepared once');
    await store.putOperation('i1', { operationId: 'op-3', registrationId: 'dev-1', status: 'assigning', createdDateTimeUtc: 'x', lastUpdatedDateTimeUtc: 'x' });
    assert.equal((await prepared()).length, before + 3, 'the operation upsert outside a transaction: the one prepared inside it');
  } finally {
    await store.close();
  }
});

/** A fence check and the read it guards (a poll's operation, an admission's entry), one statement for a device's own probe, on either store. */
async function pollReadContract(store: KyselyStore | Awaited<ReturnType<typeof openStore>>['store'], count?: ReturnType<typeof counter>): Promise<void> {
  const operation = { operationId: 'op-1', registrationId: 'Dev-1', status: 'assigned' as const, createdDateTimeUtc: 'x', lastUpdatedDateTimeUtc: 'y' };
  await store.putOperation('i1', operation);
  const probe = (registrationId: string, deviceId: string, groupId?: string) => ({ registrationIds: [registrationId], deviceIds: [deviceId], ...(groupId === undefined ? {} : { groupIds: [groupId] }) });
  count?.reset();
  assert.deepEqual(await store.getOperationUnlessFenced('i1', 'op-1', probe('dev-1', 'dev-1')), { operation });
  if (count !== undefined) assert.equal(count.texts.length, 1, 'one statement');
  assert.deepEqual(await store.getOperationUnlessFenced('i1', 'op-2', probe('dev-1', 'dev-1')), {});
  assert.deepEqual(await store.getOperationUnlessFenced('i2', 'op-1', probe('dev-1', 'dev-1')), {}, 'another instance');
  await store.putEraseFences('i1', [{ kind: 'enrollmentGroupId', id: 'Grp-1', requestId: 'req-1', subjectHash: 'hash-1' }]);
  count?.reset();
  assert.deepEqual(await store.getOperationUnlessFenced('i1', 'op-1', probe('dev-1', 'dev-1', 'GRP-1')), { fence: { kind: 'enrollmentGroupId', requestId: 'req-1', subjectHash: 'hash-1' } });
  if (count !== undefined) assert.equal(count.texts.length, 1, 'one statement');
  assert.deepEqual((await store.getOperationUnlessFenced('i1', 'op-2', probe('dev-1', 'dev-1', 'grp-1'))).fence?.requestId, 'req-1', 'fenced, no operation');
  assert.deepEqual(await store.getOperationUnlessFenced('i1', 'op-1', probe('dev-1', 'dev-1', 'grp-2')), { operation });
  await store.putEraseFences('i1', [{ kind: 'deviceId', id: 'old-dev', requestId: 'req-2', subjectHash: 'hash-2' }]);
  // The admission's reads: the enrollment or the group, unless a fence stands.
  const entry = {
    attestation: { type: 'symmetricKey' as const, symmetricKey: { primaryKey: 'a', secondaryKey: 'b' } },
    capabilities: { iotEdge: false },
    etag: '"e1"',
    provisioningStatus: 'enabled' as const,
    reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
    createdDateTimeUtc: 'x',
    lastUpdatedDateTimeUtc: 'y',
  };
  await store.putEnrollment('i1', { registrationId: 'Dev-1', ...entry });
  await store.putEnrollmentGroup('i1', { enrollmentGroupId: 'Grp-2', ...entry });
  count?.reset();
  assert.equal((await store.getEnrollmentUnlessFenced('i1', 'DEV-1', probe('dev-1', 'dev-1'))).enrollment?.registrationId, 'Dev-1');
  assert.equal((await store.getEnrollmentGroupUnlessFenced('i1', 'grp-2', probe('dev-1', 'dev-1', 'grp-2'))).group?.enrollmentGroupId, 'Grp-2');
  if (count !== undefined) assert.equal(count.texts.length, 2, 'one statement each');
  assert.deepEqual(await store.getEnrollmentUnlessFenced('i1', 'dev-2', probe('dev-2', 'dev-2')), {});
  assert.deepEqual(await store.getEnrollmentGroupUnlessFenced('i1', 'grp-3', probe('dev-1', 'dev-1', 'grp-3')), {});
  assert.deepEqual(Object.keys(await store.getEnrollmentUnlessFenced('i1', 'dev-1', probe('dev-1', 'dev-1', 'grp-1'))), ['fence']);
  assert.deepEqual(Object.keys(await store.getEnrollmentGroupUnlessFenced('i1', 'grp-2', probe('dev-1', 'dev-1', 'grp-1'))), ['fence']);
  // Two device IDs (a registration that changed its device ID): the general fence probe, then the operation.
  assert.equal((await store.getOperationUnlessFenced('i1', 'op-1', { registrationIds: ['dev-1'], deviceIds: ['dev-1', 'OLD-DEV'] })).fence?.requestId, 'req-2');
  assert.deepEqual(await store.getOperationUnlessFenced('i1', 'op-1', { registrationIds: ['dev-1'], deviceIds: ['dev-1', 'dev-9'] }), { operation });
}

test('getOperationUnlessFenced and the enrollment reads: the fence, else the row, in one statement (SQLite)', async () => {
  const db = await openSqliteDatabase(':memory:');
  const count = counter();
  await pollReadContract(new KyselyStore(db.withPlugin(count.plugin)), count);
  await db.destroy();
});

test('getOperationUnlessFenced and the enrollment reads: the fence, else the row (PostgreSQL)', async () => {
  const url = await freshPostgresDatabase(async (fresh) => (await openStore(loadConfig({ flags: { store: fresh, storePoolSize: 1 } }))).store.close());
  const { store } = await openStore(loadConfig({ flags: { store: url, storePoolSize: 1 } }));
  try {
    await pollReadContract(store);
  } finally {
    await store.close();
  }
});

/**
 * Issue 12 (session 21): every registration and poll checks the erase fences (the admission, the poll, the hub write),
 * so those checks must be seeks of the fences' primary key (instance, kind, ID), never a read of every fence of an
 * instance (a group erase fences each of its members) nor a temporary b-tree built per call. provisiond gathers no
 * SQLite statistics, so an empty database shows the plan a full one gets.
 */
test('the fence checks of a registration and a poll seek the fences’ primary key (SQLite plans)', async () => {
  const db = await openSqliteDatabase(':memory:');
  const store = storeStatements(db);
  const hub = hubStatements(db);
  const checks = {
    'the poll': store.fencedReads.operation,
    'the admission (individual)': store.fencedReads.enrollment,
    'the admission (group)': store.fencedReads.enrollmentGroup,
    'a device’s own fence probe': store.eraseFence,
    'the hub write': hub.deviceFence,
  };
  for (const [name, statement] of Object.entries(checks)) {
    const parameters = statement.slots.map((slot) => (typeof slot === 'number' ? `arg-${slot}` : slot.value));
    const details = await explain(db, statement.sql, parameters);
    const fenceSteps = details.filter((detail) => /erase_fences/.test(detail));
    assert.ok(fenceSteps.length > 0, `${name}: reads the fences`);
    for (const step of fenceSteps) {
      assert.match(step, /^SEARCH erase_fences USING INDEX sqlite_autoindex_erase_fences_1 \(instance_id=\? AND subject_kind=\? AND id_key=\?\)$/, `${name}: ${details.join(' | ')}`);
    }
    assert.ok(!details.some((detail) => /LIST SUBQUERY|TEMP B-TREE|CO-ROUTINE/.test(detail)), `${name}: ${details.join(' | ')}`);
    // Session 22: with the limit bound as a parameter (Kysely's `.limit(1)`) SQLite ran the hub write's check ~10 times
    // slower under the same plan (bench/README.md "session 22, H1"): the limit is part of the text.
    assert.doesNotMatch(statement.sql, /limit \?/i, `${name}: a bound limit`);
    assert.match(statement.sql, /limit 1\b/i, `${name}: limit 1`);
  }
  await db.destroy();
});

/** The query plan's steps of `text` with `parameters` bound (Kysely's executor binds them). */
async function explain(db: Awaited<ReturnType<typeof openSqliteDatabase>>, text: string, parameters: readonly unknown[]): Promise<string[]> {
  const result = await db.executeQuery<{ detail: string }>(CompiledQuery.raw(`explain query plan ${text}`, [...parameters]));
  return result.rows.map((row) => row.detail);
}

test('SQLite: a hot statement runs on the connection directly, yet never inside another caller’s open transaction', async () => {
  const db = await openSqliteDatabase(':memory:');
  await db.insertInto('change_counters').values({ name: 'a', version: 1 }).execute();
  const read = compileHot((p) => db.selectFrom('change_counters').select('version').where('name', '=', p(0)));
  const write = compileHot((p) => db.updateTable('change_counters').set({ version: p(1) }).where('name', '=', p(0)));
  // Directly: the executor's connection provider is never asked for a connection outside a transaction.
  let provided = 0;
  const executor = db.getExecutor() as unknown as { provideConnection: (...args: unknown[]) => Promise<unknown> };
  const provideConnection = executor.provideConnection.bind(executor);
  executor.provideConnection = (...args: unknown[]) => {
    provided += 1;
    return provideConnection(...args);
  };
  assert.deepEqual((await runHot<{ version: number }>(db, read, ['a'])).rows, [{ version: 1 }]);
  assert.equal(provided, 0);
  executor.provideConnection = provideConnection;

  // While another caller's transaction is open (it wrote, then waits), a read outside it waits for its end and sees
  // only what it committed; a rolled-back write is never seen.
  for (const outcome of ['commit', 'rollback'] as const) {
    let inside!: () => void;
    const wrote = new Promise<void>((resolve) => (inside = resolve));
    let finish!: () => void;
    const held = new Promise<void>((resolve) => (finish = resolve));
    const transaction = db
      .transaction()
      .execute(async (trx) => {
        await runHot(trx, write, ['a', outcome === 'commit' ? 2 : 99]);
        inside();
        await held;
        // Inside its own transaction a statement sees the transaction's write.
        assert.deepEqual((await runHot<{ version: number }>(trx, read, ['a'])).rows, [{ version: outcome === 'commit' ? 2 : 99 }]);
        if (outcome === 'rollback') throw new Error('roll back');
      })
      .catch((error: unknown) => {
        if (outcome === 'commit') throw error;
      });
    await wrote;
    let seen: unknown;
    const outside = runHot<{ version: number }>(db, read, ['a']).then((result) => (seen = result.rows));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(seen, undefined, 'the read outside waits while the transaction is open');
    finish();
    await transaction;
    await outside;
    assert.deepEqual(seen, [{ version: 2 }]);
  }
  await db.destroy();
});
