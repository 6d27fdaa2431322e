import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import iothub from 'azure-iothub';
import { createSasToken } from '../src/domain/sas.js';
import { BuiltInHubService } from '../src/hubs/built-in-hubs.js';
import { HubError, type HubClient } from '../src/hubs/hub-client.js';
import { RestHubClientFactory } from '../src/hubs/registry-client.js';
import { KyselyHubStore } from '../src/store/hub-store.js';
import { openSqliteDatabase } from '../src/store/open-store.js';
import type { LinkedHubRecord } from '../src/store/store.js';
import { assertDpsError, type Response } from './api-assertions.js';
import { call, readCa, startServer, type TestServer } from './harness.js';

/**
 * The built-in hub (sdk-clients.md §3): the unmodified azure-iothub Registry against the real server, the hub's wire
 * details the SDK does not show (error envelope, auth, paging, bad input), and RegistryRestClient — the client the
 * registration flow uses for every hub — against the same hub.
 *
 * The server answers to `localhost` (the built-in hub and the operator instance) and `127.0.0.1` (a configured name
 * that no hub uses).
 */
const { Registry } = iothub;
const API = 'api-version=2021-04-12';
const HUB = 'localhost';
const NEVER = '0001-01-01T00:00:00Z';
const KEY_44 = /^[A-Za-z0-9+/]{43}=$/;
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$/;

let server: TestServer;
let hubConnectionString = '';
let hubKey = '';
let registry: InstanceType<typeof Registry>;

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function hubToken(options: { resource?: string; key?: string; keyName?: string; expirySeconds?: number; encode?: boolean } = {}): string {
  return createSasToken({
    resource: options.resource ?? HUB,
    keyBase64: options.key ?? hubKey,
    keyName: options.keyName ?? 'iothubowner',
    expirySeconds: options.expirySeconds ?? nowSeconds() + 3600,
    encodeResource: options.encode ?? false,
  });
}

async function hub(
  method: string,
  path: string,
  options: { auth?: string | null; body?: unknown; rawBody?: string; headers?: Record<string, string>; host?: string } = {},
): Promise<Response> {
  const auth = options.auth === undefined ? hubToken() : options.auth;
  const headers: Record<string, string> = { ...options.headers, ...(auth === null ? {} : { authorization: auth }) };
  if (options.rawBody !== undefined) headers['content-type'] ??= 'application/json; charset=utf-8';
  return call(method, path, {
    headers,
    ...(options.body === undefined ? {} : { body: options.body }),
    ...(options.rawBody === undefined ? {} : { rawBody: options.rawBody }),
    ...(options.host === undefined ? {} : { host: options.host }),
  });
}

/** The IoT Hub error envelope: exactly `{Message: "ErrorCode:<code>;<text>", ExceptionMessage}` + `iothub-errorcode`. */
function assertHubError(response: Response, status: number, code: string, message?: RegExp, context = ''): void {
  const where = `${context} → ${response.status} ${response.text.slice(0, 300)}`;
  assert.equal(response.status, status, `status ${where}`);
  assert.equal(response.headers.get('content-type'), 'application/json; charset=utf-8', `content-type ${where}`);
  assert.equal(response.headers.get('iothub-errorcode'), code, `iothub-errorcode ${where}`);
  const body = response.body as Record<string, string>;
  assert.deepEqual(Object.keys(body).sort(), ['ExceptionMessage', 'Message'], `body keys ${where}`);
  const match = /^ErrorCode:([A-Za-z]+);([^;]+)$/.exec(body.Message ?? '');
  assert.ok(match !== null, `Message ${where}`);
  assert.equal(match[1], code, `code ${where}`);
  if (message !== undefined) assert.match(match[2] ?? '', message, `text ${where}`);
  assert.match(body.ExceptionMessage ?? '', /^Tracking ID:[0-9a-f]{32}-TimeStamp:\d{2}\/\d{2}\/\d{4} \d{2}:\d{2}:\d{2}$/, `ExceptionMessage ${where}`);
}

/** The SDK returns class instances (Device, Twin); compare their JSON. */
function plain(value: unknown): Record<string, unknown> {
  return JSON.parse(JSON.stringify(value)) as Record<string, unknown>;
}

function errorName(error: unknown): string {
  return error instanceof Error ? error.constructor.name : typeof error;
}

before(async () => {
  server = await startServer({ hostNames: [HUB, '127.0.0.1'] });
  hubConnectionString = server.info.builtInHubConnectionString;
  assert.match(hubConnectionString, /^HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=[A-Za-z0-9+/]{43}=$/);
  hubKey = /SharedAccessKey=([^;]+)$/.exec(hubConnectionString)?.[1] ?? '';
  // ensureHub is idempotent: the same hub and keys come back.
  const ensured = await server.app.builtInHubs.ensureHub(HUB);
  assert.deepEqual({ name: ensured.name, connectionString: ensured.connectionString }, { name: HUB, connectionString: hubConnectionString });
  registry = Registry.fromConnectionString(hubConnectionString);
});

after(async () => {
  await server.close();
});

describe('azure-iothub Registry against the built-in hub', () => {
  test('creates, gets, updates and deletes a device identity', async () => {
    const created = plain((await registry.create({ deviceId: 'reg-dev-1' })).responseBody);
    const { etag, generationId } = created as { etag: string; generationId: string };
    const keys = (created.authentication as { symmetricKey: { primaryKey: string; secondaryKey: string } }).symmetricKey;
    assert.match(keys.primaryKey, KEY_44);
    assert.match(keys.secondaryKey, KEY_44);
    assert.notEqual(keys.primaryKey, keys.secondaryKey);
    assert.match(etag, /^[A-Za-z0-9+/]+=*$/);
    assert.match(generationId, /^\d{18}$/);
    const expected = {
      deviceId: 'reg-dev-1',
      generationId,
      etag,
      connectionState: 'Disconnected',
      status: 'enabled',
      statusReason: null,
      connectionStateUpdatedTime: NEVER,
      statusUpdatedTime: NEVER,
      lastActivityTime: NEVER,
      cloudToDeviceMessageCount: 0,
      authentication: { symmetricKey: keys, x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null }, type: 'sas' },
      capabilities: { iotEdge: false },
    };
    assert.deepEqual(created, expected);

    await assert.rejects(registry.create({ deviceId: 'reg-dev-1' }), (error) => errorName(error) === 'DeviceAlreadyExistsError');
    // IDs compare case-insensitively.
    await assert.rejects(registry.create({ deviceId: 'REG-DEV-1' }), (error) => errorName(error) === 'DeviceAlreadyExistsError');

    const got = await registry.get('reg-dev-1');
    assert.deepEqual(plain(got.responseBody), expected);
    assert.equal(got.httpResponse.headers['content-type'], 'application/json; charset=utf-8');

    const updated = plain((await registry.update({ ...plain(got.responseBody), deviceId: 'reg-dev-1', status: 'disabled', capabilities: { iotEdge: true } })).responseBody);
    assert.notEqual(updated.etag, etag);
    assert.match(String(updated.statusUpdatedTime), TIMESTAMP);
    assert.deepEqual(updated, { ...expected, etag: updated.etag, status: 'disabled', statusUpdatedTime: updated.statusUpdatedTime, capabilities: { iotEdge: true } });

    await registry.delete('reg-dev-1');
    await assert.rejects(registry.get('reg-dev-1'), (error) => errorName(error) === 'DeviceNotFoundError');
    await assert.rejects(registry.delete('reg-dev-1'), (error) => errorName(error) === 'DeviceNotFoundError');
    await assert.rejects(registry.getTwin('reg-dev-1'), (error) => errorName(error) === 'DeviceNotFoundError');
  });

  test('keeps given keys, takes X.509 thumbprints, and refuses an update of a missing device', async () => {
    const primaryKey = randomBytes(32).toString('base64');
    const secondaryKey = randomBytes(16).toString('base64');
    const sas = (await registry.create({ deviceId: 'reg-dev-keys', authentication: { symmetricKey: { primaryKey, secondaryKey } } })).responseBody;
    assert.deepEqual(plain(sas).authentication, { symmetricKey: { primaryKey, secondaryKey }, x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null }, type: 'sas' });

    const thumbprint = 'AB'.repeat(20);
    const x509 = (await registry.create({ deviceId: 'reg-dev-x509', authentication: { x509Thumbprint: { primaryThumbprint: thumbprint } } })).responseBody;
    assert.deepEqual(plain(x509).authentication, { symmetricKey: { primaryKey: null, secondaryKey: null }, x509Thumbprint: { primaryThumbprint: thumbprint, secondaryThumbprint: null }, type: 'selfSigned' });

    await assert.rejects(registry.update({ deviceId: 'reg-dev-never' }), (error) => errorName(error) === 'DeviceNotFoundError');
    await assert.rejects(
      registry.create({ deviceId: 'reg-dev-bad-key', authentication: { symmetricKey: { primaryKey: 'c2hvcnQ=', secondaryKey: '' } } }),
      (error) => errorName(error) === 'ArgumentError',
    );
    await registry.delete('reg-dev-keys');
    await registry.delete('reg-dev-x509');
  });

  test('twins: get, merge tags and desired properties, remove with null, refuse a stale etag', async () => {
    await registry.create({ deviceId: 'twin-dev-1' });
    const twin = await registry.getTwin('twin-dev-1');
    const body = plain(twin.responseBody);
    const deviceEtag = (await registry.get('twin-dev-1')).responseBody.etag;
    const created = ((body.properties as Record<string, Record<string, Record<string, unknown>>>).desired?.$metadata?.$lastUpdated) as string;
    assert.match(created, TIMESTAMP);
    assert.deepEqual(body, {
      deviceId: 'twin-dev-1',
      etag: body.etag,
      deviceEtag,
      status: 'enabled',
      statusUpdateTime: NEVER,
      connectionState: 'Disconnected',
      lastActivityTime: NEVER,
      cloudToDeviceMessageCount: 0,
      authenticationType: 'sas',
      x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
      modelId: '',
      version: 1,
      tags: {},
      properties: {
        desired: { $metadata: { $lastUpdated: created, $lastUpdatedVersion: 1 }, $version: 1 },
        reported: { $metadata: { $lastUpdated: created }, $version: 1 },
      },
      capabilities: { iotEdge: false },
    });

    const first = await twin.responseBody.update({ tags: { site: 'north', rack: { row: 3, slot: 7 } }, properties: { desired: { telemetry: { intervalS: 30, unit: 's' }, mode: 'eco' } } });
    const afterFirst = plain(first.result) as unknown as { etag: string; tags: unknown; properties: { desired: Record<string, unknown> } };
    assert.deepEqual(afterFirst.tags, { site: 'north', rack: { row: 3, slot: 7 } });
    const { $metadata: metadata1, ...desired1 } = afterFirst.properties.desired;
    assert.deepEqual(desired1, { telemetry: { intervalS: 30, unit: 's' }, mode: 'eco', $version: 2 });
    const stamp1 = (metadata1 as { $lastUpdated: string }).$lastUpdated;
    assert.deepEqual(metadata1, {
      $lastUpdated: stamp1,
      $lastUpdatedVersion: 2,
      telemetry: { $lastUpdated: stamp1, $lastUpdatedVersion: 2, intervalS: { $lastUpdated: stamp1, $lastUpdatedVersion: 2 }, unit: { $lastUpdated: stamp1, $lastUpdatedVersion: 2 } },
      mode: { $lastUpdated: stamp1, $lastUpdatedVersion: 2 },
    });
    const staleEtag = body.etag as string;
    assert.notEqual(afterFirst.etag, staleEtag);

    const second = await registry.updateTwin('twin-dev-1', { tags: { rack: { slot: null }, owner: 'ops' }, properties: { desired: { telemetry: { unit: null }, mode: null } } }, afterFirst.etag);
    const afterSecond = plain(second.responseBody) as Record<string, unknown> & { tags: unknown; properties: { desired: Record<string, unknown> } };
    assert.deepEqual(afterSecond.tags, { site: 'north', rack: { row: 3 }, owner: 'ops' });
    const { $metadata: metadata2, ...desired2 } = afterSecond.properties.desired;
    assert.deepEqual(desired2, { telemetry: { intervalS: 30 }, $version: 3 });
    assert.deepEqual(Object.keys(metadata2 as object).sort(), ['$lastUpdated', '$lastUpdatedVersion', 'telemetry']);
    assert.equal(afterSecond.version, 3);

    // The SDK quotes the etag in If-Match; a stale one is a 412, which the SDK reports as InvalidEtagError.
    await assert.rejects(registry.updateTwin('twin-dev-1', { tags: { x: 1 } }, staleEtag), (error) => errorName(error) === 'InvalidEtagError');
    const unchanged = plain((await registry.getTwin('twin-dev-1')).responseBody);
    assert.deepEqual(unchanged, afterSecond);
    // "*" matches any etag.
    const forced = plain((await registry.updateTwin('twin-dev-1', { tags: { x: 1 } }, '*')).responseBody) as unknown as { tags: Record<string, unknown>; version: number };
    assert.equal(forced.tags.x, 1);
    assert.equal(forced.version, 4);

    // Deleting the device deletes its twin; a new device of that ID starts a new twin.
    await registry.delete('twin-dev-1');
    await assert.rejects(registry.getTwin('twin-dev-1'), (error) => errorName(error) === 'DeviceNotFoundError');
    await registry.create({ deviceId: 'twin-dev-1' });
    const fresh = plain((await registry.getTwin('twin-dev-1')).responseBody) as unknown as { tags: unknown; version: number };
    assert.deepEqual(fresh.tags, {});
    assert.equal(fresh.version, 1);
    await registry.delete('twin-dev-1');
  });

  test('query SELECT * FROM devices pages with x-ms-continuation and filters by deviceId', async () => {
    const ids = ['q-1', 'q-2', 'q-3', 'q-4', 'q-5'];
    for (const deviceId of ids) await registry.create({ deviceId });
    const query = registry.createQuery('SELECT * FROM devices', 2);
    const seen: string[] = [];
    let pages = 0;
    let token: string | undefined;
    do {
      // query.next() in promise form without a token re-reads page 1 (sdk-clients.md §0): pass the token.
      const page = await query.next(token as string);
      const items = page.result as Array<{ deviceId: string; etag: string; properties: unknown }>;
      assert.ok(items.length <= 2);
      for (const item of items) {
        assert.equal(typeof item.etag, 'string');
        seen.push(item.deviceId);
      }
      token = query.continuationToken;
      pages += 1;
    } while (query.hasMoreResults && pages < 10);
    assert.deepEqual(seen, ids);
    assert.equal(pages, 3);

    const single = await registry.createQuery("SELECT * FROM devices WHERE deviceId = 'Q-3'").nextAsTwin();
    assert.deepEqual(single.result.map((twin) => twin.deviceId), ['q-3']);
    await assert.rejects(registry.createQuery('SELECT * FROM devices.modules').next(), (error) => errorName(error) === 'ArgumentError');

    const stats = plain((await registry.getRegistryStatistics()).responseBody);
    assert.deepEqual(stats, { totalDeviceCount: 5, enabledDeviceCount: 5, disabledDeviceCount: 0 });
    for (const deviceId of ids) await registry.delete(deviceId);
  });

  test('device IDs of up to 128 characters, with the characters IoT Hub allows', async () => {
    for (const deviceId of [`long-${'x'.repeat(123)}`, "odd:id=1@x$(y)!'z'+%#*?,.", '%'.repeat(128)]) {
      assert.equal(deviceId.length <= 128, true);
      await registry.create({ deviceId });
      assert.equal(plain((await registry.get(deviceId)).responseBody).deviceId, deviceId);
      await registry.updateTwin(deviceId, { tags: { long: true } }, '*');
      assert.deepEqual(plain((await registry.getTwin(deviceId)).responseBody).tags, { long: true });
      await registry.delete(deviceId);
      await assert.rejects(registry.get(deviceId), (error) => errorName(error) === 'DeviceNotFoundError');
    }
  });

  test('a wrong key is refused with 401 (UnauthorizedError)', async () => {
    const wrong = Registry.fromConnectionString(`HostName=${HUB};SharedAccessKeyName=iothubowner;SharedAccessKey=${randomBytes(32).toString('base64')}`);
    await assert.rejects(wrong.get('anything'), (error) => errorName(error) === 'UnauthorizedError');
    const unknownPolicy = Registry.fromConnectionString(`HostName=${HUB};SharedAccessKeyName=registryRead;SharedAccessKey=${hubKey}`);
    await assert.rejects(unknownPolicy.create({ deviceId: 'never' }), (error) => errorName(error) === 'UnauthorizedError');
    await assert.rejects(registry.get('never'), (error) => errorName(error) === 'DeviceNotFoundError');
  });
});

describe('built-in hub wire details', () => {
  test('errors are IoT Hub errors', async () => {
    assertHubError(await hub('GET', `/devices/missing?${API}`), 404, 'DeviceNotFound', /missing/);
    assertHubError(await hub('GET', '/devices/missing'), 400, 'InvalidProtocolVersion');
    assertHubError(await hub('GET', '/devices/missing?api-version=2099-01-01'), 400, 'InvalidProtocolVersion');
    for (const version of ['2020-09-30', '2020-05-31-preview', '2019-10-01', '2018-06-30']) {
      assertHubError(await hub('GET', `/devices/missing?api-version=${version}`), 404, 'DeviceNotFound');
    }
    // A Host that names no built-in hub (127.0.0.1 is one of the server's names, but not a hub).
    assertHubError(await hub('GET', `/devices/missing?${API}`, { host: '127.0.0.1', auth: hubToken({ resource: '127.0.0.1' }) }), 404, 'IotHubNotFound');
    assertHubError(await hub('GET', `/devices/x/modules/y?${API}`), 404, 'RequestNotFound');
  });

  test('authentication: hub policy SAS over the raw sr, unexpired, for this hub', async () => {
    const path = `/devices/missing?${API}`;
    // Accepted forms: sr URL-encoded, sr with a path, sr with a port.
    assertHubError(await hub('GET', path, { auth: hubToken({ resource: 'localhost/devices/missing', encode: true }) }), 404, 'DeviceNotFound');
    assertHubError(await hub('GET', path, { auth: hubToken({ resource: 'localhost:443' }) }), 404, 'DeviceNotFound');
    const refused: Array<[string, string | null]> = [
      ['no token', null],
      ['not a SAS token', 'Bearer abc'],
      ['expired', hubToken({ expirySeconds: nowSeconds() - 10 })],
      ['wrong key', hubToken({ key: randomBytes(32).toString('base64') })],
      ['unknown policy', hubToken({ keyName: 'provisioningserviceowner' })],
      ['no skn (a device token)', createSasToken({ resource: 'localhost/devices/missing', keyBase64: hubKey, expirySeconds: nowSeconds() + 60 })],
      ['another host in sr', hubToken({ resource: 'other.localhost' })],
      // The DPS owner policy is not a hub policy: the service API's hooks do not apply here.
      ['DPS service token', server.token()],
    ];
    for (const [what, auth] of refused) {
      const response = await hub('PUT', `/devices/auth-probe?${API}`, { auth, body: { deviceId: 'auth-probe' } });
      assertHubError(response, 401, 'IotHubUnauthorizedAccess', /^Unauthorized$/, what);
    }
    assertHubError(await hub('GET', `/devices/auth-probe?${API}`), 404, 'DeviceNotFound');
    // Nor do this plugin's hooks apply to the DPS service API: a hub token there gets the DPS 401.
    assertDpsError(await call('GET', '/enrollments/x?api-version=2021-10-01', { headers: { authorization: hubToken() } }), 401);
  });

  test('malformed input is a 400 ArgumentInvalid, never a 500', async () => {
    const cases: Array<[string, string, { body?: unknown; rawBody?: string; headers?: Record<string, string> }]> = [
      ['PUT', '/devices/bad-1', { rawBody: '{"deviceId": "bad-1"' }],
      ['PUT', '/devices/bad-1', { rawBody: 'null' }],
      ['PUT', '/devices/bad-1', { body: ['bad-1'] }],
      ['PUT', '/devices/bad-1', { body: { deviceId: 'other' } }],
      ['PUT', '/devices/bad-1', { body: { deviceId: 'bad-1', status: 'paused' } }],
      ['PUT', '/devices/bad-1', { body: { deviceId: 'bad-1', authentication: { type: 'magic' } } }],
      ['PUT', '/devices/bad-1', { body: { deviceId: 'bad-1', authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'xyz' } } } }],
      ['PUT', '/devices/bad-1', { body: { deviceId: 'bad-1', authentication: { type: 'sas', x509Thumbprint: { primaryThumbprint: 'AB'.repeat(20) } } } }],
      ['PUT', `/devices/${encodeURIComponent('bad/1')}`, { body: { deviceId: 'bad/1' } }],
      ['PUT', `/devices/${'x'.repeat(129)}`, { body: { deviceId: 'x'.repeat(129) } }],
      ['PUT', '/devices/bad-1', { rawBody: 'deviceId=bad-1', headers: { 'content-type': 'text/plain' } }],
      ['POST', '/devices/query', { body: { query: 'DROP TABLE devices' } }],
      ['POST', '/devices/query', { body: {} }],
      ['POST', '/devices/query', { body: { query: 'SELECT * FROM devices' }, headers: { 'x-ms-continuation': '!!!' } }],
      ['POST', '/devices/query', { body: { query: 'SELECT * FROM devices' }, headers: { 'x-ms-max-item-count': 'many' } }],
      ['GET', '/devices?top=lots', {}],
    ];
    for (const [method, path, options] of cases) {
      const url = `${path}${path.includes('?') ? '&' : '?'}${API}`;
      assertHubError(await hub(method, url, options), 400, 'ArgumentInvalid', undefined, `${method} ${path} ${JSON.stringify(options)}`);
    }
    const listed = (await registry.list()).responseBody.map((device) => device.deviceId);
    assert.deepEqual(listed.filter((id) => id.startsWith('bad') || id.startsWith('xxx')), [], 'no refused request created a device');
    await registry.create({ deviceId: 'bad-twin' });
    const deep = [...Array(12).keys()].reduce<Record<string, unknown>>((inner) => ({ level: inner }), { leaf: 1 });
    const twinCases: unknown[] = [
      { tags: { 'a.b': 1 } },
      { tags: { a: { $b: 1 } } },
      { tags: 'not an object' },
      { properties: { desired: { 'has space': 1 } } },
      { properties: { desired: deep } },
      { properties: { reported: { battery: 90 } } },
    ];
    for (const body of twinCases) assertHubError(await hub('PATCH', `/twins/bad-twin?${API}`, { body }), 400, 'ArgumentInvalid', undefined, JSON.stringify(body).slice(0, 80));
    assertHubError(await hub('PATCH', `/twins/bad-twin?${API}`, { rawBody: '{"tags":' }), 400, 'ArgumentInvalid');
    const abyss = `{"properties":{"desired":${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}}}`;
    assertHubError(await hub('PATCH', `/twins/bad-twin?${API}`, { rawBody: abyss }), 400, 'ArgumentInvalid', undefined, '5000 levels');
    assertHubError(await hub('PATCH', `/twins/bad-twin?${API}`, { rawBody: '{"__proto__":{"x":1}}' }), 400, 'ArgumentInvalid');
    const twin = await hub('GET', `/twins/bad-twin?${API}`);
    assert.equal((twin.body as { version: number }).version, 1, 'no refused patch changed the twin');
    await registry.delete('bad-twin');
  });

  test('PUT /twins replaces tags and desired properties; If-Match is honoured on devices and twins', async () => {
    await registry.create({ deviceId: 'put-twin' });
    const patched = await hub('PATCH', `/twins/put-twin?${API}`, { body: { tags: { a: 1 }, properties: { desired: { keep: false, old: 1 } } } });
    const etag = (patched.body as { etag: string }).etag;
    const replaced = await hub('PUT', `/twins/put-twin?${API}`, {
      body: { tags: { b: 2 }, properties: { desired: { keep: true, gone: null, $version: 99, $metadata: {} } } },
      headers: { 'if-match': `"${etag}"` },
    });
    assert.equal(replaced.status, 200, replaced.text);
    const twin = replaced.body as { tags: unknown; version: number; properties: { desired: Record<string, unknown> } };
    assert.deepEqual(twin.tags, { b: 2 });
    const { $metadata: _metadata, ...desired } = twin.properties.desired;
    assert.deepEqual(desired, { keep: true, $version: 3 });
    assert.equal(twin.version, 3);
    assertHubError(await hub('PUT', `/twins/put-twin?${API}`, { body: { tags: {} }, headers: { 'if-match': `"${etag}"` } }), 412, 'PreconditionFailed');

    const device = (await hub('GET', `/devices/put-twin?${API}`)).body as { etag: string; deviceId: string };
    assertHubError(await hub('PUT', `/devices/put-twin?${API}`, { body: { deviceId: 'put-twin', status: 'disabled' }, headers: { 'if-match': '"stale"' } }), 412, 'PreconditionFailed');
    assertHubError(await hub('DELETE', `/devices/put-twin?${API}`, { headers: { 'if-match': '"stale"' } }), 412, 'PreconditionFailed');
    const updated = await hub('PUT', `/devices/put-twin?${API}`, { body: { deviceId: 'put-twin', status: 'disabled' }, headers: { 'if-match': `"${device.etag}"` } });
    assert.equal(updated.status, 200, updated.text);
    const newEtag = (updated.body as { etag: string }).etag;
    assert.notEqual(newEtag, device.etag);
    const deleted = await hub('DELETE', `/devices/put-twin?${API}`, { headers: { 'if-match': `"${newEtag}"` } });
    assert.equal(deleted.status, 204, deleted.text);
  });
});

describe('RegistryRestClient (the registration flow\'s hub client) against the built-in hub', () => {
  let factory: RestHubClientFactory;
  let client: HubClient;
  const linked = (overrides: Partial<LinkedHubRecord> = {}): LinkedHubRecord => ({
    name: HUB,
    builtIn: true,
    connectionString: hubConnectionString,
    allocationWeight: 1,
    applyAllocationPolicy: true,
    ...overrides,
  });

  before(() => {
    factory = new RestHubClientFactory({ ca: readCa(), builtInAddress: { host: '127.0.0.1', port: 443 } });
    client = factory.forHub(linked());
  });
  after(async () => {
    await factory.close();
  });

  test('putDevice, getDevice, replaceTwin, getTwin, deleteDevice, measureLatency', async () => {
    assert.equal(factory.forHub(linked()), client, 'clients are cached per hub');
    const keys = { primaryKey: randomBytes(32).toString('base64'), secondaryKey: randomBytes(32).toString('base64') };
    const created = await client.putDevice({ deviceId: 'rest-dev-1', authentication: { type: 'sas', symmetricKey: keys }, capabilities: { iotEdge: false }, status: 'enabled' });
    assert.deepEqual(created, {
      deviceId: 'rest-dev-1',
      etag: created.etag,
      generationId: created.generationId,
      status: 'enabled',
      capabilities: { iotEdge: false },
      authentication: { type: 'sas', symmetricKey: keys },
      created: true,
    });
    // Putting an existing device replaces it (create → 409 → update with If-Match "*").
    const thumbprint = 'CD'.repeat(32);
    const replaced = await client.putDevice({
      deviceId: 'rest-dev-1',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint } },
      capabilities: { iotEdge: true },
      status: 'enabled',
    });
    assert.equal(replaced.created, false);
    assert.equal(replaced.generationId, created.generationId);
    assert.notEqual(replaced.etag, created.etag);
    assert.deepEqual(replaced.authentication, { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint } });
    const { created: _wasCreated, ...replacedRecord } = replaced;
    assert.deepEqual(await client.getDevice('rest-dev-1'), replacedRecord);

    const twin = await client.replaceTwin('rest-dev-1', { tags: { fleet: 'a' }, desired: { interval: 5, nested: { on: true } } });
    assert.deepEqual(twin, { etag: twin.etag, tags: { fleet: 'a' }, desired: { interval: 5, nested: { on: true } }, reported: {} });
    assert.deepEqual(await client.getTwin('rest-dev-1'), twin);
    const sdkTwin = (await registry.getTwin('rest-dev-1')).responseBody;
    assert.deepEqual(sdkTwin.tags, { fleet: 'a' });

    assert.equal(await client.deleteDevice('rest-dev-1'), true);
    assert.equal(await client.deleteDevice('rest-dev-1'), false);
    assert.equal(await client.getDevice('rest-dev-1'), undefined);
    assert.equal(await client.getTwin('rest-dev-1'), undefined);
    await assert.rejects(client.replaceTwin('rest-dev-1', { tags: {}, desired: {} }), (error) => error instanceof HubError && error.status === 404);

    const latency = await client.measureLatency();
    assert.ok(Number.isFinite(latency) && latency >= 0, String(latency));
  });

  test('a built-in hub whose name the server certificate does not list is reached through the local listener', async () => {
    const virtual = await server.app.builtInHubs.ensureHub('virtual-hub.example');
    const virtualClient = factory.forHub(linked({ name: virtual.name, connectionString: virtual.connectionString }));
    const device = await virtualClient.putDevice({ deviceId: 'v-1', authentication: { type: 'certificateAuthority' }, capabilities: { iotEdge: false }, status: 'disabled' });
    assert.deepEqual([device.deviceId, device.status, device.authentication], ['v-1', 'disabled', { type: 'certificateAuthority' }]);
    assert.equal(await client.getDevice('v-1'), undefined, 'hubs do not share devices');
    assert.equal(await virtualClient.deleteDevice('v-1'), true);
    assert.equal(await server.app.builtInHubs.deleteHub('virtual-hub.example'), true);
    await assert.rejects(virtualClient.getDevice('v-1'), (error) => error instanceof HubError && error.status === 404 && /IotHubNotFound/.test(error.message));
  });

  test('the same hub reached as an external hub (https://<name>), and failures as HubError', async () => {
    const external = factory.forHub(linked({ builtIn: false }));
    assert.notEqual(external, client);
    assert.equal(await external.getDevice('nobody'), undefined);
    assert.ok((await external.measureLatency()) >= 0);

    const wrongKey = factory.forHub(linked({ name: HUB, connectionString: `HostName=${HUB};SharedAccessKeyName=iothubowner;SharedAccessKey=${randomBytes(32).toString('base64')}` }));
    await assert.rejects(wrongKey.getDevice('nobody'), (error) => error instanceof HubError && error.status === 401 && /IotHubUnauthorizedAccess/.test(error.message));
    // 127.0.0.1 is one of the server's names (its certificate covers it) but no hub's.
    const noHub = factory.forHub(linked({ name: '127.0.0.1', connectionString: `HostName=127.0.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey=${hubKey}` }));
    await assert.rejects(noHub.measureLatency(), (error) => error instanceof HubError && error.status === 404 && /IotHubNotFound/.test(error.message));
    const unreachable = factory.forHub(linked({ name: 'localhost:1', builtIn: false }));
    await assert.rejects(unreachable.getDevice('nobody'), (error) => error instanceof HubError && error.status === undefined);
  });
});

describe('KyselyHubStore and BuiltInHubService without the HTTP layer', () => {
  test("a replace that starts from the caller's row (issue 11) keeps what was written since, and an etag is never judged on it", async () => {
    const db = await openSqliteDatabase(':memory:');
    try {
      const store = new KyselyHubStore(db);
      const service = new BuiltInHubService({ hubStore: store, now: () => new Date('2024-05-01T12:00:00Z') });
      await service.ensureHub('hub-p.example');
      await service.createOrUpdateDevice('hub-p.example', 'dev-p', { deviceId: 'dev-p' }, undefined);
      const read = await store.getDevice('hub-p.example', 'dev-p');
      assert.ok(read !== undefined);
      // Written after the caller's read: a stale row must only fail its compare-and-swap, and lose nothing.
      await service.updateTwin('hub-p.example', 'dev-p', { tags: { since: 'the read' } }, undefined);
      const replaced = await service.createOrUpdateDevice('hub-p.example', 'dev-p', { deviceId: 'dev-p', status: 'disabled' }, '*', read);
      assert.equal(replaced.status, 'disabled');
      assert.notEqual(replaced.etag, read.device.etag);
      assert.deepEqual((await service.getTwin('hub-p.example', 'dev-p')).tags, { since: 'the read' });
      // A current row is taken as it is: no read before the swap.
      const current = await store.getDevice('hub-p.example', 'dev-p');
      assert.ok(current !== undefined);
      const reads = { count: 0 };
      const getDevice = store.getDevice.bind(store);
      store.getDevice = async (...args) => {
        reads.count += 1;
        return getDevice(...args);
      };
      await service.createOrUpdateDevice('hub-p.example', 'dev-p', { deviceId: 'dev-p', status: 'enabled' }, '*', current);
      assert.equal(reads.count, 0);
      // With an etag for If-Match the row is read as it is now: the caller's (stale) row cannot fail it, nor pass it.
      const now = await store.getDevice('hub-p.example', 'dev-p');
      assert.ok(now !== undefined);
      await service.createOrUpdateDevice('hub-p.example', 'dev-p', { deviceId: 'dev-p' }, now.device.etag, current);
      await assert.rejects(service.createOrUpdateDevice('hub-p.example', 'dev-p', { deviceId: 'dev-p' }, current.device.etag, now), /precondition|etag/i);
    } finally {
      await db.destroy();
    }
  });

  test('hubs are created once, devices are compare-and-swapped, paged by key, and go with their hub', async () => {
    const db = await openSqliteDatabase(':memory:');
    try {
      const store = new KyselyHubStore(db);
      const service = new BuiltInHubService({ hubStore: store, now: () => new Date('2024-05-01T12:00:00Z') });
      const first = await service.ensureHub('Hub-A.Example');
      assert.equal(first.name, 'hub-a.example');
      assert.deepEqual(await service.ensureHub('hub-a.example'), first);
      assert.deepEqual((await service.getHub('HUB-A.example'))?.policies.map((policy) => [policy.keyName, policy.rights]), [
        ['iothubowner', ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect']],
        ['service', ['ServiceConnect']],
        ['device', ['DeviceConnect']],
        ['registryRead', ['RegistryRead']],
        ['registryReadWrite', ['RegistryRead', 'RegistryWrite']],
      ]);
      await service.ensureHub('hub-b.example');

      for (const deviceId of ['d-3', 'D-1', 'd-2']) await service.createOrUpdateDevice('hub-a.example', deviceId, { deviceId }, undefined);
      await service.createOrUpdateDevice('hub-b.example', 'd-1', { deviceId: 'd-1' }, undefined);
      const page1 = await store.queryDevices('hub-a.example', { limit: 2 });
      assert.deepEqual(page1.items.map((device) => device.deviceId), ['D-1', 'd-2']);
      const page2 = await store.queryDevices('hub-a.example', { limit: 2, afterKey: page1.nextKey });
      assert.deepEqual([page2.items.map((device) => device.deviceId), page2.nextKey], [['d-3'], undefined]);

      const row = await store.getDevice('hub-a.example', 'd-1');
      assert.ok(row !== undefined);
      assert.equal(await store.replaceDevice('hub-a.example', { ...row.device, status: 'disabled' }, row.revision, 'r2'), true);
      assert.equal(await store.replaceDevice('hub-a.example', { ...row.device, status: 'enabled' }, row.revision, 'r3'), false, 'a stale revision writes nothing');
      assert.equal(await store.deleteDevice('hub-a.example', 'd-1', row.revision), false);
      assert.deepEqual(await store.countDevices('hub-a.example'), { enabled: 2, disabled: 1 });

      assert.equal(await service.deleteHub('hub-a.example'), true);
      assert.equal(await service.getHub('hub-a.example'), undefined);
      assert.deepEqual(await store.countDevices('hub-a.example'), { enabled: 0, disabled: 0 });
      assert.deepEqual(await store.countDevices('hub-b.example'), { enabled: 1, disabled: 0 }, 'other hubs keep their devices');
      assert.equal(await service.deleteHub('hub-a.example'), false);
    } finally {
      await db.destroy();
    }
  });
});
