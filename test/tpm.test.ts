import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import deviceSdk from 'azure-iot-provisioning-device';
import amqpTransport from 'azure-iot-provisioning-device-amqp';
import httpTransport from 'azure-iot-provisioning-device-http';
import serviceSdk from 'azure-iot-provisioning-service';
import tpmSecurity from 'azure-iot-security-tpm';
import tss from 'tss.js';
import { deviceOf, registryFor } from './hubs.js';
import rhea from 'rhea';
import { call, readCa, startServer, type TestServer } from './harness.js';
import { registerOverAmqp } from './amqp-register.js';
import type { Json } from './devices.js';
import { startSoftwareTpm, type SoftwareTpm } from './tpm-simulator.js';
import { makeCsr } from './csr.js';

/**
 * TPM attestation end to end (dps-wire.md §4.5, §6): the official TpmSecurityClient (azure-iot-security-tpm, tss.js)
 * on a software TPM (swtpm), with the official HTTP and AMQP transports, against the real server. The device
 * activates the server's challenge inside the TPM, signs its requests with the imported key, and imports the IoT Hub
 * key from `registrationState.tpm.authenticationKey` — which must then sign exactly as the hub's device key does.
 */
const { ProvisioningDeviceClient } = deviceSdk;
const { ProvisioningServiceClient } = serviceSdk;
const { TpmSecurityClient } = tpmSecurity;

const REGISTRATION_ID = 'tpm-device-1';

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;
let softwareTpm: SoftwareTpm;
let security: InstanceType<typeof TpmSecurityClient>;
let endorsementKey: Buffer;
let storageRootKey: Buffer;

before(async () => {
  softwareTpm = await startSoftwareTpm();
  server = await startServer();
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  // One client for the whole file: swtpm serves one connection at a time, and tss.js keeps its connection open.
  security = new TpmSecurityClient(REGISTRATION_ID, new tss.Tpm(true, softwareTpm.host, softwareTpm.port));
  endorsementKey = (await promisify(security.getEndorsementKey.bind(security))()) as Buffer;
  storageRootKey = (await promisify(security.getStorageRootKey.bind(security))()) as Buffer;
});
after(async () => {
  await server?.close();
  await softwareTpm?.stop();
});

type TransportName = 'Http' | 'Amqp' | 'AmqpWs';
const TRANSPORTS: Record<TransportName, () => unknown> = {
  Http: () => new httpTransport.Http(),
  Amqp: () => new amqpTransport.Amqp(),
  AmqpWs: () => new amqpTransport.AmqpWs(),
};

function register(transport: TransportName): Promise<Json> {
  const client = ProvisioningDeviceClient.create('localhost', idScope, TRANSPORTS[transport]() as never, security as never);
  return new Promise((resolve, reject) => client.register((error?: Error, result?: unknown) => (error ? reject(error) : resolve(result as Json))));
}

async function enroll(tpm: Json, extra: Json = {}): Promise<Json> {
  const current = await service.getIndividualEnrollment(REGISTRATION_ID).then(
    (response) => response.responseBody as unknown as Json,
    () => undefined,
  );
  const body = { registrationId: REGISTRATION_ID, attestation: { type: 'tpm', tpm }, ...extra, ...(current === undefined ? {} : { etag: current.etag }) };
  return (await service.createOrUpdateIndividualEnrollment(body as never)).responseBody as unknown as Json;
}

/** Another RSA-2048 key in the same TPM2B_PUBLIC shape: one modulus byte differs. */
function otherKey(key: Buffer): string {
  const copy = Buffer.from(key);
  copy[copy.length - 10] = (copy[copy.length - 10] ?? 0) ^ 0xff;
  return copy.toString('base64');
}

async function refusedWith(registration: Promise<Json>): Promise<Error> {
  return registration.then(
    (state) => assert.fail(`expected a refusal, got ${JSON.stringify(state)}`),
    (error: unknown) => error as Error,
  );
}

/**
 * The SASL TPM exchange (dps-wire.md §6) from a plain rhea client that answers the challenge with a token signed by
 * a key it made up: says whether the blob came, and how the exchange ended.
 */
async function saslTpm(ek: Buffer, srk: Buffer): Promise<{ challenged: boolean; outcome: 'opened' | 'refused' }> {
  let challenged = false;
  const mechanism = {
    start(callback: (error: Error | undefined, response: Buffer) => void) {
      callback(undefined, Buffer.concat([Buffer.from(`\0${idScope}\0${REGISTRATION_ID}\0`), ek]));
    },
    step(challenge: Buffer, callback: (error: Error | undefined, response: Buffer) => void) {
      if (challenge.length === 1) return callback(undefined, Buffer.concat([Buffer.from([0]), srk]));
      if (((challenge[0] ?? 0) & 0xc0) !== 0xc0) return callback(undefined, Buffer.from([0]));
      challenged = true;
      const token = `SharedAccessSignature sr=${idScope}%2Fregistrations%2F${REGISTRATION_ID}&sig=${encodeURIComponent(Buffer.alloc(32, 1).toString('base64'))}&se=${Math.floor(Date.now() / 1000) + 600}&skn=registration`;
      callback(undefined, Buffer.concat([Buffer.from([0]), Buffer.from(token)]));
    },
  };
  const container = rhea.create_container();
  container.on('error', () => undefined);
  const connection = container.connect({ host: 'localhost', port: 5671, transport: 'tls', ca: readCa(), reconnect: false, sasl_mechanisms: { TPM: mechanism } } as never);
  const outcome = await new Promise<'opened' | 'refused'>((resolve) => {
    connection.once('connection_open', () => resolve('opened'));
    connection.once('connection_error', () => resolve('refused'));
    connection.once('disconnected', () => resolve('refused'));
  });
  connection.close();
  return { challenged, outcome };
}

/**
 * A whole TPM registration over AMQP from a plain rhea client (dps-wire.md §6): the SASL TPM exchange done inside the
 * TPM (the blob's segments reassembled and activated, the token signed with the imported key), then the register
 * message with `body` and polls until the operation ends; resolves with the final RegistrationOperationStatus.
 */
async function amqpTpmRegister(body: Json): Promise<Json> {
  const address = `${idScope}/registrations/${REGISTRATION_ID}`;
  let blob = Buffer.alloc(0);
  const mechanism = {
    start(callback: (error: Error | undefined, response: Buffer) => void) {
      callback(undefined, Buffer.concat([Buffer.from(`\0${idScope}\0${REGISTRATION_ID}\0`), endorsementKey]));
    },
    step(challenge: Buffer, callback: (error: Error | undefined, response?: Buffer) => void) {
      if (challenge.length === 1) return callback(undefined, Buffer.concat([Buffer.from([0]), storageRootKey]));
      blob = Buffer.concat([blob, challenge.subarray(1)]);
      if (((challenge[0] ?? 0) & 0xc0) !== 0xc0) return callback(undefined, Buffer.from([0]));
      const expiry = Math.floor(Date.now() / 1000) + 600;
      promisify(security.activateIdentityKey.bind(security))(blob)
        // As the Node SDK signs it (tpm_registration.js): the URL-encoded audience, a newline, the expiry.
        .then(() => signInTpm(`${encodeURIComponent(address)}\n${expiry}`))
        .then(
          (signature) => {
            const token = `SharedAccessSignature sr=${encodeURIComponent(address)}&sig=${encodeURIComponent(signature.toString('base64'))}&se=${expiry}&skn=registration`;
            callback(undefined, Buffer.concat([Buffer.from([0]), Buffer.from(token)]));
          },
          (error: Error) => callback(error),
        );
    },
  };
  const container = rhea.create_container();
  container.on('error', () => undefined);
  const connection = container.connect({ host: 'localhost', port: 5671, transport: 'tls', ca: readCa(), reconnect: false, sasl_mechanisms: { TPM: mechanism } } as never);
  const opened = await Promise.race([
    once(connection, 'connection_open').then(() => true),
    once(connection, 'disconnected').then(() => false),
  ]);
  assert.ok(opened, 'the SASL TPM exchange succeeds');
  return registerOverAmqp(connection, address, body, 300);
}

/** Signs inside the TPM with whatever key it imported last. */
function signInTpm(data: string): Promise<Buffer> {
  return promisify(security.signWithIdentity.bind(security))(Buffer.from(data)) as Promise<Buffer>;
}

describe('TPM attestation with the official TPM client on swtpm', () => {
  test('the enrollment shows the endorsement key, never the server-side registration key', async () => {
    const created = await enroll({ endorsementKey: endorsementKey.toString('base64') });
    assert.deepEqual(created.attestation, { type: 'tpm', tpm: { endorsementKey: endorsementKey.toString('base64') } });
    const mechanism = (await service.getIndividualEnrollmentAttestationMechanism(REGISTRATION_ID)).responseBody as unknown as Json;
    assert.deepEqual(mechanism, { type: 'tpm', tpm: { endorsementKey: endorsementKey.toString('base64') } });
  });

  test('a register without a token is answered with the 401 challenge (authenticationKey, keyName)', async () => {
    const response = await call('PUT', `/${idScope}/registrations/${REGISTRATION_ID}/register?api-version=2021-06-01`, {
      body: { registrationId: REGISTRATION_ID, tpm: { endorsementKey: endorsementKey.toString('base64'), storageRootKey: storageRootKey.toString('base64') } },
    });
    assert.equal(response.status, 401);
    const body = response.body as Json;
    assert.equal(body.keyName, 'registration');
    assert.equal(body.message, 'Authorization required, resend request using supplied key');
    assert.equal(body.errorCode, 401005);
    // A: TPM2B_ID_OBJECT (54), B: 258, C: the duplicate, D: 258, E: 2 + 48, F: 2 (reference tpm.md §3).
    const blob = Buffer.from(body.authenticationKey as string, 'base64');
    assert.equal(blob.readUInt16BE(0), 52);
    assert.equal(blob.readUInt16BE(54), 256);
    // Without the SRK there is nothing to seal the key to.
    const noSrk = await call('PUT', `/${idScope}/registrations/${REGISTRATION_ID}/register?api-version=2021-06-01`, {
      body: { registrationId: REGISTRATION_ID, tpm: { endorsementKey: endorsementKey.toString('base64') } },
    });
    assert.equal(noSrk.status, 400);
  });

  test('a wrong endorsement key, or a storage root key other than the one the enrollment pins, is refused', async () => {
    // The SDK's HTTP transport reports a 401 without a challenge blob as a FormatError. Its AMQP transport never
    // reports a failed SASL TPM exchange (it waits forever), so AMQP is checked with a plain rhea client.
    await enroll({ endorsementKey: otherKey(endorsementKey) });
    assert.equal((await refusedWith(register('Http'))).name, 'FormatError');
    assert.deepEqual(await saslTpm(endorsementKey, storageRootKey), { challenged: false, outcome: 'refused' });
    await enroll({ endorsementKey: endorsementKey.toString('base64'), storageRootKey: otherKey(storageRootKey) });
    assert.equal((await refusedWith(register('Http'))).name, 'FormatError');
    assert.deepEqual(await saslTpm(endorsementKey, storageRootKey), { challenged: false, outcome: 'refused' });
    // With the right keys the blob comes; a token the TPM did not sign is refused.
    await enroll({ endorsementKey: endorsementKey.toString('base64') });
    assert.deepEqual(await saslTpm(endorsementKey, storageRootKey), { challenged: true, outcome: 'refused' });
    const wrongKey = await call('PUT', `/${idScope}/registrations/${REGISTRATION_ID}/register?api-version=2021-06-01`, {
      body: { registrationId: REGISTRATION_ID, tpm: { endorsementKey: otherKey(endorsementKey), storageRootKey: storageRootKey.toString('base64') } },
    });
    assert.equal(wrongKey.status, 401);
    assert.equal((wrongKey.body as Json).errorCode, 401002);
    assert.equal((wrongKey.body as Json).authenticationKey, undefined);
  });

  for (const transport of Object.keys(TRANSPORTS) as TransportName[]) {
    test(`registers over ${transport}; the hub key arrives sealed to the TPM and signs as the hub's device key`, async () => {
      await enroll({ endorsementKey: endorsementKey.toString('base64'), storageRootKey: storageRootKey.toString('base64') }, { deviceId: 'tpm-device-1-on-hub' });
      // The TPM flow of the SDK answers with the whole RegistrationOperationStatus.
      const result = await register(transport);
      assert.equal(result.status, 'assigned');
      const state = result.registrationState as Json;
      assert.equal(state.status, 'assigned');
      assert.equal(state.registrationId, REGISTRATION_ID);
      assert.equal(state.deviceId, 'tpm-device-1-on-hub');
      assert.equal(state.assignedHub, 'localhost');
      assert.equal(typeof state.tpm?.authenticationKey, 'string');

      const onHub = (await deviceOf(await registryFor(server, 'localhost'), 'tpm-device-1-on-hub')) as Json;
      assert.equal(onHub.authentication.type, 'sas');
      const hubKey = onHub.authentication.symmetricKey.primaryKey as string;
      const toSign = `localhost%2Fdevices%2Ftpm-device-1-on-hub\n${Math.floor(Date.now() / 1000) + 3600}`;
      assert.deepEqual(await signInTpm(toSign), createHmac('sha256', Buffer.from(hubKey, 'base64')).update(toSign).digest());

      const record = (await service.getDeviceRegistrationState(REGISTRATION_ID)).responseBody as unknown as Json;
      assert.equal(record.status, 'assigned');
      // The registration record is the service's view: no key material in it.
      assert.equal(JSON.stringify(record).includes('authenticationKey'), false);
    });
  }

  test('a TPM device sends a CSR (raw HTTPS, api-version 2025-07-01-preview): challenge, TPM-signed token, certificate', async () => {
    const policy = await call('PUT', '/credentialPolicies/tpm-csr?api-version=2021-10-01', { headers: { authorization: server.token() }, body: { keyTypes: ['ecP256'] } });
    assert.equal(policy.status, 200, policy.text);
    await enroll({ endorsementKey: endorsementKey.toString('base64'), storageRootKey: storageRootKey.toString('base64') }, { deviceId: 'tpm-device-1-on-hub', credentialPolicyName: 'tpm-csr' });
    const path = `/${idScope}/registrations/${REGISTRATION_ID}`;
    const preview = 'api-version=2025-07-01-preview';
    const tpm = { endorsementKey: endorsementKey.toString('base64'), storageRootKey: storageRootKey.toString('base64') };
    const challenge = await call('PUT', `${path}/register?${preview}`, { body: { registrationId: REGISTRATION_ID, tpm } });
    assert.equal(challenge.status, 401);
    await promisify(security.activateIdentityKey.bind(security))(Buffer.from((challenge.body as Json).authenticationKey as string, 'base64'));
    const resource = `${idScope}/registrations/${REGISTRATION_ID}`;
    const expiry = Math.floor(Date.now() / 1000) + 600;
    const signature = await signInTpm(`${resource}\n${expiry}`);
    const authorization = `SharedAccessSignature sr=${resource}&sig=${encodeURIComponent(signature.toString('base64'))}&se=${expiry}&skn=registration`;

    const device = await makeCsr(REGISTRATION_ID);
    const registered = await call('PUT', `${path}/register?${preview}`, { headers: { authorization }, body: { registrationId: REGISTRATION_ID, tpm, csr: device.csr } });
    assert.equal(registered.status, 202, registered.text);
    let polled = registered;
    for (let attempt = 0; attempt < 50 && polled.status === 202; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      polled = await call('GET', `${path}/operations/${(registered.body as Json).operationId as string}?${preview}`, { headers: { authorization } });
    }
    assert.equal(polled.status, 200, polled.text);
    const state = (polled.body as Json).registrationState as Json;
    assert.equal(state.status, 'assigned');
    assert.equal(typeof state.tpm?.authenticationKey, 'string');
    const [leaf, root] = (state.issuedCertificateChain as string[]).map((der) => new X509Certificate(Buffer.from(der, 'base64')));
    assert.ok(leaf !== undefined && root !== undefined);
    assert.equal(leaf.subject, `CN=${REGISTRATION_ID}`);
    assert.ok(leaf.verify(root.publicKey));
    assert.deepEqual(leaf.publicKey.export({ type: 'spki', format: 'der' }), device.publicKeyDer);
    // The hub identity is now the certificate's.
    const onHub = (await deviceOf(await registryFor(server, 'localhost'), 'tpm-device-1-on-hub')) as Json;
    assert.equal(onHub.authentication.type, 'selfSigned');
    assert.equal(onHub.authentication.x509Thumbprint.primaryThumbprint, leaf.fingerprint.replaceAll(':', ''));
  });

  test('a TPM device sends a CSR over AMQP (SASL TPM, then the csr in the register body): a chain openssl verifies', async () => {
    const policy = await call('PUT', '/credentialPolicies/tpm-csr-amqp?api-version=2021-10-01', { headers: { authorization: server.token() }, body: { keyTypes: ['ecP384'] } });
    assert.equal(policy.status, 200, policy.text);
    await enroll({ endorsementKey: endorsementKey.toString('base64'), storageRootKey: storageRootKey.toString('base64') }, { deviceId: 'tpm-device-1-on-hub', credentialPolicyName: 'tpm-csr-amqp' });
    const device = await makeCsr(REGISTRATION_ID, 'ecP384');
    const result = await amqpTpmRegister({ registrationId: REGISTRATION_ID, csr: device.csr });
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    const state = result.registrationState as Json;
    assert.equal(state.status, 'assigned');
    assert.equal(state.deviceId, 'tpm-device-1-on-hub');
    const chain = (state.issuedCertificateChain as string[]).map((der) => new X509Certificate(Buffer.from(der, 'base64')));
    assert.equal(chain.length, 2, 'leaf, then the issuing CA');
    const [leaf, root] = chain as [X509Certificate, X509Certificate];
    const issuingCa = await call('GET', '/issuingCa?api-version=2021-10-01', { headers: { authorization: server.token() } });
    assert.equal(issuingCa.status, 200, issuingCa.text);
    assert.equal(root.raw.toString('base64'), new X509Certificate((issuingCa.body as Json).certificate as string).raw.toString('base64'), 'the chain ends at the issuing CA');
    assert.equal(leaf.subject, `CN=${REGISTRATION_ID}`);
    assert.ok(leaf.checkIssued(root) && leaf.verify(root.publicKey));
    assert.deepEqual(leaf.publicKey.export({ type: 'spki', format: 'der' }), device.publicKeyDer, "the leaf carries the CSR's key");
    const tmp = mkdtempSync(join(tmpdir(), 'provisiond-tpm-csr-'));
    try {
      writeFileSync(join(tmp, 'leaf.pem'), leaf.toString());
      writeFileSync(join(tmp, 'root.pem'), root.toString());
      const verified = execFileSync('openssl', ['verify', '-CAfile', join(tmp, 'root.pem'), '-purpose', 'sslclient', join(tmp, 'leaf.pem')], { encoding: 'utf8' });
      assert.match(verified, /: OK/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    const onHub = (await deviceOf(await registryFor(server, 'localhost'), 'tpm-device-1-on-hub')) as Json;
    assert.equal(onHub.authentication.type, 'selfSigned');
    assert.equal(onHub.authentication.x509Thumbprint.primaryThumbprint, leaf.fingerprint.replaceAll(':', ''));
  });
});
