import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { after, before, test } from 'node:test';
import { certificateInfo } from '../src/domain/x509.js';
import { createRootCertificate, createVerificationCertificate, type CertificateAndKey } from '../src/tls/x509-issuer.js';
import { call, startServer, type TestServer } from './harness.js';
import { apiPath, assertDpsError, discoverRoutes, snapshotStore, type Response, type Route } from './api-assertions.js';

/**
 * Bad input at the edge (STYLE.md §3): every write route of the service API and the control plane, found in the app's
 * OpenAPI document, answers each malformed request with a 4xx DPS error body naming the problem, and changes nothing
 * in the store. No input produces a 5xx.
 */
const MAX_BODY_BYTES = 65536;
const BULK_MAX_ITEMS = 10;
let server: TestServer;
let writeRoutes: Route[] = [];
let owner = '';

/** Path parameters naming seeded entries (or a new one to create), so a request that got through would change the store. */
function seededParams(route: Route): Record<string, string> {
  if (route.template.startsWith('/linkedHubs')) return { name: 'seed-hub.example.net' };
  if (route.template.startsWith('/accessPolicies')) return { name: 'seed-policy' };
  if (route.template.startsWith('/instances')) return { name: route.method === 'PUT' ? 'third' : 'victim' };
  if (route.template.startsWith('/certificates')) return { name: 'seed-ca' };
  if (route.template.startsWith('/credentialPolicies')) return { name: 'seed-policy' };
  return { id: 'seed-1' };
}

/** A body each route accepts; every malformed case below is a small change to one of these. */
const validBodies: Record<string, unknown> = {
  IndividualEnrollment_CreateOrUpdate: { registrationId: 'seed-1', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' },
  EnrollmentGroup_CreateOrUpdate: { enrollmentGroupId: 'seed-1', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' },
  IndividualEnrollment_Query: { query: 'SELECT *' },
  EnrollmentGroup_Query: { query: 'SELECT *' },
  DeviceRegistrationState_Query: { query: 'SELECT *' },
  IndividualEnrollment_RunBulkOperation: { mode: 'create', enrollments: [{ registrationId: 'bulk-1', attestation: { type: 'symmetricKey' } }] },
  EnrollmentGroup_RunBulkOperation: { mode: 'create', enrollmentGroups: [{ enrollmentGroupId: 'bulk-1', attestation: { type: 'symmetricKey' } }] },
  Instance_Update: { allocationPolicy: 'static' },
  AccessPolicy_CreateOrUpdate: { rights: 'ServiceConfig, EnrollmentWrite' },
  AccessPolicy_RegenerateKey: { keyType: 'primary' },
  LinkedHub_CreateOrUpdate: { builtIn: true, allocationWeight: 7 },
  Instances_Create: { serviceHostNames: ['third.localhost'] },
  // The seeded request again: idempotent, so accepted.
  DataRequest_Create: { type: 'erase', subject: { registrationId: 'seed-gone' }, dryRun: true },
  DataRequest_Query: { query: 'SELECT *' },
  AuditEvent_Query: { subject: 'seed-1' },
  CredentialPolicy_CreateOrUpdate: { keyTypes: ['ecP256'], validityInDays: 7 },
};

/** The seeded CA certificate, with a pending verification code that SEED_VERIFICATION (made in `before`) proves. */
const SEED_CODE = 'SEEDVERIFICATIONCODE';
let seedCa: CertificateAndKey;

function bodyOf(route: Route): unknown {
  return route.hasBody ? (validBodies[route.operationId] ?? {}) : undefined;
}

async function send(
  method: string,
  path: string,
  options: { body?: unknown; rawBody?: string; contentType?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  const headers: Record<string, string> = { authorization: owner, ...options.headers };
  if (options.contentType !== undefined) headers['content-type'] = options.contentType;
  return call(method, path, {
    headers,
    ...(options.body === undefined ? {} : { body: options.body }),
    ...(options.rawBody === undefined ? {} : { rawBody: options.rawBody }),
  });
}

/** The request must be refused with `status` (and `errorCode` when given), in the DPS envelope, changing nothing. */
async function refused(
  what: string,
  request: () => Promise<Response>,
  expected: { status: number; errorCode?: number; message?: RegExp },
): Promise<void> {
  const before = await snapshotStore(server.app.store);
  const response = await request();
  assertDpsError(response, expected.status, { ...(expected.errorCode === undefined ? {} : { errorCode: expected.errorCode }), ...(expected.message === undefined ? {} : { message: expected.message }) }, what);
  assert.deepEqual(await snapshotStore(server.app.store), before, `${what}: the store is unchanged`);
}

/** The entries every route's parameters name; idempotent, so the last test can restore them before each route. */
async function seed(): Promise<void> {
  const put = async (method: string, template: string, params: Record<string, string>, body: unknown): Promise<void> => {
    const response = await send(method, apiPath(template, params), { body });
    assert.ok(response.status === 200, `${method} ${template}: ${response.status} ${response.text}`);
  };
  await put('PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true });
  await put('PUT', '/enrollments/{id}', { id: 'seed-1' }, { registrationId: 'seed-1', attestation: { type: 'symmetricKey' } });
  await put('PUT', '/enrollmentGroups/{id}', { id: 'seed-1' }, { enrollmentGroupId: 'seed-1', attestation: { type: 'symmetricKey' } });
  await put('PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 'EnrollmentRead' });
  await put('PUT', '/credentialPolicies/{name}', { name: 'seed-policy' }, { keyTypes: ['ecP256'] });
  // An erase request (a dry run) for the retry route.
  await put('PUT', '/dataRequests/{id}', { id: 'seed-1' }, { type: 'erase', subject: { registrationId: 'seed-gone' }, dryRun: true });
  const instances = await server.app.store.listInstances();
  if (!instances.some((candidate) => candidate.name === 'victim')) {
    await put('PUT', '/instances/{name}', { name: 'victim' }, { serviceHostNames: ['victim.localhost'] });
  }
  const instance = instances.find((candidate) => candidate.name === 'default');
  assert.ok(instance !== undefined);
  // A CA certificate awaiting verification with a known code (the API hands out random ones).
  await server.app.store.putCaCertificate(instance.id, {
    name: 'seed-ca',
    certificate: seedCa.certPem,
    info: certificateInfo(new X509Certificate(seedCa.certPem)),
    isVerified: false,
    verificationCode: SEED_CODE,
    etag: '"seed"',
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
  });
  // No API writes registration records (devices do); seed one so DELETE /registrations has something to destroy.
  await server.app.store.putRegistration(instance.id, {
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
}

before(async () => {
  seedCa = await createRootCertificate({ commonName: 'Seed CA' });
  validBodies.Certificate_CreateOrUpdate = { certificate: seedCa.certPem };
  validBodies.Certificate_Verify = { certificate: (await createVerificationCertificate(seedCa, SEED_CODE)).certPem };
  validBodies.IssuingCa_Replace = { certificate: seedCa.certPem, privateKey: seedCa.keyPem };
  server = await startServer({ maxBodyBytes: MAX_BODY_BYTES, bulkMaxItems: BULK_MAX_ITEMS });
  owner = server.token();
  await seed();
  writeRoutes = (await discoverRoutes()).filter((route) => route.method !== 'GET');
});

after(async () => {
  await server.close();
});

test('the write routes come from the app', () => {
  const ids = writeRoutes.map((route) => route.operationId);
  for (const expected of [
    'IndividualEnrollment_CreateOrUpdate', 'IndividualEnrollment_Delete', 'IndividualEnrollment_GetAttestationMechanism',
    'IndividualEnrollment_Query', 'IndividualEnrollment_RunBulkOperation', 'EnrollmentGroup_CreateOrUpdate',
    'EnrollmentGroup_Delete', 'EnrollmentGroup_GetAttestationMechanism', 'EnrollmentGroup_Query', 'EnrollmentGroup_RunBulkOperation',
    'DeviceRegistrationState_Delete', 'DeviceRegistrationState_Query', 'Instance_Update', 'AccessPolicy_CreateOrUpdate',
    'AccessPolicy_ListKeys', 'AccessPolicy_RegenerateKey', 'AccessPolicy_Delete', 'LinkedHub_CreateOrUpdate', 'LinkedHub_Delete',
    'Instances_Create', 'Instances_Delete', 'DataRequest_Create', 'DataRequest_Retry', 'DataRequest_Query', 'AuditEvent_Query',
  ]) {
    assert.ok(ids.includes(expected), `${expected} is a write route`);
  }
  for (const route of writeRoutes.filter((candidate) => candidate.hasBody)) {
    assert.ok(route.operationId in validBodies, `${route.operationId} has a valid body in this test`);
  }
});

test('every write route: missing or unsupported api-version', async () => {
  for (const route of writeRoutes) {
    const params = seededParams(route);
    const body = bodyOf(route);
    const withBody = body === undefined ? {} : { body };
    await refused(`${route.method} ${route.template} without api-version`, () => send(route.method, apiPath(route.template, params, null), withBody), {
      status: 400,
      errorCode: 400005,
      message: /api-version/,
    });
    await refused(`${route.method} ${route.template} with an empty api-version`, () => send(route.method, apiPath(route.template, params, ''), withBody), {
      status: 400,
      errorCode: 400005,
    });
    const twice = `${apiPath(route.template, params)}&api-version=2019-03-31`;
    await refused(`${route.method} ${route.template} with two api-versions`, () => send(route.method, twice, withBody), {
      status: 400,
      errorCode: 400006,
      message: /api-version must be given once/,
    });
    await refused(`${route.method} ${route.template} with api-version 1999-01-01`, () => send(route.method, apiPath(route.template, params, '1999-01-01'), withBody), {
      status: 400,
      errorCode: 400006,
      message: /'1999-01-01' is not supported; use one of .*2021-10-01/,
    });
  }
});

test('every write route: malformed JSON, an empty JSON body, a body that is too large, a wrong content type', async () => {
  const oversized = JSON.stringify({ registrationId: 'seed-1', attestation: { type: 'symmetricKey' }, padding: 'x'.repeat(MAX_BODY_BYTES) });
  for (const route of writeRoutes) {
    const path = apiPath(route.template, seededParams(route));
    const where = `${route.method} ${route.template}`;
    const json = 'application/json; charset=utf-8';
    for (const rawBody of ['{"registrationId": ', '{', '{"a":1,}', "{'query':'SELECT *'}", 'SELECT *', '\u0000', '{"a":1}{"b":2}', '[1,2']) {
      await refused(`${where} with body ${JSON.stringify(rawBody)}`, () => send(route.method, path, { rawBody, contentType: json }), {
        status: 400,
        errorCode: 400002,
      });
    }
    await refused(`${where} with an empty JSON body`, () => send(route.method, path, { rawBody: '', contentType: json }), {
      status: 400,
      errorCode: 400002,
      message: /empty/,
    });
    // Prototype poisoning is refused outright, never merged into an object.
    await refused(`${where} with __proto__`, () => send(route.method, path, { rawBody: '{"__proto__":{"isAdmin":true},"query":"SELECT *"}', contentType: json }), {
      status: 400,
      errorCode: 400002,
    });
    await refused(`${where} with ${oversized.length} bytes`, () => send(route.method, path, { rawBody: oversized, contentType: json }), {
      status: 413,
      errorCode: 413001,
    });
    const text = JSON.stringify(bodyOf(route) ?? {});
    for (const contentType of ['text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'application/octet-stream', 'multipart/form-data; boundary=x']) {
      await refused(`${where} as ${contentType}`, () => send(route.method, path, { rawBody: text, contentType }), { status: 415, errorCode: 415001 });
    }
  }
});

test('every write route: a body nested thousands of levels deep (which overflows recursive code) is a 400', async () => {
  // Built as text: the test's own JSON.stringify would overflow on such a value.
  const depth = 6000;
  const deepTags = `{"registrationId":"seed-1","enrollmentGroupId":"seed-1","attestation":{"type":"symmetricKey"},"query":"SELECT *","initialTwin":{"tags":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}}`;
  const deepArray = `${'['.repeat(depth * 2)}${']'.repeat(depth * 2)}`;
  assert.ok(deepTags.length < MAX_BODY_BYTES && deepArray.length < MAX_BODY_BYTES);
  for (const route of writeRoutes) {
    const path = apiPath(route.template, seededParams(route));
    for (const [name, rawBody] of [['deep tags', deepTags], ['a deep array', deepArray]] as const) {
      await refused(`${route.method} ${route.template} with ${name}`, () => send(route.method, path, { rawBody, contentType: 'application/json' }), {
        status: 400,
        errorCode: 400004,
        message: /nested more than \d+ levels deep/,
      });
    }
  }
});

test('every route with a body: JSON that is not an object, and an object with none of the fields', async () => {
  for (const route of writeRoutes.filter((candidate) => candidate.hasBody)) {
    const path = apiPath(route.template, seededParams(route));
    for (const rawBody of ['null', '[]', '"SELECT *"', '42', 'true']) {
      await refused(`${route.method} ${route.template} with ${rawBody}`, () => send(route.method, path, { rawBody, contentType: 'application/json' }), {
        status: 400,
      });
    }
  }
});

// ---- enrollments and groups: every malformed field, by PUT and as a bulk item

const longId = 'a'.repeat(129);
const keyOf = (bytes: number): string => randomBytes(bytes).toString('base64');
const privateKeyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
const rsaPrivateKeyPem = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs1' }).toString();

interface FieldCase {
  name: string;
  /** A change to a valid body (`idField` is registrationId or enrollmentGroupId). */
  body: (idField: string, id: string) => Record<string, unknown>;
  status: number;
  errorCode?: number;
  message?: RegExp;
  /** Only for this kind. */
  only?: 'individual' | 'group';
  /** Refused for the whole request before any item is looked at (so a bulk operation is a 400 too). */
  wholeBody?: true;
}

const symmetric = (idField: string, id: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  [idField]: id,
  attestation: { type: 'symmetricKey' },
  ...extra,
});
const withKeys = (idField: string, id: string, primaryKey: unknown, secondaryKey?: unknown): Record<string, unknown> => ({
  [idField]: id,
  attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, ...(secondaryKey === undefined ? {} : { secondaryKey }) } },
});
const withCertificate = (idField: string, id: string, certificate: unknown): Record<string, unknown> => ({
  [idField]: id,
  attestation: {
    type: 'x509',
    x509: idField === 'registrationId' ? { clientCertificates: { primary: { certificate } } } : { signingCertificates: { primary: { certificate } } },
  },
});

const fieldCases: FieldCase[] = [
  { name: 'provisioningStatus: 5', body: (f, id) => symmetric(f, id, { provisioningStatus: 5 }), status: 400, errorCode: 400004, message: /provisioningStatus must be of type string/ },
  { name: "provisioningStatus: 'paused'", body: (f, id) => symmetric(f, id, { provisioningStatus: 'paused' }), status: 400, errorCode: 400004, message: /provisioningStatus must be one of: enabled, disabled/ },
  { name: 'capabilities.iotEdge: "yes"', body: (f, id) => symmetric(f, id, { capabilities: { iotEdge: 'yes' } }), status: 400, errorCode: 400004, message: /capabilities\.iotEdge must be of type boolean/ },
  { name: 'capabilities: true', body: (f, id) => symmetric(f, id, { capabilities: true }), status: 400, errorCode: 400004 },
  { name: "reprovisionPolicy.migrateDeviceData: 'true'", body: (f, id) => symmetric(f, id, { reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: 'true' } }), status: 400, errorCode: 400004 },
  { name: "allocationPolicy: 'random'", body: (f, id) => symmetric(f, id, { allocationPolicy: 'random' }), status: 400, errorCode: 400004, message: /allocationPolicy must be one of/ },
  { name: "iotHubs: 'hub'", body: (f, id) => symmetric(f, id, { iotHubs: 'seed-hub.example.net' }), status: 400, errorCode: 400004, message: /iotHubs must be of type array/ },
  { name: 'iotHubs: [5]', body: (f, id) => symmetric(f, id, { iotHubs: [5] }), status: 400, errorCode: 400004 },
  { name: 'iotHubs naming an unlinked hub', body: (f, id) => symmetric(f, id, { iotHubs: ['nowhere.example.net'] }), status: 400, errorCode: 400016, message: /nowhere\.example\.net/ },
  { name: "allocationPolicy 'custom' without a definition", body: (f, id) => symmetric(f, id, { allocationPolicy: 'custom' }), status: 400, errorCode: 400016 },
  { name: 'a webhook URL that is not a URL', body: (f, id) => symmetric(f, id, { allocationPolicy: 'custom', customAllocationDefinition: { webhookUrl: 'not a url', apiVersion: '2021-10-01' } }), status: 400, errorCode: 400016 },
  { name: 'a file: webhook URL', body: (f, id) => symmetric(f, id, { allocationPolicy: 'custom', customAllocationDefinition: { webhookUrl: 'file:///etc/passwd', apiVersion: '2021-10-01' } }), status: 400, errorCode: 400016 },
  { name: 'customAllocationDefinition without apiVersion', body: (f, id) => symmetric(f, id, { allocationPolicy: 'custom', customAllocationDefinition: { webhookUrl: 'https://example.net/' } }), status: 400, errorCode: 400004, message: /apiVersion is required/ },
  { name: "allocationPolicy 'static' with two hubs", body: (f, id) => symmetric(f, id, { allocationPolicy: 'static', iotHubs: ['a.example.net', 'b.example.net'] }), status: 400, errorCode: 400016 },
  { name: 'initialTwin.tags: []', body: (f, id) => symmetric(f, id, { initialTwin: { tags: [] } }), status: 400, errorCode: 400004 },
  { name: "initialTwin.properties.desired: 'x'", body: (f, id) => symmetric(f, id, { initialTwin: { properties: { desired: 'x' } } }), status: 400, errorCode: 400004 },
  { name: 'iotHubHostName: 7', body: (f, id) => symmetric(f, id, { iotHubHostName: 7 }), status: 400, errorCode: 400004 },
  { name: 'etag: {}', body: (f, id) => symmetric(f, id, { etag: {} }), status: 400, errorCode: 400004 },
  { name: 'no attestation', body: (f, id) => ({ [f]: id }), status: 400, errorCode: 400004, message: /attestation is required/ },
  { name: "attestation: 'symmetricKey'", body: (f, id) => ({ [f]: id, attestation: 'symmetricKey' }), status: 400, errorCode: 400004 },
  { name: "attestation.type: 'password'", body: (f, id) => ({ [f]: id, attestation: { type: 'password' } }), status: 400, errorCode: 400004, message: /attestation\.type must be one of: none, tpm, x509, symmetricKey/ },
  { name: "attestation.type: 'none'", body: (f, id) => ({ [f]: id, attestation: { type: 'none' } }), status: 400, errorCode: 400010 },
  { name: "attestation.type: 'x509' without x509", body: (f, id) => ({ [f]: id, attestation: { type: 'x509' } }), status: 400, errorCode: 400010 },
  { name: "attestation.type: 'tpm' without tpm", body: (f, id) => ({ [f]: id, attestation: { type: 'tpm' } }), status: 400, errorCode: 400010, only: 'individual' },
  { name: 'a TPM enrollment group', body: (f, id) => ({ [f]: id, attestation: { type: 'tpm', tpm: { endorsementKey: keyOf(32) } } }), status: 400, errorCode: 400010, only: 'group' },
  { name: 'a TPM endorsement key that is not base64', body: (f, id) => ({ [f]: id, attestation: { type: 'tpm', tpm: { endorsementKey: 'not base64!' } } }), status: 400, errorCode: 400010, only: 'individual' },
  { name: 'symmetric key that is not base64', body: (f, id) => withKeys(f, id, 'not base64!!'), status: 400, errorCode: 400011, message: /primaryKey must be base64 of 16 to 64 bytes/ },
  { name: 'symmetric key of 8 bytes', body: (f, id) => withKeys(f, id, keyOf(8)), status: 400, errorCode: 400011 },
  { name: 'symmetric key of 65 bytes', body: (f, id) => withKeys(f, id, keyOf(65)), status: 400, errorCode: 400011 },
  { name: 'symmetric key of 15 bytes', body: (f, id) => withKeys(f, id, keyOf(32), keyOf(15)), status: 400, errorCode: 400011, message: /secondaryKey/ },
  { name: 'symmetric key in base64url', body: (f, id) => withKeys(f, id, Buffer.alloc(32, 0xfb).toString('base64url')), status: 400, errorCode: 400011 },
  { name: 'symmetric key without padding', body: (f, id) => withKeys(f, id, keyOf(32).replace(/=+$/, '')), status: 400, errorCode: 400011 },
  { name: 'symmetric key: 5', body: (f, id) => withKeys(f, id, 5), status: 400, errorCode: 400004 },
  { name: 'symmetric key longer than any key', body: (f, id) => withKeys(f, id, keyOf(300)), status: 400 },
  { name: 'a garbage certificate', body: (f, id) => withCertificate(f, id, 'garbage'), status: 400, errorCode: 400012 },
  { name: 'a base64 garbage certificate', body: (f, id) => withCertificate(f, id, randomBytes(300).toString('base64')), status: 400, errorCode: 400012 },
  { name: 'a PEM with garbage inside', body: (f, id) => withCertificate(f, id, `-----BEGIN CERTIFICATE-----\n${randomBytes(300).toString('base64')}\n-----END CERTIFICATE-----\n`), status: 400, errorCode: 400012 },
  { name: 'a PKCS#8 private key as the certificate', body: (f, id) => withCertificate(f, id, privateKeyPem), status: 400, errorCode: 400012, message: /private key/ },
  { name: 'an RSA private key as the certificate', body: (f, id) => withCertificate(f, id, rsaPrivateKeyPem), status: 400, errorCode: 400012, message: /private key/ },
  { name: 'a base64 private key PEM as the certificate', body: (f, id) => withCertificate(f, id, Buffer.from(privateKeyPem).toString('base64')), status: 400, errorCode: 400012, message: /private key/ },
  { name: 'certificate: 5', body: (f, id) => withCertificate(f, id, 5), status: 400, errorCode: 400004 },
  { name: 'certificate info without a certificate', body: (f, id) => ({ [f]: id, attestation: { type: 'x509', x509: { [f === 'registrationId' ? 'clientCertificates' : 'signingCertificates']: { primary: { info: { sha256Thumbprint: 'AB' } } } } } }), status: 400 },
  { name: 'signingCertificates on an individual enrollment', body: (f, id) => ({ [f]: id, attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: 'x' } } } } }), status: 400, errorCode: 400010, only: 'individual' },
  { name: 'clientCertificates on a group', body: (f, id) => ({ [f]: id, attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: 'x' } } } } }), status: 400, errorCode: 400010, only: 'group' },
  { name: 'caReferences without primary', body: (f, id) => ({ [f]: id, attestation: { type: 'x509', x509: { caReferences: { secondary: 'ca' } } } }), status: 400, errorCode: 400010, only: 'group' },
  { name: 'an invalid deviceId', body: (f, id) => symmetric(f, id, { deviceId: 'bad device/id' }), status: 400, errorCode: 400021, only: 'individual' },
  { name: 'a deviceId of 129 characters', body: (f, id) => symmetric(f, id, { deviceId: longId }), status: 400, errorCode: 400021, only: 'individual' },
  { name: 'optionalDeviceInformation: 1', body: (f, id) => symmetric(f, id, { optionalDeviceInformation: 1 }), status: 400, errorCode: 400004, only: 'individual' },
  { name: 'a deeply nested value where a string belongs', body: (f, id) => symmetric(f, id, { provisioningStatus: JSON.parse(`${'['.repeat(1000)}${']'.repeat(1000)}`) as unknown }), status: 400, errorCode: 400004, wholeBody: true },
  { name: 'initial twin tags nested 100 levels deep', body: (f, id) => symmetric(f, id, { initialTwin: { tags: JSON.parse(`${'{"a":'.repeat(100)}1${'}'.repeat(100)}`) as unknown } }), status: 400, errorCode: 400004, message: /nested more than \d+ levels/, wholeBody: true },
];

const kinds = [
  { kind: 'individual', template: '/enrollments/{id}', bulk: '/enrollments', items: 'enrollments', idField: 'registrationId', badId: 400007 },
  { kind: 'group', template: '/enrollmentGroups/{id}', bulk: '/enrollmentGroups', items: 'enrollmentGroups', idField: 'enrollmentGroupId', badId: 400008 },
] as const;

for (const { kind, template, idField, badId } of kinds) {
  test(`PUT ${template}: every malformed field is a 400 naming it`, async () => {
    for (const fieldCase of fieldCases.filter((candidate) => candidate.only === undefined || candidate.only === kind)) {
      for (const id of ['new-1', 'seed-1']) {
        await refused(`PUT ${template} (${id}) with ${fieldCase.name}`, () => send('PUT', apiPath(template, { id }), { body: fieldCase.body(idField, id) }), fieldCase);
      }
    }
  });

  test(`PUT ${template}: IDs too long, with bad characters, or different from the path`, async () => {
    for (const id of [longId, 'bad id', 'bad!id', 'bad/id', '-leading', 'trailing.', 'ümlaut', 'a\u0000b', "o'brien"]) {
      await refused(`PUT ${template} with ID ${JSON.stringify(id)}`, () => send('PUT', apiPath(template, { id }), { body: symmetric(idField, id) }), { status: 400, errorCode: badId });
    }
    await refused(`PUT ${template} with a body ID that differs`, () => send('PUT', apiPath(template, { id: 'new-1' }), { body: symmetric(idField, 'new-2') }), {
      status: 400,
      errorCode: 400009,
      message: /'new-2'.*'new-1'/,
    });
    await refused(`PUT ${template} with the seeded ID in the body only`, () => send('PUT', apiPath(template, { id: 'new-1' }), { body: symmetric(idField, 'seed-1') }), { status: 400, errorCode: 400009 });
    await refused(`PUT ${template} without a body ID`, () => send('PUT', apiPath(template, { id: 'new-1' }), { body: { attestation: { type: 'symmetricKey' } } }), { status: 400, errorCode: 400004, message: new RegExp(`${idField} is required`) });
    await refused(`PUT ${template} with a numeric body ID`, () => send('PUT', apiPath(template, { id: '1' }), { body: { [idField]: 1, attestation: { type: 'symmetricKey' } } }), { status: 400, errorCode: 400004 });
    await refused(`PUT ${template} with a body ID of 600 characters`, () => send('PUT', apiPath(template, { id: 'new-1' }), { body: symmetric(idField, 'a'.repeat(600)) }), { status: 400 });
  });
}

for (const { kind, bulk, items, idField, badId } of kinds) {
  test(`POST ${bulk} (bulk): a malformed operation is a 400; malformed items fail one by one and change nothing`, async () => {
    const path = apiPath(bulk);
    for (const [name, body, errorCode] of [
      ["mode 'upsert'", { mode: 'upsert', [items]: [] }, 400004],
      ['no mode', { [items]: [] }, 400004],
      ['mode: 1', { mode: 1, [items]: [] }, 400004],
      [`${items}: {}`, { mode: 'create', [items]: {} }, 400004],
      [`no ${items}`, { mode: 'create' }, 400004],
      [`${items}: [1]`, { mode: 'create', [items]: [1] }, 400004],
      [`${BULK_MAX_ITEMS + 1} items`, { mode: 'create', [items]: Array.from({ length: BULK_MAX_ITEMS + 1 }, (_, index) => symmetric(idField, `bulk-${index}`)) }, 400015],
    ] as const) {
      await refused(`POST ${bulk} with ${name}`, () => send('POST', path, { body }), { status: 400, errorCode });
    }
    // DPS answers a bulk operation 200 even when items fail, with one error per item (dps-wire.md §2.5).
    const cases = fieldCases.filter((candidate) => candidate.only === undefined || candidate.only === kind);
    for (const mode of ['create', 'update', 'updateIfMatchETag'] as const) {
      for (const fieldCase of cases) {
        const id = mode === 'create' ? 'bulk-new' : 'seed-1';
        if (fieldCase.wholeBody === true) {
          await refused(`POST ${bulk} ${mode} with ${fieldCase.name}`, () => send('POST', path, { body: { mode, [items]: [fieldCase.body(idField, id)] } }), fieldCase);
          continue;
        }
        const before = await snapshotStore(server.app.store);
        const response = await send('POST', path, { body: { mode, [items]: [fieldCase.body(idField, id)] } });
        const where = `POST ${bulk} ${mode} with ${fieldCase.name} → ${response.status} ${response.text.slice(0, 300)}`;
        assert.equal(response.status, 200, where);
        const result = response.body as { isSuccessful: boolean; errors: { errorCode: number; errorStatus: string }[] };
        assert.equal(result.isSuccessful, false, where);
        assert.equal(result.errors.length, 1, where);
        const [error] = result.errors;
        assert.deepEqual(Object.keys(error ?? {}).sort(), [idField, 'errorCode', 'errorStatus'].sort(), where);
        const code = error?.errorCode ?? 0;
        if (mode === 'updateIfMatchETag' && code === 412002) {
          // The item carries no etag, so it cannot match; that check may come before the field's own.
        } else {
          assert.equal(Math.floor(code / 1000), fieldCase.status, where);
          if (fieldCase.errorCode !== undefined) assert.equal(code, fieldCase.errorCode, where);
          if (fieldCase.message !== undefined) assert.match(error?.errorStatus ?? '', fieldCase.message, where);
        }
        assert.deepEqual(await snapshotStore(server.app.store), before, `${where}: the store is unchanged`);
      }
    }
    for (const id of [longId, 'bad id', '-x']) {
      for (const mode of ['create', 'delete'] as const) {
        const before = await snapshotStore(server.app.store);
        const response = await send('POST', path, { body: { mode, [items]: [symmetric(idField, id)] } });
        const where = `POST ${bulk} ${mode} with ID ${JSON.stringify(id)} → ${response.text.slice(0, 300)}`;
        assert.equal(response.status, 200, where);
        assert.deepEqual(response.body, { isSuccessful: false, errors: [{ [idField]: id, errorCode: badId, errorStatus: (response.body as { errors: { errorStatus: string }[] }).errors[0]?.errorStatus }] }, where);
        assert.deepEqual(await snapshotStore(server.app.store), before, where);
      }
    }
  });
}

// ---- queries

test('query routes: a bad query, page size or continuation token is a 400', async () => {
  for (const template of ['/enrollments/query', '/enrollmentGroups/query', '/registrations/{id}/query']) {
    const path = apiPath(template, { id: 'seed-1' });
    for (const [name, body, errorCode] of [
      ['query: 5', { query: 5 }, 400004],
      ['query: null', { query: null }, 400004],
      ['DROP TABLE', { query: 'DROP TABLE enrollments' }, 400013],
      ['an unknown field', { query: "SELECT * WHERE secret = 'x'" }, 400013],
      ['an unclosed string', { query: "SELECT * WHERE registrationId = 'x" }, 400013],
      ['SQL injection', { query: "SELECT * WHERE registrationId = 'x' OR 1=1 --'" }, 400013],
      ['a query of 5000 characters', { query: `SELECT * ${'x'.repeat(5000)}` }, undefined],
    ] as const) {
      await refused(`POST ${template} with ${name}`, () => send('POST', path, { body }), { status: 400, ...(errorCode === undefined ? {} : { errorCode }) });
    }
    for (const value of ['abc', '0', '-1', '1.5', '99999999999']) {
      await refused(`POST ${template} with x-ms-max-item-count ${value}`, () => send('POST', path, { body: { query: 'SELECT *' }, headers: { 'x-ms-max-item-count': value } }), { status: 400, errorCode: 400017 });
    }
    for (const value of ['garbage', Buffer.from('{"k":1}').toString('base64url'), Buffer.from('{"k":"x","q":"other"}').toString('base64url')]) {
      await refused(`POST ${template} with x-ms-continuation ${value}`, () => send('POST', path, { body: { query: 'SELECT *' }, headers: { 'x-ms-continuation': value } }), { status: 400, errorCode: 400014 });
    }
  }
  await refused('POST /registrations/{id}/query for a bad group ID', () => send('POST', apiPath('/registrations/{id}/query', { id: 'a'.repeat(300) }), { body: { query: 'SELECT *' } }), { status: 404 });
});

// ---- control plane

test('control plane: every malformed setting is a 4xx naming it', async () => {
  const cases: [string, string, Record<string, string>, unknown, number, number | undefined][] = [
    ['PATCH', '/instance', {}, { allocationPolicy: 'custom' }, 400, 400004],
    ['PATCH', '/instance', {}, { allocationPolicy: 5 }, 400, 400004],
    ['PATCH', '/instance', {}, { serviceHostNames: [] }, 400, 400004],
    ['PATCH', '/instance', {}, { serviceHostNames: 'localhost' }, 400, 400004],
    ['PATCH', '/instance', {}, { serviceHostNames: ['bad host'] }, 400, 400020],
    ['PATCH', '/instance', {}, { serviceHostNames: ['localhost', 5] }, 400, 400004],
    ['PATCH', '/instance', {}, { serviceHostNames: ['victim.localhost'] }, 409, 409001],
    ['PATCH', '/instance', {}, { serviceHostNames: [`${'a'.repeat(250)}.com`] }, 400, 400020],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 'Admin' }, 400, 400018],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 5 }, 400, 400004],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: '' }, 400, 400018],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: [] }, 400, 400018],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: ['EnrollmentRead', 7] }, 400, 400004],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, {}, 400, 400004],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 'EnrollmentRead', primaryKey: 'not base64!!' }, 400, 400011],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 'EnrollmentRead', secondaryKey: keyOf(8) }, 400, 400011],
    ['PUT', '/accessPolicies/{name}', { name: 'seed-policy' }, { rights: 'EnrollmentRead', primaryKey: 5 }, 400, 400004],
    ['PUT', '/accessPolicies/{name}', { name: 'a'.repeat(65) }, { rights: 'EnrollmentRead' }, 400, 400018],
    ['PUT', '/accessPolicies/{name}', { name: 'bad name' }, { rights: 'EnrollmentRead' }, 400, 400018],
    ['PUT', '/accessPolicies/{name}', { name: 'provisioningserviceowner' }, { rights: 'EnrollmentRead' }, 409, 409003],
    ['POST', '/accessPolicies/{name}/regenerateKey', { name: 'seed-policy' }, { keyType: 'tertiary' }, 400, 400004],
    ['POST', '/accessPolicies/{name}/regenerateKey', { name: 'seed-policy' }, {}, 400, 400004],
    ['POST', '/accessPolicies/{name}/regenerateKey', { name: 'nosuchpolicy' }, { keyType: 'primary' }, 404, 404205],
    ['DELETE', '/accessPolicies/{name}', { name: 'provisioningserviceowner' }, undefined, 409, 409003],
    ['DELETE', '/accessPolicies/{name}', { name: 'nosuchpolicy' }, undefined, 404, 404205],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true, allocationWeight: 0 }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true, allocationWeight: 1001 }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true, allocationWeight: 1.5 }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: 'yes' }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true, applyAllocationPolicy: 'no' }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'seed-hub.example.net' }, { builtIn: true, location: 5 }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'external.example.net' }, {}, 400, 400019],
    ['PUT', '/linkedHubs/{name}', { name: 'external.example.net' }, { connectionString: 'garbage' }, 400, 400019],
    ['PUT', '/linkedHubs/{name}', { name: 'external.example.net' }, { connectionString: 'HostName=other.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=' + keyOf(32) }, 400, 400019],
    ['PUT', '/linkedHubs/{name}', { name: 'external.example.net' }, { connectionString: 'HostName=external.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=not-base64' }, 400, 400019],
    ['PUT', '/linkedHubs/{name}', { name: 'external.example.net' }, { connectionString: 5 }, 400, 400004],
    ['PUT', '/linkedHubs/{name}', { name: 'bad_host!' }, { builtIn: true }, 400, 400019],
    ['PUT', '/linkedHubs/{name}', { name: `${'a'.repeat(300)}.net` }, { builtIn: true }, 400, 400019],
    ['DELETE', '/linkedHubs/{name}', { name: 'nowhere.example.net' }, undefined, 404, 404206],
    ['PUT', '/instances/{name}', { name: 'new' }, {}, 400, 400004],
    ['PUT', '/instances/{name}', { name: 'new' }, { serviceHostNames: [] }, 400, 400004],
    ['PUT', '/instances/{name}', { name: 'new' }, { serviceHostNames: ['bad host'] }, 400, 400020],
    ['PUT', '/instances/{name}', { name: 'new' }, { serviceHostNames: ['new.localhost'], allocationPolicy: 'custom' }, 400, 400004],
    ['PUT', '/instances/{name}', { name: 'new' }, { serviceHostNames: ['localhost'] }, 409, 409001],
    ['PUT', '/instances/{name}', { name: 'victim' }, { serviceHostNames: ['new.localhost'] }, 409, 409001],
    ['PUT', '/instances/{name}', { name: 'bad name!' }, { serviceHostNames: ['new.localhost'] }, 400, 400020],
    ['PUT', '/instances/{name}', { name: 'a'.repeat(65) }, { serviceHostNames: ['new.localhost'] }, 400, 400020],
    ['DELETE', '/instances/{name}', { name: 'default' }, undefined, 400, 400020],
    ['DELETE', '/instances/{name}', { name: 'nosuchinstance' }, undefined, 404, 404207],
  ];
  for (const [method, template, params, body, status, errorCode] of cases) {
    await refused(`${method} ${template} ${JSON.stringify(params)} ${JSON.stringify(body)?.slice(0, 100)}`, () => send(method, apiPath(template, params), body === undefined ? {} : { body }), {
      status,
      ...(errorCode === undefined ? {} : { errorCode }),
    });
  }
});

test('registrations: DELETE of a bad or unknown ID, or with a stale If-Match, changes nothing', async () => {
  for (const id of ['unknown-1', longId, 'bad id']) {
    await refused(`DELETE /registrations/${id.slice(0, 20)}`, () => send('DELETE', apiPath('/registrations/{id}', { id })), { status: 404, errorCode: 404202 });
  }
  await refused('DELETE /registrations/seed-1 with a stale If-Match', () => send('DELETE', apiPath('/registrations/{id}', { id: 'seed-1' }), { headers: { 'if-match': '"stale"' } }), { status: 412, errorCode: 412002 });
});

test('URLs the router cannot decode are a 400, not a 500', async () => {
  for (const path of ['/enrollments/%E0%A4%A?api-version=2021-10-01', '/enrollments/%?api-version=2021-10-01', '/enrollments/%ZZ/attestationmechanism?api-version=2021-10-01']) {
    const response = await send(path.includes('attestation') ? 'POST' : 'PUT', path, { body: symmetric('registrationId', 'x') });
    assert.ok(response.status >= 400 && response.status < 500, `${path} → ${response.status} ${response.text}`);
    assertDpsError(response, response.status, {}, path);
  }
});

// ---- fuzz

/** mulberry32: a small seeded generator, so a failing body can be reproduced from the seed in the message. */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FIELD_NAMES = [
  'registrationId', 'deviceId', 'attestation', 'type', 'symmetricKey', 'primaryKey', 'secondaryKey', 'x509', 'tpm',
  'endorsementKey', 'storageRootKey', 'clientCertificates', 'signingCertificates', 'caReferences', 'primary', 'secondary',
  'certificate', 'info', 'capabilities', 'iotEdge', 'iotHubHostName', 'initialTwin', 'tags', 'properties', 'desired',
  'etag', 'provisioningStatus', 'reprovisionPolicy', 'updateHubAssignment', 'migrateDeviceData', 'allocationPolicy',
  'iotHubs', 'customAllocationDefinition', 'webhookUrl', 'apiVersion', 'optionalDeviceInformation', 'registrationState',
  'createdDateTimeUtc', '__proto__', 'constructor', 'prototype', '', '$version',
];
const STRINGS = ['x', '', 'symmetricKey', 'x509', 'tpm', 'none', 'enabled', 'disabled', 'custom', 'static', 'hashed', 'geoLatency', keyOf(32), keyOf(8), 'garbage', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----', 'https://example.net/?code=1', 'seed-hub.example.net', '\u0000', '😀', 'a'.repeat(600)];

function randomValue(next: () => number, depth: number): unknown {
  const pick = <T>(values: readonly T[]): T => values[Math.floor(next() * values.length)] as T;
  const roll = next();
  if (depth > 4 || roll < 0.3) {
    return pick<unknown>([null, true, false, 0, -1, 1.5, 1e308, Number.MAX_SAFE_INTEGER, pick(STRINGS), pick(STRINGS), pick(STRINGS)]);
  }
  if (roll < 0.45) return Array.from({ length: Math.floor(next() * 4) }, () => randomValue(next, depth + 1));
  const object: Record<string, unknown> = {};
  for (let index = Math.floor(next() * 5); index > 0; index -= 1) object[pick(FIELD_NAMES)] = randomValue(next, depth + 1);
  return object;
}

const BASE_ATTESTATIONS = [
  { type: 'symmetricKey', symmetricKey: { primaryKey: keyOf(32), secondaryKey: keyOf(64) } },
  { type: 'x509', x509: { clientCertificates: { primary: { certificate: 'MIIB' } } } },
  { type: 'tpm', tpm: { endorsementKey: keyOf(64), storageRootKey: keyOf(64) } },
];

/** A valid-looking enrollment with a few members somewhere replaced by random values, or a random value outright. */
function randomBody(next: () => number): unknown {
  const pick = <T>(values: readonly T[]): T => values[Math.floor(next() * values.length)] as T;
  if (next() < 0.1) return randomValue(next, 0);
  const body: Record<string, unknown> = {
    registrationId: next() < 0.9 ? 'x' : randomValue(next, 3),
    deviceId: 'device-x',
    attestation: structuredClone(pick(BASE_ATTESTATIONS)),
    capabilities: { iotEdge: false },
    provisioningStatus: 'enabled',
    reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
    initialTwin: { tags: { a: 1 }, properties: { desired: { b: 2 } } },
    allocationPolicy: 'hashed',
    iotHubs: ['seed-hub.example.net'],
    customAllocationDefinition: { webhookUrl: 'https://example.net/allocate', apiVersion: '2021-10-01' },
  };
  for (let changes = 1 + Math.floor(next() * 3); changes > 0; changes -= 1) {
    let target: Record<string, unknown> = body;
    for (let depth = 0; depth < 4; depth += 1) {
      const keys = Object.keys(target);
      const key = keys[Math.floor(next() * keys.length)];
      const child = key === undefined ? undefined : target[key];
      if (child === null || typeof child !== 'object' || Array.isArray(child) || next() < 0.25) break;
      target = child as Record<string, unknown>;
    }
    const keys = Object.keys(target);
    const key = next() < 0.85 && keys.length > 0 ? pick(keys) : pick(FIELD_NAMES);
    if (next() < 0.15) delete target[key];
    else target[key] = next() < 0.6 ? pick<unknown>([...STRINGS, null, true, 0, -1, 2.5, [], {}]) : randomValue(next, 2);
  }
  return body;
}

test('fuzz: 300 random bodies to PUT /enrollments/x never produce a 5xx', async () => {
  const seed = 0x5eed;
  const next = generator(seed);
  const path = apiPath('/enrollments/{id}', { id: 'x' });
  const outcomes = new Map<number, number>();
  for (let index = 0; index < 300; index += 1) {
    const body = randomBody(next);
    const rawBody = JSON.stringify(body) ?? 'null';
    const response = await send('PUT', path, { rawBody, contentType: 'application/json' });
    const where = `body #${index} (seed ${seed}): ${rawBody.slice(0, 400)} → ${response.status} ${response.text.slice(0, 300)}`;
    assert.ok(response.status < 500, where);
    if (response.status === 200) assert.equal((response.body as { registrationId?: unknown }).registrationId, 'x', where);
    const errorCode = response.status === 200 ? 200 : assertDpsError(response, response.status, {}, where).errorCode;
    outcomes.set(errorCode, (outcomes.get(errorCode) ?? 0) + 1);
  }
  // The bodies reach past the first check: some are accepted, and several different rules refuse the others.
  assert.ok((outcomes.get(200) ?? 0) > 0, JSON.stringify([...outcomes]));
  assert.ok(outcomes.size >= 5, JSON.stringify([...outcomes]));
});

test('the valid bodies above are accepted (so the refusals are the bad input, not the route)', async () => {
  for (const route of writeRoutes) {
    await seed();
    const body = bodyOf(route);
    const response = await send(route.method, apiPath(route.template, seededParams(route)), body === undefined ? {} : { body });
    assert.ok(response.status >= 200 && response.status < 300, `${route.method} ${route.template} → ${response.status} ${response.text}`);
  }
});
