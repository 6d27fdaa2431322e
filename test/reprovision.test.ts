import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import serviceSdk from 'azure-iot-provisioning-service';
import { startServer, type TestServer } from './harness.js';
import { rawRegister, sdkRegister, type Json } from './devices.js';
import { HUB_HOST_NAMES, deviceOf, linkHub, registryFor, twinOf } from './hubs.js';

const { ProvisioningServiceClient } = serviceSdk;
let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;

before(async () => {
  server = await startServer({ hostNames: HUB_HOST_NAMES, listenHost: '0.0.0.0' });
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  await linkHub(server, '127.0.0.2', { builtIn: true });
  await linkHub(server, '127.0.0.3', { builtIn: true });
});
after(async () => {
  await server.close();
});

async function enroll(registrationId: string, hub: string, reprovisionPolicy: Json): Promise<Json> {
  const existing = await service.getIndividualEnrollment(registrationId).catch(() => undefined);
  const body: Json = existing
    ? { ...(existing.responseBody as unknown as Json), iotHubs: [hub] }
    : {
        registrationId,
        attestation: { type: 'symmetricKey' },
        allocationPolicy: 'static',
        iotHubs: [hub],
        ...(Object.keys(reprovisionPolicy).length === 0 ? {} : { reprovisionPolicy }),
        initialTwin: { tags: { stage: 'initial' }, properties: { desired: { rate: 1 } } },
      };
  return (await service.createOrUpdateIndividualEnrollment(body as never)).responseBody as unknown as Json;
}

async function keyOf(registrationId: string): Promise<string> {
  const mechanism = (await service.getIndividualEnrollmentAttestationMechanism(registrationId)).responseBody as unknown as Json;
  return mechanism.symmetricKey.primaryKey as string;
}

/** Registers on hub A, changes the twin there, then moves the enrollment to hub B and registers again. */
async function moveAcrossHubs(registrationId: string, reprovisionPolicy: Json): Promise<{ second: Json }> {
  await enroll(registrationId, '127.0.0.2', reprovisionPolicy);
  const key = await keyOf(registrationId);
  const first = await sdkRegister(idScope, registrationId, key);
  assert.equal(first.assignedHub, '127.0.0.2');
  assert.equal(first.substatus, 'initialAssignment');
  const hubA = await registryFor(server, '127.0.0.2');
  const twin = await twinOf(hubA, registrationId);
  await new Promise<void>((resolve, reject) =>
    hubA.updateTwin(registrationId, { tags: { stage: 'in-service' }, properties: { desired: { rate: 9 } } } as never, twin.etag as string, (error) =>
      error ? reject(error) : resolve(),
    ),
  );
  await enroll(registrationId, '127.0.0.3', reprovisionPolicy);
  return { second: await sdkRegister(idScope, registrationId, key) };
}

describe('reprovisioning', () => {
  test('reprovision and migrate data: the device moves with its twin, and leaves the old hub', async () => {
    const { second } = await moveAcrossHubs('repro-migrate', { updateHubAssignment: true, migrateDeviceData: true });
    assert.equal(second.assignedHub, '127.0.0.3');
    assert.equal(second.substatus, 'deviceDataMigrated');
    const moved = await twinOf(await registryFor(server, '127.0.0.3'), 'repro-migrate');
    assert.deepEqual(moved.tags, { stage: 'in-service' });
    assert.equal(moved.properties.desired.rate, 9);
    assert.equal(await deviceOf(await registryFor(server, '127.0.0.2'), 'repro-migrate'), undefined);

    // Back to the hub it started on: reprovisionedToInitialAssignment.
    await enroll('repro-migrate', '127.0.0.2', {});
    const third = await sdkRegister(idScope, 'repro-migrate', await keyOf('repro-migrate'));
    assert.equal(third.assignedHub, '127.0.0.2');
    assert.equal(third.substatus, 'reprovisionedToInitialAssignment');
    assert.equal(await deviceOf(await registryFor(server, '127.0.0.3'), 'repro-migrate'), undefined);
    assert.deepEqual((await twinOf(await registryFor(server, '127.0.0.2'), 'repro-migrate')).tags, { stage: 'in-service' });
  });

  test('reprovision and reset: the device moves and starts again from the initial twin', async () => {
    const { second } = await moveAcrossHubs('repro-reset', { updateHubAssignment: true, migrateDeviceData: false });
    assert.equal(second.assignedHub, '127.0.0.3');
    assert.equal(second.substatus, 'deviceDataReset');
    const reset = await twinOf(await registryFor(server, '127.0.0.3'), 'repro-reset');
    assert.deepEqual(reset.tags, { stage: 'initial' });
    assert.equal(reset.properties.desired.rate, 1);
    assert.equal(await deviceOf(await registryFor(server, '127.0.0.2'), 'repro-reset'), undefined);
  });

  test('never reprovision: the device stays on its hub with its data', async () => {
    const { second } = await moveAcrossHubs('repro-never', { updateHubAssignment: false, migrateDeviceData: false });
    assert.equal(second.assignedHub, '127.0.0.2');
    assert.equal(second.substatus, 'initialAssignment');
    const kept = await twinOf(await registryFor(server, '127.0.0.2'), 'repro-never');
    assert.deepEqual(kept.tags, { stage: 'in-service' });
    assert.equal(await deviceOf(await registryFor(server, '127.0.0.3'), 'repro-never'), undefined);
  });

  test('a device whose record was deleted is provisioned afresh', async () => {
    await enroll('repro-fresh', '127.0.0.2', {});
    const key = await keyOf('repro-fresh');
    await rawRegister(idScope, 'repro-fresh', key);
    await service.deleteDeviceRegistrationState('repro-fresh');
    const again = await rawRegister(idScope, 'repro-fresh', key);
    assert.equal(again.registrationState.substatus, 'initialAssignment');
  });
});
