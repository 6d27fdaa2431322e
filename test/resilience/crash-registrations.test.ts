import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { createSasToken } from '../../src/domain/sas.js';
import { createServerCertificate } from '../../src/tls/x509-issuer.js';
import { CA_DIR, call } from '../harness.js';
import { deriveDeviceKey, deviceToken, type Json } from '../devices.js';
import { dataDirWithTestCa, serveProvisiond, type ServedProvisiond } from '../provisiond-process.js';
import { LONG, seededRandom } from './resilience-mode.js';

/**
 * Crash consistency of registration (issue 13.3): a real `provisiond serve` under registration load is killed with
 * SIGKILL again and again; after the last restart the hub's devices and the registration records agree — no hub
 * device that no record names (orphan), no acknowledged registration whose record or hub device is missing (lost).
 *
 * The devices go to an external hub played by this test (so its state survives the kills and can be compared), whose
 * twin writes take 60 ms: every registration spends that long between its device write and its record, which is where
 * a kill used to leave an orphan. As many go to the built-in hub, whose identity, twin and record are one transaction
 * shared with concurrent registrations (group commit, issue 12): a kill with a batch in flight must lose no
 * acknowledged registration and leave no identity without its record. Runs alternate the register wait: 0 (the
 * `assigning` operation is written before the answer) and the default (a fast registration is answered after its
 * one commit).
 */
const KILLS = LONG ? 12 : 3;
const WIDTH = 24;
const random = seededRandom(13_3);

const dataDir = dataDirWithTestCa('provisiond-crash-reg-');
let served: ServedProvisiond | undefined;
let hubServer: Server | undefined;

/** The external hub's registry: device ID (lower-cased) → identity. */
const hubDevices = new Map<string, { deviceId: string; tags: Json; desired: Json }>();

function hubError(code: string): string {
  return JSON.stringify({ Message: `ErrorCode:${code};${code}`, ExceptionMessage: '' });
}

async function startHub(): Promise<string> {
  const certificate = await createServerCertificate(
    { certPem: readFileSync(join(CA_DIR, 'ca.pem'), 'utf8'), keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') },
    ['127.0.0.1'],
    1,
  );
  hubServer = createHttpsServer({ key: certificate.keyPem, cert: certificate.certPem }, (request, response) => {
    let text = '';
    request.on('data', (chunk: Buffer) => (text += chunk.toString()));
    request.on('end', () => {
      const match = /^\/(devices|twins)\/([^/?]+)/.exec(request.url ?? '');
      const send = (status: number, body?: unknown): void => {
        response.writeHead(status, { 'content-type': 'application/json' }).end(body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body));
      };
      if (match === null) return send(404, hubError('RequestNotFound'));
      const id = decodeURIComponent(match[2] ?? '');
      const key = id.toLowerCase();
      const existing = hubDevices.get(key);
      const device = (entry: { deviceId: string }) => ({ deviceId: entry.deviceId, generationId: '1', etag: '"d"', status: 'enabled' });
      const twin = (entry: { deviceId: string; tags: Json; desired: Json }) => ({ deviceId: entry.deviceId, etag: '"t"', tags: entry.tags, properties: { desired: entry.desired, reported: {} } });
      if (match[1] === 'devices') {
        if (request.method === 'GET') return existing === undefined ? send(404, hubError('DeviceNotFound')) : send(200, device(existing));
        if (request.method === 'DELETE') {
          if (existing === undefined) return send(404, hubError('DeviceNotFound'));
          hubDevices.delete(key);
          return send(204);
        }
        if (request.method === 'PUT') {
          const replacing = request.headers['if-match'] !== undefined;
          if (!replacing && existing !== undefined) return send(409, hubError('DeviceAlreadyExists'));
          if (replacing && existing === undefined) return send(404, hubError('DeviceNotFound'));
          const entry = existing ?? { deviceId: id, tags: {}, desired: {} };
          hubDevices.set(key, entry);
          return send(200, device(entry));
        }
      }
      if (match[1] === 'twins') {
        if (existing === undefined) return send(404, hubError('DeviceNotFound'));
        if (request.method === 'GET') return send(200, twin(existing));
        if (request.method === 'PUT') {
          const body = JSON.parse(text) as Json;
          setTimeout(() => {
            existing.tags = body.tags ?? {};
            existing.desired = body.properties?.desired ?? {};
            send(200, twin(existing));
          }, 60);
          return undefined;
        }
      }
      return send(405, hubError('RequestNotFound'));
    });
  });
  await new Promise<void>((resolve) => hubServer?.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(hubServer.address() as { port: number }).port}`;
}

async function serve(registrationWaitMs: number): Promise<string> {
  served = await serveProvisiond({
    args: ['--data-dir', dataDir, '--https-port', '443', '--listen-host', '127.0.0.1', '--log-level', 'warn', '--no-mqtt', '--no-amqp'],
    env: { PROVISIOND_REGISTRATION_WAIT_MS: String(registrationWaitMs) },
    stdout: 'ignore',
  });
  return served.banner;
}

async function kill(signal: NodeJS.Signals): Promise<void> {
  const running = served;
  served = undefined;
  await running?.stop(signal);
}

after(async () => {
  await kill('SIGTERM');
  hubServer?.closeAllConnections();
  hubServer?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

/** One registration over HTTPS; resolves with the final status, or undefined when the server went away. */
async function register(idScope: string, registrationId: string, key: string): Promise<string | undefined> {
  const authorization = deviceToken(idScope, registrationId, key);
  try {
    const registered = await call('PUT', `/${idScope}/registrations/${registrationId}/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId } });
    if (registered.status !== 202) return `http ${registered.status}`;
    const operationId = (registered.body as Json).operationId as string;
    for (let attempt = 0; attempt < 100; attempt += 1) {
      const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, { headers: { authorization } });
      if (polled.status === 429) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        continue;
      }
      if (polled.status !== 202) return String((polled.body as Json).status);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return 'timeout';
  } catch {
    return undefined;
  }
}

test(`registrations under load survive ${KILLS} SIGKILLs: 0 orphans, 0 lost acknowledged registrations`, async () => {
  const hubName = await startHub();
  const banner = await serve(0);
  const ownerKey = /SharedAccessKey=([^;\s]+)/.exec(banner)?.[1] ?? '';
  const idScope = /ID scope:\s+(\S+)/.exec(banner)?.[1] ?? '';
  const token = () => createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const api = async (method: string, path: string, body?: unknown) => {
    const response = await call(method, `${path}?api-version=2021-10-01`, { headers: { authorization: token() }, ...(body === undefined ? {} : { body }) });
    assert.ok(response.status < 300, `${method} ${path}: ${response.status} ${response.text}`);
    return response.body as Json;
  };
  await api('PUT', `/linkedHubs/${encodeURIComponent(hubName)}`, {
    connectionString: `HostName=${hubName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 5).toString('base64')}`,
    applyAllocationPolicy: false,
  });
  const group = await api('PUT', '/enrollmentGroups/crash-reg', {
    enrollmentGroupId: 'crash-reg',
    attestation: { type: 'symmetricKey' },
    iotHubs: [hubName],
    allocationPolicy: 'static',
    // A twin to write: the window between the device write and the record.
    initialTwin: { tags: { crash: true }, properties: { desired: { interval: 5 } } },
  });
  const groupKey = group.attestation.symmetricKey.primaryKey as string;
  const builtInGroup = await api('PUT', '/enrollmentGroups/crash-reg-bi', {
    enrollmentGroupId: 'crash-reg-bi',
    attestation: { type: 'symmetricKey' },
    iotHubs: ['localhost'],
    allocationPolicy: 'static',
    initialTwin: { tags: { crash: true }, properties: { desired: { interval: 5 } } },
  });
  const builtInKey = builtInGroup.attestation.symmetricKey.primaryKey as string;
  const builtInIds = new Set<string>();

  const acknowledged = new Set<string>();
  const tally = new Map<string, number>();
  let acknowledgedCount = 0;
  let next = 0;
  let attempts = 0;
  for (let round = 0; round <= KILLS; round += 1) {
    if (round > 0) await serve(round % 2 === 0 ? 0 : 3000);
    let stop = false;
    const workers = Array.from({ length: WIDTH * 2 }, async (_, worker) => {
      // Even workers register to the external hub, odd ones to the built-in hub.
      const builtIn = worker % 2 === 1;
      while (!stop) {
        // Mostly new devices; every fifth a device that was already acknowledged registers again.
        const again = [...acknowledged].filter((id) => builtInIds.has(id) === builtIn);
        const id =
          again.length > 0 && random() < 0.2 ? (again[Math.floor(random() * again.length)] as string) : `crash-reg-${builtIn ? 'bi-' : ''}${String(next++).padStart(5, '0')}`;
        if (builtIn) builtInIds.add(id);
        attempts += 1;
        const status = await register(idScope, id, deriveDeviceKey(builtIn ? builtInKey : groupKey, id));
        tally.set(status ?? 'killed', (tally.get(status ?? 'killed') ?? 0) + 1);
        if (status === undefined) return;
        if (status === 'assigned') {
          acknowledged.add(id);
          acknowledgedCount += 1;
        }
      }
    });
    if (round < KILLS) {
      // Kill while registrations are flowing: once some of this run's have finished, after a random moment more.
      const before = acknowledgedCount;
      for (let waited = 0; acknowledgedCount - before < 10 && waited < 30000; waited += 100) await new Promise((resolve) => setTimeout(resolve, 100));
      await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 1000)));
      await kill('SIGKILL');
      stop = true;
      await Promise.all(workers);
    } else {
      // The last run: some load on the restarted server, then stop it and compare.
      await new Promise((resolve) => setTimeout(resolve, 2000));
      stop = true;
      await Promise.all(workers);
    }
  }

  // The last start settled every intent; what the records say is what the hub holds.
  const db = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
  const records = (db.prepare('SELECT doc FROM registrations').all() as Array<{ doc: string }>).map((row) => JSON.parse(row.doc) as Json);
  const intents = (db.prepare('SELECT count(*) AS n FROM registration_intents').get() as { n: number }).n;
  const builtInDevices = new Set((db.prepare("SELECT device_id_key AS id FROM hub_devices WHERE hub_key = 'localhost'").all() as Array<{ id: string }>).map((row) => row.id));
  db.close();
  const namedOn = (hub: string) =>
    new Set(records.filter((record) => record.assignedHub === hub && typeof record.deviceId === 'string').map((record) => (record.deviceId as string).toLowerCase()));
  const named = namedOn(hubName);
  const namedBuiltIn = namedOn('localhost');
  const byId = new Map(records.map((record) => [(record.registrationId as string).toLowerCase(), record]));
  const orphans = [...[...hubDevices.keys()].filter((id) => !named.has(id)), ...[...builtInDevices].filter((id) => !namedBuiltIn.has(id))];
  const onItsHub = (id: string): boolean => (builtInIds.has(id) ? builtInDevices : hubDevices).has(id.toLowerCase());
  const lost = [...acknowledged].filter((id) => byId.get(id.toLowerCase())?.status !== 'assigned' || !onItsHub(id));
  const assigned = (id: string): boolean => byId.get(id)?.status === 'assigned';
  const missingOnHub = [...[...named].filter((id) => assigned(id) && !hubDevices.has(id)), ...[...namedBuiltIn].filter((id) => assigned(id) && !builtInDevices.has(id))];
  assert.deepEqual(
    { orphans, lost, missingOnHub, intents },
    { orphans: [], lost: [], missingOnHub: [], intents: 0 },
    `${attempts} attempts, ${acknowledged.size} acknowledged, ${hubDevices.size} external + ${builtInDevices.size} built-in hub devices, ${JSON.stringify([...tally])}`,
  );
  const acknowledgedBuiltIn = [...acknowledged].filter((id) => builtInIds.has(id)).length;
  assert.ok(acknowledgedBuiltIn >= 20, `enough built-in hub registrations were acknowledged (${acknowledgedBuiltIn})`);
  assert.ok(acknowledged.size >= 20, `enough registrations were acknowledged (${acknowledged.size} of ${attempts} attempts: ${JSON.stringify([...tally])})`);
  console.log(`# crash: ${KILLS} SIGKILLs, ${attempts} registration attempts, ${acknowledged.size} acknowledged (${acknowledgedBuiltIn} built-in), ${hubDevices.size} external + ${builtInDevices.size} built-in hub devices, 0 orphans, 0 lost`);
});
