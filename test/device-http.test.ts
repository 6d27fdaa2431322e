import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { after, before, describe, test } from 'node:test';
import iothub from 'azure-iothub';
import serviceSdk from 'azure-iot-provisioning-service';
import { startServer, call, readCa, type TestServer } from './harness.js';
import { deriveDeviceKey, rawRegister, sdkRegister, type Json } from './devices.js';

const { Registry } = iothub;
const { ProvisioningServiceClient } = serviceSdk;

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;
let registry: InstanceType<typeof Registry>;

async function createEnrollment(body: Json): Promise<Json> {
  return (await service.createOrUpdateIndividualEnrollment(body as never)).responseBody as unknown as Json;
}
async function createGroup(body: Json): Promise<Json> {
  return (await service.createOrUpdateEnrollmentGroup(body as never)).responseBody as unknown as Json;
}
function getTwin(deviceId: string): Promise<Json> {
  return new Promise((resolve, reject) => registry.getTwin(deviceId, (error, twin) => (error ? reject(error) : resolve(twin as unknown as Json))));
}
function getDevice(deviceId: string): Promise<Json> {
  return new Promise((resolve, reject) => registry.get(deviceId, (error, device) => (error ? reject(error) : resolve(device as unknown as Json))));
}

before(async () => {
  server = await startServer();
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  registry = Registry.fromConnectionString(server.info.builtInHubConnectionString);
});
after(async () => {
  await server.close();
});

describe('device registration over HTTP with the official SDK', () => {
  test('an individual symmetric-key device is assigned to the built-in hub with its initial twin', async () => {
    const enrollment = await createEnrollment({
      registrationId: 'http-ind-1',
      deviceId: 'http-ind-1-device',
      attestation: { type: 'symmetricKey' },
      capabilities: { iotEdge: true },
      initialTwin: { tags: { site: 'berlin', floor: 3 }, properties: { desired: { telemetryInterval: 30 } } },
    });
    const key = enrollment.attestation.symmetricKey.primaryKey as string;
    const state = await sdkRegister(idScope, 'http-ind-1', key, { modelId: 'dtmi:test;1' });
    assert.equal(state.registrationId, 'http-ind-1');
    assert.equal(state.assignedHub, 'localhost');
    assert.equal(state.deviceId, 'http-ind-1-device');
    assert.equal(state.status, 'assigned');
    assert.equal(state.substatus, 'initialAssignment');
    assert.deepEqual(state.symmetricKey, {});
    assert.match(state.createdDateTimeUtc, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$/);
    assert.equal(typeof state.etag, 'string');

    const twin = await getTwin('http-ind-1-device');
    assert.deepEqual(twin.tags, { site: 'berlin', floor: 3 });
    assert.equal(twin.properties.desired.telemetryInterval, 30);
    const device = await getDevice('http-ind-1-device');
    assert.equal(device.authentication.symmetricKey.primaryKey, key);
    assert.equal(device.authentication.symmetricKey.secondaryKey, enrollment.attestation.symmetricKey.secondaryKey);
    assert.equal(device.capabilities.iotEdge, true);

    // The service API shows the same record, and the enrollment carries it as registrationState.
    const record = (await service.getDeviceRegistrationState('http-ind-1')).responseBody as unknown as Json;
    assert.deepEqual(
      { assignedHub: record.assignedHub, deviceId: record.deviceId, status: record.status, substatus: record.substatus },
      { assignedHub: 'localhost', deviceId: 'http-ind-1-device', status: 'assigned', substatus: 'initialAssignment' },
    );
    const withState = (await service.getIndividualEnrollment('http-ind-1')).responseBody as unknown as Json;
    assert.equal(withState.registrationState.status, 'assigned');
  });

  test("a static group that names no hub (as the official service SDK's own tests create) assigns the only linked hub", async () => {
    for (const iotEdge of [false, true]) {
      const enrollmentGroupId = `http-static-${String(iotEdge)}`;
      const group = await createGroup({ enrollmentGroupId, attestation: { type: 'symmetricKey' }, allocationPolicy: 'static', capabilities: { iotEdge } });
      assert.equal(group.iotHubs, undefined);
      const read = (await service.getEnrollmentGroup(enrollmentGroupId)).responseBody as unknown as Json;
      assert.equal(read.allocationPolicy, 'static');
      const deviceId = `${enrollmentGroupId}-device`;
      const state = await sdkRegister(idScope, deviceId, deriveDeviceKey(group.attestation.symmetricKey.primaryKey as string, deviceId));
      assert.equal(state.status, 'assigned');
      assert.equal(state.assignedHub, 'localhost');
      assert.equal((await getDevice(deviceId)).capabilities.iotEdge, iotEdge);
      await service.deleteEnrollmentGroup(enrollmentGroupId);
    }
  });

  test('the secondary key works too', async () => {
    const enrollment = await createEnrollment({ registrationId: 'http-ind-2', attestation: { type: 'symmetricKey' } });
    const state = await sdkRegister(idScope, 'http-ind-2', enrollment.attestation.symmetricKey.secondaryKey as string);
    assert.equal(state.status, 'assigned');
    assert.equal(state.deviceId, 'http-ind-2');
  });

  test('a group device proves itself with its derived key and gets the derived key on the hub', async () => {
    await createGroup({ enrollmentGroupId: 'http-decoy-group', attestation: { type: 'symmetricKey' } });
    const group = await createGroup({
      enrollmentGroupId: 'http-group-1',
      attestation: { type: 'symmetricKey' },
      initialTwin: { tags: { fleet: 'pumps' }, properties: { desired: { mode: 'eco' } } },
    });
    const deviceKey = deriveDeviceKey(group.attestation.symmetricKey.primaryKey as string, 'pump-0001');
    const state = await sdkRegister(idScope, 'pump-0001', deviceKey);
    assert.equal(state.status, 'assigned');
    assert.equal(state.deviceId, 'pump-0001');
    assert.deepEqual(state.symmetricKey, { enrollmentGroupId: 'http-group-1' });
    const device = await getDevice('pump-0001');
    assert.equal(device.authentication.symmetricKey.primaryKey, deviceKey);
    const twin = await getTwin('pump-0001');
    assert.deepEqual(twin.tags, { fleet: 'pumps' });
    assert.equal(twin.properties.desired.mode, 'eco');
    // The record belongs to the group: the group's registration query finds it.
    const records = (await service.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, 'http-group-1').next()).responseBody as unknown as Json[];
    assert.deepEqual(records.map((record) => record.registrationId), ['pump-0001']);
  });

  test('a disabled individual enrollment refuses the device, and a matching group does not rescue it', async () => {
    const group = await createGroup({ enrollmentGroupId: 'http-rescue-group', attestation: { type: 'symmetricKey' } });
    const enrollment = await createEnrollment({ registrationId: 'blocked-1', attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled' });
    // With the group's derived key: the individual enrollment decides, so the credential proves nothing.
    await assert.rejects(sdkRegister(idScope, 'blocked-1', deriveDeviceKey(group.attestation.symmetricKey.primaryKey as string, 'blocked-1')), (error: Error) => {
      assert.equal(error.constructor.name, 'UnauthorizedError');
      return true;
    });
    // With its own key: the registration ends `disabled`, which the SDK reports as a failure.
    await assert.rejects(sdkRegister(idScope, 'blocked-1', enrollment.attestation.symmetricKey.primaryKey as string), /status is disabled/);
    const record = (await service.getDeviceRegistrationState('blocked-1')).responseBody as unknown as Json;
    assert.equal(record.status, 'disabled');
    assert.equal(record.errorCode, 401004);
    assert.equal(record.errorMessage, "The individual enrollment 'blocked-1' is disabled.");
    await assert.rejects(getDevice('blocked-1'), (error: Error) => error.constructor.name === 'DeviceNotFoundError');
  });

  test('a wrong key is refused with 401 and the DPS error body', async () => {
    await createEnrollment({ registrationId: 'wrong-key-1', attestation: { type: 'symmetricKey' } });
    const wrongKey = Buffer.alloc(32, 7).toString('base64');
    await assert.rejects(sdkRegister(idScope, 'wrong-key-1', wrongKey), (error: Error) => error.constructor.name === 'UnauthorizedError');
    const raw = await rawRegister(idScope, 'wrong-key-1', wrongKey);
    assert.equal(raw.httpStatus, 401);
    assert.equal(raw.errorCode, 401002);
    assert.equal(typeof raw.trackingId, 'string');
    assert.equal(typeof raw.timestampUtc, 'string');
    // An unknown ID scope answers the same.
    const unknownScope = await rawRegister('0ne00000000', 'wrong-key-1', wrongKey);
    assert.equal(unknownScope.httpStatus, 401);
  });

  test('register answers 202 assigning with Retry-After and Location; the poll answers the result', async () => {
    const enrollment = await createEnrollment({ registrationId: 'wire-1', attestation: { type: 'symmetricKey' } });
    const { createSasToken } = await import('../src/domain/sas.js');
    const authorization = createSasToken({
      resource: `${idScope}/registrations/wire-1`,
      keyBase64: enrollment.attestation.symmetricKey.primaryKey as string,
      keyName: 'registration',
      expirySeconds: Math.floor(Date.now() / 1000) + 60,
    });
    const registered = await call('PUT', `/${idScope}/registrations/wire-1/register?api-version=2019-03-31`, {
      headers: { authorization },
      body: { registrationId: 'wire-1' },
    });
    assert.equal(registered.status, 202);
    assert.equal(registered.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.equal(registered.headers.get('retry-after'), '0');
    assert.equal(registered.headers.get('location'), `https://localhost/${idScope}/registrations/wire-1/register`);
    const body = registered.body as Json;
    assert.deepEqual(Object.keys(body), ['operationId', 'status']);
    assert.equal(body.status, 'assigning');
    const polled = await call('GET', `/${idScope}/registrations/wire-1/operations/${body.operationId as string}?api-version=2019-03-31`, {
      headers: { authorization, 'content-type': 'application/json' },
      rawBody: '{}',
    }).catch(async () =>
      call('GET', `/${idScope}/registrations/wire-1/operations/${body.operationId as string}?api-version=2019-03-31`, { headers: { authorization } }),
    );
    assert.equal(polled.status, 200);
    const result = polled.body as Json;
    assert.equal(result.status, 'assigned');
    assert.equal(result.operationId, body.operationId);
    assert.equal(result.registrationState.assignedHub, 'localhost');
    // Another device cannot read this operation.
    const lookup = await call('POST', `/${idScope}/registrations/wire-1?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId: 'wire-1' } });
    assert.equal(lookup.status, 200);
    assert.equal((lookup.body as Json).status, 'assigned');
  });
  test("the older C SDK's HTTPS requests (dps-wire.md §14): Host with its port, UserAgent, Content-Encoding: utf-8, lowercase escapes, no skn", async () => {
    const registrationId = 'c-sdk:1';
    const enrollment = await createEnrollment({ registrationId, attestation: { type: 'symmetricKey' } });
    const { computeSignature } = await import('../src/domain/sas.js');
    // Everything percent-encoded in lower case, `sr` and `sig` alike; no skn.
    const lower = (text: string): string => encodeURIComponent(text).replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase());
    const sr = lower(`${idScope}/registrations/${registrationId}`);
    const se = Math.floor(Date.now() / 1000) + 3600;
    // Base64 of 32 bytes ends in '=': its lowercase escape is part of the test.
    const signature = computeSignature(enrollment.attestation.symmetricKey.primaryKey as string, sr, se).toString('base64');
    const authorization = `SharedAccessSignature sr=${sr}&sig=${lower(signature)}&se=${se}`;
    const send = (method: string, path: string, body: string | undefined): Promise<{ status: number; headers: Record<string, unknown>; body: Json }> =>
      new Promise((resolve, reject) => {
        const headers: Record<string, string> = { Host: 'localhost:443', UserAgent: 'iothubclient/1.14.0 (native; Linux; x86_64)', Accept: 'application/json', Authorization: authorization };
        if (body !== undefined) Object.assign(headers, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Encoding': 'utf-8', 'Content-Length': String(Buffer.byteLength(body)) });
        const outgoing = httpsRequest({ host: '127.0.0.1', servername: 'localhost', port: 443, method, path, headers, ca: readCa() }, (response) => {
          let text = '';
          response.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: (text === '' ? {} : JSON.parse(text)) as Json }));
        });
        outgoing.on('error', reject);
        outgoing.end(body);
      });
    const path = `/${idScope}/registrations/${encodeURIComponent(registrationId)}`;
    const registered = await send('PUT', `${path}/register?api-version=2021-06-01`, JSON.stringify({ registrationId }));
    assert.equal(registered.status, 202, JSON.stringify(registered.body));
    assert.equal(registered.body.status, 'assigning');
    assert.equal(registered.headers.location, `https://localhost${path}/register`);
    // The same token for the poll.
    await new Promise((resolve) => setTimeout(resolve, Number(registered.headers['retry-after'] ?? 0) * 1000));
    const polled = await send('GET', `${path}/operations/${registered.body.operationId as string}?api-version=2021-06-01`, undefined);
    assert.equal(polled.status, 200, JSON.stringify(polled.body));
    assert.equal(polled.body.registrationState.registrationId, registrationId);
    assert.equal(polled.body.registrationState.deviceId, registrationId);
    assert.equal(polled.body.registrationState.assignedHub, 'localhost');
  });
});
