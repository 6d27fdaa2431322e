import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { webcrypto, X509Certificate } from 'node:crypto';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { connectAsync, type MqttClient } from 'mqtt';
import rhea, { type AmqpError } from 'rhea';
import { Agent, request as undiciRequest } from 'undici';
import { parseResponseTopic } from '../src/transports/mqtt/topics.js';
import { createSelfSignedDeviceCertificate } from '../src/tls/x509-issuer.js';
import { makeCsr } from './csr.js';
import { deviceToken, type Json } from './devices.js';
import { call, readCa, startServer, type TestServer } from './harness.js';
import { registerOverAmqp } from './amqp-register.js';
import { deviceOf, registryFor } from './hubs.js';

/**
 * Certificate issuance from a CSR (issue 14; DPS api-version 2025-07-01-preview; docs/certificate-issuance.md). No
 * official Node client speaks this version: raw HTTPS (undici), the `mqtt` package and `rhea` send the CSR, the chain
 * is verified with node:crypto and `openssl verify`, and the issued certificate then authenticates the device.
 */
x509.cryptoProvider.set(webcrypto as never);
const PREVIEW = '2025-07-01-preview';
const API = 'api-version=2021-10-01';

let server: TestServer;
let idScope: string;
let tmp: string;

before(async () => {
  server = await startServer();
  idScope = server.info.idScope;
  tmp = mkdtempSync(join(tmpdir(), 'provisiond-csr-'));
});
after(async () => {
  await server.close();
  rmSync(tmp, { recursive: true, force: true });
});

// ---- helpers

async function putPolicy(name: string, body: Json): Promise<{ status: number; body: Json }> {
  const response = await call('PUT', `/credentialPolicies/${name}?${API}`, { headers: { authorization: server.token() }, body });
  return { status: response.status, body: response.body as Json };
}

async function enroll(registrationId: string, extra: Json = {}): Promise<{ status: number; body: Json }> {
  const response = await call('PUT', `/enrollments/${registrationId}?${API}`, {
    headers: { authorization: server.token() },
    body: { registrationId, attestation: { type: 'symmetricKey' }, ...extra },
  });
  return { status: response.status, body: response.body as Json };
}

async function enrolledKey(registrationId: string, extra: Json = {}): Promise<string> {
  const created = await enroll(registrationId, extra);
  assert.equal(created.status, 200, JSON.stringify(created.body));
  return created.body.attestation.symmetricKey.primaryKey as string;
}

interface HttpAnswer {
  status: number;
  body: Json;
}

/** Register + poll over raw HTTPS (undici): a SAS token, or — with `tls` — the TLS client certificate. */
async function httpRegister(
  registrationId: string,
  options: { authorization?: string; csr?: string; apiVersion?: string; tls?: { cert: string; key: string } },
): Promise<HttpAnswer> {
  const dispatcher = new Agent({ connect: { ca: readCa(), ...(options.tls === undefined ? {} : { cert: options.tls.cert, key: options.tls.key }) } });
  const apiVersion = options.apiVersion ?? PREVIEW;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(options.authorization === undefined ? {} : { authorization: options.authorization }) };
  const send = async (method: 'PUT' | 'GET', path: string, body?: Json): Promise<HttpAnswer & { retryAfter: number }> => {
    const url = new URL(`https://localhost${path}`);
    url.searchParams.set('api-version', apiVersion);
    const response = await undiciRequest(url, { method, headers, dispatcher, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    const text = await response.body.text();
    return { status: response.statusCode, body: text === '' ? {} : (JSON.parse(text) as Json), retryAfter: Number(response.headers['retry-after'] ?? '1') };
  };
  try {
    const registered = await send('PUT', `/${idScope}/registrations/${registrationId}/register`, { registrationId, ...(options.csr === undefined ? {} : { csr: options.csr }) });
    if (registered.status !== 202) return registered;
    for (let attempt = 0; attempt < 50; attempt += 1) {
      const polled = await send('GET', `/${idScope}/registrations/${registrationId}/operations/${registered.body.operationId as string}`);
      if (polled.status !== 202) return polled;
      await new Promise((resolve) => setTimeout(resolve, polled.retryAfter * 1000));
    }
    throw new Error('the registration did not finish');
  } finally {
    await dispatcher.close();
  }
}

async function issuingCaPem(): Promise<string> {
  const response = await call('GET', `/issuingCa?${API}`, { headers: { authorization: server.token() } });
  assert.equal(response.status, 200, response.text);
  return (response.body as Json).certificate as string;
}

/** The chain as PEM files, checked with node:crypto and `openssl verify` against the instance's issuing CA. */
async function assertIssuedChain(chain: unknown, registrationId: string, publicKeyDer: Buffer): Promise<X509Certificate> {
  assert.ok(Array.isArray(chain), 'issuedCertificateChain is an array');
  const certificates = (chain as string[]).map((der) => new X509Certificate(Buffer.from(der, 'base64')));
  assert.equal(certificates.length, 2, 'leaf, then the root (the generated issuing CA is a root)');
  const [leaf, root] = certificates as [X509Certificate, X509Certificate];
  assert.equal(root.raw.toString('base64'), new X509Certificate(await issuingCaPem()).raw.toString('base64'), 'the chain ends at the issuing CA');
  assert.ok(leaf.verify(root.publicKey), 'the leaf is signed by the issuing CA');
  assert.ok(leaf.checkIssued(root));
  assert.equal(leaf.subject, `CN=${registrationId}`);
  assert.equal(leaf.ca, false);
  assert.deepEqual(leaf.publicKey.export({ type: 'spki', format: 'der' }), publicKeyDer, "the leaf carries the CSR's key");
  assert.ok(leaf.keyUsage?.includes('1.3.6.1.5.5.7.3.2'), 'client authentication');
  const leafFile = join(tmp, `${registrationId}.pem`);
  const rootFile = join(tmp, `${registrationId}-root.pem`);
  writeFileSync(leafFile, leaf.toString());
  writeFileSync(rootFile, root.toString());
  assert.match(execFileSync('openssl', ['verify', '-CAfile', rootFile, '-purpose', 'sslclient', leafFile], { encoding: 'utf8' }), /: OK/);
  return leaf;
}

function assertError(answer: HttpAnswer, errorCode: number, message?: RegExp): void {
  assert.equal(answer.status, Math.floor(errorCode / 1000), JSON.stringify(answer.body));
  assert.equal(answer.body.errorCode, errorCode, JSON.stringify(answer.body));
  if (message !== undefined) assert.match(answer.body.message as string, message);
}

// ---- MQTT and AMQP raw clients

/** A device's credential on the raw MQTT and AMQP clients: its symmetric key (SAS token), or its TLS client certificate. */
type DeviceCredential = string | { cert: string; key: string };

async function mqttRegister(registrationId: string, credential: DeviceCredential, body: Json, apiVersion = PREVIEW): Promise<{ status: number; body: Json }> {
  const client: MqttClient = await connectAsync('mqtts://localhost:8883', {
    clientId: registrationId,
    username: `${idScope}/registrations/${registrationId}/api-version=${apiVersion}&ClientVersion=csr-test`,
    ...(typeof credential === 'string' ? { password: deviceToken(idScope, registrationId, credential) } : { cert: credential.cert, key: credential.key }),
    protocolVersion: 4,
    ca: readCa(),
    reconnectPeriod: 0,
    connectTimeout: 5000,
  });
  const replies: Array<{ status: number; rid: string; retryAfter: number; body: Json }> = [];
  client.on('message', (topic, payload) => {
    const parsed = parseResponseTopic(topic);
    replies.push({ status: parsed?.status ?? -1, rid: parsed?.rid ?? '', retryAfter: parsed?.retryAfterSeconds ?? 1, body: JSON.parse(payload.toString('utf8')) as Json });
  });
  const next = async (rid: string) => {
    for (let waited = 0; waited < 10_000; waited += 50) {
      const found = replies.find((reply) => reply.rid === rid);
      if (found !== undefined) return found;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`no MQTT reply for ${rid}`);
  };
  try {
    await client.subscribeAsync('$dps/registrations/res/#', { qos: 1 });
    await client.publishAsync('$dps/registrations/PUT/iotdps-register/?$rid=1', JSON.stringify(body), { qos: 1 });
    const accepted = await next('1');
    if (accepted.status !== 202) return accepted;
    for (let attempt = 0; attempt < 50; attempt += 1) {
      const rid = `poll.${attempt}`;
      await client.publishAsync(`$dps/registrations/GET/iotdps-get-operationstatus/?$rid=${rid}&operationId=${accepted.body.operationId as string}`, ' ', { qos: 1 });
      const polled = await next(rid);
      if (polled.status !== 202) return polled;
      await new Promise((resolve) => setTimeout(resolve, polled.retryAfter * 1000));
    }
    throw new Error('the MQTT registration did not finish');
  } finally {
    await client.endAsync();
  }
}

/**
 * Register + poll over AMQP with rhea (SASL PLAIN, or no SASL and a TLS client certificate as the Node SDK does for
 * X.509); resolves with the final body, or the rejection's AMQP error.
 */
async function amqpRegister(registrationId: string, credential: DeviceCredential, body: Json): Promise<Json> {
  const container = rhea.create_container();
  container.on('error', () => undefined);
  const address = `${idScope}/registrations/${registrationId}`;
  const connection = container.connect({
    host: 'localhost',
    port: 5671,
    transport: 'tls',
    ca: readCa(),
    ...(typeof credential === 'string' ? { username: address, password: deviceToken(idScope, registrationId, credential) } : { cert: credential.cert, key: credential.key }),
    reconnect: false,
  });
  await once(connection, 'connection_open');
  return registerOverAmqp(connection, address, body, 500);
}

// ---- the tests

describe('credential policies and the issuing CA on the control plane', () => {
  test('PUT/GET/list/DELETE a policy; defaults; bad input is a 400, a missing one a 404', async () => {
    const created = await putPolicy('cp-defaults', {});
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.deepEqual(created.body.keyTypes, ['ecP256', 'ecP384', 'rsa2048', 'rsa3072', 'rsa4096']);
    assert.equal(created.body.validityInDays, 30);
    const got = await call('GET', `/credentialPolicies/CP-DEFAULTS?${API}`, { headers: { authorization: server.token() } });
    assert.equal(got.status, 200);
    assert.equal((got.body as Json).name, 'cp-defaults');
    const listed = await call('GET', `/credentialPolicies?${API}`, { headers: { authorization: server.token() } });
    assert.ok((listed.body as Json[]).some((policy) => policy.name === 'cp-defaults'));

    assert.equal((await putPolicy('cp-bad', { keyTypes: ['dsa1024'] })).body.errorCode, 400031);
    assert.equal((await putPolicy('cp-bad', { keyTypes: [] })).body.errorCode, 400031);
    assert.equal((await putPolicy('cp-bad', { validityInDays: 0 })).body.errorCode, 400031);
    assert.equal((await putPolicy('bad name', {})).body.errorCode, 400031);

    const deleted = await call('DELETE', `/credentialPolicies/cp-defaults?${API}`, { headers: { authorization: server.token() } });
    assert.equal(deleted.status, 204);
    const missing = await call('GET', `/credentialPolicies/cp-defaults?${API}`, { headers: { authorization: server.token() } });
    assert.equal(missing.status, 404);
    assert.equal((missing.body as Json).errorCode, 404211);
  });

  test('an enrollment or group naming an unknown policy is a 400; a known one is kept and shown', async () => {
    const unknown = await enroll('csr-unknown-policy', { credentialPolicyName: 'no-such-policy' });
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body.errorCode, 400030);
    assert.match(unknown.body.message as string, /no-such-policy/);
    const group = await call('PUT', `/enrollmentGroups/csr-group-unknown?${API}`, {
      headers: { authorization: server.token() },
      body: { enrollmentGroupId: 'csr-group-unknown', attestation: { type: 'symmetricKey' }, credentialPolicyName: 'no-such-policy' },
    });
    assert.equal((group.body as Json).errorCode, 400030);

    assert.equal((await putPolicy('cp-shown', {})).status, 200);
    const known = await enroll('csr-known-policy', { credentialPolicyName: 'cp-shown' });
    assert.equal(known.status, 200);
    assert.equal(known.body.credentialPolicyName, 'cp-shown');
    const read = await call('GET', `/enrollments/csr-known-policy?${API}`, { headers: { authorization: server.token() } });
    assert.equal((read.body as Json).credentialPolicyName, 'cp-shown');
  });

  test('the issuing CA: created on first need, a CA of its own (not the TLS CA), shown without its key', async () => {
    const response = await call('GET', `/issuingCa?${API}`, { headers: { authorization: server.token() } });
    assert.equal(response.status, 200);
    const body = response.body as Json;
    assert.deepEqual(Object.keys(body).sort(), ['certificate', 'chain', 'createdDateTimeUtc', 'crlUrl', 'info', 'source'].sort());
    assert.equal(body.source, 'generated');
    assert.doesNotMatch(response.text, /PRIVATE KEY/);
    const ca = new X509Certificate(body.certificate as string);
    assert.ok(ca.ca);
    assert.notEqual(ca.fingerprint256, new X509Certificate(readCa()).fingerprint256);
    assert.equal(body.crlUrl, `https://localhost/crl/${idScope}.crl`);
    // The same CA on every read (it is stored, not made per request).
    assert.equal(await issuingCaPem(), body.certificate);
  });
});

describe('issuance over HTTPS (raw client)', () => {
  test('a symmetric-key device gets leaf + root; its hub identity becomes the certificate; lookup never shows the chain', async () => {
    assert.equal((await putPolicy('cp-ec', { keyTypes: ['ecP256', 'ecP384'], validityInDays: 10 })).status, 200);
    const key = await enrolledKey('csr-http-1', { credentialPolicyName: 'cp-ec' });
    const device = await makeCsr('csr-http-1');
    const authorization = deviceToken(idScope, 'csr-http-1', key);
    const answer = await httpRegister('csr-http-1', { authorization, csr: device.csr });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.status, 'assigned');
    const state = answer.body.registrationState as Json;
    assert.deepEqual(state.symmetricKey, {});
    const leaf = await assertIssuedChain(state.issuedCertificateChain, 'csr-http-1', device.publicKeyDer);
    const days = (new Date(leaf.validTo).getTime() - Date.now()) / 86_400_000;
    assert.ok(days > 9.9 && days <= 10.01, `valid for the policy's 10 days (${days})`);

    // The built-in hub identity is the issued certificate's thumbprint: the device connects with it from now on.
    const registry = await registryFor(server, 'localhost');
    const identity = await deviceOf(registry, 'csr-http-1');
    assert.equal(identity?.authentication.type, 'selfSigned');
    assert.equal(identity?.authentication.x509Thumbprint.primaryThumbprint, leaf.fingerprint.replaceAll(':', ''));

    // Status lookup: the record, never the chain; and a csr there is a 400 (as DPS).
    const lookup = await call('POST', `/${idScope}/registrations/csr-http-1?api-version=${PREVIEW}`, { headers: { authorization }, body: { registrationId: 'csr-http-1' } });
    assert.equal(lookup.status, 200);
    assert.equal((lookup.body as Json).issuedCertificateChain, undefined);
    const lookupCsr = await call('POST', `/${idScope}/registrations/csr-http-1?api-version=${PREVIEW}`, { headers: { authorization }, body: { registrationId: 'csr-http-1', csr: device.csr } });
    assert.equal(lookupCsr.status, 400);
    assert.equal((lookupCsr.body as Json).errorCode, 400029);
  });

  test('the issued certificate authenticates the next registration (X.509 over TLS), matched to the same enrollment', async () => {
    const key = await enrolledKey('csr-move-1', { credentialPolicyName: 'cp-ec' });
    const device = await makeCsr('csr-move-1');
    const first = await httpRegister('csr-move-1', { authorization: deviceToken(idScope, 'csr-move-1', key), csr: device.csr });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const chain = (first.body.registrationState as Json).issuedCertificateChain as string[];
    const leaf = new X509Certificate(Buffer.from(chain[0] as string, 'base64'));

    const second = await httpRegister('csr-move-1', { tls: { cert: leaf.toString(), key: device.keyPem }, apiVersion: '2021-10-01' });
    assert.equal(second.status, 200, JSON.stringify(second.body));
    const state = second.body.registrationState as Json;
    assert.equal(state.status, 'assigned');
    assert.equal(state.x509.certificateInfo.sha256Thumbprint, leaf.fingerprint256.replaceAll(':', ''));
    assert.equal(state.deviceId, 'csr-move-1');
    const record = await call('GET', `/registrations/csr-move-1?${API}`, { headers: { authorization: server.token() } });
    assert.equal((record.body as Json).status, 'assigned');

    // Another registration ID cannot use it.
    await enrolledKey('csr-move-2', { credentialPolicyName: 'cp-ec' });
    const stolen = await httpRegister('csr-move-2', { tls: { cert: leaf.toString(), key: device.keyPem } });
    assertError(stolen, 401002);
  });

  test('CSR refusals are clear 400s: bad signature, CN, key type, no policy, not base64 or PEM, an older api-version', async () => {
    const key = await enrolledKey('csr-bad-1', { credentialPolicyName: 'cp-ec' });
    const authorization = deviceToken(idScope, 'csr-bad-1', key);
    const good = await makeCsr('csr-bad-1');
    const der = Buffer.from(good.csr, 'base64');
    der[der.length - 3] = (der[der.length - 3] ?? 0) ^ 0xff;
    assertError(await httpRegister('csr-bad-1', { authorization, csr: der.toString('base64') }), 400025);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: (await makeCsr('someone-else')).csr }), 400026, /csr-bad-1/);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: (await makeCsr('csr-bad-1', 'rsa2048')).csr }), 400027, /ecP256, ecP384.*rsa2048/);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: 'not base64!' }), 400024);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: `-----BEGIN CERTIFICATE REQUEST-----\n${good.csr}\n-----END CERTIFICATE REQUEST-----` }), 400024, /PEM/);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: Buffer.from('junk').toString('base64') }), 400024);
    assertError(await httpRegister('csr-bad-1', { authorization, csr: good.csr, apiVersion: '2021-10-01' }), 400029, /2025-07-01-preview/);

    const plainKey = await enrolledKey('csr-no-policy');
    assertError(await httpRegister('csr-no-policy', { authorization: deviceToken(idScope, 'csr-no-policy', plainKey), csr: (await makeCsr('csr-no-policy')).csr }), 400028);
    // A refused CSR is refused before anything happens: no record.
    const record = await call('GET', `/registrations/csr-no-policy?${API}`, { headers: { authorization: server.token() } });
    assert.equal(record.status, 404);
    // The CSR checks come after authentication: a stranger learns nothing about the policy.
    assertError(await httpRegister('csr-bad-1', { authorization: deviceToken(idScope, 'csr-bad-1', Buffer.alloc(32).toString('base64')), csr: 'junk' }), 401002);
  });

  test('an X.509 device (TLS client certificate) gets a certificate too', async () => {
    const own = await createSelfSignedDeviceCertificate({ commonName: 'csr-x509-1' });
    const created = await call('PUT', `/enrollments/csr-x509-1?${API}`, {
      headers: { authorization: server.token() },
      body: { registrationId: 'csr-x509-1', attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: own.certPem } } } }, credentialPolicyName: 'cp-ec' },
    });
    assert.equal(created.status, 200, created.text);
    const device = await makeCsr('csr-x509-1', 'ecP384');
    const answer = await httpRegister('csr-x509-1', { tls: { cert: own.certPem, key: own.keyPem }, csr: device.csr });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const state = answer.body.registrationState as Json;
    assert.ok(state.x509 !== undefined);
    await assertIssuedChain(state.issuedCertificateChain, 'csr-x509-1', device.publicKeyDer);
  });
});

describe('issuance over MQTT and AMQP (the CSR in the register payload)', () => {
  test('MQTT: a symmetric-key group device gets its chain; an older api-version in the username refuses the csr', async () => {
    assert.equal((await putPolicy('cp-any', {})).status, 200);
    const group = await call('PUT', `/enrollmentGroups/csr-mqtt-group?${API}`, {
      headers: { authorization: server.token() },
      body: { enrollmentGroupId: 'csr-mqtt-group', attestation: { type: 'symmetricKey' }, credentialPolicyName: 'cp-any' },
    });
    assert.equal(group.status, 200, group.text);
    const groupKey = (group.body as Json).attestation.symmetricKey.primaryKey as string;
    const { deriveDeviceKey } = await import('./devices.js');
    const key = deriveDeviceKey(groupKey, 'csr-mqtt-1');
    const device = await makeCsr('csr-mqtt-1', 'rsa2048');
    const answer = await mqttRegister('csr-mqtt-1', key, { registrationId: 'csr-mqtt-1', csr: device.csr });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const state = answer.body.registrationState as Json;
    assert.deepEqual(state.symmetricKey, { enrollmentGroupId: 'csr-mqtt-group' });
    await assertIssuedChain(state.issuedCertificateChain, 'csr-mqtt-1', device.publicKeyDer);

    const old = await mqttRegister('csr-mqtt-1', key, { registrationId: 'csr-mqtt-1', csr: device.csr }, '2019-03-31');
    assert.equal(old.status, 400);
    assert.equal(old.body.errorCode, 400029);
  });

  test('AMQP: a symmetric-key device gets its chain; a bad CSR is rejected with the DPS error', async () => {
    const key = await enrolledKey('csr-amqp-1', { credentialPolicyName: 'cp-any' });
    const device = await makeCsr('csr-amqp-1');
    const state = await amqpRegister('csr-amqp-1', key, { registrationId: 'csr-amqp-1', csr: device.csr });
    assert.equal(state.status, 'assigned', JSON.stringify(state));
    await assertIssuedChain((state.registrationState as Json).issuedCertificateChain, 'csr-amqp-1', device.publicKeyDer);
    await assert.rejects(amqpRegister('csr-amqp-1', key, { registrationId: 'csr-amqp-1', csr: (await makeCsr('other')).csr }), (error: AmqpError) => {
      assert.match(String(error.description), /400026|CN/);
      return true;
    });
  });

  /** An X.509 individual enrollment (its own self-signed certificate) under the policy cp-any. */
  async function enrollX509(registrationId: string): Promise<{ cert: string; key: string }> {
    if ((await call('GET', `/credentialPolicies/cp-any?${API}`, { headers: { authorization: server.token() } })).status === 404) assert.equal((await putPolicy('cp-any', {})).status, 200);
    const own = await createSelfSignedDeviceCertificate({ commonName: registrationId });
    const created = await call('PUT', `/enrollments/${registrationId}?${API}`, {
      headers: { authorization: server.token() },
      body: { registrationId, attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: own.certPem } } } }, credentialPolicyName: 'cp-any' },
    });
    assert.equal(created.status, 200, created.text);
    return { cert: own.certPem, key: own.keyPem };
  }

  test('MQTT: an X.509 device (TLS client certificate, no password) gets its chain', async () => {
    const tls = await enrollX509('csr-mqtt-x509');
    const device = await makeCsr('csr-mqtt-x509', 'ecP384');
    const answer = await mqttRegister('csr-mqtt-x509', tls, { registrationId: 'csr-mqtt-x509', csr: device.csr });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const state = answer.body.registrationState as Json;
    assert.equal(state.x509.certificateInfo.sha256Thumbprint, new X509Certificate(tls.cert).fingerprint256.replaceAll(':', ''), 'authenticated by its own certificate');
    await assertIssuedChain(state.issuedCertificateChain, 'csr-mqtt-x509', device.publicKeyDer);
  });

  test('AMQP: an X.509 device (TLS client certificate, no SASL) gets its chain; a CSR for another CN is refused', async () => {
    const tls = await enrollX509('csr-amqp-x509');
    const device = await makeCsr('csr-amqp-x509', 'rsa2048');
    const state = await amqpRegister('csr-amqp-x509', tls, { registrationId: 'csr-amqp-x509', csr: device.csr });
    assert.equal(state.status, 'assigned', JSON.stringify(state));
    const registration = state.registrationState as Json;
    assert.equal(registration.x509.certificateInfo.sha256Thumbprint, new X509Certificate(tls.cert).fingerprint256.replaceAll(':', ''), 'authenticated by its own certificate');
    await assertIssuedChain(registration.issuedCertificateChain, 'csr-amqp-x509', device.publicKeyDer);
    await assert.rejects(amqpRegister('csr-amqp-x509', tls, { registrationId: 'csr-amqp-x509', csr: (await makeCsr('other')).csr }), (error: AmqpError) => {
      assert.match(String(error.description), /400026|CN/);
      return true;
    });
  });
});

describe('issued certificates are customer data', () => {
  test('the export lists them; an erase revokes them, the CRL names them, and they no longer authenticate', async () => {
    const key = await enrolledKey('csr-cd-1', { credentialPolicyName: 'cp-ec' });
    const device = await makeCsr('csr-cd-1');
    const answer = await httpRegister('csr-cd-1', { authorization: deviceToken(idScope, 'csr-cd-1', key), csr: device.csr });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const leaf = new X509Certificate(Buffer.from(((answer.body.registrationState as Json).issuedCertificateChain as string[])[0] as string, 'base64'));

    const dataRequest = async (requestId: string, body: Json): Promise<Json> => {
      const created = await call('PUT', `/dataRequests/${requestId}?${API}`, { headers: { authorization: server.token() }, body });
      assert.equal(created.status, 200, created.text);
      for (let attempt = 0; attempt < 100; attempt += 1) {
        const current = (await call('GET', `/dataRequests/${requestId}?${API}`, { headers: { authorization: server.token() } })).body as Json;
        if (current.status !== 'running') return current;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`${requestId} did not finish`);
    };
    assert.equal((await dataRequest('csr-export-1', { type: 'export', subject: { registrationId: 'csr-cd-1' } })).status, 'completed');
    const bundle = (await call('GET', `/dataRequests/csr-export-1/bundle?${API}`, { headers: { authorization: server.token() } })).body as Json;
    assert.deepEqual(
      bundle.issuedCertificates.map((entry: Json) => [entry.serialNumber, entry.sha256Thumbprint, entry.registrationId, entry.credentialPolicyName]),
      [[leaf.serialNumber.toUpperCase(), leaf.fingerprint256.replaceAll(':', ''), 'csr-cd-1', 'cp-ec']],
    );
    assert.equal(bundle.issuedCertificates[0].notAfterUtc.slice(0, 19), new Date(leaf.validTo).toISOString().slice(0, 19));
    assert.deepEqual(bundle.manifest.searched.find((entry: Json) => entry.place === 'issuedCertificates'), { place: 'issuedCertificates', count: 1, name: 'Certificates issued from CSRs (an erase revokes them)' });

    // Before the erase the CRL is empty and the certificate passes a CRL check.
    const crlBefore = await call('GET', `/crl/${idScope}.crl`);
    assert.equal(crlBefore.status, 200);
    assert.equal(crlBefore.headers.get('content-type'), 'application/pkix-crl');

    const preview = await dataRequest('csr-erase-dry', { type: 'erase', subject: { registrationId: 'csr-cd-1' }, dryRun: true });
    assert.deepEqual(preview.result.deleted.find((entry: Json) => entry.place === 'issuedCertificates')?.items, ['csr-cd-1']);
    const erased = await dataRequest('csr-erase-1', { type: 'erase', subject: { registrationId: 'csr-cd-1' } });
    assert.equal(erased.status, 'completed', JSON.stringify(erased));

    const crl = await fetchCrl();
    assert.deepEqual(crl.entries.map((entry) => entry.serialNumber.toUpperCase()), [leaf.serialNumber.toUpperCase()]);
    assert.ok(await crl.verify({ publicKey: await new x509.X509Certificate(await issuingCaPem()).publicKey.export() }), 'the CRL is signed by the issuing CA');
    // openssl agrees: with the CRL, the certificate is revoked.
    const leafFile = join(tmp, 'revoked.pem');
    const rootFile = join(tmp, 'revoked-root.pem');
    const crlFile = join(tmp, 'issuing.crl.pem');
    writeFileSync(leafFile, leaf.toString());
    writeFileSync(rootFile, await issuingCaPem());
    writeFileSync(crlFile, crl.toString('pem'));
    assert.throws(() => execFileSync('openssl', ['verify', '-crl_check', '-CAfile', rootFile, '-CRLfile', crlFile, leafFile], { encoding: 'utf8', stdio: 'pipe' }), /revoked/);

    // Nothing names the device any more, and the certificate no longer authenticates (re-enrolled with the same ID).
    const again = await call('PUT', `/dataRequests/csr-export-2?${API}`, { headers: { authorization: server.token() }, body: { type: 'export', subject: { registrationId: 'csr-cd-1' } } });
    assert.equal(again.status, 200);
    await enrolledKey('csr-cd-1', { credentialPolicyName: 'cp-ec' });
    assertError(await httpRegister('csr-cd-1', { tls: { cert: leaf.toString(), key: device.keyPem } }), 401002);
  });

  test('the CRL of an unknown ID scope is a 404', async () => {
    const response = await call('GET', '/crl/0ne00000000.crl');
    assert.equal(response.status, 404);
  });
});

async function fetchCrl(): Promise<x509.X509Crl> {
  const url = `https://localhost/crl/${idScope}.crl`;
  const response = await fetch(url);
  assert.equal(response.status, 200);
  return new x509.X509Crl(Buffer.from(await response.arrayBuffer()));
}
