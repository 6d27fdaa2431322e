import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { DeviceFencedError, type BuiltInHubRecord, type BuiltInHubStore, type StoredHubDevice } from '../src/store/hub-store.js';
import type { InstanceRecord, Store } from '../src/store/store.js';

/**
 * The contract of the built-in hub store (src/store/hub-store.ts), every method, run on each dialect as the Store
 * contract is (test/store-contract.ts). `open` returns a fresh, empty, migrated database: the hub store and the Store
 * beside it (the erase fence and linked hubs a device write checks live in the Store's tables).
 */
export interface OpenedHubStore {
  hubStore: BuiltInHubStore;
  store: Store;
  close(): Promise<void>;
}

export function runHubStoreContract(name: string, open: () => Promise<OpenedHubStore>): void {
  describe(`Built-in hub store contract: ${name}`, () => {
    let opened: OpenedHubStore;
    let hubs: BuiltInHubStore;

    beforeEach(async () => {
      opened = await open();
      hubs = opened.hubStore;
    });
    afterEach(async () => {
      await opened.close();
    });

    test('insertHub inserts once (the first record stays); getHub, updateHub and listHubs by lower-cased name', async () => {
      assert.equal(await hubs.insertHub(hubRecord('hub-b.example', 'b1')), true);
      assert.equal(await hubs.insertHub(hubRecord('hub-a.example', 'a1')), true);
      assert.equal(await hubs.insertHub(hubRecord('hub-a.example', 'a2')), false, 'a second insert of the same name writes nothing');
      assert.deepEqual(await hubs.getHub('HUB-A.Example'), hubRecord('hub-a.example', 'a1'));
      assert.equal(await hubs.getHub('hub-c.example'), undefined);
      await hubs.updateHub(hubRecord('hub-a.example', 'a3'));
      assert.deepEqual(await hubs.getHub('hub-a.example'), hubRecord('hub-a.example', 'a3'));
      await hubs.updateHub(hubRecord('hub-c.example', 'c1'));
      assert.equal(await hubs.getHub('hub-c.example'), undefined, 'an update never creates a hub');
      assert.deepEqual(await hubs.listHubs(), [hubRecord('hub-a.example', 'a3'), hubRecord('hub-b.example', 'b1')]);
    });

    test('two inserts of one hub at once: exactly one inserts', async () => {
      const results = await Promise.all(Array.from({ length: 8 }, (_, index) => hubs.insertHub(hubRecord('hub-race.example', `k${index}`))));
      assert.equal(results.filter(Boolean).length, 1);
      assert.equal((await hubs.listHubs()).length, 1);
    });

    test('deleteHub removes the hub and its devices, and nothing of another hub', async () => {
      await hubs.insertHub(hubRecord('hub-a.example', 'a'));
      await hubs.insertHub(hubRecord('hub-b.example', 'b'));
      await hubs.insertDevice('hub-a.example', device('d-1'), 'r1');
      await hubs.insertDevice('hub-b.example', device('d-1'), 'r1');
      assert.equal(await hubs.deleteHub('HUB-A.example'), true);
      assert.equal(await hubs.getHub('hub-a.example'), undefined);
      assert.equal(await hubs.getDevice('hub-a.example', 'd-1'), undefined);
      assert.deepEqual(await hubs.countDevices('hub-a.example'), { enabled: 0, disabled: 0 });
      assert.deepEqual((await hubs.getDevice('hub-b.example', 'd-1'))?.device, device('d-1'));
      assert.equal(await hubs.deleteHub('hub-a.example'), false);
    });

    test('insertDevice inserts once, device IDs compare case-insensitively; getDevice returns the document and its revision', async () => {
      assert.equal(await hubs.insertDevice('hub-a.example', device('Dev-1'), 'r1'), true);
      assert.equal(await hubs.insertDevice('HUB-A.example', device('dev-1', { status: 'disabled' }), 'r2'), false);
      assert.deepEqual(await hubs.getDevice('hub-a.example', 'DEV-1'), { device: device('Dev-1'), revision: 'r1' });
      assert.equal(await hubs.getDevice('hub-b.example', 'dev-1'), undefined, 'devices belong to their hub');
    });

    test('replaceDevice and deleteDevice compare-and-swap on the revision', async () => {
      await hubs.insertDevice('hub-a.example', device('d-1'), 'r1');
      assert.equal(await hubs.replaceDevice('hub-a.example', device('d-1', { status: 'disabled' }), 'r1', 'r2'), true);
      assert.equal(await hubs.replaceDevice('hub-a.example', device('d-1', { status: 'enabled' }), 'r1', 'r3'), false, 'a stale revision writes nothing');
      assert.deepEqual(await hubs.getDevice('hub-a.example', 'd-1'), { device: device('d-1', { status: 'disabled' }), revision: 'r2' });
      assert.equal(await hubs.replaceDevice('hub-a.example', device('d-9'), 'r1', 'r2'), false, 'no device, nothing replaced');
      assert.equal(await hubs.deleteDevice('hub-a.example', 'd-1', 'r1'), false, 'a stale revision deletes nothing');
      assert.equal(await hubs.deleteDevice('hub-a.example', 'D-1', 'r2'), true);
      assert.equal(await hubs.getDevice('hub-a.example', 'd-1'), undefined);
      await hubs.insertDevice('hub-a.example', device('d-2'), 'r1');
      assert.equal(await hubs.deleteDevice('hub-a.example', 'd-2'), true, 'without a revision: unconditionally');
      assert.equal(await hubs.deleteDevice('hub-a.example', 'd-2'), false);
    });

    test('concurrent replaces with one revision: exactly one wins', async () => {
      await hubs.insertDevice('hub-a.example', device('d-1'), 'r0');
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, index) => hubs.replaceDevice('hub-a.example', device('d-1', { statusReason: `writer ${index}` }), 'r0', `r${index + 1}`)),
      );
      assert.equal(results.filter(Boolean).length, 1);
      const winner = results.indexOf(true);
      assert.deepEqual(await hubs.getDevice('hub-a.example', 'd-1'), { device: device('d-1', { statusReason: `writer ${winner}` }), revision: `r${winner + 1}` });
    });

    test('queryDevices pages by key, byte-wise (a key with punctuation never sorts between its neighbours), and filters by device ID', async () => {
      const ids = ['abd', 'ab-cd', 'ABC', 'a', 'b_1'];
      for (const id of ids) await hubs.insertDevice('hub-a.example', device(id), 'r1');
      await hubs.insertDevice('hub-b.example', device('abc'), 'r1');
      const seen: string[] = [];
      let afterKey: string | undefined;
      for (let page = 0; page < 10; page += 1) {
        const result = await hubs.queryDevices('hub-a.example', { limit: 2, afterKey });
        seen.push(...result.items.map((item) => item.deviceId));
        afterKey = result.nextKey;
        if (afterKey === undefined) break;
      }
      assert.deepEqual(seen, ['a', 'ab-cd', 'ABC', 'abd', 'b_1'], 'ordered by the lower-cased ID, byte by byte');
      assert.deepEqual((await hubs.queryDevices('hub-a.example', { deviceId: 'abc', limit: 10 })).items, [device('ABC')]);
      assert.deepEqual(await hubs.queryDevices('hub-a.example', { deviceId: 'ab', limit: 10 }), { items: [], nextKey: undefined }, 'an exact match, not a prefix');
      assert.deepEqual(await hubs.queryDevices('hub-c.example', { limit: 10 }), { items: [], nextKey: undefined });
    });

    test('countDevices counts enabled and disabled devices of one hub', async () => {
      assert.deepEqual(await hubs.countDevices('hub-a.example'), { enabled: 0, disabled: 0 });
      await hubs.insertDevice('hub-a.example', device('d-1'), 'r1');
      await hubs.insertDevice('hub-a.example', device('d-2'), 'r1');
      await hubs.insertDevice('hub-a.example', device('d-3', { status: 'disabled' }), 'r1');
      await hubs.insertDevice('hub-b.example', device('d-1', { status: 'disabled' }), 'r1');
      assert.deepEqual(await hubs.countDevices('HUB-A.example'), { enabled: 2, disabled: 1 });
      assert.deepEqual(await hubs.countDevices('hub-b.example'), { enabled: 0, disabled: 1 });
    });

    test('a device write under an erase fence of an instance that links the hub is refused; other hubs and devices are not', async () => {
      const store = opened.store;
      const fenced = instanceRecord('fenced', '0ne000000F1');
      const other = instanceRecord('other', '0ne000000F2');
      await store.insertInstance(fenced);
      await store.insertInstance(other);
      await store.putLinkedHub(fenced.id, linkedHub('hub-a.example'));
      await store.putLinkedHub(other.id, linkedHub('hub-b.example'));
      await hubs.insertDevice('hub-a.example', device('d-1'), 'r1');
      await store.putEraseFences(fenced.id, [{ kind: 'deviceId', id: 'D-1', requestId: 'erase-1', subjectHash: 'h' }]);

      await assert.rejects(hubs.insertDevice('hub-a.example', device('d-1'), 'r2'), (error) => error instanceof DeviceFencedError && error.requestId === 'erase-1');
      await assert.rejects(hubs.replaceDevice('hub-a.example', device('d-1', { status: 'disabled' }), 'r1', 'r2'), DeviceFencedError);
      assert.deepEqual(await hubs.getDevice('hub-a.example', 'd-1'), { device: device('d-1'), revision: 'r1' }, 'nothing written');
      assert.equal(await hubs.insertDevice('hub-a.example', device('d-2'), 'r1'), true, 'another device of the hub');
      assert.equal(await hubs.insertDevice('hub-b.example', device('d-1'), 'r1'), true, 'the same ID on a hub the fenced instance does not link');
      // The erase itself deletes the device, fence or not.
      assert.equal(await hubs.deleteDevice('hub-a.example', 'd-1', 'r1'), true);
      await store.deleteEraseFences(fenced.id, 'erase-1');
      assert.equal(await hubs.insertDevice('hub-a.example', device('d-1'), 'r3'), true, 'once the fence is down, writes go through');
    });
  });
}

function hubRecord(name: string, key: string): BuiltInHubRecord {
  return {
    name,
    createdDateTimeUtc: '2024-05-01T12:00:00.0000000Z',
    policies: [{ keyName: 'iothubowner', primaryKey: `${key}-primary`, secondaryKey: `${key}-secondary`, rights: ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'] }],
  };
}

function device(deviceId: string, overrides: Partial<StoredHubDevice> = {}): StoredHubDevice {
  return {
    deviceId,
    generationId: '638000000000000001',
    etag: 'MQ==',
    status: 'enabled',
    statusReason: null,
    statusUpdatedTime: '2024-05-01T12:00:00.0000000Z',
    createdDateTimeUtc: '2024-05-01T12:00:00.0000000Z',
    authentication: { type: 'sas', symmetricKey: { primaryKey: 'cHJpbWFyeQ==', secondaryKey: 'c2Vjb25kYXJ5' }, x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null } },
    capabilities: { iotEdge: false },
    twin: { etag: 'AAAAAAAAAAE=', version: 1, tags: {}, desired: {}, desiredVersion: 1, desiredMetadata: {}, reported: {}, reportedVersion: 1, reportedMetadata: {} },
    ...overrides,
  };
}

function instanceRecord(name: string, idScope: string): InstanceRecord {
  return { id: `instance-${name}`, name, idScope, serviceHostNames: [`${name}.example.net`], allocationPolicy: 'hashed', createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z' };
}

function linkedHub(name: string): Parameters<Store['putLinkedHub']>[1] {
  return { name, builtIn: true, connectionString: `HostName=${name};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5`, allocationWeight: 1, applyAllocationPolicy: true };
}
