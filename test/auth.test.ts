import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { computeSignature, createSasToken } from '../src/domain/sas.js';
import { ALL_RIGHTS, type Right } from '../src/store/store.js';
import { call, startServer, type TestServer } from './harness.js';
import { apiPath, assertDpsError, discoverRoutes, snapshotStore, type Response, type Route } from './api-assertions.js';

/**
 * Service API and control plane authentication (dps-wire.md §2.1): every authenticated route, found in the app's own
 * OpenAPI document so a new route is covered without touching this file, refuses every kind of bad credential with
 * the DPS 401 envelope and changes nothing; SAS tokens parse the way the SDKs write them; instances never see each
 * other's data.
 *
 * The server answers to three names: `localhost` (the operator instance), and `other.localhost` / 127.0.0.2 (a second
 * instance). 127.0.0.2 is a real address on the loopback interface, so a request can reach the second instance with
 * its own Host header; `other.localhost` is only ever named in tokens.
 */
const OTHER_HOST = '127.0.0.2';
const OTHER_NAME = 'other.localhost';
const OWNER = 'provisioningserviceowner';

/**
 * The rights each operation needs, written from dps-wire.md §2.1 and docs/service-api.md / docs/customer-data-api.md
 * rather than read from the app, so a route that demands the wrong right fails here. `any`: every valid policy;
 * `request`: the rights depend on the request (export vs erase), tested in test/customer-data.test.ts.
 */
const EXPECTED_RIGHTS: Record<string, readonly Right[] | 'any' | 'request'> = {
  IndividualEnrollment_Get: ['EnrollmentRead'],
  IndividualEnrollment_CreateOrUpdate: ['EnrollmentWrite'],
  IndividualEnrollment_Delete: ['EnrollmentWrite'],
  IndividualEnrollment_GetAttestationMechanism: ['EnrollmentRead'],
  IndividualEnrollment_Query: ['EnrollmentRead'],
  IndividualEnrollment_RunBulkOperation: ['EnrollmentWrite'],
  EnrollmentGroup_Get: ['EnrollmentRead'],
  EnrollmentGroup_CreateOrUpdate: ['EnrollmentWrite'],
  EnrollmentGroup_Delete: ['EnrollmentWrite'],
  EnrollmentGroup_GetAttestationMechanism: ['EnrollmentRead'],
  EnrollmentGroup_Query: ['EnrollmentRead'],
  EnrollmentGroup_RunBulkOperation: ['EnrollmentWrite'],
  DeviceRegistrationState_Get: ['RegistrationStatusRead'],
  DeviceRegistrationState_Delete: ['RegistrationStatusWrite'],
  DeviceRegistrationState_Query: ['RegistrationStatusRead'],
  Instance_Get: ['ServiceConfig'],
  Instance_Update: ['ServiceConfig'],
  AccessPolicy_List: ['ServiceConfig'],
  AccessPolicy_CreateOrUpdate: ['ServiceConfig'],
  AccessPolicy_ListKeys: ['ServiceConfig'],
  AccessPolicy_RegenerateKey: ['ServiceConfig'],
  AccessPolicy_Delete: ['ServiceConfig'],
  LinkedHub_List: ['ServiceConfig'],
  LinkedHub_Get: ['ServiceConfig'],
  LinkedHub_CreateOrUpdate: ['ServiceConfig'],
  LinkedHub_Delete: ['ServiceConfig'],
  LinkedHub_ListKeys: ['ServiceConfig'],
  Instances_List: ['ServiceConfig'],
  Instances_Create: ['ServiceConfig'],
  Instances_Delete: ['ServiceConfig'],
  Certificate_List: ['ServiceConfig'],
  Certificate_Get: ['ServiceConfig'],
  Certificate_CreateOrUpdate: ['ServiceConfig'],
  Certificate_Delete: ['ServiceConfig'],
  Certificate_GenerateVerificationCode: ['ServiceConfig'],
  Certificate_Verify: ['ServiceConfig'],
  CredentialPolicy_List: ['ServiceConfig'],
  CredentialPolicy_Get: ['ServiceConfig'],
  CredentialPolicy_CreateOrUpdate: ['ServiceConfig'],
  CredentialPolicy_Delete: ['ServiceConfig'],
  IssuingCa_Get: ['ServiceConfig'],
  IssuingCa_Replace: ['ServiceConfig'],
  Caller_Get: 'any',
  DataRequest_Create: 'request',
  DataRequest_Get: 'request',
  DataRequest_GetBundle: 'request',
  DataRequest_GetReceipt: 'request',
  DataRequest_Retry: 'request',
  DataRequest_Query: ['EnrollmentRead', 'RegistrationStatusRead'],
  DataRequest_GetSigningKey: 'any',
  AuditEvent_Query: ['EnrollmentRead', 'RegistrationStatusRead'],
};

/** The rights the table says a route needs (fails for a route the table does not know). */
function expectedRights(route: Route): readonly Right[] | 'any' | 'request' {
  const expected = EXPECTED_RIGHTS[route.operationId];
  assert.ok(expected !== undefined, `${route.operationId} is missing from EXPECTED_RIGHTS`);
  return expected;
}
const exactPolicyName = (rights: readonly Right[]): string => `only-${rights.join('-')}`;

let server: TestServer;
let routes: Route[] = [];
let ownerSecondaryKey = '';
let otherOwnerKey = '';
/** Policy name → key, for policies created by the test. */
const policyKeys = new Map<string, string>();

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function token(options: { resource?: string; key?: string; keyName?: string; expirySeconds?: number; encode?: boolean } = {}): string {
  return createSasToken({
    resource: options.resource ?? 'localhost',
    keyBase64: options.key ?? server.ownerKey,
    keyName: options.keyName ?? OWNER,
    expirySeconds: options.expirySeconds ?? nowSeconds() + 3600,
    encodeResource: options.encode ?? false,
  });
}

async function api(method: string, template: string, options: { auth?: string; body?: unknown; host?: string; params?: Record<string, string> } = {}): Promise<Response> {
  return call(method, apiPath(template, options.params), {
    headers: options.auth === undefined ? {} : { authorization: options.auth },
    ...(options.body === undefined ? {} : { body: options.body }),
    ...(options.host === undefined ? {} : { host: options.host }),
  });
}

/** Path parameters that name things the test seeded, so a route that skipped auth would visibly change the store. */
function seededParams(template: string): Record<string, string> {
  if (template.startsWith('/linkedHubs')) return { name: 'seed-hub.example.net' };
  if (template.startsWith('/accessPolicies')) return { name: 'seed-policy' };
  if (template.startsWith('/instances')) return { name: 'other' };
  return { id: 'seed-1' };
}

/** Bodies that the route would accept, so only authentication stands between the request and a change. */
const validBodies: Record<string, unknown> = {
  IndividualEnrollment_CreateOrUpdate: { registrationId: 'seed-1', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' },
  EnrollmentGroup_CreateOrUpdate: { enrollmentGroupId: 'seed-1', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' },
  IndividualEnrollment_Query: { query: 'SELECT *' },
  EnrollmentGroup_Query: { query: 'SELECT *' },
  DeviceRegistrationState_Query: { query: 'SELECT *' },
  IndividualEnrollment_RunBulkOperation: { mode: 'delete', enrollments: [{ registrationId: 'seed-1' }] },
  EnrollmentGroup_RunBulkOperation: { mode: 'delete', enrollmentGroups: [{ enrollmentGroupId: 'seed-1' }] },
  Instance_Update: { allocationPolicy: 'static' },
  AccessPolicy_CreateOrUpdate: { rights: 'ServiceConfig' },
  AccessPolicy_RegenerateKey: { keyType: 'primary' },
  LinkedHub_CreateOrUpdate: { builtIn: true, allocationWeight: 7 },
  Instances_Create: { serviceHostNames: ['third.localhost'] },
  DataRequest_Create: { type: 'export', subject: { registrationId: 'seed-1' } },
  DataRequest_Query: { query: 'SELECT *' },
  AuditEvent_Query: { subject: 'seed-1' },
};

async function hit(route: Route, auth: string | undefined, host?: string): Promise<Response> {
  const body = route.hasBody ? (validBodies[route.operationId] ?? {}) : undefined;
  return api(route.method, route.template, {
    params: seededParams(route.template),
    ...(auth === undefined ? {} : { auth }),
    ...(body === undefined ? {} : { body }),
    ...(host === undefined ? {} : { host }),
  });
}

function ok(response: Response, what: string): Response {
  assert.ok(response.status >= 200 && response.status < 300, `${what}: ${response.status} ${response.text}`);
  return response;
}

before(async () => {
  server = await startServer({ listenHost: '0.0.0.0', hostNames: ['localhost', '127.0.0.1', OTHER_HOST] });
  const owner = token();
  // The server certificate must cover 127.0.0.2, so it is a configured host name; it then belongs to the operator
  // instance, which gives it up here so the second instance can take it.
  ok(await api('PATCH', '/instance', { auth: owner, body: { serviceHostNames: ['localhost', '127.0.0.1'] } }), 'PATCH /instance');
  const created = ok(
    await api('PUT', '/instances/{name}', { auth: owner, params: { name: 'other' }, body: { serviceHostNames: [OTHER_NAME, OTHER_HOST] } }),
    'PUT /instances/other',
  );
  otherOwnerKey = (created.body as { ownerPolicy: { primaryKey: string } }).ownerPolicy.primaryKey;
  const keys = ok(await api('POST', '/accessPolicies/{name}/listKeys', { auth: owner, params: { name: OWNER } }), 'listKeys');
  ownerSecondaryKey = (keys.body as { secondaryKey: string }).secondaryKey;

  // For each right, a policy with every right but that one; and the two narrow policies DPS docs use as examples.
  const limited: Record<string, Right[]> = {
    'registration-reader': ['RegistrationStatusRead'],
    'enrollment-reader': ['EnrollmentRead'],
    'seed-policy': ['EnrollmentRead'],
  };
  for (const right of ALL_RIGHTS) limited[`lacks-${right}`] = ALL_RIGHTS.filter((other) => other !== right);
  // For each set of rights in the table, a policy with exactly those.
  for (const rights of Object.values(EXPECTED_RIGHTS)) if (Array.isArray(rights)) limited[exactPolicyName(rights)] = [...rights];
  for (const [name, rights] of Object.entries(limited)) {
    const policy = ok(await api('PUT', '/accessPolicies/{name}', { auth: owner, params: { name }, body: { rights: rights.join(', ') } }), `PUT policy ${name}`);
    policyKeys.set(name, (policy.body as { primaryKey: string }).primaryKey);
  }

  ok(await api('PUT', '/linkedHubs/{name}', { auth: owner, params: { name: 'seed-hub.example.net' }, body: { builtIn: true } }), 'PUT hub');
  ok(await api('PUT', '/enrollments/{id}', { auth: owner, params: { id: 'seed-1' }, body: { registrationId: 'seed-1', attestation: { type: 'symmetricKey' } } }), 'PUT enrollment');
  ok(await api('PUT', '/enrollmentGroups/{id}', { auth: owner, params: { id: 'seed-1' }, body: { enrollmentGroupId: 'seed-1', attestation: { type: 'symmetricKey' } } }), 'PUT group');
  const operator = (await server.app.store.listInstances()).find((instance) => instance.name === 'default');
  assert.ok(operator !== undefined);
  // No API writes registration records (devices do); seed one so DELETE /registrations has something to destroy.
  await server.app.store.putRegistration(operator.id, {
    registrationId: 'seed-1',
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    assignedHub: 'seed-hub.example.net',
    deviceId: 'seed-1',
    status: 'assigned',
    substatus: 'initialAssignment',
    etag: '"seed"',
    enrollmentGroupId: 'seed-1',
  });

  // A data request to read, bundle and retry.
  ok(await api('PUT', '/dataRequests/{id}', { auth: owner, params: { id: 'seed-1' }, body: { type: 'export', subject: { registrationId: 'seed-1' } } }), 'PUT data request');

  routes = await discoverRoutes();
});

after(async () => {
  await server.close();
});

test('the route list comes from the app and holds every DPS service operation and the control plane', () => {
  const operationIds = routes.map((route) => route.operationId);
  for (const expected of [
    'IndividualEnrollment_Get', 'IndividualEnrollment_CreateOrUpdate', 'IndividualEnrollment_Delete',
    'IndividualEnrollment_GetAttestationMechanism', 'IndividualEnrollment_Query', 'IndividualEnrollment_RunBulkOperation',
    'EnrollmentGroup_Get', 'EnrollmentGroup_CreateOrUpdate', 'EnrollmentGroup_Delete', 'EnrollmentGroup_GetAttestationMechanism',
    'EnrollmentGroup_Query', 'EnrollmentGroup_RunBulkOperation', 'DeviceRegistrationState_Get', 'DeviceRegistrationState_Delete',
    'DeviceRegistrationState_Query', 'Instance_Get', 'Instance_Update', 'AccessPolicy_List', 'AccessPolicy_CreateOrUpdate',
    'AccessPolicy_ListKeys', 'AccessPolicy_RegenerateKey', 'AccessPolicy_Delete', 'LinkedHub_List', 'LinkedHub_Get',
    'LinkedHub_CreateOrUpdate', 'LinkedHub_Delete', 'Instances_List', 'Instances_Create', 'Instances_Delete',
    'Caller_Get', 'DataRequest_Create', 'DataRequest_Get', 'DataRequest_GetBundle', 'DataRequest_GetReceipt', 'DataRequest_Retry',
    'DataRequest_Query', 'DataRequest_GetSigningKey', 'AuditEvent_Query',
  ]) {
    assert.ok(operationIds.includes(expected), `${expected} is an authenticated route`);
  }
  assert.equal(new Set(operationIds).size, operationIds.length);
});

/** Every route with `credential(route)`: the DPS 401 envelope, and the store exactly as it was. */
async function refusesEverywhere(
  credential: (route: Route) => string | undefined,
  options: { host?: string; message?: RegExp; only?: (route: Route) => boolean } = {},
): Promise<void> {
  assert.ok(routes.length > 0);
  const before = await snapshotStore(server.app.store);
  for (const route of routes.filter(options.only ?? (() => true))) {
    const response = await hit(route, credential(route), options.host);
    assertDpsError(response, 401, { errorCode: 401002, errorName: 'Unauthorized', ...(options.message === undefined ? {} : { message: options.message }) }, `${route.method} ${route.template}`);
  }
  assert.deepEqual(await snapshotStore(server.app.store), before, 'the store is unchanged');
}

test('no Authorization header: 401 on every route', async () => {
  await refusesEverywhere(() => undefined, { message: /^Unauthorized$/ });
  // Fastify answers HEAD for every GET route; those go through the same hooks (no body, but the status and header).
  for (const route of routes.filter((candidate) => candidate.method === 'GET')) {
    const response = await call('HEAD', apiPath(route.template, seededParams(route.template)));
    assert.equal(response.status, 401, `HEAD ${route.template}`);
    assert.equal(response.headers.get('x-ms-error-code'), 'Unauthorized', `HEAD ${route.template}`);
  }
});

test('an expired token: 401 on every route', async () => {
  await refusesEverywhere(() => token({ expirySeconds: nowSeconds() - 60 }), { message: /^Unauthorized$/ });
});

test('a token signed with a wrong key: 401 on every route', async () => {
  const wrongKey = randomBytes(32).toString('base64');
  await refusesEverywhere(() => token({ key: wrongKey }), { message: /^Unauthorized$/ });
});

test('a token naming an unknown policy: 401 on every route', async () => {
  await refusesEverywhere(() => token({ keyName: 'nosuchpolicy' }), { message: /^Unauthorized$/ });
});

test('a token without skn, a malformed token, a bearer token, a token for an unknown host: 401 on every route', async () => {
  const se = nowSeconds() + 3600;
  const sig = encodeURIComponent(computeSignature(server.ownerKey, 'localhost', se).toString('base64'));
  const malformed = [
    `SharedAccessSignature sr=localhost&sig=${sig}&se=${se}`,
    'SharedAccessSignature garbage',
    `SharedAccessSignature sr=localhost&sig=${sig}&se=${se}&skn=${OWNER}&sr=localhost`,
    `SharedAccessSignature sr=localhost&sig=not base64!&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature sr=localhost&sig=${sig}&se=soon&skn=${OWNER}`,
    `Bearer ${randomBytes(24).toString('base64')}`,
    token({ resource: 'unknown.example.net' }),
  ];
  for (const header of malformed) await refusesEverywhere(() => header, { message: /^Unauthorized$/ });
});

test('the table of expected rights names exactly the routes the app has', () => {
  const known = new Set(Object.keys(EXPECTED_RIGHTS));
  const routeIds = new Set(routes.map((route) => route.operationId));
  assert.deepEqual([...routeIds].filter((id) => !known.has(id)), [], 'routes missing from EXPECTED_RIGHTS');
  assert.deepEqual([...known].filter((id) => !routeIds.has(id)), [], 'EXPECTED_RIGHTS names routes the app does not have');
});

test('a policy without one of the rights the table names: 401 naming that right, on every route', async () => {
  const before = await snapshotStore(server.app.store);
  let checked = 0;
  for (const route of routes) {
    const rights = expectedRights(route);
    if (!Array.isArray(rights)) continue;
    for (const right of rights) {
      const keyName = `lacks-${right}`;
      const response = await hit(route, token({ keyName, key: policyKeys.get(keyName) ?? '' }));
      assertDpsError(response, 401, { errorCode: 401002, message: /^Unauthorized: this operation needs the \w+ right\.$/ }, `${keyName} on ${route.method} ${route.template}`);
      checked += 1;
    }
  }
  assert.ok(checked >= 40, `checked ${checked}`);
  assert.deepEqual(await snapshotStore(server.app.store), before, 'the store is unchanged');
});

test('the narrow policies of the DPS docs: 401 wherever the table asks for more than they have', async () => {
  // A registration reader may not touch enrollments or configuration; an enrollment reader may not write anything or
  // read registrations. (Routes whose rights depend on the request are covered in test/customer-data.test.ts.)
  const needsMoreThan = (route: Route, right: Right): boolean => {
    const rights = expectedRights(route);
    return Array.isArray(rights) && rights.some((needed) => needed !== right);
  };
  const before = await snapshotStore(server.app.store);
  for (const [keyName, right] of [['registration-reader', 'RegistrationStatusRead'], ['enrollment-reader', 'EnrollmentRead']] as const) {
    for (const route of routes.filter((candidate) => needsMoreThan(candidate, right))) {
      assertDpsError(await hit(route, token({ keyName, key: policyKeys.get(keyName) ?? '' })), 401, { errorCode: 401002 }, `${keyName} on ${route.method} ${route.template}`);
    }
  }
  assert.deepEqual(await snapshotStore(server.app.store), before);
});

test("another instance's credentials: 401 on every route of this instance", async () => {
  // A valid token of the other instance, sent to this instance's host.
  await refusesEverywhere(() => token({ resource: OTHER_NAME, key: otherOwnerKey }), { message: /^Unauthorized$/ });
  await refusesEverywhere(() => token({ resource: OTHER_HOST, key: otherOwnerKey }), { message: /^Unauthorized$/ });
  // A token for this instance, signed with the other instance's key of the same policy name.
  await refusesEverywhere(() => token({ key: otherOwnerKey }), { message: /^Unauthorized$/ });
  // A valid token of this instance, sent to the other instance's host.
  await refusesEverywhere(() => token(), { host: OTHER_HOST, message: /^Unauthorized$/ });
});

test('only the operator instance manages instances', async () => {
  const otherOwner = token({ resource: OTHER_HOST, key: otherOwnerKey });
  const before = await snapshotStore(server.app.store);
  const operatorRoutes = routes.filter((route) => route.template.startsWith('/instances') || route.operationId === 'LinkedHub_ListKeys');
  assert.equal(operatorRoutes.length, 4);
  for (const route of operatorRoutes) {
    const params = { name: route.method === 'PUT' ? 'third' : 'default' };
    const body = route.hasBody ? validBodies[route.operationId] : undefined;
    const response = await api(route.method, route.template, { auth: otherOwner, host: OTHER_HOST, params, ...(body === undefined ? {} : { body }) });
    assertDpsError(response, 401, { errorCode: 401002, message: /only the operator instance/ }, `${route.method} ${route.template}`);
  }
  assert.deepEqual(await snapshotStore(server.app.store), before);
});

test('SAS tokens: fields in any order, sr raw or URL-encoded, either key, host names case-insensitive, paths scope by segment', async () => {
  const se = nowSeconds() + 3600;
  const signed = (sr: string, key = server.ownerKey): string => encodeURIComponent(computeSignature(key, sr, se).toString('base64'));
  const accepted = [
    `SharedAccessSignature sr=localhost&sig=${signed('localhost')}&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature skn=${OWNER}&se=${se}&sig=${signed('localhost')}&sr=localhost`,
    `SharedAccessSignature se=${se}&skn=${OWNER}&sr=localhost&sig=${signed('localhost')}`,
    // The C SDKs percent-encode sr (upper or lower case hex); the HMAC covers sr exactly as sent.
    `SharedAccessSignature sr=localhost%2Fenrollments&sig=${signed('localhost%2Fenrollments')}&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature sr=localhost%2fenrollments&sig=${signed('localhost%2fenrollments')}&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature sr=localhost/enrollments&sig=${signed('localhost/enrollments')}&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature sr=localhost%3A443&sig=${signed('localhost%3A443')}&se=${se}&skn=${OWNER}`,
    token({ resource: 'localhost/enrollments', encode: true }),
    token({ resource: 'LocalHost' }),
    token({ key: ownerSecondaryKey }),
    token({ resource: 'localhost', key: ownerSecondaryKey, encode: true }),
  ];
  for (const header of accepted) {
    const response = await api('POST', '/enrollments/query', { auth: header, body: { query: 'SELECT *' } });
    assert.equal(response.status, 200, `${header} → ${response.text}`);
  }
  // An sr with a path covers that path and what is under it, by whole segments (dps-wire.md §2.1).
  for (const [resource, path, status] of [
    ['localhost/enrollments', '/enrollments/query', 200],
    ['localhost/Enrollments/', '/enrollments/query', 200],
    ['localhost/enrollments/query', '/enrollments/query', 200],
    ['localhost/enrollments', '/enrollmentGroups/query', 401],
    ['localhost/enroll', '/enrollments/query', 401],
    ['localhost/enrollments/seed-1', '/enrollments/query', 401],
  ] as const) {
    for (const encode of [false, true]) {
      const response = await api('POST', path, { auth: token({ resource, encode }), body: { query: 'SELECT *' } });
      if (status === 200) assert.equal(response.status, 200, `${resource} on ${path}: ${response.text}`);
      else assertDpsError(response, 401, { errorCode: 401002, message: /^Unauthorized$/ }, `${resource} on ${path}`);
    }
  }
  const scoped = token({ resource: 'localhost/enrollments' });
  assertDpsError(await api('GET', '/instance', { auth: scoped }), 401, { errorCode: 401002 }, 'an enrollments token on /instance');
  assert.equal((await api('POST', '/enrollments/{id}/attestationmechanism', { auth: scoped, params: { id: 'seed-1' } })).status, 200);
  // A token signed over the encoded sr does not verify when sent raw, and the other way round.
  const crossed = [
    `SharedAccessSignature sr=localhost/enrollments&sig=${signed('localhost%2Fenrollments')}&se=${se}&skn=${OWNER}`,
    `SharedAccessSignature sr=localhost%2Fenrollments&sig=${signed('localhost/enrollments')}&se=${se}&skn=${OWNER}`,
  ];
  for (const header of crossed) {
    assertDpsError(await api('POST', '/enrollments/query', { auth: header, body: { query: 'SELECT *' } }), 401, { errorCode: 401002 }, header);
  }
});

test('instances never see each other’s data', async () => {
  const mine = token();
  const theirs = token({ resource: OTHER_HOST, key: otherOwnerKey });
  const otherCall = (method: string, template: string, params: Record<string, string> = {}, body?: unknown) =>
    api(method, template, { auth: theirs, host: OTHER_HOST, params, ...(body === undefined ? {} : { body }) });
  const myCall = (method: string, template: string, params: Record<string, string> = {}, body?: unknown) =>
    api(method, template, { auth: mine, params, ...(body === undefined ? {} : { body }) });

  // The other instance starts empty, even though this one has an enrollment, a group and a record called seed-1.
  for (const [template, query] of [['/enrollments/query', {}], ['/enrollmentGroups/query', {}]] as const) {
    const page = await otherCall('POST', template, query, { query: 'SELECT *' });
    assert.equal(page.status, 200, page.text);
    assert.deepEqual(page.body, []);
  }
  assertDpsError(await otherCall('GET', '/enrollments/{id}', { id: 'seed-1' }), 404, { errorCode: 404201 });
  assertDpsError(await otherCall('GET', '/enrollmentGroups/{id}', { id: 'seed-1' }), 404, { errorCode: 404203 });
  assertDpsError(await otherCall('GET', '/registrations/{id}', { id: 'seed-1' }), 404, { errorCode: 404202 });
  assertDpsError(await otherCall('POST', '/enrollments/{id}/attestationmechanism', { id: 'seed-1' }), 404, { errorCode: 404201 });
  assertDpsError(await otherCall('DELETE', '/enrollments/{id}', { id: 'seed-1' }), 404, { errorCode: 404201 });
  assertDpsError(await otherCall('DELETE', '/registrations/{id}', { id: 'seed-1' }), 404, { errorCode: 404202 });
  assertDpsError(await otherCall('GET', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }), 404, { errorCode: 404206 });
  assertDpsError(await otherCall('POST', '/accessPolicies/{name}/listKeys', { name: 'seed-policy' }), 404, { errorCode: 404205 });
  const otherPolicies = await otherCall('GET', '/accessPolicies');
  assert.deepEqual(otherPolicies.body, [{ keyName: OWNER, rights: ALL_RIGHTS.join(', ') }]);
  assert.deepEqual((await otherCall('GET', '/linkedHubs')).body, []);
  const otherInstance = await otherCall('GET', '/instance');
  assert.equal((otherInstance.body as { name: string }).name, 'other');

  // The same ID in both instances: two independent entries.
  const theirEnrollment = await otherCall('PUT', '/enrollments/{id}', { id: 'shared-id' }, { registrationId: 'shared-id', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' });
  assert.equal(theirEnrollment.status, 200, theirEnrollment.text);
  assertDpsError(await myCall('GET', '/enrollments/{id}', { id: 'shared-id' }), 404, { errorCode: 404201 });
  const myPage = await myCall('POST', '/enrollments/query', {}, { query: "SELECT * WHERE registrationId = 'shared-id'" });
  assert.deepEqual(myPage.body, []);
  const mineCreated = await myCall('PUT', '/enrollments/{id}', { id: 'shared-id' }, { registrationId: 'shared-id', attestation: { type: 'symmetricKey' } });
  assert.equal(mineCreated.status, 200, mineCreated.text);
  const theirKeys = (await otherCall('POST', '/enrollments/{id}/attestationmechanism', { id: 'shared-id' })).body as { symmetricKey: { primaryKey: string } };
  const myKeys = (await myCall('POST', '/enrollments/{id}/attestationmechanism', { id: 'shared-id' })).body as { symmetricKey: { primaryKey: string } };
  assert.notEqual(theirKeys.symmetricKey.primaryKey, myKeys.symmetricKey.primaryKey);
  assert.equal(((await otherCall('GET', '/enrollments/{id}', { id: 'shared-id' })).body as { provisioningStatus: string }).provisioningStatus, 'disabled');
  assert.equal(((await myCall('GET', '/enrollments/{id}', { id: 'shared-id' })).body as { provisioningStatus: string }).provisioningStatus, 'enabled');
  const theirPage = await otherCall('POST', '/enrollments/query', {}, { query: 'SELECT *' });
  assert.deepEqual((theirPage.body as { registrationId: string }[]).map((item) => item.registrationId), ['shared-id']);

  // Deleting in one instance leaves the other's entry alone.
  assert.equal((await myCall('DELETE', '/enrollments/{id}', { id: 'shared-id' })).status, 204);
  assert.equal((await otherCall('GET', '/enrollments/{id}', { id: 'shared-id' })).status, 200);
  assert.equal((await otherCall('DELETE', '/enrollments/{id}', { id: 'shared-id' })).status, 204);
});

test("a policy's change counts from the next call: a regenerated key, other rights, a deleted policy", async () => {
  // The server keeps the policies it has read (the embedded store): each change below must reach the very next call.
  const owner = token();
  const name = 'rotating';
  const created = ok(await api('PUT', '/accessPolicies/{name}', { auth: owner, params: { name }, body: { rights: 'EnrollmentRead' } }), 'PUT rotating');
  const first = (created.body as { primaryKey: string }).primaryKey;
  const read = (key: string) => api('GET', '/enrollments/{id}', { auth: token({ keyName: name, key }), params: { id: 'seed-1' } });
  ok(await read(first), 'read with the first primary key');

  const regenerated = ok(await api('POST', '/accessPolicies/{name}/regenerateKey', { auth: owner, params: { name }, body: { keyType: 'primary' } }), 'regenerateKey');
  const second = (regenerated.body as { primaryKey: string }).primaryKey;
  assert.notEqual(second, first);
  assertDpsError(await read(first), 401, { errorCode: 401002 });
  ok(await read(second), 'read with the regenerated primary key');

  ok(await api('PUT', '/accessPolicies/{name}', { auth: owner, params: { name }, body: { rights: 'RegistrationStatusRead' } }), 'PUT rotating, other rights');
  assertDpsError(await read(second), 401, { errorCode: 401002, message: /needs the EnrollmentRead right/ });

  assert.equal((await api('DELETE', '/accessPolicies/{name}', { auth: owner, params: { name } })).status, 204);
  assertDpsError(await api('GET', '/registrations/{id}', { auth: token({ keyName: name, key: second }), params: { id: 'seed-1' } }), 401, { errorCode: 401002 });
});

test('the routes are reachable with the right credentials (so the 401s above are not an accident of the route list)', async () => {
  for (const route of routes) {
    const response = await hit(route, token());
    const where = `${route.method} ${route.template} → ${response.status} ${response.text}`;
    assert.notEqual(response.status, 401, where);
    assert.notEqual((response.body as { errorCode?: number } | undefined)?.errorCode, 404001, where);
    assert.ok(response.status < 500, where);
  }
});

test('a policy with exactly the rights the table names is let through on every route (no other right is demanded)', async () => {
  // Runs last (it deletes what it may): deleting routes after the others, so the entries those need are still there.
  const ordered = [...routes].sort((a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'));
  for (const route of ordered) {
    const rights = expectedRights(route);
    if (rights === 'request') continue;
    // `any`: a policy with one unrelated right will do.
    const keyName = rights === 'any' ? 'registration-reader' : exactPolicyName(rights);
    const response = await hit(route, token({ keyName, key: policyKeys.get(keyName) ?? '' }));
    const where = `${keyName} on ${route.method} ${route.template} → ${response.status} ${response.text.slice(0, 200)}`;
    assert.notEqual(response.status, 401, where);
    assert.ok(response.status < 500, where);
  }
});
