import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import serviceSdk from 'azure-iot-provisioning-service';
import { startServer, type TestServer } from './harness.js';

const { ProvisioningServiceClient } = serviceSdk;
let server: TestServer;

before(async () => {
  server = await startServer();
});
after(async () => {
  await server.close();
});

test('the official service SDK creates, reads, updates and deletes a symmetric-key enrollment', async () => {
  const client = ProvisioningServiceClient.fromConnectionString(server.connectionString);
  const created = await client.createOrUpdateIndividualEnrollment({
    registrationId: 'smoke-1',
    attestation: { type: 'symmetricKey' },
  } as never);
  const body = created.responseBody as unknown as Record<string, any>;
  assert.equal(body.registrationId, 'smoke-1');
  assert.match(body.attestation.symmetricKey.primaryKey, /^[A-Za-z0-9+/]{86}==$/);
  const got = (await client.getIndividualEnrollment('smoke-1')).responseBody as unknown as Record<string, any>;
  assert.deepEqual(got.attestation, { type: 'symmetricKey' });
  const updated = (await client.createOrUpdateIndividualEnrollment({ ...got, provisioningStatus: 'disabled' } as never)).responseBody as unknown as Record<string, any>;
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.equal(updated.attestation.symmetricKey.primaryKey, body.attestation.symmetricKey.primaryKey);
  await assert.rejects(client.createOrUpdateIndividualEnrollment({ ...got } as never), (error: Error) => error.constructor.name === 'InvalidEtagError');
  await client.deleteIndividualEnrollment('smoke-1');
  await assert.rejects(client.getIndividualEnrollment('smoke-1'));
});
