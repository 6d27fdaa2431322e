import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { verifyReceipt } from '../src/domain/receipt.js';
import type { StoredRegistration } from '../src/store/store.js';
import { readOnce } from '../src/services/customer-data/export.js';
import { openSqliteStore } from '../src/store/open-store.js';
import { call, startServer, type TestServer } from './harness.js';
import { deriveDeviceKey, rawRegister, type Json } from './devices.js';
import { HUB_HOST_NAMES, linkHub } from './hubs.js';

/**
 * Issue 10's shape: one list of places that the export, the dry run and the erase all go through; the explicit
 * subject→hub-device link (an erase finds a device after its enrollment, record, operations and log are gone); and a
 * registration intent left by a crash erased with its subject.
 */
let server: TestServer;
let idScope: string;
let instanceId: string;
const API = 'api-version=2021-10-01';
const FAR_FUTURE = '2999-01-01T00:00:00.0000000Z';

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json; text: string }> {
  const response = await call(method, `${path}${path.includes('?') ? '&' : '?'}${API}`, { headers: { authorization: server.token() }, ...(body === undefined ? {} : { body }) });
  return { status: response.status, body: response.body as Json, text: response.text };
}

async function enroll(registrationId: string, extra: Json = {}): Promise<string> {
  const response = await api('PUT', `/enrollments/${registrationId}`, { registrationId, attestation: { type: 'symmetricKey' }, ...extra });
  assert.equal(response.status, 200, response.text);
  return response.body.attestation.symmetricKey.primaryKey as string;
}

async function dataRequest(requestId: string, body: Json): Promise<Json> {
  const created = await api('PUT', `/dataRequests/${requestId}`, body);
  assert.equal(created.status, 200, created.text);
  for (let attempt = 0; attempt < 1200; attempt += 1) {
    const current = await api('GET', `/dataRequests/${requestId}`);
    if (current.body.status !== 'running') return current.body;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`data request ${requestId} did not finish`);
}

async function hubDevice(hub: string, deviceId: string): Promise<boolean> {
  const devices = await server.app.builtInHubs.queryDevices(hub, { query: `SELECT * FROM devices WHERE deviceId = '${deviceId}'` });
  return devices.items.length > 0;
}

before(async () => {
  server = await startServer({ hostNames: HUB_HOST_NAMES, listenHost: '0.0.0.0', dataRequestWaitMs: 0, registrationsPerSecond: 0, pollsPerSecondPerDevice: 0 });
  idScope = server.info.idScope;
  instanceId = (await server.app.store.listInstances())[0]?.id as string;
  await linkHub(server, '127.0.0.2', { builtIn: true, applyAllocationPolicy: false });
});
after(async () => {
  await server.close();
});

describe('one list of places', () => {
  test('an export, a dry run and an erase list exactly the same places, in the same order, with the same names', async () => {
    const key = await enroll('same-1', { deviceId: 'same-1-dev', initialTwin: { tags: { site: 'x' } } });
    assert.equal((await rawRegister(idScope, 'same-1', key)).status, 'assigned');
    const exported = await dataRequest('same-1-export', { type: 'export', subject: { registrationId: 'same-1' } });
    const dry = await dataRequest('same-1-dry', { type: 'erase', subject: { registrationId: 'same-1' }, dryRun: true });
    const erased = await dataRequest('same-1-erase', { type: 'erase', subject: { registrationId: 'same-1' } });
    assert.equal(erased.status, 'completed', JSON.stringify(erased));

    const list = (entries: Json[]) => entries.map((entry) => `${entry.place as string} = ${entry.name as string}`);
    const searched = list(exported.result.searched);
    const dryRun = list([...dry.result.deleted, ...dry.result.pseudonymized]);
    const erase = list([...erased.result.deleted, ...erased.result.pseudonymized]);
    assert.deepEqual(dryRun, searched);
    assert.deepEqual(erase, searched);
    // The receipt names the same places too.
    const receipt = await api('GET', '/dataRequests/same-1-erase/receipt');
    assert.equal(verifyReceipt(receipt.body).valid, true);
    assert.deepEqual(
      [...receipt.body.receipt.deleted, ...receipt.body.receipt.pseudonymized].map((entry: Json) => entry.place),
      [...erased.result.deleted, ...erased.result.pseudonymized].map((entry: Json) => entry.place),
    );
    assert.deepEqual(
      exported.result.searched.map((entry: Json) => entry.place),
      [
        'hub:127.0.0.2/devices',
        'hub:localhost/devices',
        'registrations',
        'operations',
        'registrationIntents',
        'hubDeviceLinks',
        'issuedCertificates',
        'enrollments',
        'enrollmentGroups',
        'lifecycleEventOutbox',
        'dataRequests',
        'webhookExchanges',
        'auditEvents',
      ],
    );
    // What the export found is what the erase removed, place by place (the earlier export and dry run aside: the
    // export could not see requests made after it).
    const exportCounts = Object.fromEntries(exported.result.searched.map((entry: Json) => [entry.place, entry.count]));
    const eraseCounts = Object.fromEntries([...erased.result.deleted, ...erased.result.pseudonymized].map((entry: Json) => [entry.place, entry.count]));
    for (const place of ['hub:localhost/devices', 'registrations', 'operations', 'hubDeviceLinks', 'enrollments']) {
      assert.equal(eraseCounts[place], exportCounts[place], place);
      assert.ok(eraseCounts[place] > 0, place);
    }
  });
});

describe('the subject→hub-device link', () => {
  test('an erase by registration ID finds the hub device after the enrollment, the record, the operations and the log are gone', async () => {
    const key = await enroll('link-1', { deviceId: 'link-1-dev' });
    assert.equal((await rawRegister(idScope, 'link-1', key)).status, 'assigned');
    assert.equal(await hubDevice('localhost', 'link-1-dev'), true);
    // The ordinary DPS deletes through the service API, then retention takes the operations and the log.
    assert.equal((await api('DELETE', '/enrollments/link-1')).status, 204);
    // (Deleting the enrollment may have taken the record with it already.)
    assert.ok([204, 404].includes((await api('DELETE', '/registrations/link-1')).status));
    assert.equal(await server.app.store.getRegistration(instanceId, 'link-1'), undefined);
    await server.app.store.deleteOperationsBefore(FAR_FUTURE);
    await server.app.store.deleteAuditEventsBefore(instanceId, FAR_FUTURE);

    const dry = await dataRequest('link-1-dry', { type: 'erase', subject: { registrationId: 'link-1' }, dryRun: true });
    const dryDeleted = Object.fromEntries(dry.result.deleted.map((entry: Json) => [entry.place, entry.items]));
    assert.deepEqual(dryDeleted['hub:localhost/devices'], ['link-1-dev']);
    assert.deepEqual(dryDeleted.hubDeviceLinks, ['link-1-dev']);

    const erased = await dataRequest('link-1-erase', { type: 'erase', subject: { registrationId: 'link-1' } });
    assert.equal(erased.status, 'completed', JSON.stringify(erased));
    const counts = Object.fromEntries(erased.result.deleted.map((entry: Json) => [entry.place, entry.count]));
    assert.equal(counts['hub:localhost/devices'], 1);
    assert.equal(counts.hubDeviceLinks, 1);
    assert.equal(await hubDevice('localhost', 'link-1-dev'), false);
    assert.deepEqual(await server.app.store.findHubDeviceLinks(instanceId, { registrationIds: ['link-1'], deviceIds: ['link-1-dev'], groupIds: [] }), []);
  });

  test('a group erase finds its devices through the links after their records were deleted', async () => {
    const group = await api('PUT', '/enrollmentGroups/link-group', { enrollmentGroupId: 'link-group', attestation: { type: 'symmetricKey' } });
    assert.equal(group.status, 200, group.text);
    const groupKey = group.body.attestation.symmetricKey.primaryKey as string;
    for (const id of ['link-g-1', 'link-g-2']) assert.equal((await rawRegister(idScope, id, deriveDeviceKey(groupKey, id))).status, 'assigned');
    for (const id of ['link-g-1', 'link-g-2']) assert.equal((await api('DELETE', `/registrations/${id}`)).status, 204);
    await server.app.store.deleteOperationsBefore(FAR_FUTURE);
    await server.app.store.deleteAuditEventsBefore(instanceId, FAR_FUTURE);

    const erased = await dataRequest('link-group-erase', { type: 'erase', subject: { enrollmentGroupId: 'link-group' } });
    assert.equal(erased.status, 'completed', JSON.stringify(erased));
    const counts = Object.fromEntries(erased.result.deleted.map((entry: Json) => [entry.place, entry.count]));
    assert.equal(counts['hub:localhost/devices'], 2);
    assert.equal(counts.hubDeviceLinks, 2);
    assert.equal(counts.enrollmentGroups, 1);
    for (const id of ['link-g-1', 'link-g-2']) assert.equal(await hubDevice('localhost', id), false);
  });
});

describe('registration intents', () => {
  test('an intent a crash left is exported, listed by a dry run, and erased with its subject (with the hub identity it was writing)', async () => {
    const key = await enroll('intent-1', { deviceId: 'intent-1-dev' });
    assert.equal((await rawRegister(idScope, 'intent-1', key)).status, 'assigned');
    // What a process that died between its hub write and its record leaves: an intent naming a device ID, and that
    // device on the hub, which no record, link or log entry names.
    const record = await server.app.store.getRegistration(instanceId, 'intent-1');
    assert.ok(record !== undefined);
    await server.app.builtInHubs.createOrUpdateDevice('127.0.0.2', 'intent-1-moved', { deviceId: 'intent-1-moved' }, undefined);
    await server.app.store.putRegistrationIntent(instanceId, {
      operationId: 'intent-1-op',
      registrationId: 'intent-1',
      createdDateTimeUtc: new Date().toISOString(),
      targetHub: '127.0.0.2',
      deviceId: 'intent-1-moved',
      leave: { hub: 'localhost', deviceId: 'intent-1-dev' },
      assigned: { ...record, assignedHub: '127.0.0.2', deviceId: 'intent-1-moved' },
      resultSection: {},
    });

    const exported = await dataRequest('intent-1-export', { type: 'export', subject: { registrationId: 'intent-1' } });
    const bundle = (await api('GET', '/dataRequests/intent-1-export/bundle')).body;
    assert.deepEqual(
      bundle.registrationIntents.map((intent: Json) => [intent.operationId, intent.targetHub, intent.deviceId]),
      [['intent-1-op', '127.0.0.2', 'intent-1-moved']],
    );
    assert.equal(exported.result.searched.find((entry: Json) => entry.place === 'registrationIntents').count, 1);

    const dry = await dataRequest('intent-1-dry', { type: 'erase', subject: { registrationId: 'intent-1' }, dryRun: true });
    const dryDeleted = Object.fromEntries(dry.result.deleted.map((entry: Json) => [entry.place, entry]));
    assert.equal(dryDeleted.registrationIntents.count, 1);
    assert.deepEqual(dryDeleted['hub:127.0.0.2/devices'].items, ['intent-1-moved']);

    const erased = await dataRequest('intent-1-erase', { type: 'erase', subject: { registrationId: 'intent-1' } });
    assert.equal(erased.status, 'completed', JSON.stringify(erased));
    const counts = Object.fromEntries(erased.result.deleted.map((entry: Json) => [entry.place, entry.count]));
    assert.equal(counts.registrationIntents, 1);
    assert.equal(counts['hub:127.0.0.2/devices'], 1);
    assert.equal(counts['hub:localhost/devices'], 1);
    assert.deepEqual(await server.app.store.listRegistrationIntentsOf(instanceId), []);
    assert.equal(await hubDevice('127.0.0.2', 'intent-1-moved'), false);
    assert.equal(await hubDevice('localhost', 'intent-1-dev'), false);
  });
});

test('an export asks the store each repeated read once (readOnce); writes and the store’s own getters pass through', async () => {
  const store = await openSqliteStore(':memory:');
  try {
    const record = { registrationId: 'dev-1', createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z', status: 'assigned', etag: '"1"' };
    await store.putRegistration('i1', record as unknown as StoredRegistration);
    const once = readOnce(store);
    const first = await once.getRegistration('i1', 'dev-1');
    assert.equal(first?.registrationId, 'dev-1');
    // The same question again: the same answer, not a second read (a fresh read would be a new object).
    assert.equal(await once.getRegistration('i1', 'dev-1'), first);
    assert.notEqual(await store.getRegistration('i1', 'dev-1'), first);
    assert.equal(await once.getRegistration('i1', 'other'), undefined);
    assert.equal(once.capabilities.name, 'sqlite');
    assert.equal(await once.deleteRegistration('i1', 'dev-1'), true);
  } finally {
    await store.close();
  }
});
