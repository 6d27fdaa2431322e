import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import iothub from 'azure-iothub';
import { BuiltInHubService } from '../src/hubs/built-in-hubs.js';
import { KyselyHubStore } from '../src/store/hub-store.js';
import { openSqliteDatabase } from '../src/store/open-store.js';
import { assertDpsError } from './api-assertions.js';
import type { Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';
import { linkHub } from './hubs.js';

/**
 * The built-in hub's shared access policies, as IoT Hub has them: besides `iothubowner`, the narrower `registryRead`,
 * `registryReadWrite`, `service` and `device`, each opening only what its rights allow on the registry API. The
 * expected rights come from the tables below, written from the IoT Hub documentation ("Control access to IoT Hub
 * with shared access signatures": RegistryRead reads identities, RegistryWrite writes them, ServiceConnect is the
 * service-facing twin API, DeviceConnect the device-facing endpoints), not from the route definitions under test.
 */
const { Registry } = iothub;
const HUB_API = 'api-version=2021-04-12';
const SERVICE_API = 'api-version=2021-10-01';
const HUB = 'localhost';
const LONG_ID = 'l'.repeat(120);

type HubRight = 'RegistryRead' | 'RegistryWrite' | 'ServiceConnect' | 'DeviceConnect';

/** IoT Hub's default policies and their rights. */
const DEFAULT_POLICIES: Record<string, HubRight[]> = {
  iothubowner: ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'],
  service: ['ServiceConnect'],
  device: ['DeviceConnect'],
  registryRead: ['RegistryRead'],
  registryReadWrite: ['RegistryRead', 'RegistryWrite'],
};

/** Each registry API operation and the right IoT Hub requires for it. `{id}` is replaced per policy. */
const HUB_ROUTES: { method: string; path: string; right: HubRight; body?: Json }[] = [
  { method: 'GET', path: '/devices/policy-target', right: 'RegistryRead' },
  { method: 'GET', path: '/devices', right: 'RegistryRead' },
  { method: 'POST', path: '/devices/query', right: 'RegistryRead', body: { query: 'SELECT * FROM devices' } },
  { method: 'GET', path: '/statistics/devices', right: 'RegistryRead' },
  // A device ID longer than the router's parameter limit takes another path to the same operation.
  { method: 'GET', path: `/devices/${LONG_ID}`, right: 'RegistryRead' },
  { method: 'PUT', path: '/devices/created-by-{id}', right: 'RegistryWrite', body: { deviceId: 'created-by-{id}' } },
  { method: 'DELETE', path: '/devices/deleted-by-{id}', right: 'RegistryWrite' },
  { method: 'GET', path: '/twins/policy-target', right: 'ServiceConnect' },
  { method: 'PATCH', path: '/twins/policy-target', right: 'ServiceConnect', body: { tags: { patchedBy: '{id}' } } },
  { method: 'PUT', path: '/twins/policy-target', right: 'ServiceConnect', body: { tags: { replacedBy: '{id}' } } },
];

let server: TestServer;
/** Policy name → primary key, from the service API. */
const keys = new Map<string, string>();

function hubToken(keyName: string, key: string): string {
  const se = Math.floor(Date.now() / 1000) + 3600;
  const sig = createHmac('sha256', Buffer.from(key, 'base64')).update(`${HUB}\n${se}`).digest('base64');
  return `SharedAccessSignature sr=${HUB}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${keyName}`;
}

async function listKeys(name: string, auth = server.token()): Promise<{ status: number; body: unknown; text: string; headers: Headers }> {
  return call('POST', `/linkedHubs/${encodeURIComponent(name)}/listKeys?${SERVICE_API}`, { headers: { authorization: auth } });
}

before(async () => {
  server = await startServer();
  const listed = await listKeys(HUB);
  assert.equal(listed.status, 200, listed.text);
  for (const policy of listed.body as Json[]) keys.set(policy.keyName as string, policy.primaryKey as string);
  const owner = hubToken('iothubowner', keys.get('iothubowner') ?? '');
  for (const id of ['policy-target', LONG_ID, ...Object.keys(DEFAULT_POLICIES).map((name) => `deleted-by-${name}`)]) {
    const created = await call('PUT', `/devices/${id}?${HUB_API}`, { headers: { authorization: owner }, body: { deviceId: id } });
    assert.equal(created.status, 200, created.text);
  }
});
after(async () => {
  await server.close();
});

describe('the built-in hub has IoT Hub’s default policies', () => {
  test('listKeys shows every policy with its rights, keys and connection string', async () => {
    const listed = await listKeys(HUB);
    assert.equal(listed.status, 200, listed.text);
    const policies = listed.body as Json[];
    assert.deepEqual(
      policies.map((policy) => [policy.keyName, policy.rights]).sort(),
      Object.entries(DEFAULT_POLICIES).map(([name, rights]) => [name, rights.join(', ')]).sort(),
    );
    for (const policy of policies) {
      assert.deepEqual(Object.keys(policy).sort(), ['connectionString', 'keyName', 'primaryKey', 'rights', 'secondaryKey']);
      assert.match(policy.primaryKey, /^[A-Za-z0-9+/]{43}=$/);
      assert.match(policy.secondaryKey, /^[A-Za-z0-9+/]{43}=$/);
      assert.notEqual(policy.primaryKey, policy.secondaryKey);
      assert.equal(policy.connectionString, `HostName=${HUB};SharedAccessKeyName=${policy.keyName};SharedAccessKey=${policy.primaryKey}`);
    }
    assert.equal(new Set(policies.map((policy) => policy.primaryKey)).size, policies.length, 'every policy has its own keys');
    // The owner policy is the one the server reports for the hub.
    assert.equal(policies.find((policy) => policy.keyName === 'iothubowner')?.connectionString, server.info.builtInHubConnectionString);
  });

  test('listKeys: 404 for a hub that is not linked, 400 for an external hub, 401 without ServiceConfig', async () => {
    assertDpsError(await listKeys('nowhere.example.net'), 404, { errorCode: 404206 });
    await linkHub(server, 'external.example.net', { connectionString: `HostName=external.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 5).toString('base64')}` });
    assertDpsError(await listKeys('external.example.net'), 400, { errorCode: 400019, message: /external hub/ });
    const reader = await call('PUT', `/accessPolicies/enrollment-reader?${SERVICE_API}`, { headers: { authorization: server.token() }, body: { rights: 'EnrollmentRead' } });
    assert.equal(reader.status, 200, reader.text);
    const readerToken = server.token({ keyName: 'enrollment-reader', key: (reader.body as Json).primaryKey as string });
    assertDpsError(await listKeys(HUB, readerToken), 401, { errorCode: 401002, message: /ServiceConfig/ });
  });
});

describe('each policy opens exactly the registry operations its rights allow', () => {
  for (const [policyName, rights] of Object.entries(DEFAULT_POLICIES)) {
    test(policyName, async () => {
      const authorization = hubToken(policyName, keys.get(policyName) ?? '');
      for (const route of HUB_ROUTES) {
        const path = route.path.replaceAll('{id}', policyName);
        const body = route.body === undefined ? undefined : (JSON.parse(JSON.stringify(route.body).replaceAll('{id}', policyName)) as Json);
        const response = await call(route.method, `${path}?${HUB_API}`, { headers: { authorization }, ...(body === undefined ? {} : { body }) });
        const where = `${policyName}: ${route.method} ${route.path} → ${response.status} ${response.text.slice(0, 200)}`;
        if (rights.includes(route.right)) {
          assert.ok(response.status >= 200 && response.status < 300, where);
        } else {
          assert.equal(response.status, 401, where);
          assert.equal(response.headers.get('iothub-errorcode'), 'IotHubUnauthorizedAccess', where);
          assert.match((response.body as Json).Message, new RegExp(`^ErrorCode:IotHubUnauthorizedAccess;Unauthorized: this operation needs the ${route.right} right\\.$`), where);
        }
      }
    });
  }

  test('what a refused policy asked for did not happen', async () => {
    const owner = hubToken('iothubowner', keys.get('iothubowner') ?? '');
    for (const policyName of ['service', 'device', 'registryRead']) {
      assert.equal((await call('GET', `/devices/created-by-${policyName}?${HUB_API}`, { headers: { authorization: owner } })).status, 404, policyName);
      assert.equal((await call('GET', `/devices/deleted-by-${policyName}?${HUB_API}`, { headers: { authorization: owner } })).status, 200, policyName);
    }
    const twin = (await call('GET', `/twins/policy-target?${HUB_API}`, { headers: { authorization: owner } })).body as Json;
    assert.equal(twin.tags.patchedBy, undefined, 'the last twin write was a replace');
    assert.deepEqual(twin.tags, { replacedBy: 'service' }, 'only ServiceConnect policies wrote the twin, in table order');
  });

  test('the official azure-iothub Registry with the registryRead connection string reads but cannot write', async () => {
    const listed = (await listKeys(HUB)).body as Json[];
    const connectionString = listed.find((policy) => policy.keyName === 'registryRead')?.connectionString as string;
    const registry = Registry.fromConnectionString(connectionString);
    const device = await new Promise<Json>((resolve, reject) => registry.get('policy-target', (error, found) => (error ? reject(error) : resolve(found as unknown as Json))));
    assert.equal(device.deviceId, 'policy-target');
    const refused = await new Promise<Error>((resolve, reject) =>
      registry.create({ deviceId: 'sdk-read-only' }, (error) => (error ? resolve(error) : reject(new Error('a registryRead policy created a device')))),
    );
    assert.equal(refused.name, 'UnauthorizedError', refused.message);
  });
});

test('a hub made before the narrower policies gets them, and keeps its own policies and keys', async () => {
  const db = await openSqliteDatabase(':memory:');
  try {
    const store = new KyselyHubStore(db);
    const owner = { keyName: 'iothubowner', primaryKey: Buffer.alloc(32, 1).toString('base64'), secondaryKey: Buffer.alloc(32, 2).toString('base64'), rights: DEFAULT_POLICIES.iothubowner ?? [] };
    const custom = { keyName: 'custom', primaryKey: Buffer.alloc(32, 3).toString('base64'), secondaryKey: Buffer.alloc(32, 4).toString('base64'), rights: ['RegistryRead' as const] };
    await store.insertHub({ name: 'old.example', createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z', policies: [owner, custom] });
    const service = new BuiltInHubService({ hubStore: store, now: () => new Date() });
    const ensured = await service.ensureHub('old.example');
    assert.equal(ensured.connectionString, `HostName=old.example;SharedAccessKeyName=iothubowner;SharedAccessKey=${owner.primaryKey}`);
    const policies = (await service.getHub('old.example'))?.policies ?? [];
    assert.deepEqual(policies.slice(0, 2), [owner, custom]);
    assert.deepEqual(
      policies.map((policy) => [policy.keyName, policy.rights]).sort(),
      [...Object.entries(DEFAULT_POLICIES), ['custom', ['RegistryRead']]].sort(),
    );
    // Ensuring again changes nothing.
    assert.deepEqual((await service.getHub('old.example'))?.policies, (await service.ensureHub('old.example')).policies);
  } finally {
    await db.destroy();
  }
});
