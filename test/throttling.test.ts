import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { call, startServer, type TestServer } from './harness.js';
import { deviceToken, rawRegister, type Json } from './devices.js';

/** Throttling like DPS: a registration rate per instance and a poll rate per device; 429 + Retry-After, nothing lost. */
let server: TestServer;
let idScope: string;
let key: string;

before(async () => {
  server = await startServer({ registrationsPerSecond: 1, pollsPerSecondPerDevice: 1 });
  idScope = server.info.idScope;
  const created = await call('PUT', '/enrollments/throttled-1?api-version=2021-10-01', {
    headers: { authorization: server.token() },
    body: { registrationId: 'throttled-1', attestation: { type: 'symmetricKey' } },
  });
  key = (created.body as Json).attestation.symmetricKey.primaryKey as string;
});
after(async () => {
  await server.close();
});

const register = (authorization: string) =>
  call('PUT', `/${idScope}/registrations/throttled-1/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId: 'throttled-1' } });

test('registrations over the instance rate get 429 with Retry-After, and the record is untouched', async () => {
  const authorization = deviceToken(idScope, 'throttled-1', key);
  // The bucket holds a burst of two registrations at 1/s.
  const first = await register(authorization);
  const second = await register(authorization);
  assert.deepEqual([first.status, second.status], [202, 202]);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const recordBefore = await call('GET', '/registrations/throttled-1?api-version=2021-10-01', { headers: { authorization: server.token() } });

  const third = await register(authorization);
  assert.equal(third.status, 429);
  assert.equal(third.headers.get('retry-after'), '1');
  assert.equal(third.headers.get('x-ms-error-code'), 'Throttled');
  const body = third.body as Json;
  assert.equal(body.errorCode, 429001);
  assert.match(body.message as string, /retry after 1 s/);
  assert.deepEqual(body.info, { 'Retry-After': '1' });

  const recordAfter = await call('GET', '/registrations/throttled-1?api-version=2021-10-01', { headers: { authorization: server.token() } });
  assert.deepEqual(recordAfter.body, recordBefore.body);

  // After waiting as told, the device gets through.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const retried = await rawRegister(idScope, 'throttled-1', key);
  assert.equal(retried.status, 'assigned');
});

test('polls over the per-device rate get 429 with Retry-After; the operation is still there afterwards', async () => {
  await new Promise((resolve) => setTimeout(resolve, 2100));
  const authorization = deviceToken(idScope, 'throttled-1', key);
  const registered = await register(authorization);
  assert.equal(registered.status, 202);
  const operationId = (registered.body as Json).operationId as string;
  const poll = () => call('GET', `/${idScope}/registrations/throttled-1/operations/${operationId}?api-version=2019-03-31`, { headers: { authorization } });
  const statuses = [(await poll()).status, (await poll()).status];
  const throttled = await poll();
  assert.deepEqual(statuses, [200, 200]);
  assert.equal(throttled.status, 429);
  assert.equal(throttled.headers.get('retry-after'), '1');
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const later = await poll();
  assert.equal(later.status, 200);
  assert.equal((later.body as Json).status, 'assigned');
});
