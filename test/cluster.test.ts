import assert from 'node:assert/strict';
import { cpSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import deviceSdk from 'azure-iot-provisioning-device';
import httpTransport from 'azure-iot-provisioning-device-http';
import symmetricKeySecurity from 'azure-iot-security-symmetric-key';
import pg from 'pg';
import { createSasToken } from '../src/domain/sas.js';
import { loadServerCertificate } from '../src/tls/server-certificate.js';
import { createServerCertificate } from '../src/tls/x509-issuer.js';
import { CA_DIR, call } from './harness.js';
import { deriveDeviceKey, deviceToken, inBatches, type Json } from './devices.js';
import { freshPostgresDatabase } from './postgres.js';
import { serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * Three provisiond nodes on one PostgreSQL database, each a real `provisiond serve` process on 443 at its own
 * loopback address (127.0.0.1, .2, .3) with one server certificate naming all three: what one node does, every node
 * sees, and what must happen once happens once.
 */
const ADDRESSES = ['127.0.0.1', '127.0.0.2', '127.0.0.3'] as const;
const HOST_NAMES = ['localhost', ...ADDRESSES];
const root = mkdtempSync(join(tmpdir(), 'provisiond-cluster-'));
const nodes = new Map<string, ServedProvisiond>();
let storeUrl = '';
let ownerKey = '';
let idScope = '';

async function startNode(address: string): Promise<ServedProvisiond> {
  const served = await serveProvisiond({
    args: ['--data-dir', join(root, address), '--store', storeUrl, '--listen-host', address, '--https-port', '443'],
    env: {
      PROVISIOND_HOST_NAMES: HOST_NAMES.join(','),
      PROVISIOND_LOG_LEVEL: 'warn',
      PROVISIOND_MQTT_ENABLED: 'false',
      PROVISIOND_AMQP_ENABLED: 'false',
      PROVISIOND_DATA_REQUEST_WAIT_MS: '0',
      PROVISIOND_LEASE_MS: '1500',
      PROVISIOND_STORE_POOL_SIZE: '4',
    },
    stdout: 'ignore',
  });
  nodes.set(address, served);
  return served;
}

async function stopNode(address: string, signal: NodeJS.Signals): Promise<void> {
  const served = nodes.get(address);
  nodes.delete(address);
  await served?.stop(signal);
}

function token(host: string): string {
  return createSasToken({ resource: host, keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
}

async function api(host: string, method: string, path: string, options: { body?: unknown; headers?: Record<string, string> } = {}): Promise<{ status: number; body: Json }> {
  const response = await call(method, `${path}?api-version=2021-10-01`, {
    host,
    headers: { authorization: token(host), ...options.headers },
    ...(options.body === undefined ? {} : { body: options.body }),
  });
  return { status: response.status, body: (response.body ?? {}) as Json };
}

async function register(host: string, registrationId: string, key: string): Promise<{ status: number; body: Json; authorization: string }> {
  const authorization = deviceToken(idScope, registrationId, key);
  const response = await call('PUT', `/${idScope}/registrations/${registrationId}/register?api-version=2019-03-31`, {
    host,
    headers: { authorization },
    body: { registrationId },
  });
  return { status: response.status, body: response.body as Json, authorization };
}

async function poll(host: string, registrationId: string, operationId: string, authorization: string): Promise<Json> {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, { host, headers: { authorization } });
    if (polled.status !== 202) return { httpStatus: polled.status, ...(polled.body as Json) };
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`operation ${operationId} did not finish`);
}

async function sql<T extends Json>(text: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: storeUrl });
  await client.connect();
  try {
    return (await client.query(text, values)).rows as T[];
  } finally {
    await client.end();
  }
}

before(async () => {
  storeUrl = await freshPostgresDatabase();
  // One server certificate naming all three addresses, issued once by the test CA and shared by every node.
  for (const address of ADDRESSES) mkdirSync(join(root, address, 'tls'), { recursive: true });
  const first = join(root, ADDRESSES[0]);
  copyFileSync(join(CA_DIR, 'ca.pem'), join(first, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(first, 'tls', 'ca.key'));
  await loadServerCertificate({ dataDir: first, hostNames: HOST_NAMES });
  for (const address of ADDRESSES.slice(1)) cpSync(join(first, 'tls'), join(root, address, 'tls'), { recursive: true });
  // All three start at once on an empty database: migrations and the default instance happen once.
  const started = await Promise.all(ADDRESSES.map((address) => startNode(address)));
  // Only the node that created the default instance prints its key; the others print it masked.
  const withKey = started.filter((node) => node.ownerKey !== '');
  assert.equal(withKey.length, 1, `one node created the default instance: ${started.map((node) => node.connectionString).join(' | ')}`);
  assert.equal(new Set(started.map((node) => node.idScope)).size, 1, 'every node serves the one default instance');
  ownerKey = withKey[0]?.ownerKey ?? '';
  idScope = started[0]?.idScope ?? '';
  assert.deepEqual(await sql('select count(*)::int as n from instances'), [{ n: 1 }]);
});

after(async () => {
  await Promise.all([...nodes.keys()].map((address) => stopNode(address, 'SIGTERM')));
  rmSync(root, { recursive: true, force: true });
});

describe('three nodes on one PostgreSQL', () => {
  let groupKey = '';

  test('an enrollment group made on one node registers devices on every node; a registration started on one node is polled on another', async () => {
    const group = await api('127.0.0.1', 'PUT', '/enrollmentGroups/cluster-group', { body: { enrollmentGroupId: 'cluster-group', attestation: { type: 'symmetricKey' } } });
    assert.equal(group.status, 200);
    groupKey = group.body.attestation.symmetricKey.primaryKey as string;
    for (const [index, [on, pollOn]] of [
      ['127.0.0.2', '127.0.0.3'],
      ['127.0.0.3', '127.0.0.1'],
      ['127.0.0.1', '127.0.0.2'],
    ].entries()) {
      const id = `cross-${index}`;
      const registered = await register(on as string, id, deriveDeviceKey(groupKey, id));
      assert.equal(registered.status, 202);
      const result = await poll(pollOn as string, id, registered.body.operationId as string, registered.authorization);
      assert.equal(result.status, 'assigned', JSON.stringify(result));
      assert.equal(result.registrationState.deviceId, id);
    }
  });

  test('a group key changed on one node counts at the next registration on every other node', async () => {
    const current = await api('127.0.0.2', 'GET', '/enrollmentGroups/cluster-group');
    const newKey = Buffer.alloc(32, 7).toString('base64');
    const changed = await api('127.0.0.2', 'PUT', '/enrollmentGroups/cluster-group', {
      body: { ...current.body, attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: newKey, secondaryKey: Buffer.alloc(32, 8).toString('base64') } } },
      headers: { 'if-match': current.body.etag as string },
    });
    assert.equal(changed.status, 200);
    for (const address of ADDRESSES) {
      const id = `rekeyed-${address}`;
      assert.equal((await register(address, id, deriveDeviceKey(groupKey, id))).status, 401, `the old key is refused on ${address}`);
      const registered = await register(address, id, deriveDeviceKey(newKey, id));
      assert.equal(registered.status, 202, `the new key is accepted on ${address}`);
    }
    groupKey = newKey;
  });

  test('a linked hub added or withdrawn on one node is used by the next registration on every other node (nodes cache linked hubs)', async () => {
    const hubs = (await api('127.0.0.1', 'GET', '/linkedHubs')).body as unknown as Json[];
    assert.equal(hubs.length, 1);
    const first = hubs[0]?.name as string;
    const assigned = async (address: string, id: string): Promise<string> => {
      const registered = await register(address, id, deriveDeviceKey(groupKey, id));
      const result = await poll(address, id, registered.body.operationId as string, registered.authorization);
      assert.equal(result.status, 'assigned', JSON.stringify(result));
      return result.registrationState.assignedHub as string;
    };
    // Every node has read (and cached) the instance and its one linked hub.
    for (const address of ADDRESSES) assert.equal(await assigned(address, `hub-before-${address}`), first);

    const second = 'hub-two.cluster.test';
    assert.equal((await api('127.0.0.1', 'PUT', `/linkedHubs/${second}`, { body: { builtIn: true } })).status, 200);
    assert.equal((await api('127.0.0.1', 'PUT', `/linkedHubs/${first}`, { body: { builtIn: true, applyAllocationPolicy: false } })).status, 200);
    for (const address of ADDRESSES) assert.equal(await assigned(address, `hub-after-${address}`), second, `the new hub on ${address}`);

    assert.equal((await api('127.0.0.1', 'PUT', `/linkedHubs/${first}`, { body: { builtIn: true, applyAllocationPolicy: true } })).status, 200);
    assert.equal((await api('127.0.0.1', 'DELETE', `/linkedHubs/${second}`)).status, 204);
    for (const address of ADDRESSES) assert.equal(await assigned(address, `hub-restored-${address}`), first, `the old hub again on ${address}`);
  });

  test('the official SDK clients, spread over the nodes, all get assigned', async () => {
    const { ProvisioningDeviceClient } = deviceSdk;
    const results = await Promise.all(
      ADDRESSES.map((address, index) => {
        const id = `sdk-${index}`;
        const client = ProvisioningDeviceClient.create(address, idScope, new httpTransport.Http(), new symmetricKeySecurity.SymmetricKeySecurityClient(id, deriveDeviceKey(groupKey, id)) as never);
        return new Promise<Json>((resolve, reject) => client.register((error?: Error, result?: unknown) => (error ? reject(error) : resolve(result as Json))));
      }),
    );
    assert.deepEqual(results.map((result) => [result.deviceId, result.status ?? 'assigned']), [['sdk-0', 'assigned'], ['sdk-1', 'assigned'], ['sdk-2', 'assigned']]);
  });

  test('concurrent registrations of one device on different nodes give one record and one hub device', async () => {
    const ids = ['twin-a', 'twin-b', 'twin-c'];
    for (const id of ids) {
      const key = deriveDeviceKey(groupKey, id);
      const started = await Promise.all(ADDRESSES.map((address) => register(address, id, key)));
      const finished = await Promise.all(started.map((registered, index) => poll(ADDRESSES[index] as string, id, registered.body.operationId as string, registered.authorization)));
      for (const result of finished) assert.equal(result.status, 'assigned', JSON.stringify(result));
      assert.equal(new Set(finished.map((result) => result.registrationState.generationId)).size, 1, 'one hub identity (one generation)');
    }
    const records = await sql<{ n: number }>("select count(*)::int as n from registrations where registration_id_key like 'twin-%'");
    const devices = await sql<{ n: number }>("select count(*)::int as n from hub_devices where device_id_key like 'twin-%'");
    assert.deepEqual([records[0]?.n, devices[0]?.n], [3, 3]);
  });

  test('20 PUTs with one If-Match spread over the nodes: one succeeds, 19 get 412; of 20 DELETEs one succeeds', async () => {
    const created = await api('127.0.0.1', 'PUT', '/enrollments/etag-race', { body: { registrationId: 'etag-race', attestation: { type: 'symmetricKey' } } });
    const etag = created.body.etag as string;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api(ADDRESSES[i % 3] as string, 'PUT', '/enrollments/etag-race', {
          body: { registrationId: 'etag-race', attestation: { type: 'symmetricKey' }, initialTwin: { tags: { writer: i } } },
          headers: { 'if-match': etag },
        }),
      ),
    );
    assert.deepEqual(results.map((result) => result.status).sort(), [200, ...Array<number>(19).fill(412)]);
    const deletes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => api(ADDRESSES[i % 3] as string, 'DELETE', '/enrollments/etag-race', { headers: { 'if-match': results.find((r) => r.status === 200)?.body.etag as string } })),
    );
    // One delete wins; each other one either lost the compare-and-swap (412) or came after it and found nothing (404).
    const statuses = deletes.map((result) => result.status);
    assert.equal(statuses.filter((status) => status === 204).length, 1, statuses.join(','));
    assert.ok(statuses.every((status) => status === 204 || status === 412 || status === 404), statuses.join(','));
  });

  test('a device\'s poll limit holds across the cluster, not per node', async () => {
    // 5 polls a second per device, bursts of 10: 45 polls spread over three nodes within about a second may not
    // get more than the burst plus what refills meanwhile (three per-node buckets would let ~30 through).
    const authorization = deviceToken(idScope, 'limited', deriveDeviceKey(groupKey, 'limited'));
    const started = Date.now();
    const statuses = await Promise.all(
      Array.from({ length: 45 }, (_, i) =>
        call('GET', `/${idScope}/registrations/limited/operations/none?api-version=2019-03-31`, { host: ADDRESSES[i % 3] as string, headers: { authorization } }).then((r) => r.status),
      ),
    );
    const seconds = (Date.now() - started) / 1000;
    const allowed = statuses.filter((status) => status !== 429).length;
    assert.ok(allowed >= 10, `at least the burst gets through (${allowed})`);
    assert.ok(allowed <= 10 + Math.ceil(5 * seconds) + 1, `${allowed} polls allowed in ${seconds.toFixed(2)} s`);
  });

  test('an erase started on one node while another registers the subject leaves nothing; a node killed mid-erase is replaced without a restart', async () => {
    const ids = Array.from({ length: 150 }, (_, i) => `erase-${String(i).padStart(3, '0')}`);
    const group = await api('127.0.0.3', 'PUT', '/enrollmentGroups/erase-group', { body: { enrollmentGroupId: 'erase-group', attestation: { type: 'symmetricKey' } } });
    const eraseKey = group.body.attestation.symmetricKey.primaryKey as string;
    await inBatches(ids, 15, async (id) => {
      const registered = await register(ADDRESSES[id.length % 3] as string, id, deriveDeviceKey(eraseKey, id));
      assert.equal((await poll('127.0.0.1', id, registered.body.operationId as string, registered.authorization)).status, 'assigned');
    });
    // A slow external hub holds the erase open long enough to kill its node halfway.
    const certificate = await createServerCertificate({ certPem: readFileSync(join(CA_DIR, 'ca.pem'), 'utf8'), keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') }, ['127.0.0.1'], 1);
    const slowHub = createHttpsServer({ key: certificate.keyPem, cert: certificate.certPem }, (_request, response) => {
      setTimeout(() => response.writeHead(404, { 'content-type': 'application/json' }).end('{"Message":"ErrorCode:DeviceNotFound;no such device"}'), 20);
    });
    await new Promise<void>((resolve) => slowHub.listen(0, '127.0.0.1', resolve));
    after(() => {
      slowHub.closeAllConnections();
      slowHub.close();
    });
    const slowName = `127.0.0.1:${(slowHub.address() as { port: number }).port}`;
    const linked = await api('127.0.0.1', 'PUT', `/linkedHubs/${encodeURIComponent(slowName)}`, {
      body: { connectionString: `HostName=${slowName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 3).toString('base64')}`, applyAllocationPolicy: false },
    });
    assert.equal(linked.status, 200);

    const created = await api('127.0.0.2', 'PUT', '/dataRequests/cluster-erase', { body: { type: 'erase', subject: { enrollmentGroupId: 'erase-group' } } });
    assert.equal(created.status, 200);
    // Meanwhile devices of the group try again on the other nodes.
    const retries = Promise.all(ids.slice(0, 20).map((id, i) => register(i % 2 === 0 ? '127.0.0.1' : '127.0.0.3', id, deriveDeviceKey(eraseKey, id)).catch(() => undefined)));
    let progress: Json = created.body.progress;
    for (let i = 0; i < 2000 && !(progress.done > 0 && progress.done < progress.total); i += 1) {
      progress = (await api('127.0.0.1', 'GET', '/dataRequests/cluster-erase')).body.progress;
    }
    assert.ok(progress.done > 0 && progress.done < progress.total, `caught the erase halfway (${JSON.stringify(progress)})`);
    await stopNode('127.0.0.2', 'SIGKILL');
    await retries;

    let request: Json = {};
    for (let i = 0; i < 600; i += 1) {
      request = (await api('127.0.0.3', 'GET', '/dataRequests/cluster-erase')).body;
      if (request.status !== 'running') break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(request.status, 'completed', JSON.stringify(request));
    // Late registrations that raced the erase are refused (the group is gone) and leave nothing either.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const left = await sql<{ n: number }>(
      "select (select count(*) from registrations where registration_id_key like 'erase-%') + (select count(*) from hub_devices where device_id_key like 'erase-%') + (select count(*) from enrollment_groups where group_id_key = 'erase-group') as n",
    );
    assert.equal(Number(left[0]?.n), 0);
    const twins = await sql<{ n: number }>("select count(*)::int as n from registrations where registration_id_key like 'twin-%'");
    assert.equal(twins[0]?.n, 3, 'other devices are untouched');
  });
});
