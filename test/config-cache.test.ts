import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { loadConfig } from '../src/config/config.js';
import { KyselyHubStore, type BuiltInHubStore } from '../src/store/hub-store.js';
import { KyselyStore } from '../src/store/kysely-store.js';
import { openSqliteDatabase, openStore } from '../src/store/open-store.js';
import type { InstanceRecord, LinkedHubRecord, Store } from '../src/store/store.js';
import { freshPostgresDatabase } from './postgres.js';

/**
 * What a registration reads that rarely changes — the instance, its linked hubs, the built-in hub rows — is cached
 * (src/store/config-cache.ts), and a change is seen by the next device request: on SQLite by this process's own writes,
 * across PostgreSQL nodes by the shared config version read with the request's first statement (issue 11, issue 12).
 */
function counter(): { plugin: KyselyPlugin; count: () => number } {
  let statements = 0;
  return {
    count: () => statements,
    plugin: {
      transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
        statements += 1;
        return args.node;
      },
      async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
        return args.result;
      },
    },
  };
}

async function statementsOf(count: () => number, work: () => Promise<unknown>): Promise<number> {
  const before = count();
  await work();
  return count() - before;
}

const instance: InstanceRecord = {
  id: 'inst-1',
  name: 'one',
  idScope: '0ne00000C01',
  serviceHostNames: ['one.example.net'],
  allocationPolicy: 'hashed',
  createdDateTimeUtc: '2026-01-01T00:00:00.000Z',
};
const hub = (name: string): LinkedHubRecord => ({
  name,
  builtIn: false,
  connectionString: `HostName=${name};SharedAccessKeyName=owner;SharedAccessKey=${Buffer.alloc(32, 1).toString('base64')}`,
  allocationWeight: 1,
  applyAllocationPolicy: true,
});
const names = (hubs: LinkedHubRecord[]) => hubs.map((linked) => linked.name);

/** One device request's reads of config, as the registration flow makes them. */
async function request(store: Store): Promise<{ instance: InstanceRecord | undefined; current: InstanceRecord | undefined; hubs: string[] }> {
  const found = await store.findInstanceByIdScope(instance.idScope.toLowerCase());
  if (found === undefined) return { instance: undefined, current: undefined, hubs: [] };
  return { instance: found, current: await store.currentInstance(found), hubs: names(await store.linkedHubsOf(found)) };
}

describe('config cache on SQLite (one process writes everything)', () => {
  let store: KyselyStore;
  let hubStore: BuiltInHubStore;
  const { plugin, count } = counter();

  before(async () => {
    const db = (await openSqliteDatabase(':memory:')).withPlugin(plugin);
    store = new KyselyStore(db);
    hubStore = new KyselyHubStore(db);
    await store.insertInstance(instance);
    await store.putLinkedHub(instance.id, hub('hub-a.example.net'));
    await hubStore.insertHub({ name: 'built-in.example.net', createdDateTimeUtc: instance.createdDateTimeUtc, policies: [] });
  });
  after(() => store.close());

  test('a request after the first reads nothing again', async () => {
    await request(store);
    await hubStore.getHub('built-in.example.net');
    await store.findInstanceByHostName('one.example.net');
    assert.equal(
      await statementsOf(count, async () => {
        assert.deepEqual((await request(store)).hubs, ['hub-a.example.net']);
        // A service-API request's instance, by its host name.
        assert.equal((await store.findInstanceByHostName('ONE.example.net'))?.id, instance.id);
        assert.equal((await store.getInstance(instance.id))?.name, 'one');
        assert.deepEqual(names(await store.listLinkedHubs(instance.id)), ['hub-a.example.net']);
        assert.equal((await hubStore.getHub('BUILT-IN.example.net'))?.name, 'built-in.example.net');
      }),
      0,
    );
  });

  test('every write is seen by the next read; a rolled-back write is not', async () => {
    await store.putLinkedHub(instance.id, hub('hub-b.example.net'));
    await store.updateInstance({ ...instance, name: 'renamed', serviceHostNames: ['two.example.net'] });
    const seen = await request(store);
    assert.deepEqual([seen.instance?.name, seen.current?.name, seen.hubs], ['renamed', 'renamed', ['hub-a.example.net', 'hub-b.example.net']]);
    assert.equal(await store.findInstanceByHostName('one.example.net'), undefined);
    assert.equal((await store.findInstanceByHostName('two.example.net'))?.name, 'renamed');

    await assert.rejects(
      store.transaction(async (trx) => {
        await trx.deleteLinkedHub(instance.id, 'hub-a.example.net');
        // Inside the transaction its own write is what it reads.
        assert.deepEqual(names(await trx.listLinkedHubs(instance.id)), ['hub-b.example.net']);
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.deepEqual((await request(store)).hubs, ['hub-a.example.net', 'hub-b.example.net']);

    await hubStore.updateHub({ name: 'built-in.example.net', createdDateTimeUtc: instance.createdDateTimeUtc, policies: [{ keyName: 'k', primaryKey: 'p', secondaryKey: 's', rights: ['RegistryRead'] }] });
    assert.deepEqual((await hubStore.getHub('built-in.example.net'))?.policies.map((policy) => policy.keyName), ['k']);
    assert.equal(await hubStore.deleteHub('built-in.example.net'), true);
    assert.equal(await hubStore.getHub('built-in.example.net'), undefined);

    await store.deleteInstance(instance.id);
    assert.deepEqual(await request(store), { instance: undefined, current: undefined, hubs: [] });
    assert.equal(await store.getInstance(instance.id), undefined);
  });

  test('a cached record is handed out frozen, through and through: a reader that tries to change it throws, and the cache is unchanged', async () => {
    await store.insertInstance(instance);
    await store.putLinkedHub(instance.id, { name: 'hub-frozen.example.net', builtIn: false, connectionString: 'HostName=hub-frozen.example.net;SharedAccessKeyName=o;SharedAccessKey=a2V5', allocationWeight: 1, applyAllocationPolicy: true });
    const first = await store.getInstance(instance.id);
    assert.ok(first !== undefined);
    assert.throws(() => {
      first.name = 'scribbled';
    }, TypeError);
    assert.throws(() => first.serviceHostNames.push('scribbled.example.net'), TypeError);
    // The list is the caller's own (it may sort it or add to it); the hubs in it are not.
    const hubs = await store.listLinkedHubs(instance.id);
    hubs.push({ ...(hubs[0] as LinkedHubRecord), name: 'added.example.net' });
    assert.equal((await store.listLinkedHubs(instance.id)).length, 1);
    assert.throws(() => {
      (hubs[0] as LinkedHubRecord).allocationWeight = 0;
    }, TypeError);
    const again = await store.getInstance(instance.id);
    assert.equal(again, first, 'the same parsed record, not parsed again');
    assert.equal(again?.name, 'one');
    assert.deepEqual(again?.serviceHostNames, instance.serviceHostNames);
    assert.equal((await store.listLinkedHubs(instance.id))[0]?.allocationWeight, 1);
  });
});

describe('config cache across two nodes on one PostgreSQL', () => {
  let nodeA: Store;
  let nodeB: Store;
  let hubStoreB: BuiltInHubStore;
  let hubStoreA: BuiltInHubStore;
  const { plugin, count } = counter();

  before(async () => {
    const url = await freshPostgresDatabase(async (fresh) => (await openStore(loadConfig({ flags: { store: fresh, storePoolSize: 2 } }))).store.close());
    const a = await openStore(loadConfig({ flags: { store: url, storePoolSize: 2 } }));
    const b = await openStore(loadConfig({ flags: { store: url, storePoolSize: 2 } }), undefined, [plugin]);
    [nodeA, hubStoreA, nodeB, hubStoreB] = [a.store, a.hubStore, b.store, b.hubStore];
    await nodeA.insertInstance(instance);
    await nodeA.putLinkedHub(instance.id, hub('hub-a.example.net'));
  });
  after(async () => {
    await nodeA.close();
    await nodeB.close();
  });

  test('a request with nothing changed is one statement: the instance and the config version together', async () => {
    await request(nodeB);
    assert.equal(
      await statementsOf(count, async () => {
        const seen = await request(nodeB);
        assert.deepEqual([seen.instance?.name, seen.current?.name, seen.hubs], ['one', 'one', ['hub-a.example.net']]);
      }),
      1,
    );
  });

  test('a linked hub or instance change on node A is used by the next request on node B', async () => {
    const warm = await request(nodeB);
    await nodeA.putLinkedHub(instance.id, hub('hub-b.example.net'));
    let seen = await request(nodeB);
    assert.deepEqual(seen.hubs, ['hub-a.example.net', 'hub-b.example.net']);

    await nodeA.updateInstance({ ...instance, eventWebhook: { url: 'https://hooks.example.net/x', secret: 's' } });
    seen = await request(nodeB);
    assert.equal(seen.instance?.eventWebhook?.url, 'https://hooks.example.net/x');
    assert.equal(seen.current?.eventWebhook?.url, 'https://hooks.example.net/x');

    await nodeA.deleteLinkedHub(instance.id, 'hub-a.example.net');
    assert.deepEqual((await request(nodeB)).hubs, ['hub-b.example.net']);
    // A record read before the change still validates only what was current then: a later request reads anew.
    assert.ok(warm.instance !== undefined);
    assert.deepEqual(names(await nodeB.linkedHubsOf(await nodeB.currentInstance(warm.instance) ?? warm.instance)), ['hub-b.example.net']);

    // Reads without a request's record (the service API) always read the store.
    assert.equal((await nodeB.getInstance(instance.id))?.eventWebhook?.url, 'https://hooks.example.net/x');
    assert.deepEqual(names(await nodeB.listLinkedHubs(instance.id)), ['hub-b.example.net']);
  });

  test('a built-in hub changed on node A is read by node B', async () => {
    await hubStoreA.insertHub({ name: 'built-in.example.net', createdDateTimeUtc: instance.createdDateTimeUtc, policies: [] });
    assert.deepEqual((await hubStoreB.getHub('built-in.example.net'))?.policies, []);
    await hubStoreA.updateHub({ name: 'built-in.example.net', createdDateTimeUtc: instance.createdDateTimeUtc, policies: [{ keyName: 'k', primaryKey: 'p', secondaryKey: 's', rights: ['RegistryRead'] }] });
    assert.deepEqual((await hubStoreB.getHub('built-in.example.net'))?.policies.map((policy) => policy.keyName), ['k']);
  });

  test('node A deleting the instance: node B finds no instance at its next request', async () => {
    await request(nodeB);
    await nodeA.deleteInstance(instance.id);
    assert.deepEqual(await request(nodeB), { instance: undefined, current: undefined, hubs: [] });
  });
});
