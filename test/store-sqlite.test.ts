import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { KyselyHubStore } from '../src/store/hub-store.js';
import { KyselyStore } from '../src/store/kysely-store.js';
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
