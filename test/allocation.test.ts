import assert from 'node:assert/strict';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import serviceSdk from 'azure-iot-provisioning-service';
import { hashedChoice } from '../src/domain/allocation.js';
import type { LinkedHubRecord } from '../src/store/store.js';
import { createServerCertificate } from '../src/tls/x509-issuer.js';
import { CA_DIR, call, startServer, type TestServer } from './harness.js';
import { deriveDeviceKey, inBatches, rawRegister, type Json } from './devices.js';
import { HUB_HOST_NAMES, linkHub, registryFor, twinOf } from './hubs.js';

const { ProvisioningServiceClient } = serviceSdk;
let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;

async function put(kind: 'enrollments' | 'enrollmentGroups', body: Json): Promise<Json> {
  const response =
    kind === 'enrollments'
      ? await service.createOrUpdateIndividualEnrollment(body as never)
      : await service.createOrUpdateEnrollmentGroup(body as never);
  return response.responseBody as unknown as Json;
}

before(async () => {
  server = await startServer({ hostNames: HUB_HOST_NAMES, listenHost: '0.0.0.0', customAllocationTimeoutMs: 500 });
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  // Three hubs weighted 1/2/1; the default hub stays linked but out of allocation.
  await linkHub(server, 'localhost', { builtIn: true, applyAllocationPolicy: false });
  await linkHub(server, '127.0.0.2', { builtIn: true, allocationWeight: 1 });
  await linkHub(server, '127.0.0.3', { builtIn: true, allocationWeight: 2 });
  await linkHub(server, '127.0.0.4', { builtIn: true, allocationWeight: 1 });
});
after(async () => {
  await server.close();
});

describe('hashed allocation', () => {
  test('is deterministic and weighted (pure function)', () => {
    const hubs = [
      { name: 'a', allocationWeight: 1 },
      { name: 'b', allocationWeight: 3 },
    ] as LinkedHubRecord[];
    const first = hashedChoice('device-x', hubs).name;
    for (let i = 0; i < 10; i += 1) assert.equal(hashedChoice('DEVICE-X', hubs).name, first);
    // Removing the hub a device is not on does not move it.
    const onB = Array.from({ length: 200 }, (_, i) => `d${i}`).filter((id) => hashedChoice(id, hubs).name === 'b');
    for (const id of onB) assert.equal(hashedChoice(id, [hubs[1] as LinkedHubRecord]).name, 'b');
  });

  test('1,000 devices over three hubs weighted 1/2/1 land within 10% of the weights, and stay put', async () => {
    const group = await put('enrollmentGroups', { enrollmentGroupId: 'alloc-group', attestation: { type: 'symmetricKey' } });
    const groupKey = group.attestation.symmetricKey.primaryKey as string;
    const ids = Array.from({ length: 1000 }, (_, i) => `alloc-${String(i).padStart(4, '0')}`);
    const assigned = new Map<string, string>();
    await inBatches(ids, 25, async (id) => {
      const result = await rawRegister(idScope, id, deriveDeviceKey(groupKey, id));
      assert.equal(result.status, 'assigned', JSON.stringify(result));
      assigned.set(id, result.registrationState.assignedHub as string);
    });
    const counts: Record<string, number> = {};
    for (const hub of assigned.values()) counts[hub] = (counts[hub] ?? 0) + 1;
    const expected: Record<string, number> = { '127.0.0.2': 250, '127.0.0.3': 500, '127.0.0.4': 250 };
    assert.deepEqual(Object.keys(counts).sort(), Object.keys(expected));
    for (const [hub, want] of Object.entries(expected)) {
      const got = counts[hub] ?? 0;
      assert.ok(Math.abs(got - want) <= want * 0.1, `${hub}: ${got} devices, expected ${want} ± 10% (${JSON.stringify(counts)})`);
    }
    // The registration records agree (all 1,000 in one page of the group's query).
    const records = await call('POST', '/registrations/alloc-group/query?api-version=2021-10-01', {
      headers: { authorization: server.token(), 'x-ms-max-item-count': '1000' },
    });
    assert.equal((records.body as Json[]).length, 1000);
    for (const record of records.body as Json[]) assert.equal(record.assignedHub, assigned.get(record.registrationId as string));
    // The same registration ID always lands on the same hub.
    await inBatches(ids.slice(0, 50), 10, async (id) => {
      const again = await rawRegister(idScope, id, deriveDeviceKey(groupKey, id));
      assert.equal(again.registrationState.assignedHub, assigned.get(id));
      assert.equal(again.registrationState.substatus, 'initialAssignment');
    });
  });
});

test('static allocation assigns the one hub the enrollment names', async () => {
  const enrollment = await put('enrollments', {
    registrationId: 'static-1',
    attestation: { type: 'symmetricKey' },
    allocationPolicy: 'static',
    iotHubs: ['127.0.0.3'],
  });
  const result = await rawRegister(idScope, 'static-1', enrollment.attestation.symmetricKey.primaryKey as string);
  assert.equal(result.registrationState.assignedHub, '127.0.0.3');
});

test('static allocation naming no hub is accepted (as DPS does), and fails clearly when several hubs take part in allocation', async () => {
  // What the official service SDK's end-to-end suite creates: symmetric-key groups, static, no iotHubs, with and without IoT Edge.
  for (const iotEdge of [false, true]) {
    const id = `static-group-${String(iotEdge)}`;
    const group = await put('enrollmentGroups', { enrollmentGroupId: id, attestation: { type: 'symmetricKey' }, allocationPolicy: 'static', capabilities: { iotEdge } });
    assert.equal(group.allocationPolicy, 'static');
    assert.equal(group.iotHubs, undefined);
    const deviceId = `${id}-device`;
    const result = await rawRegister(idScope, deviceId, deriveDeviceKey(group.attestation.symmetricKey.primaryKey as string, deviceId));
    // Three linked hubs take part in allocation here: which one "static" means is unknowable.
    assert.equal(result.status, 'failed');
    assert.equal(result.registrationState.errorCode, 400209);
    assert.equal(
      result.registrationState.errorMessage,
      'The static allocation policy needs one hub: the enrollment names none in iotHubs and 3 linked hubs take part in allocation.',
    );
  }
  await assert.rejects(
    put('enrollments', { registrationId: 'static-2', attestation: { type: 'symmetricKey' }, allocationPolicy: 'static', iotHubs: ['127.0.0.2', '127.0.0.3'] }),
    /400016/,
  );
});

describe('custom allocation webhook', () => {
  let webhook: Server;
  let webhookUrl: string;
  const received: Json[] = [];
  let mode: 'ok' | 'error' | 'wrong-hub' | 'slow' | 'not-json' = 'ok';

  before(async () => {
    webhook = createHttpServer((request: IncomingMessage, response) => {
      let text = '';
      request.on('data', (chunk: Buffer) => (text += chunk.toString()));
      request.on('end', () => {
        received.push({ url: request.url, headers: request.headers, body: JSON.parse(text) as Json });
        const answer = (status: number, body: string) => response.writeHead(status, { 'content-type': 'application/json' }).end(body);
        if (mode === 'error') answer(500, '{"error":"boom"}');
        else if (mode === 'wrong-hub') answer(200, JSON.stringify({ iotHubHostName: 'elsewhere.example.net' }));
        else if (mode === 'not-json') answer(200, 'hello');
        else if (mode === 'slow') setTimeout(() => answer(200, JSON.stringify({ iotHubHostName: '127.0.0.2' })), 1500);
        else
          answer(
            200,
            JSON.stringify({
              iotHubHostName: '127.0.0.4',
              initialTwin: { tags: { from: 'webhook' }, properties: { desired: { threshold: 7 } } },
              payload: { greeting: 'hello device', echo: (JSON.parse(text) as Json).deviceRuntimeContext.payload },
            }),
          );
      });
    });
    await new Promise<void>((resolve) => webhook.listen(0, '127.0.0.1', resolve));
    const address = webhook.address() as { port: number };
    webhookUrl = `http://127.0.0.1:${address.port}/api/allocate?code=function-secret`;
  });
  after(async () => {
    webhook.closeAllConnections();
    await new Promise((resolve) => webhook.close(resolve));
  });

  test('the webhook chooses the hub, the initial twin and the payload returned to the device', async () => {
    mode = 'ok';
    const enrollment = await put('enrollments', {
      registrationId: 'custom-1',
      attestation: { type: 'symmetricKey' },
      allocationPolicy: 'custom',
      customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' },
      initialTwin: { tags: { from: 'enrollment' } },
    });
    // GET hides the function key in the webhook URL.
    const shown = (await service.getIndividualEnrollment('custom-1')).responseBody as unknown as Json;
    assert.equal(shown.customAllocationDefinition.webhookUrl.includes('function-secret'), false);

    const result = await rawRegister(idScope, 'custom-1', enrollment.attestation.symmetricKey.primaryKey as string, { sensor: 'v2' });
    assert.equal(result.status, 'assigned');
    assert.equal(result.registrationState.assignedHub, '127.0.0.4');
    assert.deepEqual(result.registrationState.payload, { greeting: 'hello device', echo: { sensor: 'v2' } });

    const request = received.at(-1) as Json;
    assert.equal(request.url, '/api/allocate?code=function-secret');
    assert.deepEqual(request.body.deviceRuntimeContext, { registrationId: 'custom-1', symmetricKey: {}, payload: { sensor: 'v2' } });
    assert.deepEqual(request.body.linkedHubs, ['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    assert.equal(request.body.individualEnrollment.registrationId, 'custom-1');
    assert.deepEqual(request.body.individualEnrollment.attestation, { type: 'symmetricKey' });

    const twin = await twinOf(await registryFor(server, '127.0.0.4'), 'custom-1');
    assert.deepEqual(twin.tags, { from: 'webhook' });
    assert.equal(twin.properties.desired.threshold, 7);

    // On re-registration the webhook learns where the device is now.
    await rawRegister(idScope, 'custom-1', enrollment.attestation.symmetricKey.primaryKey as string);
    const again = received.at(-1) as Json;
    assert.equal(again.body.deviceRuntimeContext.currentIotHubHostName, '127.0.0.4');
    assert.equal(again.body.deviceRuntimeContext.currentDeviceId, 'custom-1');
  });

  for (const [failure, expectMessage] of [
    ['error', /answered HTTP 500/],
    ['wrong-hub', /elsewhere\.example\.net/],
    ['not-json', /JSON object/],
    ['slow', /no answer within 500 ms/],
  ] as const) {
    test(`a webhook that fails (${failure}) ends the registration failed with a clear reason`, async () => {
      mode = failure;
      const id = `custom-fail-${failure}`;
      const enrollment = await put('enrollments', {
        registrationId: id,
        attestation: { type: 'symmetricKey' },
        allocationPolicy: 'custom',
        customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' },
      });
      const result = await rawRegister(idScope, id, enrollment.attestation.symmetricKey.primaryKey as string);
      assert.equal(result.httpStatus, 200);
      assert.equal(result.status, 'failed');
      assert.equal(result.registrationState.status, 'failed');
      assert.equal(result.registrationState.errorCode, 400208);
      assert.match(result.registrationState.errorMessage as string, expectMessage);
      const record = (await service.getDeviceRegistrationState(id)).responseBody as unknown as Json;
      assert.equal(record.status, 'failed');
      assert.equal(record.errorCode, 400208);
    });
  }

  test('an unreachable webhook ends the registration failed', async () => {
    const enrollment = await put('enrollments', {
      registrationId: 'custom-unreachable',
      attestation: { type: 'symmetricKey' },
      allocationPolicy: 'custom',
      customAllocationDefinition: { webhookUrl: 'http://127.0.0.1:9/allocate', apiVersion: '2021-10-01' },
    });
    const result = await rawRegister(idScope, 'custom-unreachable', enrollment.attestation.symmetricKey.primaryKey as string);
    assert.equal(result.status, 'failed');
    assert.match(result.registrationState.errorMessage as string, /could not be reached/);
  });
});

test('geoLatency picks the hub that answers faster', async () => {
  const caPem = readFileSync(join(CA_DIR, 'ca.pem'), 'utf8');
  const certificate = await createServerCertificate({ certPem: caPem, keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') }, ['127.0.0.1'], 1);
  // An external "hub" 200 ms away: every registry call answers DeviceNotFound after a delay.
  const slowHub = createHttpsServer({ key: certificate.keyPem, cert: certificate.certPem }, (_request, response) => {
    setTimeout(
      () =>
        response
          .writeHead(404, { 'content-type': 'application/json', 'iothub-errorcode': 'DeviceNotFound' })
          .end('{"Message":"ErrorCode:DeviceNotFound;not found"}'),
      200,
    );
  });
  await new Promise<void>((resolve) => slowHub.listen(0, '127.0.0.1', resolve));
  const slowName = `127.0.0.1:${(slowHub.address() as { port: number }).port}`;
  try {
    await linkHub(server, slowName, {
      connectionString: `HostName=${slowName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 1).toString('base64')}`,
    });
    const enrollment = await put('enrollments', {
      registrationId: 'geo-1',
      attestation: { type: 'symmetricKey' },
      allocationPolicy: 'geoLatency',
      iotHubs: [slowName, '127.0.0.2'],
    });
    const result = await rawRegister(idScope, 'geo-1', enrollment.attestation.symmetricKey.primaryKey as string);
    assert.equal(result.status, 'assigned', JSON.stringify(result));
    assert.equal(result.registrationState.assignedHub, '127.0.0.2');
  } finally {
    slowHub.closeAllConnections();
    await new Promise((resolve) => slowHub.close(resolve));
  }
});
