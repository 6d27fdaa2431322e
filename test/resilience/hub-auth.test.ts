import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { computeSignature, createSasToken } from '../../src/domain/sas.js';
import { apiPath, discoverRoutes, type Response, type Route } from '../api-assertions.js';
import { call, startServer, type TestServer } from '../harness.js';

/**
 * The auth matrix over the built-in hub registry API (issue 13.1), and wrong-path tokens on every route of both the
 * hub API and the DPS service API. A hub policy token is valid for its `sr` and everything under it, as on IoT Hub:
 * a token for `localhost/devices/dev-a` must not read or delete `/devices/dev-b`, and one for `localhost/enrollments`
 * must not reach any hub route. Every refusal is the IoT Hub 401 and changes nothing.
 */
const HUB = 'localhost';
const HUB_API = '2021-04-12';
let server: TestServer;
let hubKey = '';
let hubRoutes: HubRoute[] = [];
let serviceRoutes: Route[] = [];

interface HubRoute {
  method: string;
  template: string;
  operationId: string;
  hasBody: boolean;
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function hubToken(options: { resource?: string; key?: string; keyName?: string; expirySeconds?: number } = {}): string {
  return createSasToken({
    resource: options.resource ?? HUB,
    keyBase64: options.key ?? hubKey,
    keyName: options.keyName ?? 'iothubowner',
    expirySeconds: options.expirySeconds ?? nowSeconds() + 3600,
  });
}

/** Bodies each hub route would accept, so only authentication stands between the request and a change. */
function hubBody(route: HubRoute, id: string): unknown {
  if (route.operationId === 'HubDevices_CreateOrUpdateIdentity') return { deviceId: id };
  if (route.operationId === 'HubDevices_QueryTwins') return { query: 'SELECT * FROM devices' };
  if (route.template.startsWith('/twins')) return { tags: { touched: true } };
  return undefined;
}

async function hitHub(route: HubRoute, auth: string | undefined, id = 'dev-b'): Promise<Response> {
  const body = route.hasBody ? hubBody(route, id) : undefined;
  const path = `${route.template.replace('{id}', encodeURIComponent(id))}?api-version=${HUB_API}`;
  return call(route.method, path, {
    headers: {
      ...(auth === undefined ? {} : { authorization: auth }),
      // Replacing needs If-Match; a refused request must not get that far either way.
      ...(route.method === 'PUT' && route.template.startsWith('/devices') ? { 'if-match': '*' } : {}),
    },
    ...(body === undefined ? {} : { body }),
  });
}

function assertHub401(response: Response, context: string): void {
  assert.equal(response.status, 401, `${context} → ${response.status} ${response.text.slice(0, 200)}`);
  assert.equal(response.headers.get('iothub-errorcode'), 'IotHubUnauthorizedAccess', context);
}

async function hubSnapshot(): Promise<string> {
  const devices = await server.app.builtInHubs.listDevices(HUB, 1000);
  const twins = await Promise.all(devices.map(async (device) => server.app.builtInHubs.getTwin(HUB, device.deviceId)));
  return JSON.stringify({ devices, twins });
}

before(async () => {
  server = await startServer({ hostNames: [HUB, '127.0.0.1'] });
  hubKey = /SharedAccessKey=([^;]+)$/.exec(server.info.builtInHubConnectionString)?.[1] ?? '';
  for (const id of ['dev-a', 'dev-b']) {
    const created = await call('PUT', `/devices/${id}?api-version=${HUB_API}`, { headers: { authorization: hubToken() }, body: { deviceId: id } });
    assert.equal(created.status, 200, created.text);
  }
  const document = await call('GET', '/openapi.json');
  const paths = (document.body as { paths: Record<string, Record<string, { operationId: string; requestBody?: unknown }>> }).paths;
  for (const [template, operations] of Object.entries(paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      if (operation.operationId.startsWith('Hub')) hubRoutes.push({ method: method.toUpperCase(), template, operationId: operation.operationId, hasBody: operation.requestBody !== undefined });
    }
  }
  serviceRoutes = await discoverRoutes();
});

after(async () => {
  await server.close();
});

test('the hub route list comes from the app and holds every registry operation', () => {
  const ids = hubRoutes.map((route) => route.operationId).sort();
  assert.deepEqual(ids, [
    'HubDevices_CreateOrUpdateIdentity',
    'HubDevices_DeleteIdentity',
    'HubDevices_GetDevices',
    'HubDevices_GetIdentity',
    'HubDevices_QueryTwins',
    'HubStatistics_GetDeviceStatistics',
    'HubTwin_GetDeviceTwin',
    'HubTwin_ReplaceDeviceTwin',
    'HubTwin_UpdateDeviceTwin',
  ]);
});

test('every bad credential kind is a 401 on every hub route, and nothing changes', async () => {
  const se = nowSeconds() + 3600;
  const sig = encodeURIComponent(computeSignature(hubKey, HUB, se).toString('base64'));
  const kinds: Array<[string, string | undefined]> = [
    ['no token', undefined],
    ['expired', hubToken({ expirySeconds: nowSeconds() - 60 })],
    ['wrong key', hubToken({ key: randomBytes(32).toString('base64') })],
    ['unknown policy', hubToken({ keyName: 'nosuchpolicy' })],
    ['no skn', `SharedAccessSignature sr=${HUB}&sig=${sig}&se=${se}`],
    ['garbage', 'SharedAccessSignature garbage'],
    ['duplicate field', `SharedAccessSignature sr=${HUB}&sig=${sig}&se=${se}&skn=iothubowner&sr=${HUB}`],
    ['bad signature text', `SharedAccessSignature sr=${HUB}&sig=not base64!&se=${se}&skn=iothubowner`],
    ['bad expiry', `SharedAccessSignature sr=${HUB}&sig=${sig}&se=soon&skn=iothubowner`],
    ['bearer', `Bearer ${randomBytes(24).toString('base64')}`],
    ['unknown host in sr', hubToken({ resource: 'unknown.example.net' })],
    ['DPS service token', server.token()],
  ];
  const before = await hubSnapshot();
  for (const [kind, auth] of kinds) {
    for (const route of hubRoutes) assertHub401(await hitHub(route, auth), `${kind}: ${route.method} ${route.template}`);
  }
  assert.equal(await hubSnapshot(), before, 'the hub is unchanged');
});

test('a token scoped to one path reaches that path and what is under it, and no other hub route', async () => {
  const before = await hubSnapshot();
  // Wrong-path tokens, each signed with the owner key: another device, another collection, a DPS path, a prefix that
  // is not a whole segment.
  const wrongPaths = [`${HUB}/devices/dev-a`, `${HUB}/enrollments`, `${HUB}/registrations`, `${HUB}/devices/dev`, `${HUB}/dev`, `${HUB}/twins/dev-a`];
  for (const resource of wrongPaths) {
    for (const route of hubRoutes) {
      // `localhost/twins/dev-a` names no device route, `localhost/devices/dev-a` no twin, list or statistics route.
      assertHub401(await hitHub(route, hubToken({ resource })), `sr=${resource}: ${route.method} ${route.template}`);
    }
  }
  assert.equal(await hubSnapshot(), before, 'the hub is unchanged');

  // The scope is honoured, not just refused: each token reaches what it names.
  const get = async (path: string, resource: string): Promise<number> =>
    (await call('GET', `${path}?api-version=${HUB_API}`, { headers: { authorization: hubToken({ resource }) } })).status;
  assert.equal(await get('/devices/dev-a', `${HUB}/devices/dev-a`), 200);
  assert.equal(await get('/devices/DEV-A', `${HUB}/devices/dev-a`), 200, 'case-insensitive, like device IDs');
  assert.equal(await get('/devices/dev-a', encodeURIComponent(`${HUB}/devices/dev-a`)), 200, 'sr percent-encoded');
  assert.equal(await get('/devices/dev-b', `${HUB}/devices`), 200);
  assert.equal(await get('/devices', `${HUB}/devices`), 200);
  assert.equal(await get('/twins/dev-a', `${HUB}/twins/dev-a`), 200);
  assert.equal(await get('/statistics/devices', `${HUB}/statistics`), 200);
  assert.equal(await get('/statistics/devices', HUB), 200);
  // The case of the issue: a token for dev-a deletes dev-a only.
  const deleteB = await call('DELETE', `/devices/dev-b?api-version=${HUB_API}`, { headers: { authorization: hubToken({ resource: `${HUB}/devices/dev-a` }) } });
  assertHub401(deleteB, 'DELETE dev-b with a dev-a token');
  assert.equal(await get('/devices/dev-b', HUB), 200, 'dev-b is still there');
});

test('a wrong-path token is a DPS 401 on every service API route', async () => {
  // Paths that are not a prefix of any route's path: each is signed with the owner key, so only the scope refuses it.
  for (const route of serviceRoutes) {
    const firstSegment = route.template.split('/')[1] ?? '';
    for (const scope of ['devices', `${firstSegment}x`, 'registrations/nobody']) {
      const auth = server.token({ resource: `localhost/${scope}` });
      const response = await call(route.method, apiPath(route.template, { id: 'seed-1', name: 'seed-1' }), {
        headers: { authorization: auth },
        ...(route.hasBody ? { body: {} } : {}),
      });
      assert.equal(response.status, 401, `sr=localhost/${scope}: ${route.method} ${route.template} → ${response.status} ${response.text.slice(0, 200)}`);
      assert.equal((response.body as { errorCode?: number }).errorCode, 401002);
    }
  }
});
