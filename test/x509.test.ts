import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import iothub from 'azure-iothub';
import deviceSdk from 'azure-iot-provisioning-device';
import httpTransport from 'azure-iot-provisioning-device-http';
import serviceSdk from 'azure-iot-provisioning-service';
import x509Security from 'azure-iot-security-x509';
import type { FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import { buildProgram } from '../src/cli/program.js';
import {
  createDeviceCertificate,
  createIntermediateCertificate,
  createRootCertificate,
  createSelfSignedDeviceCertificate,
  createVerificationCertificate,
  type CertificateAndKey,
} from '../src/tls/x509-issuer.js';
import { sdkRegister, type Json } from './devices.js';
import { forgeDeviceCertificate } from './forged-certificates.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * X.509 attestation end to end: certificates made here, devices registering with the unmodified official SDK
 * (X509Security + the Http transport, the chain as the PEM of leaf then intermediates), hub identities read back
 * with the unmodified azure-iothub Registry, CA certificates with proof of possession through the service API and
 * the CLI. One PKI per scenario, so no certificate is enrolled twice and each verdict has one cause.
 */
const { Registry } = iothub;
const { ProvisioningDeviceClient } = deviceSdk;
const { Http } = httpTransport;
const { ProvisioningServiceClient } = serviceSdk;
const { X509Security } = x509Security;

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;
let registry: InstanceType<typeof Registry>;
const DAY = 24 * 60 * 60 * 1000;
const API = 'api-version=2021-10-01';
/** What the server logged about refused X.509 devices: the precise reason the wire does not carry. */
const refusals: { registrationId: string; reason: string }[] = [];

interface Pki {
  root: CertificateAndKey;
  intermediate: CertificateAndKey;
}
async function pki(name: string): Promise<Pki> {
  const root = await createRootCertificate({ commonName: `${name} Root` });
  return { root, intermediate: await createIntermediateCertificate(root, { commonName: `${name} Intermediate` }) };
}
/** A device certificate under the PKI's intermediate, and the chain it presents (leaf + intermediate). */
async function deviceUnder(pkiOf: Pki, registrationId: string, spec: { notBefore?: Date; notAfter?: Date } = {}): Promise<{ device: CertificateAndKey; chain: string }> {
  const device = await createDeviceCertificate(pkiOf.intermediate, { commonName: registrationId, ...spec });
  return { device, chain: device.certPem + pkiOf.intermediate.certPem };
}
const sha1Of = (pem: string): string => new X509Certificate(pem).fingerprint.replaceAll(':', '');
const sha256Of = (pem: string): string => new X509Certificate(pem).fingerprint256.replaceAll(':', '');

/** Registers with the official SDK over HTTPS with a TLS client certificate; resolves with registrationState. */
function x509Register(registrationId: string, certPem: string, keyPem: string): Promise<Json> {
  const client = ProvisioningDeviceClient.create('localhost', idScope, new Http(), new X509Security(registrationId, { cert: certPem, key: keyPem }) as never);
  return new Promise((resolve, reject) => {
    client.register((error?: Error, result?: unknown) => (error ? reject(error) : resolve(result as Json)));
  });
}

/**
 * The SDK's refusal: an UnauthorizedError whose responseBody is the DPS error body, and the server log line that
 * names the reason (so each refusal is shown to happen for the right reason).
 */
async function assertRefused(registrationId: string, registration: Promise<Json>, reason: RegExp): Promise<void> {
  const logged = refusals.length;
  const error = await registration.then(
    (state) => assert.fail(`expected a refusal, got ${JSON.stringify(state)}`),
    (failure: unknown) => failure as Error & { responseBody?: string; response?: { statusCode?: number; headers?: Record<string, string> } },
  );
  assert.equal(error.name, 'UnauthorizedError', error.message);
  assert.equal(error.response?.statusCode, 401);
  assert.equal(error.response?.headers?.['x-ms-error-code'], 'Unauthorized');
  const body = JSON.parse(error.responseBody ?? '') as Json;
  assert.deepEqual(Object.keys(body).sort(), ['errorCode', 'message', 'timestampUtc', 'trackingId']);
  assert.equal(body.errorCode, 401002);
  assert.equal(body.message, 'Invalid certificate.');
  assert.match(body.trackingId, /^[0-9a-f-]{36}$/);
  assert.match(body.timestampUtc, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$/);
  const reasons = refusals.slice(logged).filter((entry) => entry.registrationId === registrationId);
  assert.equal(reasons.length, 1, `one refusal logged for ${registrationId}`);
  assert.match(reasons[0]?.reason ?? '', reason);
}

async function createEnrollment(body: Json): Promise<Json> {
  return (await service.createOrUpdateIndividualEnrollment(body as never)).responseBody as unknown as Json;
}
async function createGroup(body: Json): Promise<Json> {
  return (await service.createOrUpdateEnrollmentGroup(body as never)).responseBody as unknown as Json;
}
function signingGroup(enrollmentGroupId: string, certPem: string, extra: Json = {}): Json {
  return { enrollmentGroupId, attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: certPem } } } }, ...extra };
}
function caGroup(enrollmentGroupId: string, caName: string, extra: Json = {}): Json {
  return { enrollmentGroupId, attestation: { type: 'x509', x509: { caReferences: { primary: caName } } }, ...extra };
}
function getDevice(deviceId: string): Promise<Json | undefined> {
  return new Promise((resolve, reject) =>
    registry.get(deviceId, (error, device) => {
      if (error && (error as { response?: { statusCode?: number } }).response?.statusCode === 404) resolve(undefined);
      else if (error) reject(error);
      else resolve(device as unknown as Json);
    }),
  );
}
async function record(registrationId: string): Promise<Json> {
  return (await service.getDeviceRegistrationState(registrationId)).responseBody as unknown as Json;
}
const serviceCall = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
  call(method, `${path}?${API}`, { headers: { authorization: server.token(), ...headers }, ...(body === undefined ? {} : { body }) });

/** Upload + generateVerificationCode + verify, as the DPS portal does it. */
async function uploadVerifiedCa(name: string, ca: CertificateAndKey): Promise<Json> {
  assert.equal((await serviceCall('PUT', `/certificates/${name}`, { certificate: ca.certPem })).status, 200);
  const code = await serviceCall('POST', `/certificates/${name}/generateVerificationCode`);
  assert.equal(code.status, 200, code.text);
  const verification = await createVerificationCertificate(ca, (code.body as Json).verificationCode as string);
  const verified = await serviceCall('POST', `/certificates/${name}/verify`, { certificate: verification.certPem });
  assert.equal(verified.status, 200, verified.text);
  return verified.body as Json;
}

before(async () => {
  const logger = pino({ level: 'info' }, {
    write(line: string) {
      const entry = JSON.parse(line) as Json;
      if (entry.msg === 'X.509 device refused') refusals.push({ registrationId: entry.registrationId, reason: entry.reason });
    },
  });
  server = await startServer({}, { logger: logger as unknown as FastifyBaseLogger });
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  registry = Registry.fromConnectionString(server.info.builtInHubConnectionString);
});
after(async () => {
  await server.close();
});

describe('X.509 devices that provision with the official SDK over HTTPS', () => {
  test('a self-signed device of an individual enrollment gets a selfSigned hub identity with the SHA-1 thumbprint', async () => {
    const device = await createSelfSignedDeviceCertificate({ commonName: 'x509-self-1' });
    const enrollment = await createEnrollment({
      registrationId: 'x509-self-1',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: device.certPem } } } },
      initialTwin: { tags: { kind: 'self-signed' } },
    });
    // The enrollment shows the certificate's info, never the certificate text.
    assert.equal(enrollment.attestation.x509.clientCertificates.primary.info.sha1Thumbprint, sha1Of(device.certPem));
    assert.equal(enrollment.attestation.x509.clientCertificates.primary.certificate, undefined);

    const state = await x509Register('x509-self-1', device.certPem, device.keyPem);
    assert.equal(state.status, 'assigned');
    assert.equal(state.assignedHub, 'localhost');
    assert.equal(state.deviceId, 'x509-self-1');
    assert.equal(state.substatus, 'initialAssignment');
    assert.equal(state.symmetricKey, undefined);
    assert.deepEqual(Object.keys(state.x509), ['certificateInfo']);
    assert.deepEqual(state.x509.certificateInfo, enrollment.attestation.x509.clientCertificates.primary.info);

    const identity = await getDevice('x509-self-1');
    assert.equal(identity?.authentication.type, 'selfSigned');
    assert.deepEqual(identity?.authentication.x509Thumbprint, { primaryThumbprint: sha1Of(device.certPem), secondaryThumbprint: null });
    assert.equal((await record('x509-self-1')).status, 'assigned');
  });

  test('a CA-signed device of an individual enrollment (as its secondary certificate), with its deviceId', async () => {
    const issuing = await pki('Individual');
    const { device, chain } = await deviceUnder(issuing, 'x509-ind-ca');
    const other = await createSelfSignedDeviceCertificate({ commonName: 'x509-ind-ca' });
    await createEnrollment({
      registrationId: 'x509-ind-ca',
      deviceId: 'x509-ind-ca-device',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: other.certPem }, secondary: { certificate: device.certPem } } } },
    });
    const state = await x509Register('x509-ind-ca', chain, device.keyPem);
    assert.equal(state.status, 'assigned');
    assert.equal(state.deviceId, 'x509-ind-ca-device');
    assert.equal(state.x509.certificateInfo.sha256Thumbprint, sha256Of(device.certPem));
    assert.equal(state.x509.certificateInfo.issuerName, 'CN=Individual Intermediate');
    const identity = await getDevice('x509-ind-ca-device');
    assert.deepEqual(identity?.authentication.x509Thumbprint, { primaryThumbprint: sha1Of(other.certPem), secondaryThumbprint: sha1Of(device.certPem) });
    assert.equal(identity?.authentication.type, 'selfSigned');
  });

  test('a device under a group enrolled by its root (leaf + intermediate presented) gets a certificateAuthority identity', async () => {
    const issuing = await pki('GroupRoot');
    await createGroup(signingGroup('x509-by-root', issuing.root.certPem, { initialTwin: { tags: { line: 'root' } } }));
    const { device, chain } = await deviceUnder(issuing, 'x509-grp-root-1');
    const state = await x509Register('x509-grp-root-1', chain, device.keyPem);
    assert.equal(state.status, 'assigned');
    assert.equal(state.deviceId, 'x509-grp-root-1');
    assert.equal(state.x509.enrollmentGroupId, 'x509-by-root');
    assert.equal(state.x509.certificateInfo.sha256Thumbprint, sha256Of(device.certPem));
    assert.equal(state.x509.signingCertificateInfo.sha256Thumbprint, sha256Of(issuing.root.certPem));
    assert.equal(state.x509.signingCertificateInfo.subjectName, 'CN=GroupRoot Root');
    const identity = await getDevice('x509-grp-root-1');
    assert.equal(identity?.authentication.type, 'certificateAuthority');
    assert.deepEqual(identity?.authentication.x509Thumbprint, { primaryThumbprint: null, secondaryThumbprint: null });
    const twin = await new Promise<Json>((resolve, reject) => registry.getTwin('x509-grp-root-1', (error, result) => (error ? reject(error) : resolve(result as unknown as Json))));
    assert.deepEqual(twin.tags, { line: 'root' });
    // The record names the group, so the group's registration query finds it.
    const inGroup = await service.createEnrollmentGroupDeviceRegistrationStateQuery({ query: 'SELECT *' }, 'x509-by-root').next();
    assert.deepEqual((inGroup.responseBody as unknown as Json[]).map((item) => item.registrationId), ['x509-grp-root-1']);
  });

  test('a device under a group enrolled by its intermediate: with the intermediate presented, and with the leaf alone', async () => {
    const issuing = await pki('GroupIntermediate');
    await createGroup(signingGroup('x509-by-intermediate', issuing.intermediate.certPem));
    const withChain = await deviceUnder(issuing, 'x509-grp-int-1');
    const state = await x509Register('x509-grp-int-1', withChain.chain, withChain.device.keyPem);
    assert.equal(state.status, 'assigned');
    assert.equal(state.x509.enrollmentGroupId, 'x509-by-intermediate');
    assert.equal(state.x509.signingCertificateInfo.sha256Thumbprint, sha256Of(issuing.intermediate.certPem));
    // The enrolled certificate is the leaf's direct issuer: nothing lies between, so nothing is missing.
    const leafOnly = await deviceUnder(issuing, 'x509-grp-int-2');
    assert.equal((await x509Register('x509-grp-int-2', leafOnly.device.certPem, leafOnly.device.keyPem)).status, 'assigned');
    assert.equal((await getDevice('x509-grp-int-2'))?.authentication.type, 'certificateAuthority');
  });

  test('a device under a group enrolled by a verified CA reference', async () => {
    const issuing = await pki('Verified');
    const verified = await uploadVerifiedCa('verified-root', issuing.root);
    assert.equal(verified.isVerified, true);
    await createGroup(caGroup('x509-by-ca', 'verified-root'));
    const { device, chain } = await deviceUnder(issuing, 'x509-grp-ca-1');
    const state = await x509Register('x509-grp-ca-1', chain, device.keyPem);
    assert.equal(state.status, 'assigned');
    assert.equal(state.x509.enrollmentGroupId, 'x509-by-ca');
    assert.equal(state.x509.signingCertificateInfo.sha256Thumbprint, sha256Of(issuing.root.certPem));
    assert.equal((await getDevice('x509-grp-ca-1'))?.authentication.type, 'certificateAuthority');

    // Once the CA is deleted, the group vouches for no one.
    assert.equal((await serviceCall('DELETE', '/certificates/verified-root')).status, 204);
    const next = await deviceUnder(issuing, 'x509-grp-ca-2');
    await assertRefused('x509-grp-ca-2', x509Register('x509-grp-ca-2', next.chain, next.device.keyPem), /no enrollment names the leaf or a certificate of its chain/);
  });

  test('registering again keeps the device on its hub and reports the X.509 section again', async () => {
    const device = await createSelfSignedDeviceCertificate({ commonName: 'x509-again' });
    await createEnrollment({ registrationId: 'x509-again', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: device.certPem } } } } });
    const first = await x509Register('x509-again', device.certPem, device.keyPem);
    const second = await x509Register('x509-again', device.certPem, device.keyPem);
    assert.equal(second.status, 'assigned');
    assert.equal(second.assignedHub, first.assignedHub);
    assert.deepEqual(second.x509, first.x509);
  });
});

describe('X.509 devices that are refused, each with the DPS error body', () => {
  let shared: Pki;
  before(async () => {
    shared = await pki('Refusals');
    await createGroup(signingGroup('x509-refusals-root', shared.root.certPem));
  });

  test('an expired leaf', async () => {
    const { device, chain } = await deviceUnder(shared, 'x509-expired', { notBefore: new Date(Date.now() - 30 * DAY), notAfter: new Date(Date.now() - DAY) });
    await assertRefused('x509-expired', x509Register('x509-expired', chain, device.keyPem), /the leaf certificate \(CN=x509-expired\) expired at/);
    assert.equal(await getDevice('x509-expired'), undefined);
  });

  test('a CN that differs from the registration ID', async () => {
    const { device, chain } = await deviceUnder(shared, 'x509-real-cn');
    await assertRefused('x509-claimed-id', x509Register('x509-claimed-id', chain, device.keyPem), /CN 'x509-real-cn' differs from the registration ID 'x509-claimed-id'/);
    assert.equal(await getDevice('x509-claimed-id'), undefined);
    assert.equal(await getDevice('x509-real-cn'), undefined);
  });

  test('a chain that omits the intermediate between the leaf and the enrolled root', async () => {
    const { device } = await deviceUnder(shared, 'x509-no-intermediate');
    await assertRefused('x509-no-intermediate', x509Register('x509-no-intermediate', device.certPem, device.keyPem), /no enrollment names the leaf.*issued by CN=Refusals Intermediate/);
    assert.equal(await getDevice('x509-no-intermediate'), undefined);
  });

  test('a CA that was uploaded but never verified', async () => {
    const issuing = await pki('Unverified');
    assert.equal((await serviceCall('PUT', '/certificates/unverified-root', { certificate: issuing.root.certPem })).status, 200);
    assert.equal((await serviceCall('POST', '/certificates/unverified-root/generateVerificationCode')).status, 200);
    await createGroup(caGroup('x509-by-unverified-ca', 'unverified-root'));
    const { device, chain } = await deviceUnder(issuing, 'x509-unverified-1');
    await assertRefused('x509-unverified-1', x509Register('x509-unverified-1', chain, device.keyPem), /CA certificate 'unverified-root' of enrollment group 'x509-by-unverified-ca', which is not verified/);
    assert.equal(await getDevice('x509-unverified-1'), undefined);
  });

  test('a certificate from an unrelated CA', async () => {
    const unrelated = await pki('Unrelated');
    const { device, chain } = await deviceUnder(unrelated, 'x509-unrelated');
    await assertRefused('x509-unrelated', x509Register('x509-unrelated', chain, device.keyPem), /no enrollment names the leaf.*issued by CN=Unrelated Root/);
    // Self-signed, with no individual enrollment: the same.
    const selfSigned = await createSelfSignedDeviceCertificate({ commonName: 'x509-unenrolled' });
    await assertRefused('x509-unenrolled', x509Register('x509-unenrolled', selfSigned.certPem, selfSigned.keyPem), /no enrollment names the leaf/);
  });

  test('a leaf with the right issuer name and key identifier, signed by another key', async () => {
    const forged = await forgeDeviceCertificate(shared.intermediate, 'x509-forged');
    await assertRefused('x509-forged', x509Register('x509-forged', forged.certPem + shared.intermediate.certPem, forged.keyPem), /did not sign CN=x509-forged \(the signature does not verify\)/);
    assert.equal(await getDevice('x509-forged'), undefined);
  });

  test('a leaf that is not the certificate of the individual enrollment for its registration ID', async () => {
    const enrolled = await createSelfSignedDeviceCertificate({ commonName: 'x509-swapped' });
    await createEnrollment({ registrationId: 'x509-swapped', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: enrolled.certPem } } } } });
    // Signed by a CA of an enabled group, but the individual enrollment decides (dps-wire.md §8.3).
    const { device, chain } = await deviceUnder(shared, 'x509-swapped');
    await assertRefused('x509-swapped', x509Register('x509-swapped', chain, device.keyPem), /neither the primary nor the secondary certificate of enrollment 'x509-swapped'/);
  });

  test('a disabled individual enrollment under an enabled group: the registration ends disabled, no hub identity', async () => {
    const { device, chain } = await deviceUnder(shared, 'x509-blocked');
    await createEnrollment({
      registrationId: 'x509-blocked',
      provisioningStatus: 'disabled',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: device.certPem } } } },
    });
    // DPS reports a disabled enrollment as status "disabled" (dps-wire.md §8.3), which the SDK turns into an error.
    await assert.rejects(x509Register('x509-blocked', chain, device.keyPem), /status is disabled/);
    const blocked = await record('x509-blocked');
    assert.equal(blocked.status, 'disabled');
    assert.equal(blocked.errorCode, 401004);
    assert.equal(blocked.errorMessage, "The individual enrollment 'x509-blocked' is disabled.");
    assert.equal(blocked.assignedHub, undefined);
    assert.equal(await getDevice('x509-blocked'), undefined);
    // The group alone would have taken it.
    const sibling = await deviceUnder(shared, 'x509-blocked-sibling');
    assert.equal((await x509Register('x509-blocked-sibling', sibling.chain, sibling.device.keyPem)).status, 'assigned');
  });

  test('a disabled group: the registration ends disabled, no hub identity', async () => {
    const issuing = await pki('Disabled');
    await createGroup(signingGroup('x509-disabled-group', issuing.root.certPem, { provisioningStatus: 'disabled' }));
    const { device, chain } = await deviceUnder(issuing, 'x509-in-disabled-group');
    await assert.rejects(x509Register('x509-in-disabled-group', chain, device.keyPem), /status is disabled/);
    const refused = await record('x509-in-disabled-group');
    assert.equal(refused.status, 'disabled');
    assert.equal(refused.errorCode, 401004);
    assert.equal(refused.errorMessage, "The enrollment group 'x509-disabled-group' is disabled.");
    assert.equal(await getDevice('x509-in-disabled-group'), undefined);
  });

  test('a disabled group lower in the chain blocks an enabled group higher up', async () => {
    const issuing = await pki('Layered');
    await createGroup(signingGroup('x509-layer-root', issuing.root.certPem));
    await createGroup(signingGroup('x509-layer-intermediate', issuing.intermediate.certPem, { provisioningStatus: 'disabled' }));
    const { device, chain } = await deviceUnder(issuing, 'x509-layered');
    await assert.rejects(x509Register('x509-layered', chain, device.keyPem), /status is disabled/);
    assert.equal(await getDevice('x509-layered'), undefined);
  });
});

describe('one port for every caller', () => {
  test('symmetric-key devices and the service API keep working on the HTTPS port that requests client certificates', async () => {
    const enrollment = await createEnrollment({ registrationId: 'x509-port-sas', attestation: { type: 'symmetricKey' } });
    const state = await sdkRegister(idScope, 'x509-port-sas', enrollment.attestation.symmetricKey.primaryKey as string);
    assert.equal(state.status, 'assigned');
    assert.deepEqual(state.symmetricKey, {});
    assert.equal((await getDevice('x509-port-sas'))?.authentication.type, 'sas');
    assert.equal((await serviceCall('GET', '/enrollments/x509-port-sas')).status, 200);
  });

  test('a poll on a new TLS connection sees the intermediates again (no session resumption that would drop them)', async () => {
    const issuing = await pki('Reconnect');
    await createGroup(signingGroup('x509-reconnect', issuing.root.certPem));
    const { device, chain } = await deviceUnder(issuing, 'x509-reconnect-1');
    // No keep-alive: each request opens a connection, and the agent offers the previous TLS session each time.
    const agent = new https.Agent({ keepAlive: false });
    const request = (method: string, path: string, body?: Json) =>
      new Promise<{ status: number; body: Json; resumed: boolean }>((resolve, reject) => {
        const outgoing = https.request(
          { host: 'localhost', path, method, agent, cert: chain, key: device.keyPem, headers: { 'content-type': 'application/json' } },
          (response) => {
            let text = '';
            response.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
            response.on('end', () =>
              resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) as Json, resumed: (response.socket as TLSSocket).isSessionReused() }),
            );
          },
        );
        outgoing.on('error', reject);
        outgoing.end(body === undefined ? undefined : JSON.stringify(body));
      });
    try {
      const registered = await request('PUT', `/${idScope}/registrations/x509-reconnect-1/register?api-version=2019-03-31`, { registrationId: 'x509-reconnect-1' });
      assert.equal(registered.status, 202, JSON.stringify(registered.body));
      await new Promise((resolve) => setTimeout(resolve, 100));
      const polled = await request('GET', `/${idScope}/registrations/x509-reconnect-1/operations/${registered.body.operationId as string}?api-version=2019-03-31`);
      assert.equal(polled.resumed, false);
      assert.equal(polled.status, 200, JSON.stringify(polled.body));
      assert.equal(polled.body.status, 'assigned');
      assert.equal(polled.body.registrationState.x509.enrollmentGroupId, 'x509-reconnect');
    } finally {
      agent.destroy();
    }
  });

  test('a device without a SAS token or a client certificate is refused as Unauthorized', async () => {
    const response = await call('PUT', `/${idScope}/registrations/nobody/register?api-version=2019-03-31`, { body: { registrationId: 'nobody' } });
    assert.equal(response.status, 401);
    assert.deepEqual({ errorCode: (response.body as Json).errorCode, message: (response.body as Json).message }, { errorCode: 401002, message: 'Unauthorized' });
  });
});

describe('a certificate may appear in only one enrollment entry', () => {
  test('a second individual enrollment, or a group, with the same certificate is a 409', async () => {
    const cert = await createSelfSignedDeviceCertificate({ commonName: 'x509-unique' });
    await createEnrollment({ registrationId: 'x509-unique', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.certPem } } } } });
    const twice = await serviceCall('PUT', '/enrollments/x509-unique-2', {
      registrationId: 'x509-unique-2',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.certPem } } } },
    });
    assert.equal(twice.status, 409);
    assert.equal((twice.body as Json).errorCode, 409002);
    assert.match((twice.body as Json).message, /already used by enrollment 'x509-unique'/);
    // Base64 of the PEM is the same certificate.
    const asGroup = await serviceCall('PUT', '/enrollmentGroups/x509-unique-group', signingGroup('x509-unique-group', Buffer.from(cert.certPem).toString('base64')));
    assert.equal(asGroup.status, 409);
    assert.equal((asGroup.body as Json).errorCode, 409002);

    // And the other way round: a group's signing certificate cannot become an individual's certificate.
    const issuing = await pki('Unique');
    await createGroup(signingGroup('x509-unique-root', issuing.root.certPem));
    const der = new X509Certificate(issuing.root.certPem).raw.toString('base64');
    const asIndividual = await serviceCall('PUT', '/enrollments/x509-unique-3', {
      registrationId: 'x509-unique-3',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: der } } } },
    });
    assert.equal(asIndividual.status, 409);
    assert.match((asIndividual.body as Json).message, /already used by enrollment group 'x509-unique-root'/);
  });

  test('certificate text with a private key is refused and nothing echoes certificate text', async () => {
    const cert = await createSelfSignedDeviceCertificate({ commonName: 'x509-with-key' });
    const refused = await serviceCall('PUT', '/enrollments/x509-with-key', {
      registrationId: 'x509-with-key',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.certPem + cert.keyPem } } } },
    });
    assert.equal(refused.status, 400);
    assert.equal((refused.body as Json).errorCode, 400012);
    assert.ok(!refused.text.includes('PRIVATE KEY'));
    const asBase64 = await serviceCall('PUT', '/enrollments/x509-with-key', {
      registrationId: 'x509-with-key',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: Buffer.from(cert.certPem + cert.keyPem).toString('base64') } } } },
    });
    assert.equal(asBase64.status, 400, 'a key after the certificate in base64 of PEM is refused too');
    assert.equal((asBase64.body as Json).errorCode, 400012);
    const created = await serviceCall('PUT', '/enrollments/x509-with-key', {
      registrationId: 'x509-with-key',
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: cert.certPem } } } },
    });
    assert.equal(created.status, 200);
    assert.ok(!created.text.includes('BEGIN CERTIFICATE'), 'the PUT response carries info, not the certificate');
    assert.ok(!(await serviceCall('GET', '/enrollments/x509-with-key')).text.includes('BEGIN CERTIFICATE'));
  });
});

describe('CA certificates with proof of possession (service API)', () => {
  test('upload, list, generate a code, refuse wrong proofs, verify; the same certificate stays verified on re-upload', async () => {
    const issuing = await pki('Possession');
    const uploaded = await serviceCall('PUT', '/certificates/possession-root', { certificate: Buffer.from(issuing.root.certPem).toString('base64') });
    assert.equal(uploaded.status, 200, uploaded.text);
    const view = uploaded.body as Json;
    assert.deepEqual(Object.keys(view).sort(), ['certificate', 'createdDateTimeUtc', 'etag', 'info', 'isVerified', 'lastUpdatedDateTimeUtc', 'name']);
    assert.equal(view.isVerified, false);
    assert.equal(view.info.sha256Thumbprint, sha256Of(issuing.root.certPem));
    assert.equal(view.info.subjectName, 'CN=Possession Root');
    assert.match(view.certificate, /^-----BEGIN CERTIFICATE-----/);

    const listed = await serviceCall('GET', '/certificates');
    assert.ok((listed.body as Json[]).some((item) => item.name === 'possession-root' && item.isVerified === false));
    assert.equal(((await serviceCall('GET', '/certificates/POSSESSION-ROOT')).body as Json).name, 'possession-root', 'names are case-insensitive');

    const early = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: issuing.intermediate.certPem });
    assert.equal(early.status, 400);
    assert.equal((early.body as Json).errorCode, 400023);
    assert.match((early.body as Json).message, /generateVerificationCode first/);

    const generated = await serviceCall('POST', '/certificates/possession-root/generateVerificationCode');
    assert.equal(generated.status, 200);
    const code = (generated.body as Json).verificationCode as string;
    assert.match(code, /^[0-9A-F]{48}$/);
    assert.notEqual((generated.body as Json).etag, view.etag);

    const wrongCn = await createVerificationCertificate(issuing.root, 'NOT-THE-CODE');
    const byWrongCn = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: wrongCn.certPem });
    assert.equal(byWrongCn.status, 400);
    assert.match((byWrongCn.body as Json).message, /CN must be the verification code/);
    const otherCa = await createRootCertificate({ commonName: 'Someone Else' });
    const byOtherCa = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: (await createVerificationCertificate(otherCa, code)).certPem });
    assert.equal(byOtherCa.status, 400);
    assert.match((byOtherCa.body as Json).message, /did not issue/);
    const staleEtag = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: wrongCn.certPem }, { 'if-match': view.etag as string });
    assert.equal(staleEtag.status, 412);

    const proof = await createVerificationCertificate(issuing.root, code);
    const verified = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: proof.certPem }, { 'if-match': (generated.body as Json).etag as string });
    assert.equal(verified.status, 200, verified.text);
    assert.equal((verified.body as Json).isVerified, true);
    const again = await serviceCall('POST', '/certificates/possession-root/verify', { certificate: proof.certPem });
    assert.equal(again.status, 400, 'a code is used once');

    const reuploaded = await serviceCall('PUT', '/certificates/possession-root', { certificate: issuing.root.certPem });
    assert.equal((reuploaded.body as Json).isVerified, true, 'the same certificate stays verified');
    const replaced = await serviceCall('PUT', '/certificates/possession-root', { certificate: (await createRootCertificate({ commonName: 'New Root' })).certPem });
    assert.equal((replaced.body as Json).isVerified, false, 'another certificate under the name starts unverified');
  });

  test('what an upload refuses: not a CA, uploaded as verified, the same certificate under a second name, a bad name', async () => {
    const issuing = await pki('Refused');
    const leaf = await createDeviceCertificate(issuing.intermediate, { commonName: 'not-a-ca' });
    const notCa = await serviceCall('PUT', '/certificates/leaf', { certificate: leaf.certPem });
    assert.equal(notCa.status, 400);
    assert.equal((notCa.body as Json).errorCode, 400012);
    assert.match((notCa.body as Json).message, /not a CA certificate/);
    const asVerified = await serviceCall('PUT', '/certificates/shortcut', { certificate: issuing.root.certPem, isVerified: true });
    assert.equal(asVerified.status, 400);
    assert.equal((asVerified.body as Json).errorCode, 400023);
    assert.equal((await serviceCall('PUT', '/certificates/first-name', { certificate: issuing.root.certPem })).status, 200);
    const second = await serviceCall('PUT', '/certificates/second-name', { certificate: issuing.root.certPem });
    assert.equal(second.status, 409);
    assert.match((second.body as Json).message, /already uploaded as 'first-name'/);
    const badName = await serviceCall('PUT', '/certificates/-bad', { certificate: issuing.root.certPem });
    assert.equal((badName.body as Json).errorCode, 400022);
    const missing = await serviceCall('GET', '/certificates/no-such-ca');
    assert.equal(missing.status, 404);
    assert.equal((missing.body as Json).errorCode, 404208);
    assert.equal((await serviceCall('POST', '/certificates/no-such-ca/generateVerificationCode')).status, 404);
    assert.equal((await serviceCall('DELETE', '/certificates/no-such-ca')).status, 404);
  });

  test('the CA routes need ServiceConfig', async () => {
    const policy = await serviceCall('PUT', '/accessPolicies/enrollment-writer', { rights: 'EnrollmentRead,EnrollmentWrite' });
    assert.equal(policy.status, 200, policy.text);
    const token = server.token({ keyName: 'enrollment-writer', key: (policy.body as Json).primaryKey as string });
    const denied = await call('GET', `/certificates?${API}`, { headers: { authorization: token } });
    assert.equal(denied.status, 401);
    assert.equal((denied.body as Json).errorCode, 401002);
    const document = await call('GET', '/openapi.json');
    const paths = (document.body as Json).paths as Json;
    assert.deepEqual(Object.keys(paths['/certificates/{name}']).sort(), ['delete', 'get', 'put']);
    assert.equal(paths['/certificates/{name}/generateVerificationCode'].post.operationId, 'Certificate_GenerateVerificationCode');
    assert.equal(paths['/certificates/{name}/verify'].post.description, 'Needs the ServiceConfig right.');
  });
});

describe('the CLI quick start: provisiond cert and provisiond ca', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'provisiond-x509-cli-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function cli(...args: string[]): Promise<string> {
    let out = '';
    const io = { env: { PROVISIOND_CONNECTION_STRING: server.connectionString }, out: (text: string) => void (out += text), err: (text: string) => void (out += text) };
    await buildProgram(io, { serve: () => Promise.reject(new Error('unused')), info: () => Promise.reject(new Error('unused')) }, '0.0.0').parseAsync(args, { from: 'user' });
    return out;
  }

  test('root, verified CA, intermediate, device: the device provisions under a group by CA reference', async () => {
    const prefix = (name: string): string => join(dir, name);
    await cli('cert', 'root', 'cli-root', '--dir', dir);
    await cli('ca', 'upload', 'cli-root', `${prefix('cli-root')}.cert.pem`);
    const code = JSON.parse(await cli('ca', 'verification-code', 'cli-root', '--json')).verificationCode as string;
    await cli('cert', 'verification', code, '--ca', prefix('cli-root'), '--dir', dir);
    await cli('ca', 'verify', 'cli-root', join(dir, `verification-${code}.cert.pem`));
    assert.match(await cli('ca', 'list'), /cli-root\s+yes\s+CN=cli-root/);
    await cli('cert', 'intermediate', 'cli-int', '--ca', prefix('cli-root'), '--dir', dir);
    const printed = await cli('cert', 'device', 'x509-cli-device', '--ca', prefix('cli-int'), '--dir', dir);
    assert.match(printed, /x509-cli-device\.chain\.pem/);
    await assert.rejects(cli('cert', 'device', 'x509-cli-device', '--ca', prefix('cli-int'), '--dir', dir), /already exist/);

    const chain = readFileSync(`${prefix('x509-cli-device')}.chain.pem`, 'utf8');
    assert.equal(chain.match(/BEGIN CERTIFICATE/g)?.length, 2, 'leaf + intermediate, the root left out');
    assert.match(readFileSync(`${prefix('x509-cli-device')}.key.pem`, 'utf8'), /BEGIN PRIVATE KEY/);

    await createGroup(caGroup('x509-cli-group', 'cli-root'));
    const state = await x509Register('x509-cli-device', chain, readFileSync(`${prefix('x509-cli-device')}.key.pem`, 'utf8'));
    assert.equal(state.status, 'assigned');
    assert.equal(state.x509.enrollmentGroupId, 'x509-cli-group');

    // A self-signed device for an individual enrollment.
    await cli('cert', 'device', 'x509-cli-self', '--self-signed', '--dir', dir);
    const self = readFileSync(`${prefix('x509-cli-self')}.cert.pem`, 'utf8');
    await createEnrollment({ registrationId: 'x509-cli-self', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: self } } } } });
    assert.equal((await x509Register('x509-cli-self', self, readFileSync(`${prefix('x509-cli-self')}.key.pem`, 'utf8'))).status, 'assigned');

    await cli('ca', 'delete', 'cli-root');
    assert.doesNotMatch(await cli('ca', 'list'), /cli-root/);
  });
});
