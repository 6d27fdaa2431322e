import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { settle, startAttempt } from '../src/domain/registration.js';
import type { StoredRegistration } from '../src/store/store.js';

/** The registration state's transitions (src/domain/registration.ts), as a table of cases. */
describe('registration state', () => {
  const previous: StoredRegistration = {
    registrationId: 'dev-1',
    createdDateTimeUtc: '2026-01-01T00:00:00.0000000Z',
    assignedHub: 'hub-a',
    deviceId: 'dev-1',
    status: 'assigned',
    substatus: 'initialAssignment',
    lastUpdatedDateTimeUtc: '2026-01-01T00:00:00.0000000Z',
    etag: 'old',
    payload: { from: 'webhook' },
    attestationType: 'symmetricKey',
    hubHistory: ['hub-a'],
  };
  const attempt = { registrationId: 'dev-1', attestationType: 'symmetricKey' as const, enrollmentGroupId: 'group-1', now: '2026-02-01T00:00:00.0000000Z', etag: 'new' };

  test('a new attempt is assigning, keeps where the device was and when it first registered, and drops the old state', () => {
    assert.deepEqual(startAttempt(previous, attempt), {
      registrationId: 'dev-1',
      createdDateTimeUtc: '2026-01-01T00:00:00.0000000Z',
      status: 'assigning',
      lastUpdatedDateTimeUtc: '2026-02-01T00:00:00.0000000Z',
      etag: 'new',
      attestationType: 'symmetricKey',
      enrollmentGroupId: 'group-1',
      hubHistory: ['hub-a'],
      assignedHub: 'hub-a',
      deviceId: 'dev-1',
    });
    assert.deepEqual(startAttempt(undefined, { ...attempt, enrollmentGroupId: undefined }), {
      registrationId: 'dev-1',
      createdDateTimeUtc: '2026-02-01T00:00:00.0000000Z',
      status: 'assigning',
      lastUpdatedDateTimeUtc: '2026-02-01T00:00:00.0000000Z',
      etag: 'new',
      attestationType: 'symmetricKey',
    });
  });

  const cases: { name: string; next: Parameters<typeof settle>[1]; expected: { [Key in keyof StoredRegistration]?: StoredRegistration[Key] | undefined } }[] = [
    {
      name: 'assigned carries its hub, device, substatus, history and payload',
      next: { status: 'assigned', assignedHub: 'hub-b', deviceId: 'dev-1', substatus: 'reprovisionedToInitialAssignment', hubHistory: ['hub-a', 'hub-b'], payload: { p: 1 } },
      expected: { status: 'assigned', assignedHub: 'hub-b', substatus: 'reprovisionedToInitialAssignment', hubHistory: ['hub-a', 'hub-b'], payload: { p: 1 } },
    },
    {
      name: 'failed carries its error and no substatus or payload',
      next: { status: 'failed', errorCode: 500208, errorMessage: 'hub down' },
      expected: { status: 'failed', errorCode: 500208, errorMessage: 'hub down', assignedHub: 'hub-a', substatus: undefined, payload: undefined },
    },
    {
      name: 'disabled carries its error',
      next: { status: 'disabled', errorCode: 403201, errorMessage: 'disabled' },
      expected: { status: 'disabled', errorCode: 403201, errorMessage: 'disabled', substatus: undefined },
    },
  ];
  for (const { name, next, expected } of cases) {
    test(name, () => {
      const settled = settle(startAttempt(previous, attempt), next);
      for (const [key, value] of Object.entries(expected)) assert.deepEqual(settled[key as keyof StoredRegistration], value, key);
      assert.equal(settled.etag, 'new');
    });
  }

  test('a terminal record does not change state again: only a new attempt starts over', () => {
    const assigned = settle(startAttempt(previous, attempt), { status: 'failed', errorCode: 500208, errorMessage: 'x' });
    assert.throws(() => settle(assigned, { status: 'disabled', errorCode: 403201, errorMessage: 'y' }), /failed → disabled is not a transition/);
    assert.throws(() => settle(previous, { status: 'failed', errorCode: 500208, errorMessage: 'y' }), /assigned → failed is not a transition/);
  });
});
