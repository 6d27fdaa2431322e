import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { connectAsync, type MqttClient } from 'mqtt';
import rhea, { type AmqpError, type Connection, type Message, type Sender } from 'rhea';
import serviceSdk from 'azure-iot-provisioning-service';
import { createSasToken } from '../src/domain/sas.js';
import type { DeviceMatch } from '../src/services/attestation/device-match.js';
import { DeviceProof } from '../src/services/attestation/device-proof.js';
import type { Store } from '../src/store/store.js';
import { parseResponseTopic } from '../src/transports/mqtt/topics.js';
import { deriveDeviceKey, type Json } from './devices.js';
import { readCa, startServer, type TestServer } from './harness.js';

/**
 * A persistent MQTT or AMQP connection proves its token once, at CONNECT / SASL, and its register and polls carry
 * that proof instead of authenticating again (issue 12, P3) — while everything that must be checked per request still
 * is: the enrollment as it is now (deleted, disabled, re-keyed, or an individual enrollment made for a group device
 * since), the token's expiry.
 */
const { ProvisioningServiceClient } = serviceSdk;
const REPLY_TIMEOUT_MS = 10_000;

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;

before(async () => {
  server = await startServer();
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
});
after(async () => {
  await server.close();
});

async function enroll(registrationId: string): Promise<Json> {
  return (await service.createOrUpdateIndividualEnrollment({ registrationId, attestation: { type: 'symmetricKey' } } as never)).responseBody as unknown as Json;
}
async function updateEnrollment(registrationId: string, change: (doc: Json) => Json): Promise<void> {
  const current = (await service.getIndividualEnrollment(registrationId)).responseBody as unknown as Json;
  await service.createOrUpdateIndividualEnrollment(change(current) as never);
}
const keyOf = (enrollment: Json): string => enrollment.attestation.symmetricKey.primaryKey as string;
const token = (registrationId: string, key: string, lifetimeSeconds = 3600): string =>
  createSasToken({ resource: `${idScope}/registrations/${registrationId}`, keyBase64: key, keyName: 'registration', expirySeconds: Math.floor(Date.now() / 1000) + lifetimeSeconds });
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Counts the store's reads of enrollments outside a transaction (what authenticating a device costs) while `work` runs. */
async function enrollmentReadsDuring(work: () => Promise<void>): Promise<number> {
  const store = server.app.store as Store & Record<string, unknown>;
  let reads = 0;
  const originals = { getEnrollment: store.getEnrollment, getEnrollmentGroup: store.getEnrollmentGroup };
  store.getEnrollment = (...args) => {
    reads += 1;
    return originals.getEnrollment.apply(store, args);
  };
  store.getEnrollmentGroup = (...args) => {
    reads += 1;
    return originals.getEnrollmentGroup.apply(store, args);
  };
  try {
    await work();
  } finally {
    store.getEnrollment = originals.getEnrollment;
    store.getEnrollmentGroup = originals.getEnrollmentGroup;
  }
  return reads;
}

/** One reply (or rejection) of either transport, in the shape of the HTTPS answer. */
interface Answer {
  status: number;
  body: Json;
}

interface LiveDevice {
  register(): Promise<Answer>;
  poll(operationId: string): Promise<Answer>;
  close(): void;
}

async function registerUntilDone(device: LiveDevice): Promise<Answer> {
  const accepted = await device.register();
  if (accepted.status !== 202) return accepted;
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const polled = await device.poll(accepted.body.operationId as string);
    if (polled.status !== 202) return polled;
    await sleep(500);
  }
  throw new Error('the operation did not finish');
}

async function mqttDevice(registrationId: string, password: string): Promise<LiveDevice> {
  const client: MqttClient = await connectAsync('mqtts://localhost:8883', {
    clientId: registrationId,
    username: `${idScope}/registrations/${registrationId}/api-version=2019-03-31&ClientVersion=proof-test`,
    password,
    protocolVersion: 4,
    ca: readCa(),
    reconnectPeriod: 0,
    connectTimeout: 5000,
  });
  const replies = new Map<string, Answer>();
  client.on('message', (topic, payload) => {
    const parsed = parseResponseTopic(topic);
    if (parsed !== undefined) replies.set(parsed.rid, { status: parsed.status, body: JSON.parse(payload.toString('utf8')) as Json });
  });
  await client.subscribeAsync('$dps/registrations/res/#', { qos: 1 });
  let next = 0;
  const request = async (topic: (rid: string) => string): Promise<Answer> => {
    next += 1;
    const rid = String(next);
    await client.publishAsync(topic(rid), Buffer.from('{}'), { qos: 1 });
    const deadline = Date.now() + REPLY_TIMEOUT_MS;
    for (;;) {
      const reply = replies.get(rid);
      if (reply !== undefined) return reply;
      if (Date.now() > deadline) throw new Error(`no reply for $rid=${rid}`);
      await sleep(20);
    }
  };
  return {
    register: () => request((rid) => `$dps/registrations/PUT/iotdps-register/?$rid=${rid}`),
    poll: (operationId) => request((rid) => `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=${rid}&operationId=${operationId}`),
    close: () => void client.end(true),
  };
}

async function amqpDevice(registrationId: string, password: string): Promise<LiveDevice> {
  const container = rhea.create_container();
  container.on('error', () => undefined);
  const address = `${idScope}/registrations/${registrationId}`;
  const connection: Connection = container.connect({ host: 'localhost', port: 5671, transport: 'tls', ca: readCa(), username: address, password, reconnect: false });
  await once(connection, 'connection_open');
  const replies: Message[] = [];
  const receiver = connection.open_receiver({ source: { address } });
  receiver.on('message', (context) => replies.push(context.message as Message));
  const sender: Sender = connection.open_sender({ target: { address } });
  await once(sender, 'sendable');
  let next = 0;
  const request = (properties: Record<string, unknown>): Promise<Answer> => {
    next += 1;
    const correlationId = `proof-${next}`;
    return new Promise((resolve, reject) => {
      const delivery = sender.send({ correlation_id: correlationId, application_properties: properties, body: rhea.message.data_section(Buffer.from('{}')) });
      const timer = setTimeout(() => reject(new Error(`no answer to ${correlationId}`)), REPLY_TIMEOUT_MS);
      sender.on('accepted', (context) => {
        if (context.delivery !== delivery) return;
        const wait = (): void => {
          const reply = replies.find((message) => message.correlation_id === correlationId);
          if (reply === undefined) return void setTimeout(wait, 20);
          clearTimeout(timer);
          const body = JSON.parse((reply.body as { content: Buffer }).content.toString('utf8')) as Json;
          resolve({ status: reply.application_properties?.['retry-after'] === undefined && body.status !== 'assigning' ? 200 : 202, body });
        };
        wait();
      });
      sender.on('rejected', (context) => {
        if (context.delivery !== delivery) return;
        clearTimeout(timer);
        const error = (context.delivery.remote_state as { error: AmqpError }).error;
        const body = JSON.parse(String(error.description)) as Json;
        resolve({ status: Math.floor(Number(body.errorCode) / 1000), body });
      });
    });
  };
  return {
    register: () => request({ 'iotdps-operation-type': 'iotdps-register', 'iotdps-forceRegistration': false }),
    poll: (operationId) => request({ 'iotdps-operation-type': 'iotdps-get-operationstatus', 'iotdps-operation-id': operationId }),
    close: () => connection.close(),
  };
}

const TRANSPORTS = { mqtt: mqttDevice, amqp: amqpDevice } as const;

for (const [name, connect] of Object.entries(TRANSPORTS)) {
  describe(`${name}: the sign-in proof carried to the connection's requests`, () => {
    test('a register and its polls on a connection that proved its token read no enrollment to authenticate', async () => {
      const registrationId = `${name}-proof-reads`;
      const device = await connect(registrationId, token(registrationId, keyOf(await enroll(registrationId))));
      try {
        // The first registration, then a second on the same connection: neither authenticates again.
        for (let round = 0; round < 2; round += 1) {
          let done: Answer | undefined;
          const reads = await enrollmentReadsDuring(async () => {
            done = await registerUntilDone(device);
          });
          assert.equal(done?.status, 200, JSON.stringify(done?.body));
          assert.equal(done?.body.status, 'assigned');
          assert.equal(reads, 0, `round ${round}: the enrollment was read ${reads} times outside the registration's transaction`);
        }
      } finally {
        device.close();
      }
    });

    test('a group device: the proof holds for the group, and an individual enrollment made since decides alone', async () => {
      const groupId = `${name}-proof-group`;
      const group = (await service.createOrUpdateEnrollmentGroup({ enrollmentGroupId: groupId, attestation: { type: 'symmetricKey' } } as never)).responseBody as unknown as Json;
      const registrationId = `${name}-proof-group-device`;
      const deviceKey = deriveDeviceKey(group.attestation.symmetricKey.primaryKey as string, registrationId);
      // The service caches groups and reloads on a miss at most once a second.
      await sleep(1100);
      const device = await connect(registrationId, token(registrationId, deviceKey));
      try {
        const first = await registerUntilDone(device);
        assert.equal(first.body.status, 'assigned', JSON.stringify(first.body));
        assert.equal(first.body.registrationState.registrationId, registrationId);
        await enroll(registrationId);
        const refused = await device.register();
        assert.equal(refused.status, 401, JSON.stringify(refused.body));
        assert.equal(refused.body.errorCode, 401002);
      } finally {
        device.close();
      }
    });

    test('a deleted enrollment is refused at the next register on the live connection', async () => {
      const registrationId = `${name}-proof-deleted`;
      const device = await connect(registrationId, token(registrationId, keyOf(await enroll(registrationId))));
      try {
        assert.equal((await registerUntilDone(device)).body.status, 'assigned');
        await service.deleteIndividualEnrollment(registrationId);
        const refused = await device.register();
        assert.equal(refused.status, 401, JSON.stringify(refused.body));
        assert.equal(refused.body.errorCode, 401002);
      } finally {
        device.close();
      }
    });

    test('a disabled enrollment ends the next registration on the live connection as disabled', async () => {
      const registrationId = `${name}-proof-disabled`;
      const device = await connect(registrationId, token(registrationId, keyOf(await enroll(registrationId))));
      try {
        assert.equal((await registerUntilDone(device)).body.status, 'assigned');
        await updateEnrollment(registrationId, (doc) => ({ ...doc, provisioningStatus: 'disabled' }));
        const done = await registerUntilDone(device);
        assert.equal(done.body.status, 'disabled', JSON.stringify(done.body));
      } finally {
        device.close();
      }
    });

    test("re-keyed enrollment: the connection's old token is refused at the next register", async () => {
      const registrationId = `${name}-proof-rekeyed`;
      const device = await connect(registrationId, token(registrationId, keyOf(await enroll(registrationId))));
      try {
        assert.equal((await registerUntilDone(device)).body.status, 'assigned');
        const fresh = Buffer.alloc(32, 7).toString('base64');
        await updateEnrollment(registrationId, (doc) => ({ ...doc, attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: fresh, secondaryKey: fresh } } }));
        const refused = await device.register();
        assert.equal(refused.status, 401, JSON.stringify(refused.body));
        assert.equal(refused.body.errorCode, 401002);
      } finally {
        device.close();
      }
    });

    test('a token that expired while the connection was open is refused at the next register and poll', async () => {
      const registrationId = `${name}-proof-expired`;
      const device = await connect(registrationId, token(registrationId, keyOf(await enroll(registrationId)), 2));
      try {
        const accepted = await device.register();
        assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
        // SAS expiry is in whole seconds: past it by more than one.
        await sleep(3200);
        const refused = await device.register();
        assert.equal(refused.status, 401, JSON.stringify(refused.body));
        assert.equal(refused.body.errorCode, 401002);
        const poll = await device.poll(accepted.body.operationId as string);
        assert.equal(poll.status, 401, JSON.stringify(poll.body));
      } finally {
        device.close();
      }
    });
  });
}

describe('DeviceProof: what a sign-in proof covers', () => {
  const match = { registrationId: 'dev-1' } as unknown as DeviceMatch;
  const sasRequest = (authorization: string | undefined, registrationId = 'dev-1', scope = '0ne0000AAAA') => ({
    idScope: scope,
    registrationId,
    credential: { kind: 'sas' as const, authorization },
  });
  const expirySeconds = 2_000_000_000;
  const sas = `SharedAccessSignature sr=0ne0000AAAA%2Fregistrations%2Fdev-1&sig=abc&se=${expirySeconds}&skn=registration`;

  test('the same token, scope and device (any case) until the token expires; nothing else', () => {
    const proof = DeviceProof.of(sasRequest(sas), match);
    assert.ok(proof !== undefined);
    const now = expirySeconds * 1000;
    assert.equal(proof.matchFor(sasRequest(sas), now), match);
    assert.equal(proof.matchFor(sasRequest(sas, 'DEV-1'), now), match);
    assert.equal(proof.matchFor(sasRequest(sas), now + 1), undefined, 'expired');
    assert.equal(proof.matchFor(sasRequest(`${sas}x`), now), undefined, 'another token');
    assert.equal(proof.matchFor(sasRequest(undefined), now), undefined, 'no token');
    assert.equal(proof.matchFor(sasRequest(sas, 'dev-2'), now), undefined, 'another device');
    assert.equal(proof.matchFor(sasRequest(sas, 'dev-1', '0ne0000BBBB'), now), undefined, 'another ID scope');
    assert.equal(proof.matchFor({ idScope: '0ne0000AAAA', registrationId: 'dev-1', credential: { kind: 'x509', chain: [] } }, now), undefined, 'a certificate');
  });

  test('a certificate, or no parsable token, proves nothing to carry', () => {
    assert.equal(DeviceProof.of({ idScope: '0ne0000AAAA', registrationId: 'dev-1', credential: { kind: 'x509', chain: [] } }, match), undefined);
    assert.equal(DeviceProof.of(sasRequest('not a token'), match), undefined);
    assert.equal(DeviceProof.of(sasRequest(undefined), match), undefined);
  });
});
