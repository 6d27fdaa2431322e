import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import assert from 'node:assert/strict';
import { createHash, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { after, before, beforeEach, describe, test } from 'node:test';
import serviceSdk from 'azure-iot-provisioning-service';
import { createRootCertificate } from '../src/tls/x509-issuer.js';
import type { StoredRegistration } from '../src/store/store.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * The service API (dps-wire.md §2) driven by the unmodified `azure-iot-provisioning-service` package against a real
 * server. SDK quirks (sdk-clients.md §1): bulk runs in callback form (the promise never settles) and queries page with
 * `q.next(q.continuationToken)`. Group bulk operations, which the SDK cannot send, go over raw HTTPS.
 */
const { ProvisioningServiceClient } = serviceSdk;
type Client = ReturnType<typeof ProvisioningServiceClient.fromConnectionString>;
type Query = ReturnType<Client['createIndividualEnrollmentQuery']>;
/** Wire JSON as the SDK hands it back (its typings do not describe the real bodies). */
type Json = Record<string, any>;
const json = (value: unknown): Json => value as Json;

const ETAG = /^".+"$/;
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$/;
const KEY_64_BYTES = /^[A-Za-z0-9+/]{86}==$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const API = 'api-version=2021-10-01';
const DEFAULTS = {
  capabilities: { iotEdge: false },
  provisioningStatus: 'enabled',
  reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
};

let server: TestServer;
let client: Client;
let instanceId: string;

before(async () => {
  server = await startServer();
  client = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  const first = (await server.app.store.listInstances())[0];
  assert.ok(first !== undefined);
  instanceId = first.id;
});
after(async () => {
  await server.close();
});
// Every test starts from an empty instance, so whole-collection queries have known answers.
beforeEach(async () => {
  const store = server.app.store;
  for (;;) {
    const enrollments = (await store.queryEnrollments(instanceId, { filters: [], limit: 1000 })).items;
    const groups = (await store.queryEnrollmentGroups(instanceId, { filters: [], limit: 1000 })).items;
    const records = (await store.queryRegistrations(instanceId, { filters: [], limit: 1000 })).items;
    // Only the hubs tests link; the server's own (built-in) hub stays.
    for (const hub of await store.listLinkedHubs(instanceId)) if (hub.name.endsWith('.example.net')) await store.deleteLinkedHub(instanceId, hub.name);
    if (enrollments.length + groups.length + records.length === 0) break;
    for (const doc of enrollments) await store.deleteEnrollment(instanceId, doc.registrationId);
    for (const doc of groups) await store.deleteEnrollmentGroup(instanceId, doc.enrollmentGroupId);
    for (const doc of records) await store.deleteRegistration(instanceId, doc.registrationId);
  }
});

// ---- SDK helpers

const putEnrollment = async (body: Json): Promise<Json> => json((await client.createOrUpdateIndividualEnrollment(body as never)).responseBody);
const getEnrollment = async (id: string): Promise<Json> => json((await client.getIndividualEnrollment(id)).responseBody);
const putGroup = async (body: Json): Promise<Json> => json((await client.createOrUpdateEnrollmentGroup(body as never)).responseBody);
const getGroup = async (id: string): Promise<Json> => json((await client.getEnrollmentGroup(id)).responseBody);
const getRecord = async (id: string): Promise<Json> => json((await client.getDeviceRegistrationState(id)).responseBody);

/** runBulkEnrollmentOperation in callback form: its promise form never settles (sdk-clients.md §1). */
function bulk(mode: string, enrollments: Json[]): Promise<Json> {
  return new Promise((resolve, reject) => {
    client.runBulkEnrollmentOperation({ mode, enrollments } as never, (error, result) => (error ? reject(error) : resolve(json(result))));
  });
}

async function groupBulk(mode: string, enrollmentGroups: Json[]): Promise<{ status: number; body: Json }> {
  const response = await call('POST', `/enrollmentGroups?${API}`, {
    headers: { authorization: server.token() },
    body: { mode, enrollmentGroups },
  });
  return { status: response.status, body: json(response.body) };
}

interface QueryPage {
  items: Json[];
  headers: Record<string, string | undefined>;
}

async function allPages(query: Query): Promise<QueryPage[]> {
  const pages: QueryPage[] = [];
  for (;;) {
    const { responseBody, httpResponse } = await query.next(query.continuationToken);
    pages.push({ items: responseBody as unknown as Json[], headers: (httpResponse as { headers: Record<string, string | undefined> }).headers });
    if (!query.hasMoreResults) return pages;
    assert.ok(pages.length < 20, 'paging must end');
  }
}

async function queryEnrollments(query: string, pageSize?: number): Promise<Json[]> {
  return (await allPages(client.createIndividualEnrollmentQuery({ query }, pageSize))).flatMap((page) => page.items);
}

async function queryGroups(query: string, pageSize?: number): Promise<Json[]> {
  return (await allPages(client.createEnrollmentGroupQuery({ query }, pageSize))).flatMap((page) => page.items);
}

interface Failure {
  name: string;
  status: number;
  errorCodeHeader: string | undefined;
  body: Json;
}

/** The error an SDK call fails with: the SDK's error class, the HTTP status and the DPS error body. */
async function failure(promise: Promise<unknown>): Promise<Failure> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof Error, 'the call must fail');
  const error = caught as Error & { response?: { statusCode?: number; headers?: Record<string, string> }; responseBody?: unknown };
  assert.equal(typeof error.responseBody, 'string', `no response body on ${error.name}: ${error.message}`);
  return {
    name: error.constructor.name,
    status: error.response?.statusCode ?? 0,
    errorCodeHeader: error.response?.headers?.['x-ms-error-code'],
    body: json(JSON.parse(error.responseBody as string)),
  };
}

/** A whole DPS error body (dps-wire.md §1.1): code, message, a GUID tracking ID and a timestamp. */
function assertErrorBody(body: Json, errorCode: number, message: string | RegExp): void {
  assert.match(String(body.trackingId), UUID);
  assert.match(String(body.timestampUtc), TIMESTAMP);
  if (typeof message !== 'string') assert.match(String(body.message), message);
  const expected = typeof message === 'string' ? message : body.message;
  assert.deepEqual(body, { errorCode, trackingId: body.trackingId, message: expected, timestampUtc: body.timestampUtc });
}

function assertStamped(body: Json): void {
  assert.match(String(body.etag), ETAG);
  assert.match(String(body.createdDateTimeUtc), TIMESTAMP);
  assert.match(String(body.lastUpdatedDateTimeUtc), TIMESTAMP);
  assert.ok(body.lastUpdatedDateTimeUtc >= body.createdDateTimeUtc);
}

// ---- certificates

x509.cryptoProvider.set(webcrypto as never);
const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

interface TestCertificate {
  /** The PEM the test sends. */
  pem: string;
  /** The PEM the server keeps: the same DER, 64-column lines, one trailing newline. */
  storedPem: string;
  der: Buffer;
  info: Json;
}

/** A self-signed certificate with fixed subject, serial and validity, and the `info` DPS must compute for it. */
async function deviceCertificate(commonName: string, serialNumber: string): Promise<TestCertificate> {
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber,
    name: `CN=${commonName}, O=Provisiond Test`,
    notBefore: new Date('2024-01-01T00:00:00Z'),
    notAfter: new Date('2034-06-30T12:00:00Z'),
    signingAlgorithm: ALGORITHM,
    keys,
  });
  const der = Buffer.from(cert.rawData);
  const pem = cert.toString('pem');
  return {
    pem,
    storedPem: `${pem.trimEnd()}\n`,
    der,
    info: {
      subjectName: `CN=${commonName}, O=Provisiond Test`,
      sha1Thumbprint: createHash('sha1').update(der).digest('hex').toUpperCase(),
      sha256Thumbprint: createHash('sha256').update(der).digest('hex').toUpperCase(),
      issuerName: `CN=${commonName}, O=Provisiond Test`,
      notBeforeUtc: '2024-01-01T00:00:00.0000000Z',
      notAfterUtc: '2034-06-30T12:00:00.0000000Z',
      serialNumber: serialNumber.toUpperCase(),
      version: 3,
    },
  };
}

/** A CA certificate (the dev CA generator); its expected info read with node:crypto. */
async function signingCertificate(commonName: string): Promise<TestCertificate> {
  const { certPem } = await createRootCertificate({ commonName, days: 365 });
  const cert = new X509Certificate(certPem);
  const stamp = (text: string): string => new Date(text).toISOString().replace(/\.(\d{3})Z$/, '.$10000Z');
  return {
    pem: certPem,
    storedPem: `${certPem.trimEnd()}\n`,
    der: cert.raw,
    info: {
      subjectName: `CN=${commonName}`,
      sha1Thumbprint: createHash('sha1').update(cert.raw).digest('hex').toUpperCase(),
      sha256Thumbprint: createHash('sha256').update(cert.raw).digest('hex').toUpperCase(),
      issuerName: `CN=${commonName}`,
      notBeforeUtc: stamp(cert.validFrom),
      notAfterUtc: stamp(cert.validTo),
      serialNumber: cert.serialNumber.toUpperCase(),
      version: 3,
    },
  };
}

const base64 = (bytes: number): string => randomBytes(bytes).toString('base64');

function record(registrationId: string, overrides: Partial<StoredRegistration> = {}): StoredRegistration {
  return {
    registrationId,
    createdDateTimeUtc: '2024-05-01T10:00:00.0000000Z',
    assignedHub: 'hub1.example.net',
    deviceId: registrationId,
    status: 'assigned',
    substatus: 'initialAssignment',
    lastUpdatedDateTimeUtc: '2024-05-01T10:00:01.0000000Z',
    etag: `"${registrationId}-v1"`,
    attestationType: 'symmetricKey',
    hubHistory: ['hub1.example.net'],
    ...overrides,
  };
}

/** The record as DPS shows it: internal fields (group, attestation type, hub history) never leave the server. */
function shownRecord(stored: StoredRegistration): Json {
  const { enrollmentGroupId: _group, attestationType: _type, hubHistory: _history, ...shown } = stored;
  return shown;
}

// ---- tests

describe('individual enrollments', () => {
  test('symmetric key with generated keys: create, get, attestation mechanism, update with etag, delete', async () => {
    const created = await putEnrollment({ registrationId: 'sym-gen-1', attestation: { type: 'symmetricKey' } });
    assertStamped(created);
    const keys = created.attestation.symmetricKey;
    assert.match(keys.primaryKey, KEY_64_BYTES);
    assert.match(keys.secondaryKey, KEY_64_BYTES);
    assert.notEqual(keys.primaryKey, keys.secondaryKey);
    assert.deepEqual(created, {
      registrationId: 'sym-gen-1',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(Object.keys(created), [
      'registrationId', 'attestation', 'capabilities', 'etag', 'provisioningStatus', 'reprovisionPolicy', 'createdDateTimeUtc', 'lastUpdatedDateTimeUtc',
    ], 'fields in the order DPS writes them');

    // GET and the attestation mechanism: keys only from the latter.
    const got = await getEnrollment('SYM-GEN-1');
    assert.deepEqual(got, { ...created, attestation: { type: 'symmetricKey' } });
    const mechanism = json((await client.getIndividualEnrollmentAttestationMechanism('sym-gen-1')).responseBody);
    assert.deepEqual(mechanism, { type: 'symmetricKey', symmetricKey: { primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey } });

    // GET-modify-PUT: the SDK sends If-Match with the etag; keys are kept, createdDateTimeUtc too, the etag changes.
    const change = {
      ...got,
      deviceId: 'device-of-sym-gen-1',
      provisioningStatus: 'disabled',
      capabilities: { iotEdge: true },
      reprovisionPolicy: { updateHubAssignment: false, migrateDeviceData: false },
      initialTwin: { tags: { floor: 3 }, properties: { desired: { telemetryInterval: 30 } } },
      optionalDeviceInformation: { model: 'x1' },
    };
    const updated = await putEnrollment(change);
    assertStamped(updated);
    assert.notEqual(updated.etag, created.etag);
    assert.deepEqual(updated, {
      registrationId: 'sym-gen-1',
      deviceId: 'device-of-sym-gen-1',
      optionalDeviceInformation: { model: 'x1' },
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey } },
      capabilities: { iotEdge: true },
      initialTwin: { tags: { floor: 3 }, properties: { desired: { telemetryInterval: 30 } } },
      etag: updated.etag,
      provisioningStatus: 'disabled',
      reprovisionPolicy: { updateHubAssignment: false, migrateDeviceData: false },
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: updated.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(await getEnrollment('sym-gen-1'), { ...updated, attestation: { type: 'symmetricKey' } });

    // The etag read before the update is stale now: PUT and DELETE with it are 412.
    const stalePut = await failure(client.createOrUpdateIndividualEnrollment(change as never));
    assert.equal(stalePut.name, 'InvalidEtagError');
    assert.equal(stalePut.status, 412);
    assertErrorBody(stalePut.body, 412002, 'The etag does not match the current resource.');
    const staleDelete = await failure(client.deleteIndividualEnrollment('sym-gen-1', String(created.etag)));
    assert.equal(staleDelete.name, 'InvalidEtagError');
    assertErrorBody(staleDelete.body, 412002, 'The etag does not match the current resource.');

    // Every write changes the etag, even one that changes nothing else.
    const again = await putEnrollment({ ...updated, etag: undefined });
    assert.notEqual(again.etag, updated.etag);
    assert.equal(again.createdDateTimeUtc, created.createdDateTimeUtc);

    await client.deleteIndividualEnrollment('sym-gen-1', String(again.etag));
    const gone = await failure(client.getIndividualEnrollment('sym-gen-1'));
    assert.equal(gone.status, 404);
    assert.equal(gone.errorCodeHeader, 'EnrollmentNotFound');
    assertErrorBody(gone.body, 404201, "Enrollment 'sym-gen-1' was not found.");
    const deleteMissing = await failure(client.deleteIndividualEnrollment('sym-gen-1'));
    assert.equal(deleteMissing.status, 404);
    assertErrorBody(deleteMissing.body, 404201, "Enrollment 'sym-gen-1' was not found.");
    const mechanismMissing = await failure(client.getIndividualEnrollmentAttestationMechanism('sym-gen-1'));
    assertErrorBody(mechanismMissing.body, 404201, "Enrollment 'sym-gen-1' was not found.");
  });

  test('symmetric key with keys given: stored as given; invalid keys are a 400', async () => {
    const primaryKey = base64(32);
    const secondaryKey = base64(16);
    const created = await putEnrollment({
      registrationId: 'Sym-Given-1',
      deviceId: 'given-device',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
      provisioningStatus: 'enabled',
    });
    assertStamped(created);
    assert.deepEqual(created, {
      registrationId: 'Sym-Given-1',
      deviceId: 'given-device',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(json((await client.getIndividualEnrollmentAttestationMechanism('sym-given-1')).responseBody), {
      type: 'symmetricKey',
      symmetricKey: { primaryKey, secondaryKey },
    });

    // A PUT with only a new primary key keeps the secondary.
    const rotated = base64(64);
    const updated = await putEnrollment({ registrationId: 'sym-given-1', attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: rotated } } });
    assert.deepEqual(updated.attestation, { type: 'symmetricKey', symmetricKey: { primaryKey: rotated, secondaryKey } });
    assert.equal(updated.registrationId, 'sym-given-1', 'the ID is stored as last written');
    assert.equal(updated.createdDateTimeUtc, created.createdDateTimeUtc);

    for (const [key, why] of [
      ['not base64!', 'not base64'],
      [base64(8), 'too short'],
      [base64(65), 'too long'],
    ] as const) {
      const bad = await failure(
        client.createOrUpdateIndividualEnrollment({ registrationId: 'sym-bad', attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key } } } as never),
      );
      assert.equal(bad.name, 'ArgumentError', why);
      assertErrorBody(bad.body, 400011, 'attestation.symmetricKey.primaryKey must be base64 of 16 to 64 bytes.');
    }
    assert.equal((await failure(client.getIndividualEnrollment('sym-bad'))).status, 404, 'nothing was stored');
  });

  test('x509 with a client certificate: info computed, certificate text never shown except by the attestation mechanism', async () => {
    const cert = await deviceCertificate('x509-device-1', '0a1b2c3d4e5f6071');
    const created = await putEnrollment({
      registrationId: 'x509-device-1',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } },
    });
    assertStamped(created);
    assert.deepEqual(created, {
      registrationId: 'x509-device-1',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { info: cert.info } } } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    const got = await getEnrollment('x509-device-1');
    assert.deepEqual(got, created);
    assert.doesNotMatch(JSON.stringify(got), /BEGIN CERTIFICATE/);
    const mechanism = json((await client.getIndividualEnrollmentAttestationMechanism('x509-device-1')).responseBody);
    assert.deepEqual(mechanism, { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.storedPem, info: cert.info } } } });

    // GET-modify-PUT sends back only `info`: the certificate is kept. A secondary certificate can be added.
    const secondary = await deviceCertificate('x509-device-1', '7f0e0d0c0b0a0908');
    const updated = await putEnrollment({
      ...got,
      provisioningStatus: 'disabled',
      attestation: { type: 'x509', x509: { clientCertificates: { ...got.attestation.x509.clientCertificates, secondary: { certificate: secondary.pem } } } },
    });
    assert.notEqual(updated.etag, created.etag);
    assert.equal(updated.createdDateTimeUtc, created.createdDateTimeUtc);
    assert.deepEqual(updated.attestation, {
      type: 'x509',
      x509: { clientCertificates: { primary: { info: cert.info }, secondary: { info: secondary.info } } },
    });
    assert.deepEqual(json((await client.getIndividualEnrollmentAttestationMechanism('x509-device-1')).responseBody), {
      type: 'x509',
      x509: { clientCertificates: { primary: { certificate: cert.storedPem, info: cert.info }, secondary: { certificate: secondary.storedPem, info: secondary.info } } },
    });

    // A certificate sent as `info` only must be one the enrollment already has.
    const foreign = await deviceCertificate('someone-else', '0f');
    const unknownInfo = await failure(
      client.createOrUpdateIndividualEnrollment({
        ...updated,
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { info: foreign.info } } } },
      } as never),
    );
    assertErrorBody(unknownInfo.body, 400010, 'attestation.x509.clientCertificates.primary.certificate is required.');

    await client.deleteIndividualEnrollment('x509-device-1', String(updated.etag));
    assert.equal((await failure(client.getIndividualEnrollment('x509-device-1'))).status, 404);
  });

  test('x509 certificates are accepted as PEM, base64 of PEM and base64 of DER', async () => {
    const forms = [
      { id: 'x509-pem', cert: await deviceCertificate('x509-pem', '01'), encode: (c: TestCertificate) => c.pem },
      { id: 'x509-b64-pem', cert: await deviceCertificate('x509-b64-pem', '0102'), encode: (c: TestCertificate) => Buffer.from(c.pem).toString('base64') },
      { id: 'x509-b64-der', cert: await deviceCertificate('x509-b64-der', '7a7b7c'), encode: (c: TestCertificate) => c.der.toString('base64') },
    ];
    for (const { id, cert, encode } of forms) {
      const created = await putEnrollment({ registrationId: id, attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: encode(cert) } } } } });
      assert.deepEqual(created.attestation, { type: 'x509', x509: { clientCertificates: { primary: { info: cert.info } } } }, id);
      const mechanism = json((await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody);
      assert.equal(mechanism.x509.clientCertificates.primary.certificate, cert.storedPem, `${id}: stored as PEM`);
    }
  });

  test('x509: a certificate is in one enrollment only; private keys and garbage are refused', async () => {
    const cert = await deviceCertificate('shared-cert', '0abc');
    await putEnrollment({ registrationId: 'cert-owner', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } } });
    const inUse = await failure(
      client.createOrUpdateIndividualEnrollment({
        registrationId: 'cert-thief',
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.der.toString('base64') } } } },
      } as never),
    );
    assert.equal(inUse.status, 409);
    assertErrorBody(
      inUse.body,
      409002,
      `The certificate with SHA-256 thumbprint ${cert.info.sha256Thumbprint} is already used by enrollment 'cert-owner'; a certificate can be specified in only one enrollment entry.`,
    );
    // The owner itself may be written again with it.
    await putEnrollment({ registrationId: 'CERT-OWNER', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } } });
    // Once the owner is deleted, the certificate is free.
    await client.deleteIndividualEnrollment('cert-owner');
    await putEnrollment({ registrationId: 'cert-thief', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } } });

    const withKey = await failure(
      client.createOrUpdateIndividualEnrollment({
        registrationId: 'x509-key',
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' } } } },
      } as never),
    );
    assertErrorBody(withKey.body, 400012, 'attestation.x509.clientCertificates.primary: The certificate text contains a private key; send only the certificate.');
    const garbage = await failure(
      client.createOrUpdateIndividualEnrollment({
        registrationId: 'x509-garbage',
        attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: base64(100) } } } },
      } as never),
    );
    assertErrorBody(garbage.body, 400012, 'attestation.x509.clientCertificates.primary: The certificate could not be parsed as X.509.');
    const signing = await failure(
      client.createOrUpdateIndividualEnrollment({
        registrationId: 'x509-signing',
        attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: cert.pem } } } },
      } as never),
    );
    assertErrorBody(signing.body, 400010, 'An individual X.509 enrollment needs attestation.x509.clientCertificates (and nothing else).');
  });

  test('tpm: endorsement key (and storage root key) stored and shown; invalid keys are a 400', async () => {
    const endorsementKey = base64(282);
    const storageRootKey = base64(282);
    const created = await putEnrollment({ registrationId: 'tpm-1', attestation: { type: 'tpm', tpm: { endorsementKey, storageRootKey } } });
    assertStamped(created);
    assert.deepEqual(created, {
      registrationId: 'tpm-1',
      attestation: { type: 'tpm', tpm: { endorsementKey, storageRootKey } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(await getEnrollment('tpm-1'), created);
    assert.deepEqual(json((await client.getIndividualEnrollmentAttestationMechanism('tpm-1')).responseBody), { type: 'tpm', tpm: { endorsementKey, storageRootKey } });

    // GET-modify-PUT with the etag keeps the keys; a stale etag is a 412; delete by the enrollment object (its etag).
    const updated = await putEnrollment({ ...created, provisioningStatus: 'disabled' });
    assert.notEqual(updated.etag, created.etag);
    assert.deepEqual(updated, { ...created, provisioningStatus: 'disabled', etag: updated.etag, lastUpdatedDateTimeUtc: updated.lastUpdatedDateTimeUtc });
    assert.equal((await failure(client.createOrUpdateIndividualEnrollment(created as never))).name, 'InvalidEtagError');
    assert.equal((await failure(client.deleteIndividualEnrollment(created as never))).name, 'InvalidEtagError');
    await client.deleteIndividualEnrollment(updated as never);
    assert.equal((await failure(client.getIndividualEnrollment('tpm-1'))).status, 404);

    const onlyEk = await putEnrollment({ registrationId: 'tpm-2', attestation: { type: 'tpm', tpm: { endorsementKey: base64(60) } } });
    assert.deepEqual(Object.keys(onlyEk.attestation.tpm), ['endorsementKey']);

    const bad = await failure(client.createOrUpdateIndividualEnrollment({ registrationId: 'tpm-bad', attestation: { type: 'tpm', tpm: { endorsementKey: 'not base64' } } } as never));
    assertErrorBody(bad.body, 400010, 'attestation.tpm.endorsementKey must be base64.');
    const missing = await failure(client.createOrUpdateIndividualEnrollment({ registrationId: 'tpm-bad', attestation: { type: 'tpm' } } as never));
    assertErrorBody(missing.body, 400010, "attestation.type is 'tpm' but attestation.tpm is missing.");
  });

  test('allocation settings: hubs must be linked, static needs one hub, webhook keys are hidden on GET and kept by GET-modify-PUT', async () => {
    const attestation = { type: 'symmetricKey' };
    const unlinked = await failure(client.createOrUpdateIndividualEnrollment({ registrationId: 'alloc-1', attestation, iotHubs: ['hub1.example.net'] } as never));
    assertErrorBody(unlinked.body, 400016, 'These hubs are not linked to the instance: hub1.example.net.');
    for (const name of ['hub1.example.net', 'hub2.example.net']) {
      await server.app.store.putLinkedHub(instanceId, {
        name,
        builtIn: false,
        connectionString: `HostName=${name};SharedAccessKeyName=iothubowner;SharedAccessKey=${base64(32)}`,
        allocationWeight: 1,
        applyAllocationPolicy: true,
      });
    }
    const twoStatic = await failure(
      client.createOrUpdateIndividualEnrollment({ registrationId: 'alloc-1', attestation, allocationPolicy: 'static', iotHubs: ['hub1.example.net', 'hub2.example.net'] } as never),
    );
    assertErrorBody(twoStatic.body, 400016, "allocationPolicy 'static' takes at most one hub in iotHubs (or iotHubHostName).");
    const customWithout = await failure(client.createOrUpdateIndividualEnrollment({ registrationId: 'alloc-1', attestation, allocationPolicy: 'custom' } as never));
    assertErrorBody(customWithout.body, 400016, "allocationPolicy 'custom' needs customAllocationDefinition with webhookUrl and apiVersion.");

    const webhookUrl = 'https://alloc.example.net/api/fn?code=s3cret&x=1';
    const created = await putEnrollment({
      registrationId: 'alloc-1',
      attestation,
      allocationPolicy: 'custom',
      iotHubs: ['HUB1.example.net', 'hub2.example.net', 'hub1.example.net'],
      customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' },
    });
    assert.deepEqual(created, {
      registrationId: 'alloc-1',
      attestation: created.attestation,
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
      allocationPolicy: 'custom',
      iotHubs: ['hub1.example.net', 'hub2.example.net'],
      customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' },
    });
    const got = await getEnrollment('alloc-1');
    assert.deepEqual(got.customAllocationDefinition, { webhookUrl: 'https://alloc.example.net/api/fn?code=****&x=****', apiVersion: '2021-10-01' });
    assert.deepEqual((await queryEnrollments('SELECT *'))[0], got, 'query redacts too');
    const updated = await putEnrollment({ ...got, provisioningStatus: 'disabled' });
    assert.deepEqual(updated.customAllocationDefinition, { webhookUrl, apiVersion: '2021-10-01' }, 'the redacted URL sent back keeps the stored one');

    const single = await putGroup({ enrollmentGroupId: 'alloc-group', attestation, allocationPolicy: 'static', iotHubHostName: 'Hub2.Example.Net' });
    assert.equal(single.allocationPolicy, 'static');
    assert.equal(single.iotHubHostName, 'hub2.example.net');
  });

  test('the ID in the path must match the body; IDs are validated', async () => {
    const mismatch = await call('PUT', `/enrollments/path-id?${API}`, {
      headers: { authorization: server.token() },
      body: { registrationId: 'body-id', attestation: { type: 'symmetricKey' } },
    });
    assert.equal(mismatch.status, 400);
    assertErrorBody(json(mismatch.body), 400009, "The registrationId in the body ('body-id') does not match the one in the path ('path-id').");
    const badId = await failure(client.createOrUpdateIndividualEnrollment({ registrationId: '-starts-with-dash', attestation: { type: 'symmetricKey' } } as never));
    assert.equal(badId.status, 400);
    assert.equal(badId.body.errorCode, 400007);
  });
});

describe('If-None-Match: * on PUT creates only', () => {
  for (const kind of [
    { collection: 'enrollments', idField: 'registrationId', noun: 'enrollment' },
    { collection: 'enrollmentGroups', idField: 'enrollmentGroupId', noun: 'enrollment group' },
  ]) {
    test(`${kind.collection}: created when absent; 412003 and nothing written when it exists; not with If-Match or an etag`, async () => {
      const put = async (id: string, headers: Record<string, string>, extra: Json = {}): Promise<{ status: number; body: Json }> => {
        const response = await call('PUT', `/${kind.collection}/${id}?${API}`, {
          headers: { authorization: server.token(), ...headers },
          body: { [kind.idField]: id, attestation: { type: 'symmetricKey' }, ...extra },
        });
        return { status: response.status, body: json(response.body) };
      };
      const get = async (id: string): Promise<Json> =>
        json((await call('GET', `/${kind.collection}/${id}?${API}`, { headers: { authorization: server.token() } })).body);

      const created = await put('only-once', { 'if-none-match': '*' });
      assert.equal(created.status, 200);
      assertStamped(created.body);
      assert.match(created.body.attestation.symmetricKey.primaryKey, KEY_64_BYTES);

      // The ID compares case-insensitively, so another spelling names the same entry.
      for (const id of ['only-once', 'ONLY-ONCE']) {
        const again = await put(id, { 'if-none-match': '*' }, { provisioningStatus: 'disabled' });
        assert.equal(again.status, 412);
        assertErrorBody(again.body, 412003, `The ${kind.noun} '${id}' already exists; If-None-Match: * creates only.`);
      }
      const stored = await get('only-once');
      assert.equal(stored.etag, created.body.etag);
      assert.equal(stored.provisioningStatus, 'enabled');

      const both = await put('only-once', { 'if-none-match': '*', 'if-match': String(created.body.etag) });
      assert.equal(both.status, 400);
      assertErrorBody(both.body, 400017, 'Give If-Match (replace a version) or If-None-Match: * (create only), not both.');
      const etagList = await put('not-there', { 'if-none-match': '"abc"' });
      assert.equal(etagList.status, 400);
      assertErrorBody(etagList.body, 400017, 'If-None-Match takes only "*" (create only).');
      assert.equal((await call('GET', `/${kind.collection}/not-there?${API}`, { headers: { authorization: server.token() } })).status, 404);

      // Without the header, PUT still replaces.
      const replaced = await put('only-once', {}, { provisioningStatus: 'disabled' });
      assert.equal(replaced.status, 200);
      assert.equal(replaced.body.provisioningStatus, 'disabled');
    });
  }
});

describe('enrollment groups', () => {
  test('symmetric key group: create, get without keys, attestation mechanism, update with etag, stale etag, delete', async () => {
    const created = await putGroup({ enrollmentGroupId: 'group-sym', attestation: { type: 'symmetricKey' } });
    assertStamped(created);
    const keys = created.attestation.symmetricKey;
    assert.match(keys.primaryKey, KEY_64_BYTES);
    assert.match(keys.secondaryKey, KEY_64_BYTES);
    assert.deepEqual(created, {
      enrollmentGroupId: 'group-sym',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    const got = await getGroup('GROUP-SYM');
    assert.deepEqual(got, { ...created, attestation: { type: 'symmetricKey' } });
    // The SDK calls /enrollmentgroups/{id}/attestationmechanism in lower case.
    assert.deepEqual(json((await client.getEnrollmentGroupAttestationMechanism('group-sym')).responseBody), {
      type: 'symmetricKey',
      symmetricKey: { primaryKey: keys.primaryKey, secondaryKey: keys.secondaryKey },
    });

    const updated = await putGroup({ ...got, provisioningStatus: 'disabled', initialTwin: { tags: { site: 'b' } } });
    assertStamped(updated);
    assert.notEqual(updated.etag, created.etag);
    assert.deepEqual(updated, {
      ...created,
      initialTwin: { tags: { site: 'b' }, properties: {} },
      provisioningStatus: 'disabled',
      etag: updated.etag,
      lastUpdatedDateTimeUtc: updated.lastUpdatedDateTimeUtc,
    });

    const stale = await failure(client.createOrUpdateEnrollmentGroup(got as never));
    assert.equal(stale.name, 'InvalidEtagError');
    assertErrorBody(stale.body, 412002, 'The etag does not match the current resource.');
    const staleDelete = await failure(client.deleteEnrollmentGroup('group-sym', String(created.etag)));
    assert.equal(staleDelete.name, 'InvalidEtagError');

    await client.deleteEnrollmentGroup(updated as never);
    const gone = await failure(client.getEnrollmentGroup('group-sym'));
    assert.equal(gone.status, 404);
    assertErrorBody(gone.body, 404203, "Enrollment group 'group-sym' was not found.");
  });

  test('x509 group with signing certificates: info computed, no certificate text on GET', async () => {
    const primary = await signingCertificate('provisiond test signing CA 1');
    const secondary = await signingCertificate('provisiond test signing CA 2');
    const created = await putGroup({
      enrollmentGroupId: 'group-x509',
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: primary.pem }, secondary: { certificate: secondary.der.toString('base64') } } } },
    });
    assertStamped(created);
    assert.deepEqual(created, {
      enrollmentGroupId: 'group-x509',
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { info: primary.info }, secondary: { info: secondary.info } } } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(await getGroup('group-x509'), created);
    assert.deepEqual(json((await client.getEnrollmentGroupAttestationMechanism('group-x509')).responseBody), {
      type: 'x509',
      x509: { signingCertificates: { primary: { certificate: primary.storedPem, info: primary.info }, secondary: { certificate: secondary.storedPem, info: secondary.info } } },
    });
    // GET-modify-PUT sends only `info`: the certificates are kept.
    const updated = await putGroup({ ...created, provisioningStatus: 'disabled' });
    assert.deepEqual(updated, { ...created, provisioningStatus: 'disabled', etag: updated.etag, lastUpdatedDateTimeUtc: updated.lastUpdatedDateTimeUtc });
    assert.notEqual(updated.etag, created.etag);
    assert.equal(
      json((await client.getEnrollmentGroupAttestationMechanism('group-x509')).responseBody).x509.signingCertificates.secondary.certificate,
      secondary.storedPem,
    );
    // The same signing certificate cannot serve a second group.
    const inUse = await failure(
      client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: 'group-x509-2', attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: secondary.pem } } } } } as never),
    );
    assert.equal(inUse.status, 409);
    assert.equal(inUse.body.errorCode, 409002);
    await client.deleteEnrollmentGroup('group-x509', String(updated.etag));
    // Deleting the group frees its certificates.
    await putGroup({ enrollmentGroupId: 'group-x509-2', attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: secondary.pem } } } } });
  });

  test('x509 group with CA references; invalid group attestations are a 400', async () => {
    const created = await putGroup({
      enrollmentGroupId: 'group-ca-ref',
      attestation: { type: 'x509', x509: { caReferences: { primary: 'my-root-ca', secondary: 'my-other-ca' } } },
    });
    assertStamped(created);
    assert.deepEqual(created, {
      enrollmentGroupId: 'group-ca-ref',
      attestation: { type: 'x509', x509: { caReferences: { primary: 'my-root-ca', secondary: 'my-other-ca' } } },
      ...DEFAULTS,
      etag: created.etag,
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.lastUpdatedDateTimeUtc,
    });
    assert.deepEqual(await getGroup('group-ca-ref'), created);

    const cert = await deviceCertificate('group-client', '0c0d');
    const client509 = await failure(
      client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: 'group-bad', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.pem } } } } } as never),
    );
    assertErrorBody(client509.body, 400010, 'An X.509 enrollment group needs exactly one of attestation.x509.signingCertificates or attestation.x509.caReferences.');
    const tpm = await failure(client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: 'group-bad', attestation: { type: 'tpm', tpm: { endorsementKey: base64(60) } } } as never));
    assertErrorBody(tpm.body, 400010, 'Enrollment groups do not support TPM attestation.');
    const noPrimary = await failure(
      client.createOrUpdateEnrollmentGroup({ enrollmentGroupId: 'group-bad', attestation: { type: 'x509', x509: { caReferences: { secondary: 'x' } } } } as never),
    );
    assertErrorBody(noPrimary.body, 400010, 'attestation.x509.caReferences.primary is required.');
  });
});

describe('queries', () => {
  test('individual enrollments page by 10 with a continuation token: 3 pages for 25', async () => {
    const ids = Array.from({ length: 25 }, (_, i) => `page-${String(i).padStart(2, '0')}`);
    const result = await bulk('create', [...ids].reverse().map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })));
    assert.deepEqual(result, { isSuccessful: true });

    const pages = await allPages(client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }, 10));
    assert.deepEqual(pages.map((page) => page.items.length), [10, 10, 5]);
    assert.deepEqual(pages.flatMap((page) => page.items.map((item) => item.registrationId)), ids, 'every enrollment once, in ID order');
    for (const [index, page] of pages.entries()) {
      assert.equal(page.headers['x-ms-item-type'], 'Enrollment');
      assert.equal(page.headers['x-ms-max-item-count'], '10');
      assert.equal(page.headers['x-ms-continuation'] === undefined, index === 2, 'a continuation token on all pages but the last');
    }
    // Items are the same documents GET shows: no keys.
    const first = pages[0]?.items[0];
    assert.deepEqual(first, await getEnrollment('page-00'));
    assert.deepEqual(first?.attestation, { type: 'symmetricKey' });

    // The callback form pages too, and without a page size the default (100) holds everything.
    const query = client.createIndividualEnrollmentQuery({ query: 'SELECT *' });
    const everything = await new Promise<Json[]>((resolve, reject) =>
      query.next((error, body) => (error ? reject(error) : resolve(body as unknown as Json[]))),
    );
    assert.equal(everything.length, 25);
    assert.equal(query.hasMoreResults, false);
  });

  test('enrollment groups page by 10 with a continuation token: 3 pages for 26', async () => {
    const ids = Array.from({ length: 26 }, (_, i) => `grp-page-${String(i).padStart(2, '0')}`);
    const created = await groupBulk('create', ids.map((enrollmentGroupId) => ({ enrollmentGroupId, attestation: { type: 'symmetricKey' } })));
    assert.deepEqual(created, { status: 200, body: { isSuccessful: true } });
    const pages = await allPages(client.createEnrollmentGroupQuery({ query: 'SELECT * FROM enrollmentGroups' }, 10));
    assert.deepEqual(pages.map((page) => page.items.length), [10, 10, 6]);
    assert.deepEqual(pages.flatMap((page) => page.items.map((item) => item.enrollmentGroupId)), ids);
    for (const [index, page] of pages.entries()) {
      assert.equal(page.headers['x-ms-item-type'], 'EnrollmentGroup');
      assert.equal(page.headers['x-ms-max-item-count'], '10');
      assert.equal(page.headers['x-ms-continuation'] === undefined, index === 2);
    }
    assert.deepEqual(pages[2]?.items[5], await getGroup('grp-page-25'));
  });

  test('WHERE on enrollments: prefix, =, !=, IN and AND; field names and ID values are case-insensitive', async () => {
    const result = await bulk('create', [
      { registrationId: 'w-alpha-1', deviceId: 'Dev-A', attestation: { type: 'symmetricKey' } },
      { registrationId: 'w-alpha-2', provisioningStatus: 'disabled', attestation: { type: 'symmetricKey' } },
      { registrationId: 'w-beta-1', attestation: { type: 'tpm', tpm: { endorsementKey: base64(60) } } },
      { registrationId: 'W-Beta-2', provisioningStatus: 'disabled', attestation: { type: 'tpm', tpm: { endorsementKey: base64(60) } } },
      { registrationId: 'other-1', attestation: { type: 'symmetricKey' } },
    ]);
    assert.deepEqual(result, { isSuccessful: true });
    const ids = async (query: string): Promise<string[]> => (await queryEnrollments(query, 2)).map((item) => item.registrationId);

    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId LIKE 'w-alpha%'"), ['w-alpha-1', 'w-alpha-2']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId LIKE 'W-BETA%'"), ['w-beta-1', 'W-Beta-2']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId = 'W-ALPHA-1'"), ['w-alpha-1']);
    assert.deepEqual(await ids("select * from enrollments where REGISTRATIONID = 'w-beta-2'"), ['W-Beta-2']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE provisioningStatus != 'disabled'"), ['other-1', 'w-alpha-1', 'w-beta-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId IN ('w-beta-1', 'OTHER-1', 'missing')"), ['other-1', 'w-beta-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE attestationType = 'tpm'"), ['w-beta-1', 'W-Beta-2']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE deviceId = 'dev-a'"), ['w-alpha-1']);
    assert.deepEqual(await ids("SELECT * WHERE registrationId LIKE 'w-%' AND provisioningStatus = 'disabled'"), ['w-alpha-2', 'W-Beta-2']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId LIKE 'w-%' AND attestationType IN ('tpm') AND provisioningStatus <> 'disabled'"), ['w-beta-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollments WHERE registrationId = 'nothing'"), []);
    // Whole documents, as GET shows them.
    assert.deepEqual(await queryEnrollments("SELECT * FROM enrollments WHERE registrationId = 'w-beta-1'"), [await getEnrollment('w-beta-1')]);
  });

  test('WHERE on enrollment groups', async () => {
    const created = await groupBulk('create', [
      { enrollmentGroupId: 'g-sym-1', attestation: { type: 'symmetricKey' } },
      { enrollmentGroupId: 'g-ca-1', provisioningStatus: 'disabled', attestation: { type: 'x509', x509: { caReferences: { primary: 'ca' } } } },
      { enrollmentGroupId: 'h-sym-1', attestation: { type: 'symmetricKey' } },
    ]);
    assert.equal(created.status, 200);
    const ids = async (query: string): Promise<string[]> => (await queryGroups(query)).map((item) => item.enrollmentGroupId);
    assert.deepEqual(await ids("SELECT * FROM enrollmentGroups WHERE enrollmentGroupId LIKE 'G-%'"), ['g-ca-1', 'g-sym-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollmentGroups WHERE attestationType = 'x509'"), ['g-ca-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollmentGroups WHERE provisioningStatus != 'disabled'"), ['g-sym-1', 'h-sym-1']);
    assert.deepEqual(await ids("SELECT * FROM enrollmentGroups WHERE enrollmentGroupId IN ('H-SYM-1', 'g-ca-1')"), ['g-ca-1', 'h-sym-1']);
    const noDeviceId = await failure(client.createEnrollmentGroupQuery({ query: "SELECT * FROM enrollmentGroups WHERE deviceId = 'x'" }).next(''));
    assertErrorBody(
      noDeviceId.body,
      400013,
      "The query is not supported: 'deviceId' is not a field you can filter on. Use SELECT * [FROM name] [WHERE field = 'value' AND field LIKE 'prefix%' AND field IN ('a','b') AND field != 'value']. Fields you can filter on: enrollmentGroupId, provisioningStatus, attestationType.",
    );
  });

  test('an unsupported query is a 400 that says what is supported', async () => {
    const unsupported = await failure(client.createIndividualEnrollmentQuery({ query: "SELECT * FROM enrollments WHERE etag = 'x'" }).next(''));
    assert.equal(unsupported.name, 'ArgumentError');
    assert.equal(unsupported.status, 400);
    assert.equal(unsupported.errorCodeHeader, 'InvalidQuery');
    assertErrorBody(
      unsupported.body,
      400013,
      "The query is not supported: 'etag' is not a field you can filter on. Use SELECT * [FROM name] [WHERE field = 'value' AND field LIKE 'prefix%' AND field IN ('a','b') AND field != 'value']. Fields you can filter on: registrationId, deviceId, provisioningStatus, attestationType.",
    );
    for (const [query, reason] of [
      ["SELECT * FROM enrollments WHERE registrationId = 'a' OR registrationId = 'b'", "only AND joins conditions, found 'OR'"],
      ['SELECT registrationId FROM enrollments', 'only SELECT * is supported'],
      ["SELECT * FROM enrollments WHERE registrationId LIKE '%a'", "LIKE supports only a prefix pattern such as 'abc%'"],
      ["SELECT * FROM enrollments WHERE registrationId > 'a'", "unexpected character '>'"],
      ["SELECT * FROM enrollments WHERE registrationId = 'a", 'a string literal is not closed'],
      ['DELETE FROM enrollments', 'it must start with SELECT *'],
    ] as const) {
      const error = await failure(client.createIndividualEnrollmentQuery({ query }).next(''));
      assert.equal(error.status, 400, query);
      assert.equal(error.body.errorCode, 400013, query);
      assert.ok(String(error.body.message).startsWith(`The query is not supported: ${reason}.`), `${query}: ${String(error.body.message)}`);
    }
  });

  test('a continuation token works only for the query that returned it', async () => {
    await bulk('create', ['t-1', 't-2', 't-3'].map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })));
    const query = client.createIndividualEnrollmentQuery({ query: 'SELECT *' }, 1);
    await query.next(query.continuationToken);
    assert.equal(query.hasMoreResults, true);
    const other = await call('POST', `/enrollments/query?${API}`, {
      headers: { authorization: server.token(), 'x-ms-continuation': query.continuationToken, 'x-ms-max-item-count': '1' },
      body: { query: "SELECT * WHERE registrationId LIKE 't-%'" },
    });
    assert.equal(other.status, 400);
    assertErrorBody(json(other.body), 400014, 'x-ms-continuation is not a token this query returned.');
    const forged = await call('POST', `/enrollments/query?${API}`, {
      headers: { authorization: server.token(), 'x-ms-continuation': 'not-a-token' },
      body: { query: 'SELECT *' },
    });
    assert.equal(json(forged.body).errorCode, 400014);
    const badSize = await call('POST', `/enrollments/query?${API}`, {
      headers: { authorization: server.token(), 'x-ms-max-item-count': '0' },
      body: { query: 'SELECT *' },
    });
    assertErrorBody(json(badSize.body), 400017, 'x-ms-max-item-count must be a positive integer.');
  });
});

describe('bulk operations', () => {
  const ids = Array.from({ length: 12 }, (_, i) => `bulk-${String(i).padStart(2, '0')}`);
  const item = (registrationId: string, extra: Json = {}): Json => ({ registrationId, attestation: { type: 'symmetricKey' }, ...extra });

  test('create: items succeed or fail on their own; an existing one is a 409 in errors', async () => {
    const existing = await putEnrollment(item('bulk-05'));
    const result = await bulk('create', [
      ...ids.map((id) => item(id, { provisioningStatus: 'disabled' })),
      item('bulk-bad-key', { attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: 'short' } } }),
      item('bulk bad id'),
      item('BULK-00'),
    ]);
    assert.deepEqual(result, {
      isSuccessful: false,
      errors: [
        { registrationId: 'bulk-05', errorCode: 409001, errorStatus: "The enrollment 'bulk-05' already exists." },
        { registrationId: 'bulk-bad-key', errorCode: 400011, errorStatus: 'attestation.symmetricKey.primaryKey must be base64 of 16 to 64 bytes.' },
        {
          registrationId: 'bulk bad id',
          errorCode: 400007,
          errorStatus: "The registration ID 'bulk bad id' is invalid: use 1-128 letters, digits, '-', '.', '_' or ':', starting and ending with a letter or digit.",
        },
        { registrationId: 'BULK-00', errorCode: 409001, errorStatus: "The enrollment 'BULK-00' already exists." },
      ],
    });
    const stored = await queryEnrollments("SELECT * WHERE registrationId LIKE 'bulk-%'");
    assert.deepEqual(stored.map((e) => e.registrationId), ids, 'the 11 new ones and the existing one; no invalid item');
    assert.deepEqual(await getEnrollment('bulk-05'), { ...existing, attestation: { type: 'symmetricKey' } }, 'the existing enrollment is untouched');
    assert.deepEqual(
      stored.filter((e) => e.registrationId !== 'bulk-05').map((e) => e.provisioningStatus),
      Array.from({ length: 11 }, () => 'disabled'),
    );
    // Bulk create returns no keys, but generated them: the attestation mechanism has them.
    const keys = json((await client.getIndividualEnrollmentAttestationMechanism('bulk-11')).responseBody);
    assert.match(keys.symmetricKey.primaryKey, KEY_64_BYTES);
  });

  test('update replaces regardless of etag and keeps generated keys; updateIfMatchETag checks each etag', async () => {
    assert.deepEqual(await bulk('create', ids.map((id) => item(id))), { isSuccessful: true });
    const keysBefore = json((await client.getIndividualEnrollmentAttestationMechanism('bulk-03')).responseBody);
    const before = await queryEnrollments('SELECT *');

    const updated = await bulk('update', before.map((e) => ({ ...e, etag: '"stale"', provisioningStatus: 'disabled' })));
    assert.deepEqual(updated, { isSuccessful: true });
    const after = await queryEnrollments('SELECT *');
    assert.deepEqual(after.map((e) => e.provisioningStatus), ids.map(() => 'disabled'));
    for (const [index, doc] of after.entries()) {
      assert.notEqual(doc.etag, before[index]?.etag, 'every write changes the etag');
      assert.equal(doc.createdDateTimeUtc, before[index]?.createdDateTimeUtc, 'createdDateTimeUtc is kept');
    }
    assert.deepEqual(json((await client.getIndividualEnrollmentAttestationMechanism('bulk-03')).responseBody), keysBefore);

    // updateIfMatchETag: current etags pass; a stale one and a missing entry fail on their own.
    const conditional = await bulk('updateIfMatchETag', [
      ...after.map((e) => ({ ...e, provisioningStatus: 'enabled', ...(e.registrationId === 'bulk-07' ? { etag: before[7]?.etag } : {}) })),
      item('bulk-missing', { etag: '"whatever"' }),
    ]);
    assert.deepEqual(conditional, {
      isSuccessful: false,
      errors: [
        { registrationId: 'bulk-07', errorCode: 412002, errorStatus: 'The etag does not match the current resource.' },
        { registrationId: 'bulk-missing', errorCode: 412002, errorStatus: "'bulk-missing' does not exist, so If-Match cannot match." },
      ],
    });
    const final = await queryEnrollments('SELECT *');
    assert.deepEqual(
      final.map((e) => [e.registrationId, e.provisioningStatus]),
      ids.map((id) => [id, id === 'bulk-07' ? 'disabled' : 'enabled']),
    );
  });

  test('delete: each item on its own, honouring its etag', async () => {
    assert.deepEqual(await bulk('create', ids.map((id) => item(id))), { isSuccessful: true });
    const current = await queryEnrollments('SELECT *');
    const result = await bulk('delete', [
      ...current.map((e) => (e.registrationId === 'bulk-02' ? { ...e, etag: '"stale"' } : e)),
      item('bulk-missing'),
    ]);
    assert.deepEqual(result, {
      isSuccessful: false,
      errors: [
        { registrationId: 'bulk-02', errorCode: 412002, errorStatus: 'The etag does not match the current resource.' },
        { registrationId: 'bulk-missing', errorCode: 404201, errorStatus: "Enrollment 'bulk-missing' was not found." },
      ],
    });
    assert.deepEqual((await queryEnrollments('SELECT *')).map((e) => e.registrationId), ['bulk-02']);
  });

  test(
    "the SDK's own spelling of the conditional mode, 'updateIfMatchEtag', is accepted",
    async () => {
      const created = await putEnrollment(item('bulk-sdk-mode'));
      const result = await bulk('updateIfMatchEtag', [{ ...created, provisioningStatus: 'disabled' }]);
      assert.deepEqual(result, { isSuccessful: true });
      assert.equal((await getEnrollment('bulk-sdk-mode')).provisioningStatus, 'disabled');
    },
  );

  test('more items than bulkMaxItems (default 1000) is a 400 and changes nothing', async () => {
    const many = Array.from({ length: 1001 }, (_, i) => item(`many-${i}`));
    const error = await failure(bulk('create', many));
    assert.equal(error.name, 'ArgumentError');
    assert.equal(error.status, 400);
    assertErrorBody(error.body, 400015, 'A bulk operation takes at most 1000 items; this one has 1001.');
    assert.deepEqual(await queryEnrollments('SELECT *'), []);
  });

  test('enrollment group bulk: create with a conflict, update, delete', async () => {
    await putGroup({ enrollmentGroupId: 'bulk-group-03', attestation: { type: 'symmetricKey' } });
    const groupIds = Array.from({ length: 11 }, (_, i) => `bulk-group-${String(i).padStart(2, '0')}`);
    const created = await groupBulk('create', groupIds.map((enrollmentGroupId) => ({ enrollmentGroupId, attestation: { type: 'symmetricKey' } })));
    assert.deepEqual(created, {
      status: 200,
      body: { isSuccessful: false, errors: [{ enrollmentGroupId: 'bulk-group-03', errorCode: 409001, errorStatus: "The enrollment group 'bulk-group-03' already exists." }] },
    });
    const stored = await queryGroups('SELECT *');
    assert.deepEqual(stored.map((g) => g.enrollmentGroupId), groupIds);
    const updated = await groupBulk('update', stored.map((g) => ({ ...g, provisioningStatus: 'disabled' })));
    assert.deepEqual(updated, { status: 200, body: { isSuccessful: true } });
    assert.deepEqual((await queryGroups("SELECT * WHERE provisioningStatus = 'disabled'")).length, 11);
    const deleted = await groupBulk('delete', groupIds.map((enrollmentGroupId) => ({ enrollmentGroupId })));
    assert.deepEqual(deleted, { status: 200, body: { isSuccessful: true } });
    assert.deepEqual(await queryGroups('SELECT *'), []);
    const tooMany = await groupBulk('create', Array.from({ length: 1001 }, (_, i) => ({ enrollmentGroupId: `g-${i}`, attestation: { type: 'symmetricKey' } })));
    assert.equal(tooMany.status, 400);
    assertErrorBody(tooMany.body, 400015, 'A bulk operation takes at most 1000 items; this one has 1001.');
  });
});

describe('registration records', () => {
  test('get shows the record without internal fields; delete honours If-Match', async () => {
    const stored = record('rec-1', { payload: { firmware: '1.2.3' }, enrollmentGroupId: 'some-group' });
    await server.app.store.putRegistration(instanceId, stored);
    assert.deepEqual(await getRecord('REC-1'), shownRecord(stored));
    assert.deepEqual(shownRecord(stored), {
      registrationId: 'rec-1',
      createdDateTimeUtc: '2024-05-01T10:00:00.0000000Z',
      assignedHub: 'hub1.example.net',
      deviceId: 'rec-1',
      status: 'assigned',
      substatus: 'initialAssignment',
      lastUpdatedDateTimeUtc: '2024-05-01T10:00:01.0000000Z',
      etag: '"rec-1-v1"',
      payload: { firmware: '1.2.3' },
    });
    const failed = record('rec-failed', { status: 'failed', errorCode: 401002, errorMessage: 'Unauthorized' });
    delete failed.assignedHub;
    delete failed.substatus;
    await server.app.store.putRegistration(instanceId, failed);
    assert.deepEqual(await getRecord('rec-failed'), shownRecord(failed));

    const stale = await failure(client.deleteDeviceRegistrationState('rec-1', '"rec-1-v0"'));
    assert.equal(stale.name, 'InvalidEtagError');
    assertErrorBody(stale.body, 412002, 'The etag does not match the current resource.');
    assert.deepEqual(await getRecord('rec-1'), shownRecord(stored));
    await client.deleteDeviceRegistrationState('rec-1', '"rec-1-v1"');
    const gone = await failure(client.getDeviceRegistrationState('rec-1'));
    assert.equal(gone.status, 404);
    assertErrorBody(gone.body, 404202, "Registration 'rec-1' was not found.");
    const again = await failure(client.deleteDeviceRegistrationState('rec-1'));
    assertErrorBody(again.body, 404202, "Registration 'rec-1' was not found.");
    // Without If-Match the delete is unconditional.
    await client.deleteDeviceRegistrationState('rec-failed');
    assert.equal((await failure(client.getDeviceRegistrationState('rec-failed'))).status, 404);
  });

  test('query by group pages through the records of that group only', async () => {
    await putGroup({ enrollmentGroupId: 'Reg-Group', attestation: { type: 'symmetricKey' } });
    await putGroup({ enrollmentGroupId: 'other-group', attestation: { type: 'symmetricKey' } });
    const members = Array.from({ length: 12 }, (_, i) => record(`member-${String(i).padStart(2, '0')}`, { enrollmentGroupId: 'reg-group', ...(i === 4 ? { status: 'failed' as const } : {}) }));
    for (const member of members) await server.app.store.putRegistration(instanceId, member);
    await server.app.store.putRegistration(instanceId, record('outsider', { enrollmentGroupId: 'other-group' }));
    await server.app.store.putRegistration(instanceId, record('individual'));

    const pages = await allPages(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT *' }, 'REG-GROUP', 5));
    assert.deepEqual(pages.map((page) => page.items.length), [5, 5, 2]);
    assert.deepEqual(pages.flatMap((page) => page.items), members.map(shownRecord));
    for (const [index, page] of pages.entries()) {
      assert.equal(page.headers['x-ms-item-type'], 'DeviceRegistration');
      assert.equal(page.headers['x-ms-max-item-count'], '5');
      assert.equal(page.headers['x-ms-continuation'] === undefined, index === 2);
    }
    const failedOnly = await allPages(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: "SELECT * WHERE status = 'failed'" }, 'reg-group'));
    assert.deepEqual(failedOnly.flatMap((page) => page.items.map((item) => item.registrationId)), ['member-04']);

    const missing = await failure(client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT *' }, 'no-such-group').next(''));
    assert.equal(missing.status, 404);
    assertErrorBody(missing.body, 404203, "Enrollment group 'no-such-group' was not found.");
  });

  test("an individual enrollment shows its own record as registrationState, not a group device's", async () => {
    const created = await putEnrollment({ registrationId: 'with-record', attestation: { type: 'symmetricKey' } });
    const own = record('with-record', { payload: { p: 1 } });
    await server.app.store.putRegistration(instanceId, own);
    const got = await getEnrollment('with-record');
    assert.deepEqual(got, { ...created, attestation: { type: 'symmetricKey' }, registrationState: shownRecord(own) });
    assert.deepEqual(Object.keys(got).slice(0, 2), ['registrationId', 'registrationState']);
    assert.deepEqual((await queryEnrollments("SELECT * WHERE registrationId = 'with-record'"))[0], got);
    // The SDK sends registrationState back on GET-modify-PUT: it is read-only and ignored.
    const updated = await putEnrollment({ ...got, registrationState: { ...got.registrationState, status: 'failed' }, provisioningStatus: 'disabled' });
    assert.deepEqual(updated.registrationState, shownRecord(own));
    assert.deepEqual(await getRecord('with-record'), shownRecord(own));

    await server.app.store.putRegistration(instanceId, record('with-record', { enrollmentGroupId: 'some-group' }));
    assert.equal((await getEnrollment('with-record')).registrationState, undefined);
  });

  test('deleting an individual enrollment deletes its record, and no other', async () => {
    await putEnrollment({ registrationId: 'solo', attestation: { type: 'symmetricKey' } });
    await putEnrollment({ registrationId: 'shares-id', attestation: { type: 'symmetricKey' } });
    await server.app.store.putRegistration(instanceId, record('solo'));
    await server.app.store.putRegistration(instanceId, record('bystander'));
    // A device of some group that happens to have the same registration ID: its record is the group's.
    const groupDevice = record('shares-id', { enrollmentGroupId: 'some-group' });
    await server.app.store.putRegistration(instanceId, groupDevice);

    await client.deleteIndividualEnrollment('SOLO');
    assert.equal((await failure(client.getDeviceRegistrationState('solo'))).status, 404);
    assert.deepEqual(await getRecord('bystander'), shownRecord(record('bystander')));
    await client.deleteIndividualEnrollment('shares-id');
    assert.deepEqual(await getRecord('shares-id'), shownRecord(groupDevice));
  });

  test("deleting a group deletes the records of every device registered through it, and not other groups' or individuals'", async () => {
    const group = await putGroup({ enrollmentGroupId: 'Doomed-Group', attestation: { type: 'symmetricKey' } });
    await putGroup({ enrollmentGroupId: 'kept-group', attestation: { type: 'symmetricKey' } });
    const doomed = ['d-1', 'd-2', 'd-3'].map((id) => record(id, { enrollmentGroupId: 'doomed-group' }));
    const kept = [record('k-1', { enrollmentGroupId: 'kept-group' }), record('solo')];
    for (const each of [...doomed, ...kept]) await server.app.store.putRegistration(instanceId, each);

    // A stale etag deletes nothing: neither the group nor its records.
    const stale = await failure(client.deleteEnrollmentGroup('doomed-group', '"stale"'));
    assert.equal(stale.status, 412);
    assert.deepEqual(await getRecord('d-1'), shownRecord(doomed[0] as StoredRegistration));

    await client.deleteEnrollmentGroup('DOOMED-GROUP', String(group.etag));
    for (const id of ['d-1', 'd-2', 'd-3']) assert.equal((await failure(client.getDeviceRegistrationState(id))).status, 404, id);
    for (const each of kept) assert.deepEqual(await getRecord(each.registrationId), shownRecord(each));
    assert.deepEqual((await getGroup('kept-group')).enrollmentGroupId, 'kept-group');
  });
});
