import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { verifyReceipt } from '../src/domain/receipt.js';
import { AuditLog } from '../src/services/audit-log.js';
import { createServerCertificate } from '../src/tls/x509-issuer.js';
import { CA_DIR, call, startServer, type TestServer } from './harness.js';
import { deriveDeviceKey, deviceToken, inBatches, rawRegister, sdkRegister, type Json } from './devices.js';
import { HUB_HOST_NAMES, deviceOf, linkHub, registryFor, twinOf } from './hubs.js';
import { rowsHolding } from './postgres.js';

/**
 * Customer-data requests end to end: devices provisioned with the official SDK, then export and erase through the
 * service API, checked against the store and the hubs directly.
 */
let server: TestServer;
let idScope: string;
let instanceId: string;
const API = 'api-version=2021-10-01';

async function api(method: string, path: string, body?: unknown, authorization = server.token()): Promise<{ status: number; body: Json; text: string; headers: Headers }> {
  const response = await call(method, `${path}${path.includes('?') ? '&' : '?'}${API}`, {
    headers: { authorization },
    ...(body === undefined ? {} : { body }),
  });
  return { status: response.status, body: response.body as Json, text: response.text, headers: response.headers };
}

async function enroll(registrationId: string, extra: Json = {}): Promise<string> {
  const response = await api('PUT', `/enrollments/${registrationId}`, { registrationId, attestation: { type: 'symmetricKey' }, ...extra });
  assert.equal(response.status, 200, response.text);
  return response.body.attestation.symmetricKey.primaryKey as string;
}

/** Creates a data request and waits until it is no longer running. */
async function dataRequest(requestId: string, body: Json, authorization = server.token()): Promise<Json> {
  const created = await api('PUT', `/dataRequests/${requestId}`, body, authorization);
  assert.equal(created.status, 200, created.text);
  // By the clock, not by a count of polls: a loaded machine (and PostgreSQL on it) may take minutes for the big erase.
  for (const deadline = Date.now() + 300_000; Date.now() < deadline; ) {
    const current = await api('GET', `/dataRequests/${requestId}`, undefined, authorization);
    if (current.body.status !== 'running') return current.body;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`data request ${requestId} did not finish`);
}

async function exportBundle(requestId: string, subject: Json, extra: Json = {}): Promise<Json> {
  const done = await dataRequest(requestId, { type: 'export', subject, ...extra });
  assert.equal(done.status, 'completed', JSON.stringify(done));
  const bundle = await api('GET', `/dataRequests/${requestId}/bundle`);
  assert.equal(bundle.status, 200);
  assert.match(bundle.headers.get('content-disposition') ?? '', /^attachment; filename="provisiond-export-/);
  return bundle.body;
}

/** Everything the store holds about the instance, to show that a dry run or a refused call changes nothing. */
async function snapshot(): Promise<string> {
  const store = server.app.store;
  const all = { filters: [], limit: 100000 };
  const events = await store.queryAuditEvents(instanceId, { limit: 100000 });
  return JSON.stringify({
    enrollments: (await store.queryEnrollments(instanceId, all)).items,
    groups: (await store.queryEnrollmentGroups(instanceId, all)).items,
    registrations: (await store.queryRegistrations(instanceId, all)).items,
    // Reading the log through the API adds events; compare the ones that are about devices.
    auditEvents: events.items.filter((event) => event.kind !== 'serviceApi'),
    hubDevices: await Promise.all(['localhost', '127.0.0.2'].map(async (hub) => (await server.app.builtInHubs.queryDevices(hub, { query: 'SELECT * FROM devices' })).items)),
  });
}

before(async () => {
  server = await startServer({ hostNames: HUB_HOST_NAMES, listenHost: '0.0.0.0', lifecycleEventRetryBaseMs: 100, dataRequestWaitMs: 0 });
  idScope = server.info.idScope;
  instanceId = (await server.app.store.listInstances())[0]?.id as string;
  await linkHub(server, '127.0.0.2', { builtIn: true, applyAllocationPolicy: false });
});
after(async () => {
  await server.close();
});

describe('export and erase of one device', () => {
  let key: string;
  let otherKey: string;

  before(async () => {
    key = await enroll('cd-dev-1', { initialTwin: { tags: { owner: 'alice' }, properties: { desired: { mode: 'on' } } } });
    otherKey = await enroll('cd-other-1');
    await sdkRegister(idScope, 'cd-dev-1', key, { serial: 'SN-1' });
    await sdkRegister(idScope, 'cd-other-1', otherKey);
    // A failed attempt is data about the device too.
    await rawRegister(idScope, 'cd-dev-1', Buffer.alloc(32, 9).toString('base64'));
  });

  test('an export holds every place the device lives, and nothing about other devices', async () => {
    const bundle = await exportBundle('cd-export-1', { registrationId: 'cd-dev-1' });
    assert.equal(bundle.individualEnrollment.registrationId, 'cd-dev-1');
    assert.deepEqual(bundle.individualEnrollment.attestation, { type: 'symmetricKey' });
    assert.deepEqual(bundle.individualEnrollment.initialTwin.tags, { owner: 'alice' });
    assert.deepEqual(bundle.enrollmentGroups, []);
    assert.deepEqual(bundle.registrationRecords.map((record: Json) => [record.registrationId, record.status, record.assignedHub]), [['cd-dev-1', 'assigned', 'localhost']]);
    assert.equal(bundle.hubDevices.length, 1);
    assert.equal(bundle.hubDevices[0].hub, 'localhost');
    assert.equal(bundle.hubDevices[0].device.deviceId, 'cd-dev-1');
    assert.deepEqual(bundle.hubDevices[0].device.authentication.symmetricKey, { primaryKey: '<redacted>', secondaryKey: '<redacted>' });
    assert.deepEqual(bundle.hubDevices[0].twin.tags, { owner: 'alice' });
    const operations = new Set(bundle.auditEvents.map((event: Json) => `${event.kind}:${event.operation}:${event.outcome}`));
    for (const expected of ['serviceApi:IndividualEnrollment_CreateOrUpdate:success', 'registration:register:success', 'registration:register:failure', 'hubWrite:putDevice:success']) {
      assert.ok(operations.has(expected), `${expected} in ${[...operations].join(', ')}`);
    }
    const searched = Object.fromEntries(bundle.manifest.searched.map((entry: Json) => [entry.place, entry.count]));
    assert.deepEqual(searched, {
      enrollments: 1,
      registrations: 1,
      registrationIntents: 0,
      hubDeviceLinks: 1,
      enrollmentGroups: 0,
      'hub:localhost/devices': 1,
      'hub:127.0.0.2/devices': 0,
      webhookExchanges: 0,
      auditEvents: bundle.auditEvents.length,
      operations: 1,
      issuedCertificates: 0,
      dataRequests: 0,
      lifecycleEventOutbox: bundle.lifecycleEventOutbox.length,
    });
    const text = JSON.stringify(bundle);
    assert.equal(text.includes('cd-other-1'), false, 'nothing about another device');
    assert.equal(text.includes(key), false, 'no key without includeSecrets');
  });

  test('an export with includeSecrets carries the keys', async () => {
    const bundle = await exportBundle('cd-export-secrets', { registrationId: 'cd-dev-1' }, { includeSecrets: true });
    assert.equal(bundle.individualEnrollment.attestation.symmetricKey.primaryKey, key);
    assert.equal(bundle.hubDevices[0].device.authentication.symmetricKey.primaryKey, key);
  });

  test('a dry run lists what would go and changes nothing', async () => {
    const before = await snapshot();
    const done = await dataRequest('cd-dry-1', { type: 'erase', subject: { registrationId: 'cd-dev-1' }, dryRun: true });
    assert.equal(done.status, 'completed');
    assert.equal(done.hasReceipt, false);
    const deleted = Object.fromEntries(done.result.deleted.map((entry: Json) => [entry.place, entry.items]));
    assert.deepEqual(deleted, {
      'hub:localhost/devices': ['cd-dev-1'],
      'hub:127.0.0.2/devices': [],
      registrations: ['cd-dev-1'],
      operations: ['cd-dev-1'],
      registrationIntents: [],
      hubDeviceLinks: ['cd-dev-1'],
      issuedCertificates: [],
      enrollments: ['cd-dev-1'],
      enrollmentGroups: [],
      lifecycleEventOutbox: undefined,
    });
    // Every place the erase would change is listed: the earlier exports of this device too.
    const pseudonymized = Object.fromEntries(done.result.pseudonymized.map((entry: Json) => [entry.place, entry.count]));
    assert.deepEqual(Object.keys(pseudonymized).sort(), ['auditEvents', 'dataRequests', 'webhookExchanges']);
    assert.ok(pseudonymized.auditEvents > 0);
    assert.equal(pseudonymized.dataRequests, 2);
    assert.equal(await snapshot(), before);
    assert.equal((await api('GET', '/dataRequests/cd-dry-1/receipt')).status, 404);
  });

  test('a caller without the rights learns nothing, and changes nothing', async () => {
    const policy = await api('PUT', '/accessPolicies/readonly', { rights: 'EnrollmentRead, RegistrationStatusRead' });
    const readOnly = server.token({ keyName: 'readonly', key: policy.body.primaryKey as string });
    const before = await snapshot();
    const existing = await api('PUT', '/dataRequests/cd-denied-1', { type: 'erase', subject: { registrationId: 'cd-dev-1' } }, readOnly);
    const missing = await api('PUT', '/dataRequests/cd-denied-2', { type: 'erase', subject: { registrationId: 'no-such-device' } }, readOnly);
    assert.equal(existing.status, 401);
    assert.equal(missing.status, 401);
    assert.equal(existing.body.message, missing.body.message);
    assert.equal(existing.body.errorCode, 401002);
    assert.equal((await api('GET', '/dataRequests/cd-dry-1/receipt', undefined, readOnly)).status, 401);
    const noToken = await call('PUT', `/dataRequests/cd-denied-3?${API}`, { body: { type: 'export', subject: { registrationId: 'cd-dev-1' } } });
    assert.equal(noToken.status, 401);
    const wrongKey = server.token({ key: Buffer.alloc(32, 1).toString('base64') });
    assert.equal((await api('PUT', '/dataRequests/cd-denied-4', { type: 'export', subject: { registrationId: 'cd-dev-1' } }, wrongKey)).status, 401);
    assert.equal(await snapshot(), before);
    // Read rights are enough for an export.
    assert.equal((await dataRequest('cd-ro-export', { type: 'export', subject: { registrationId: 'cd-dev-1' } }, readOnly)).status, 'completed');
  });

  test('an erase removes the device from every table, every hub and the log, with a signed receipt', async () => {
    const eventsBefore = await server.app.store.findAuditEventsAbout(instanceId, { registrationIds: ['cd-dev-1'], deviceIds: ['cd-dev-1'], groupIds: [] });
    assert.ok(eventsBefore.length > 0);
    const done = await dataRequest('cd-erase-1', { type: 'erase', subject: { registrationId: 'cd-dev-1' } });
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.equal(done.subject.id, undefined, 'the request keeps only the hash');
    assert.match(done.subject.hash as string, /^[0-9a-f]{64}$/);
    assert.equal(JSON.stringify(done).includes('cd-dev-1'), false);

    const store = server.app.store;
    assert.equal(await store.getEnrollment(instanceId, 'cd-dev-1'), undefined);
    assert.equal(await store.getRegistration(instanceId, 'cd-dev-1'), undefined);
    assert.equal(await store.countOperationsOfRegistration(instanceId, 'cd-dev-1'), 0);
    assert.deepEqual(await store.findAuditEventsAbout(instanceId, { registrationIds: ['cd-dev-1'], deviceIds: ['cd-dev-1'], groupIds: [] }), []);
    const allEvents = JSON.stringify((await store.queryAuditEvents(instanceId, { limit: 100000 })).items);
    assert.equal(allEvents.includes('cd-dev-1'), false, 'no event names the device any more');
    assert.equal(await deviceOf(await registryFor(server, 'localhost'), 'cd-dev-1'), undefined);
    // The other device is untouched.
    assert.equal((await store.getRegistration(instanceId, 'cd-other-1'))?.status, 'assigned');
    assert.notEqual(await deviceOf(await registryFor(server, 'localhost'), 'cd-other-1'), undefined);

    const receipt = await api('GET', '/dataRequests/cd-erase-1/receipt');
    assert.equal(receipt.status, 200);
    const deleted = Object.fromEntries((receipt.body.receipt.deleted as Json[]).map((entry) => [entry.place, entry.count]));
    assert.deepEqual(deleted, {
      'hub:localhost/devices': 1,
      'hub:127.0.0.2/devices': 0,
      registrations: 1,
      operations: 1,
      registrationIntents: 0,
      hubDeviceLinks: 1,
      issuedCertificates: 0,
      enrollments: 1,
      enrollmentGroups: 0,
      lifecycleEventOutbox: 0,
    });
    const pseudonymized = Object.fromEntries((receipt.body.receipt.pseudonymized as Json[]).map((entry) => [entry.place, entry.count]));
    // The earlier exports and the dry run (not the refused ones, which never existed) keep only the subject's hash.
    assert.deepEqual(pseudonymized, { dataRequests: 4, webhookExchanges: 0, auditEvents: eventsBefore.length });
    assert.equal(receipt.body.receipt.subjectHash, done.subject.hash);
    const signingKey = await api('GET', '/receiptSigningKey');
    assert.deepEqual(verifyReceipt(receipt.body, signingKey.body.publicKeyPem as string), { valid: true, keyId: signingKey.body.keyId });
    // Any changed byte of the content breaks it.
    const text = JSON.stringify(receipt.body);
    const tampered = JSON.parse(text.replace('"count":1', '"count":2')) as Json;
    assert.equal(verifyReceipt(tampered).valid, false);
    const retimed = structuredClone(receipt.body);
    retimed.receipt.completedDateTimeUtc = (retimed.receipt.completedDateTimeUtc as string).replace(/.$/, 'Z ');
    assert.equal(verifyReceipt(retimed).valid, false);

    // Earlier requests about the device keep no bundle, no item list and no plain ID.
    const earlier = await api('GET', '/dataRequests/cd-export-secrets');
    assert.equal(earlier.body.subject.id, undefined);
    assert.equal(earlier.body.subject.kind, 'registrationId');
    assert.equal((await api('GET', '/dataRequests/cd-export-secrets/bundle')).body.errorCode, 404210);
    const dryRun = await api('GET', '/dataRequests/cd-dry-1');
    assert.equal(JSON.stringify(dryRun.body).includes('cd-dev-1'), false);
    const everything = JSON.stringify((await api('POST', '/dataRequests/query')).body);
    assert.equal(everything.includes('cd-dev-1'), false, 'no data request names the device any more');

    // On PostgreSQL, no row of any table names the device any more (on SQLite, test/customer-data-bytes.test.ts scans
    // the files): its rate-limit bucket included, which the device's polls wrote.
    if (server.config.store.startsWith('postgres')) assert.deepEqual(await rowsHolding(server.config.store, 'cd-dev-1'), {}, 'rows that still name the device');

    // A second export finds nothing.
    const again = await exportBundle('cd-export-2', { registrationId: 'cd-dev-1' });
    assert.equal(again.individualEnrollment, null);
    assert.deepEqual([again.registrationRecords, again.hubDevices, again.auditEvents, again.webhookExchanges], [[], [], [], []]);

    // The same request again is the same request; a different body under its ID is a conflict.
    const repeat = await api('PUT', '/dataRequests/cd-erase-1', { type: 'erase', subject: { registrationId: 'cd-dev-1' } });
    assert.equal(repeat.body.status, 'completed');
    assert.equal((await api('PUT', '/dataRequests/cd-erase-1', { type: 'export', subject: { registrationId: 'cd-dev-1' } })).status, 409);
    // The log keeps the erasure itself, under the hash only.
    const log = await api('POST', '/auditEvents/query', { kind: 'dataRequest' });
    const erasure = (log.body as unknown as Json[]).find((event) => event.operation === 'erase');
    assert.deepEqual(erasure?.subject, { hash: done.subject.hash });
  });

  test("an erase leaves nothing about the device in the server's memory: its registration awaiting a poll goes", async () => {
    const key = await enroll('cd-mem-1');
    // Registered, never polled: the server remembers the register's proof and operation for the poll to come.
    const registered = await call('PUT', `/${idScope}/registrations/cd-mem-1/register?api-version=2019-03-31`, {
      headers: { authorization: deviceToken(idScope, 'cd-mem-1', key) },
      body: { registrationId: 'cd-mem-1' },
    });
    assert.equal(registered.status, 202, JSON.stringify(registered.body));
    const registrations = server.app.registrations;
    assert.equal(registrations.rememberedRegistrations(instanceId, 'cd-mem-1'), 1);
    const others = registrations.rememberedRegistrations() - 1;
    const done = await dataRequest('cd-erase-mem', { type: 'erase', subject: { registrationId: 'cd-mem-1' } });
    assert.equal(done.status, 'completed');
    assert.equal(registrations.rememberedRegistrations(instanceId, 'cd-mem-1'), 0, 'the erased device is forgotten');
    assert.equal(registrations.rememberedRegistrations(), others, "other devices' registrations stay");
  });

  test('an erase by device ID finds the enrollment that names it', async () => {
    const deviceKey = await enroll('cd-reg-7', { deviceId: 'cd-device-7' });
    await sdkRegister(idScope, 'cd-reg-7', deviceKey);
    const done = await dataRequest('cd-erase-device', { type: 'erase', subject: { deviceId: 'cd-device-7' } });
    assert.equal(done.status, 'completed');
    assert.equal(await server.app.store.getEnrollment(instanceId, 'cd-reg-7'), undefined);
    assert.equal(await server.app.store.getRegistration(instanceId, 'cd-reg-7'), undefined);
    assert.equal(await deviceOf(await registryFor(server, 'localhost'), 'cd-device-7'), undefined);
  });
});

test('a group erase with 1,000 registered devices completes', async () => {
  const group = await api('PUT', '/enrollmentGroups/cd-big-group', { enrollmentGroupId: 'cd-big-group', attestation: { type: 'symmetricKey' } });
  const groupKey = group.body.attestation.symmetricKey.primaryKey as string;
  const ids = Array.from({ length: 1000 }, (_, i) => `cd-big-${String(i).padStart(4, '0')}`);
  await inBatches(ids, 25, async (id) => {
    const result = await rawRegister(idScope, id, deriveDeviceKey(groupKey, id));
    assert.equal(result.status, 'assigned');
  });
  const outsider = await enroll('cd-outsider');
  await rawRegister(idScope, 'cd-outsider', outsider);
  // The group's devices registered through this node's cached list of symmetric-key groups (keys and all).
  assert.ok(server.app.symmetricKeyGroups.cachedGroupIds(instanceId).includes('cd-big-group'));
  const done = await dataRequest('cd-erase-group', { type: 'erase', subject: { enrollmentGroupId: 'cd-big-group' } });
  assert.equal(done.status, 'completed', JSON.stringify(done.error));
  assert.equal(server.app.symmetricKeyGroups.cachedGroupIds(instanceId).includes('cd-big-group'), false, 'the erased group is not kept in memory');
  const deleted = Object.fromEntries((done.result.deleted as Json[]).map((entry) => [entry.place, entry.count]));
  assert.deepEqual(deleted, {
    'hub:localhost/devices': 1000,
    'hub:127.0.0.2/devices': 0,
    registrations: 1000,
    operations: 1000,
    registrationIntents: 0,
    hubDeviceLinks: 1000,
    issuedCertificates: 0,
    enrollments: 0,
    enrollmentGroups: 1,
    lifecycleEventOutbox: 0,
  });
  const store = server.app.store;
  assert.equal((await store.queryRegistrations(instanceId, { filters: [{ field: 'enrollmentGroupId', op: 'eq', values: ['cd-big-group'] }], limit: 10 })).items.length, 0);
  assert.equal(await store.getEnrollmentGroup(instanceId, 'cd-big-group'), undefined);
  const remaining = await server.app.builtInHubs.queryDevices('localhost', { query: "SELECT * FROM devices WHERE deviceId = 'cd-big-0500'" });
  assert.deepEqual(remaining.items, []);
  assert.equal((await store.getRegistration(instanceId, 'cd-outsider'))?.status, 'assigned');
});

test('a hub that cannot be reached leaves the erase partially completed; a retry completes it', async () => {
  const caPem = readFileSync(join(CA_DIR, 'ca.pem'), 'utf8');
  const certificate = await createServerCertificate({ certPem: caPem, keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') }, ['127.0.0.1'], 1);
  let reachable = false;
  // An external hub: down at first, then a hub that has no such device.
  const hub = createHttpsServer({ key: certificate.keyPem, cert: certificate.certPem }, (_request, response) => {
    if (!reachable) response.writeHead(503, { 'content-type': 'application/json' }).end('{"Message":"ErrorCode:ServiceUnavailable;down for maintenance"}');
    else response.writeHead(404, { 'content-type': 'application/json', 'iothub-errorcode': 'DeviceNotFound' }).end('{"Message":"ErrorCode:DeviceNotFound;no such device"}');
  });
  await new Promise<void>((resolve) => hub.listen(0, '127.0.0.1', resolve));
  const hubName = `127.0.0.1:${(hub.address() as { port: number }).port}`;
  try {
    await linkHub(server, hubName, {
      connectionString: `HostName=${hubName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 2).toString('base64')}`,
      applyAllocationPolicy: false,
    });
    const key = await enroll('cd-partial-1');
    await rawRegister(idScope, 'cd-partial-1', key);
    // Registered again, its poll still to come: the server remembers the register's proof for it.
    const authorization = deviceToken(idScope, 'cd-partial-1', key);
    const registered = await call('PUT', `/${idScope}/registrations/cd-partial-1/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId: 'cd-partial-1' } });
    assert.equal(registered.status, 202, JSON.stringify(registered.body));
    const partial = await dataRequest('cd-erase-partial', { type: 'erase', subject: { registrationId: 'cd-partial-1' } });
    assert.equal(partial.status, 'partiallyCompleted');
    assert.match(partial.error as string, new RegExp(`hub:${hubName.replace(/\./g, '\\.')}/devices: .*503`));
    assert.deepEqual((partial.result.failures as Json[]).map((failure) => failure.place), [`hub:${hubName}/devices`]);
    assert.equal((await api('GET', '/dataRequests/cd-erase-partial/receipt')).status, 404);
    // Everything reachable is gone already.
    assert.equal(await server.app.store.getRegistration(instanceId, 'cd-partial-1'), undefined);
    // The device polls meanwhile: refused (the erase's fence stands), yet its poll took a token of its budget — on
    // PostgreSQL a row named by its registration ID, which the completed erase must take away.
    const polled = await call('GET', `/${idScope}/registrations/cd-partial-1/operations/${(registered.body as Json).operationId as string}?api-version=2019-03-31`, { headers: { authorization } });
    assert.equal(polled.status, 409, JSON.stringify(polled.body));
    if (server.config.store.startsWith('postgres')) assert.deepEqual(Object.keys(await rowsHolding(server.config.store, 'cd-partial-1')).includes('rate_limits'), true);

    reachable = true;
    const retried = await api('POST', '/dataRequests/cd-erase-partial/retry');
    assert.equal(retried.status, 200);
    let current = retried.body;
    for (let i = 0; i < 200 && current.status === 'running'; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      current = (await api('GET', '/dataRequests/cd-erase-partial')).body;
    }
    assert.equal(current.status, 'completed');
    assert.equal((await api('GET', '/dataRequests/cd-erase-partial/receipt')).status, 200);
    if (server.config.store.startsWith('postgres')) assert.deepEqual(await rowsHolding(server.config.store, 'cd-partial-1'), {}, 'rows that still name the device');
    assert.equal(server.app.registrations.rememberedRegistrations(instanceId, 'cd-partial-1'), 0);
  } finally {
    await call('DELETE', `/linkedHubs/${encodeURIComponent(hubName)}?${API}`, { headers: { authorization: server.token() } });
    hub.closeAllConnections();
    await new Promise((resolve) => hub.close(resolve));
  }
});

test('the retention purge removes old events only', async () => {
  const store = server.app.store;
  const old = new Date(Date.now() - 91 * 86_400_000).toISOString().replace('Z', '0000Z');
  const recent = new Date(Date.now() - 89 * 86_400_000).toISOString().replace('Z', '0000Z');
  const base = { kind: 'registration' as const, operation: 'register', actor: 'device', outcome: 'success' as const };
  await store.appendAuditEvent(instanceId, { ...base, eventId: '000000000001aaaaaaaaaaaa', timeUtc: old, subject: { registrationId: 'retention-old' } });
  await store.appendAuditEvent(instanceId, { ...base, eventId: '000000000002aaaaaaaaaaaa', timeUtc: recent, subject: { registrationId: 'retention-recent' } });
  await server.app.audit.purgeExpired();
  const kept = await store.findAuditEventsAbout(instanceId, { registrationIds: ['retention-old', 'retention-recent'], deviceIds: [], groupIds: [] });
  assert.deepEqual(kept.map((event) => event.subject.registrationId), ['retention-recent']);
  // A shorter retention, set through the API, applies at the next purge.
  assert.equal((await api('PATCH', '/instance', { auditRetentionDays: 30 })).body.auditRetentionDays, 30);
  await server.app.audit.purgeExpired();
  assert.deepEqual(await store.findAuditEventsAbout(instanceId, { registrationIds: ['retention-recent'], deviceIds: [], groupIds: [] }), []);
  assert.ok((await store.queryAuditEvents(instanceId, { limit: 5 })).items.length > 0, 'recent events stay');
  await api('PATCH', '/instance', { auditRetentionDays: 90 });
});

test('the lifecycle webhook receives the events in order, signed, and retried after failures', async () => {
  const secret = 'a-webhook-secret-of-some-length';
  const received: Json[] = [];
  let failuresLeft = 2;
  const receiver: Server = createHttpServer((request, response) => {
    let body = '';
    request.on('data', (chunk: Buffer) => (body += chunk.toString()));
    request.on('end', () => {
      if (failuresLeft > 0) {
        failuresLeft -= 1;
        response.writeHead(500).end();
        return;
      }
      const signature = String(request.headers['x-provisiond-signature']);
      const [, timestamp, value] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(signature) ?? [];
      const expected = createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
      received.push({ ...(JSON.parse(body) as Json), signatureValid: value === expected, eventIdHeader: request.headers['x-provisiond-event-id'] });
      response.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  try {
    const url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/events`;
    const patched = await api('PATCH', '/instance', { eventWebhook: { url, secret } });
    assert.equal(patched.body.eventWebhookUrl, url);
    assert.equal(patched.text.includes(secret), false, 'the secret is never shown');
    const key = await enroll('cd-events-1');
    await enroll('cd-events-1', { attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key, secondaryKey: key } }, provisioningStatus: 'enabled' });
    await rawRegister(idScope, 'cd-events-1', key);
    // Delivered before the erase: an erase drops undelivered events that name the device (tested below).
    for (let i = 0; i < 200 && received.length < 3; i += 1) await new Promise((resolve) => setTimeout(resolve, 50));
    await dataRequest('cd-events-erase', { type: 'erase', subject: { registrationId: 'cd-events-1' } });
    for (let i = 0; i < 200 && received.length < 4; i += 1) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      received.map((event) => event.type),
      ['enrollment.created', 'enrollment.updated', 'device.registered', 'dataRequest.completed'],
    );
    assert.ok(received.every((event) => event.signatureValid === true && event.eventIdHeader === event.id));
    assert.deepEqual(received[0]?.data, { registrationId: 'cd-events-1' });
    assert.equal(received[2]?.data.assignedHub, 'localhost');
    const ids = received.map((event) => event.id as string);
    assert.deepEqual([...ids].sort(), ids, 'in order');
  } finally {
    await api('PATCH', '/instance', { eventWebhook: null });
    receiver.closeAllConnections();
    await new Promise((resolve) => receiver.close(resolve));
  }
});

test('an erase drops undelivered lifecycle events that name the device', async () => {
  // A webhook that cannot be reached: the events wait in the outbox.
  await api('PATCH', '/instance', { eventWebhook: { url: 'http://127.0.0.1:9/events', secret: 'a-webhook-secret-of-some-length' } });
  try {
    const key = await enroll('cd-outbox-1');
    await rawRegister(idScope, 'cd-outbox-1', key);
    const waiting = await server.app.store.listOutboxEvents(instanceId, 1000);
    assert.ok(waiting.some((event) => JSON.stringify(event.doc).includes('cd-outbox-1')));
    const done = await dataRequest('cd-erase-outbox', { type: 'erase', subject: { registrationId: 'cd-outbox-1' } });
    assert.equal(done.status, 'completed');
    const left = await server.app.store.listOutboxEvents(instanceId, 1000);
    assert.equal(JSON.stringify(left).includes('cd-outbox-1'), false);
    assert.ok((done.result.deleted as Json[]).find((entry) => entry.place === 'lifecycleEventOutbox')?.count >= 2);
  } finally {
    await api('PATCH', '/instance', { eventWebhook: null });
  }
});

test('the system log filters by time in any ISO-8601 form', async () => {
  const events = (await api('POST', '/auditEvents/query', { kind: 'registration' })).body as unknown as Json[];
  const newest = events[0] as Json;
  const at = new Date(newest.timeUtc as string);
  const minuteBefore = new Date(at.getTime() - 60_000);
  const withOffset = new Date(minuteBefore.getTime() + 3_600_000).toISOString().replace('Z', '+01:00');
  for (const from of [minuteBefore.toISOString(), withOffset, minuteBefore.toISOString().replace(/\.\d+Z$/, 'Z')]) {
    const found = (await api('POST', '/auditEvents/query', { kind: 'registration', from })).body as unknown as Json[];
    assert.ok(found.some((event) => event.eventId === newest.eventId), `from ${from}`);
  }
  const after = (await api('POST', '/auditEvents/query', { kind: 'registration', from: new Date(at.getTime() + 1000).toISOString() })).body as unknown as Json[];
  assert.equal(after.some((event) => event.eventId === newest.eventId), false);
});

test('data requests are listed newest first, and an export of a group is refused', async () => {
  const list = await api('POST', '/dataRequests/query');
  assert.equal(list.status, 200);
  const ids = (list.body as unknown as Json[]).map((request) => request.requestId);
  assert.ok(ids.indexOf('cd-events-erase') < ids.indexOf('cd-export-1'));
  const refused = await api('PUT', '/dataRequests/cd-group-export', { type: 'export', subject: { enrollmentGroupId: 'g' } });
  assert.equal(refused.status, 400);
  const twice = await api('PUT', '/dataRequests/cd-two-subjects', { type: 'export', subject: { registrationId: 'a', deviceId: 'b' } });
  assert.equal(twice.status, 400);
  assert.ok(twinOf !== undefined);
});

test('an export reads completed only once its log entry is written', async () => {
  await enroll('cd-export-logged');
  // A slow log write (a loaded database): whoever sees the request completed must find its log entry already there.
  const record = AuditLog.prototype.record;
  AuditLog.prototype.record = async function (this: AuditLog, ...args: Parameters<AuditLog['record']>): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, 500));
    return record.apply(this, args);
  };
  try {
    const done = await dataRequest('cd-export-logged', { type: 'export', subject: { registrationId: 'cd-export-logged' } });
    assert.equal(done.status, 'completed');
    const events = await server.app.store.findAuditEventsAbout(instanceId, { registrationIds: ['cd-export-logged'], deviceIds: [], groupIds: [] });
    assert.deepEqual(
      events.filter((event) => event.kind === 'dataRequest').map((event) => [event.operation, event.details?.requestId]),
      [['export', 'cd-export-logged']],
    );
  } finally {
    AuditLog.prototype.record = record;
  }
});
