import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { compileHot, runHot } from '../src/store/hot-statements.js';
import { KyselyStore } from '../src/store/kysely-store.js';
import { openSqliteDatabase } from '../src/store/open-store.js';

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
