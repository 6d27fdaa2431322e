import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertDpsError } from '../api-assertions.js';
import { call, startServer, type TestServer } from '../harness.js';

/**
 * Where code and docs disagreed (issue 13.6): reading a data request without the rights its kind needs is a 401 naming
 * them (docs/customer-data-api.md), not a 404; the data-request query takes no body, `{}` and `{query}` alike.
 */
let server: TestServer;
const keys = new Map<string, string>();

const api = (method: string, path: string, options: { keyName?: string; body?: unknown; rawBody?: string } = {}) =>
  call(method, `${path}?api-version=2021-10-01`, {
    headers: {
      authorization: server.token(options.keyName === undefined ? {} : { keyName: options.keyName, key: keys.get(options.keyName) ?? '' }),
      ...(options.rawBody === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(options.body === undefined ? {} : { body: options.body }),
    ...(options.rawBody === undefined ? {} : { rawBody: options.rawBody }),
  });

before(async () => {
  server = await startServer();
  const policies: Record<string, string> = {
    'export-only': 'EnrollmentRead, RegistrationStatusRead',
    'erase-only': 'EnrollmentWrite, RegistrationStatusWrite',
    'half-export': 'EnrollmentRead, EnrollmentWrite, RegistrationStatusWrite',
  };
  for (const [name, rights] of Object.entries(policies)) {
    const created = await api('PUT', `/accessPolicies/${name}`, { body: { rights } });
    assert.equal(created.status, 200, created.text);
    keys.set(name, (created.body as { primaryKey: string }).primaryKey);
  }
  assert.equal((await api('PUT', '/enrollments/contract-dev', { body: { registrationId: 'contract-dev', attestation: { type: 'symmetricKey' } } })).status, 200);
  assert.equal((await api('PUT', '/dataRequests/contract-export', { body: { type: 'export', subject: { registrationId: 'contract-dev' } } })).status, 200);
  assert.equal((await api('PUT', '/dataRequests/contract-erase', { body: { type: 'erase', subject: { registrationId: 'nobody' }, dryRun: true } })).status, 200);
});

after(async () => {
  await server.close();
});

test('reading a data request without the rights of its kind is a 401 naming them; an unknown ID is a 404', async () => {
  assert.equal((await api('GET', '/dataRequests/contract-export', { keyName: 'export-only' })).status, 200);
  assert.equal((await api('GET', '/dataRequests/contract-erase', { keyName: 'erase-only' })).status, 200);
  // A policy that lacks one of the read rights reads an export; one without the write rights reads an erase.
  assertDpsError(await api('GET', '/dataRequests/contract-export', { keyName: 'half-export' }), 401, { errorCode: 401002, message: /RegistrationStatusRead right/ });
  assertDpsError(await api('GET', '/dataRequests/contract-export', { keyName: 'erase-only' }), 401, { errorCode: 401002, message: /EnrollmentRead right/ });
  assertDpsError(await api('GET', '/dataRequests/contract-erase', { keyName: 'export-only' }), 401, { errorCode: 401002, message: /EnrollmentWrite right/ });
  assertDpsError(await api('GET', '/dataRequests/nosuchrequest', { keyName: 'erase-only' }), 404);
});

test('POST /dataRequests/query: no body, {} and {query} list; anything else is a 400', async () => {
  const ids = (response: { body: unknown }): string[] => (response.body as Array<{ requestId: string }>).map((item) => item.requestId).sort();
  const none = await api('POST', '/dataRequests/query');
  assert.equal(none.status, 200, none.text);
  assert.deepEqual(ids(none), ['contract-erase', 'contract-export']);
  const empty = await api('POST', '/dataRequests/query', { body: {} });
  assert.equal(empty.status, 200, empty.text);
  assert.deepEqual(ids(empty), ids(none));
  const filtered = await api('POST', '/dataRequests/query', { body: { query: "SELECT * WHERE type = 'erase'" } });
  assert.deepEqual(ids(filtered), ['contract-erase']);
  for (const body of [{ query: 5 }, { qeury: 'SELECT *' }, ['SELECT *']]) {
    assertDpsError(await api('POST', '/dataRequests/query', { body }), 400, {}, JSON.stringify(body));
  }
});
