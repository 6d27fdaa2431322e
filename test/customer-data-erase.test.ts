import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import deviceSdk from 'azure-iot-provisioning-device';
import amqpTransport from 'azure-iot-provisioning-device-amqp';
import mqttTransport from 'azure-iot-provisioning-device-mqtt';
import symmetricKeySecurity from 'azure-iot-security-symmetric-key';
import { connectAsync, type MqttClient } from 'mqtt';
import { verifyReceipt } from '../src/domain/receipt.js';
import { cliRunners } from './cli-runner.js';
import { call, readCa, startServer, type TestServer } from './harness.js';
import { deviceToken, rawRegister, sdkRegister, type Json } from './devices.js';
import { HUB_HOST_NAMES, linkHub } from './hubs.js';

/**
 * The defects of issue 10, each a test: an erase that a re-registering device could outrun (the erase fence), an erase
 * that missed the hub device once the enrollment was gone, an export that left places out, counts per registration
 * instead of per item, a dry run that omitted places, and an unknown subject that looked like a fulfilled request.
 */
let server: TestServer;
let idScope: string;
let instanceId: string;
const API = 'api-version=2021-10-01';
const HUBS = ['localhost', '127.0.0.2'];

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json; text: string }> {
  const response = await call(method, `${path}${path.includes('?') ? '&' : '?'}${API}`, { headers: { authorization: server.token() }, ...(body === undefined ? {} : { body }) });
  return { status: response.status, body: response.body as Json, text: response.text };
}

async function enroll(registrationId: string, extra: Json = {}): Promise<string> {
  const response = await api('PUT', `/enrollments/${registrationId}`, { registrationId, attestation: { type: 'symmetricKey' }, ...extra });
  assert.equal(response.status, 200, response.text);
  return response.body.attestation.symmetricKey.primaryKey as string;
}

async function finished(requestId: string): Promise<Json> {
  for (let attempt = 0; attempt < 1200; attempt += 1) {
    const current = await api('GET', `/dataRequests/${requestId}`);
    if (current.body.status !== 'running') return current.body;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`data request ${requestId} did not finish`);
}

async function dataRequest(requestId: string, body: Json): Promise<Json> {
  const created = await api('PUT', `/dataRequests/${requestId}`, body);
  assert.equal(created.status, 200, created.text);
  return finished(requestId);
}

async function receiptCounts(requestId: string): Promise<Record<string, number>> {
  const receipt = await api('GET', `/dataRequests/${requestId}/receipt`);
  assert.equal(receipt.status, 200, receipt.text);
  assert.equal(verifyReceipt(receipt.body).valid, true);
  return Object.fromEntries([...receipt.body.receipt.deleted, ...receipt.body.receipt.pseudonymized].map((entry: Json) => [entry.place, entry.count]));
}

/** Everything provisiond holds that names these IDs: store rows and hub devices on every hub. */
async function leftovers(ids: { registrationId: string; deviceId: string }, since?: string): Promise<string[]> {
  const store = server.app.store;
  const found: string[] = [];
  if ((await store.getEnrollment(instanceId, ids.registrationId)) !== undefined) found.push('enrollment');
  if ((await store.getRegistration(instanceId, ids.registrationId)) !== undefined) found.push('registration record');
  const operations = await store.countOperationsOfRegistration(instanceId, ids.registrationId);
  if (operations > 0) found.push(`${operations} operations`);
  for (const hub of HUBS) {
    const devices = await server.app.builtInHubs.queryDevices(hub, { query: `SELECT * FROM devices WHERE deviceId = '${ids.deviceId}'` });
    if (devices.items.length > 0) found.push(`hub device on ${hub}`);
  }
  const events = (await store.findAuditEventsAbout(instanceId, { registrationIds: [ids.registrationId], deviceIds: [ids.deviceId], groupIds: [] })).filter(
    // A device that tries again once its erase is final is a new attempt, refused for want of an enrollment, and
    // logged as one; only that may name it afterwards.
    (event) => !(since !== undefined && event.timeUtc >= since && event.errorCode === 401002 && event.kind === 'registration'),
  );
  if (events.length > 0) found.push(`${events.length} log events (${events.map((event) => `${event.kind}:${event.operation}:${event.timeUtc}:${event.errorCode ?? ''}`).join(', ')})`);
  return found;
}

before(async () => {
  server = await startServer({ hostNames: HUB_HOST_NAMES, listenHost: '0.0.0.0', dataRequestWaitMs: 0, registrationsPerSecond: 0, pollsPerSecondPerDevice: 0, refusedAttemptsPerSecondPerSource: 0 });
  idScope = server.info.idScope;
  instanceId = (await server.app.store.listInstances())[0]?.id as string;
  await linkHub(server, '127.0.0.2', { builtIn: true, applyAllocationPolicy: false });
});
after(async () => {
  await server.close();
});

/** Registers over MQTT (or AMQP) with the official SDK; resolves with the error or the state. */
function mqttRegister(registrationId: string, key: string, transport: 'mqtt' | 'amqp' = 'mqtt'): Promise<unknown> {
  const client = deviceSdk.ProvisioningDeviceClient.create(
    'localhost',
    idScope,
    transport === 'mqtt' ? new mqttTransport.Mqtt() : new amqpTransport.Amqp(),
    new symmetricKeySecurity.SymmetricKeySecurityClient(registrationId, key) as never,
  );
  return new Promise((resolve) => {
    client.register((error?: Error, result?: unknown) => resolve(error ?? result));
  });
}

/**
 * One registration over MQTT with a plain MQTT client speaking the DPS topics (register, then poll until terminal).
 * The race uses it for its many attempts: the SDK's MQTT transport throws outside any callback when a refused
 * CONNECT's error event arrives after it has disconnected (an SDK defect), which such a load makes likely.
 */
async function plainMqttRegister(registrationId: string, key: string): Promise<unknown> {
  let client: MqttClient;
  try {
    client = await connectAsync('mqtts://localhost:8883', {
    clientId: registrationId,
    username: `${idScope}/registrations/${registrationId}/api-version=2019-03-31`,
    password: deviceToken(idScope, registrationId, key),
    protocolVersion: 4,
    ca: readCa(),
    reconnectPeriod: 0,
    connectTimeout: 5000,
    });
  } catch (error) {
    return error;
  }
  // A connection the server closed answers nothing more: the attempt ends there (a QoS 1 publish on it would wait
  // for a reconnect this client never makes).
  let closed = false;
  const whenClosed = new Promise<never>((_resolve, reject) => client.once('close', () => ((closed = true), reject(new Error('the server closed the connection')))));
  whenClosed.catch(() => undefined);
  const unlessClosed = <T>(step: Promise<T>): Promise<T> => Promise.race([step, whenClosed]);
  try {
    const replies = new Map<string, { status: number; body: Json }>();
    client.on('message', (topic, payload) => {
      const match = /^\$dps\/registrations\/res\/(\d+)\/\?\$rid=([^&]+)/.exec(topic);
      if (match !== null) replies.set(match[2] ?? '', { status: Number(match[1]), body: JSON.parse(payload.toString('utf8')) as Json });
    });
    await unlessClosed(client.subscribeAsync('$dps/registrations/res/#', { qos: 1 }));
    const reply = async (rid: string): Promise<{ status: number; body: Json }> => {
      for (let waited = 0; waited < 10_000; waited += 20) {
        const found = replies.get(rid);
        if (found !== undefined) return found;
        if (closed) throw new Error(`the server closed the connection before its reply to ${rid}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      throw new Error(`no reply to ${rid}`);
    };
    await unlessClosed(client.publishAsync('$dps/registrations/PUT/iotdps-register/?$rid=r', JSON.stringify({ registrationId }), { qos: 1 }));
    let answer = await reply('r');
    for (let poll = 0; answer.status === 202 && poll < 20; poll += 1) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      await unlessClosed(client.publishAsync(`$dps/registrations/GET/iotdps-get-operationstatus/?$rid=p${poll}&operationId=${String(answer.body.operationId)}`, ' ', { qos: 1 }));
      answer = await reply(`p${poll}`);
    }
    return answer;
  } catch (error) {
    return error;
  } finally {
    if (!closed) await client.endAsync().catch(() => undefined);
  }
}

describe('an erase cannot be outrun (the erase fence)', () => {
  for (const transport of ['https', 'mqtt'] as const) {
    test(`20 rounds of registering over ${transport.toUpperCase()} while the device is erased leave nothing, and no receipt over leftovers`, async () => {
      // An attempt the SDK never answers (its MQTT transport can lose a callback when a refused CONNECT races its own
      // disconnect) must not hang the round; what matters is what the server kept.
      const register = (id: string, key: string): Promise<unknown> =>
        Promise.race([
          transport === 'https' ? rawRegister(idScope, id, key).catch((error: unknown) => error) : plainMqttRegister(id, key),
          new Promise((resolve) => setTimeout(resolve, 20_000, 'no answer').unref()),
        ]);
      for (let round = 0; round < 20; round += 1) {
        const registrationId = `race-${transport}-${round}`;
        const deviceId = `${registrationId}-dev`;
        const key = await enroll(registrationId, { deviceId, initialTwin: { tags: { round: String(round) } } });
        // The device is registered (and on the hub) before the race: set up over HTTPS, polled to the end, however slow.
        assert.equal((await rawRegister(idScope, registrationId, key)).status, 'assigned', `round ${round}: the first registration`);
        // The device keeps trying while the erase runs: some attempts start before it, some during it.
        let erasing = true;
        const attempts: Promise<unknown>[] = [];
        const device = (async () => {
          while (erasing) {
            const attempt = register(registrationId, key);
            attempts.push(attempt);
            // Over MQTT one connection at a time: the client ID is the registration ID, and the broker closes a
            // connected client when a CONNECT with its ID arrives (MQTT 3.1.1 §3.1.4) — overlapping attempts closed
            // each other mid-request, and each closed one waited out its 20 s here (5 minutes a run).
            if (transport === 'mqtt') await attempt;
            else await new Promise((resolve) => setTimeout(resolve, 3));
          }
        })();
        // Rounds vary how far the device's attempts have got (connecting, assigning, writing) when the erase starts.
        await new Promise((resolve) => setTimeout(resolve, (round % 5) * 25));
        const done = await dataRequest(`race-erase-${transport}-${round}`, { type: 'erase', subject: { registrationId } });
        erasing = false;
        await device;
        assert.equal(done.status, 'completed', JSON.stringify(done));
        // The moment the erase became final (its fences went), as its receipt states it.
        const final = (await api('GET', `/dataRequests/race-erase-${transport}-${round}/receipt`)).body.receipt.completedDateTimeUtc as string;
        assert.ok(final <= (done.lastUpdatedDateTimeUtc as string));
        const atCompletion = await leftovers({ registrationId, deviceId }, final);
        await Promise.all(attempts);
        const afterwards = await leftovers({ registrationId, deviceId }, final);
        assert.deepEqual(atCompletion, [], `round ${round}: left when the receipt was signed ${JSON.stringify(done)}`);
        assert.deepEqual(afterwards, [], `round ${round}: left after the device stopped trying`);
        const counts = await receiptCounts(`race-erase-${transport}-${round}`);
        assert.equal(counts.enrollments, 1);
        assert.equal(counts['hub:localhost/devices'], 1);
      }
    });
  }

  test('while an erase runs, writes about its subject are refused with SubjectBeingErased on every surface', async () => {
    const key = await enroll('fence-1', { deviceId: 'fence-1-dev' });
    await rawRegister(idScope, 'fence-1', key);
    // Put the fence up the way an erase does, and take it down afterwards.
    await server.app.store.putEraseFences(instanceId, [
      { kind: 'registrationId', id: 'fence-1', requestId: 'fence-req', subjectHash: 'h1' },
      { kind: 'deviceId', id: 'fence-1-dev', requestId: 'fence-req', subjectHash: 'h2' },
    ]);
    try {
      const registered = await rawRegister(idScope, 'fence-1', key);
      assert.equal(registered.httpStatus, 409);
      assert.equal(registered.errorCode, 409210);
      assert.deepEqual(registered.info, { requestId: 'fence-req' });
      const mqtt = (await mqttRegister('fence-1', key)) as Json;
      assert.ok(mqtt instanceof Error, 'MQTT registration refused');
      const rewrite = await api('PUT', '/enrollments/fence-1', { registrationId: 'fence-1', deviceId: 'fence-1-dev', attestation: { type: 'symmetricKey' } });
      assert.equal(rewrite.status, 409);
      assert.equal(rewrite.body.errorCode, 409210);
      // A bulk call: the item naming the fenced device is refused by itself, the other written.
      const bulk = await api('POST', '/enrollments', {
        mode: 'create',
        enrollments: [
          { registrationId: 'fence-bulk-free', attestation: { type: 'symmetricKey' } },
          { registrationId: 'fence-bulk-named', deviceId: 'fence-1-dev', attestation: { type: 'symmetricKey' } },
        ],
      });
      assert.equal(bulk.status, 200);
      assert.equal(bulk.body.isSuccessful, false);
      assert.deepEqual(
        (bulk.body.errors as Json[]).map((error) => [error.registrationId, error.errorCode]),
        [['fence-bulk-named', 409210]],
      );
      assert.equal((await api('GET', '/enrollments/fence-bulk-free')).status, 200);
      assert.equal((await api('GET', '/enrollments/fence-bulk-named')).status, 404);
      const hubWrite = await server.app.builtInHubs.replaceTwin('localhost', 'fence-1-dev', { tags: { a: '1' } }, '*').then(
        () => undefined,
        (error: Error & { code?: string }) => error.code,
      );
      assert.equal(hubWrite, 'DeviceBeingErased');
      // The refused attempts are in the log, by the subject's hash only.
      const events = (await server.app.store.queryAuditEvents(instanceId, { limit: 50 })).items.filter((event) => event.errorCode === 409210);
      assert.ok(events.length >= 2, 'refusals logged');
      for (const event of events) {
        // The bulk item is logged by its own registration ID (not the erase's subject); the device it named is not in it.
        if (event.operation === 'IndividualEnrollment_RunBulkOperation') assert.deepEqual(event.subject, { registrationId: 'fence-bulk-named' });
        else assert.deepEqual(Object.keys(event.subject), ['hash']);
        assert.ok(!JSON.stringify(event).includes('fence-1-dev'), 'the fenced device ID is in no refusal');
      }
    } finally {
      await server.app.store.deleteEraseFences(instanceId, 'fence-req');
    }
    assert.equal((await rawRegister(idScope, 'fence-1', key)).status, 'assigned');
  });
});

describe('an erase finds every trace', () => {
  test('erase by registration ID removes the hub device when the enrollment was deleted first', async () => {
    const key = await enroll('del-o1', { deviceId: 'del-o1-dev' });
    assert.equal((await sdkRegister(idScope, 'del-o1', key)).deviceId, 'del-o1-dev');
    assert.equal((await api('DELETE', '/enrollments/del-o1')).status, 204);
    const done = await dataRequest('del-o1-erase', { type: 'erase', subject: { registrationId: 'del-o1' } });
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.equal((await receiptCounts('del-o1-erase'))['hub:localhost/devices'], 1);
    assert.deepEqual(await leftovers({ registrationId: 'del-o1', deviceId: 'del-o1-dev' }), []);
  });

  test('counts are per item deleted: two operations are two', async () => {
    const key = await enroll('count-1');
    await rawRegister(idScope, 'count-1', key);
    await rawRegister(idScope, 'count-1', key);
    assert.equal(await server.app.store.countOperationsOfRegistration(instanceId, 'count-1'), 2);
    const done = await dataRequest('count-1-erase', { type: 'erase', subject: { registrationId: 'count-1' } });
    assert.equal(done.status, 'completed');
    assert.equal((await receiptCounts('count-1-erase')).operations, 2);
  });
});

describe('export and dry run show every place the erase touches', () => {
  test('the export holds operations, the hub history and earlier data requests; the dry run lists every place by its human name', async () => {
    const key = await enroll('places-1', { initialTwin: { tags: { site: 'x' } } });
    await rawRegister(idScope, 'places-1', key, { hello: 'world' });
    await dataRequest('places-1-first-export', { type: 'export', subject: { registrationId: 'places-1' } });
    const exported = await dataRequest('places-1-export', { type: 'export', subject: { registrationId: 'places-1' } });
    assert.equal(exported.status, 'completed');
    const bundle = (await api('GET', '/dataRequests/places-1-export/bundle')).body;
    assert.equal(bundle.operations.length, 1);
    assert.equal(bundle.operations[0].registrationId, 'places-1');
    assert.equal(bundle.operations[0].registrationState.status, 'assigned');
    assert.deepEqual(bundle.registrationRecords[0].hubHistory, ['localhost']);
    assert.deepEqual(
      bundle.dataRequests.map((request: Json) => request.requestId),
      ['places-1-first-export'],
    );
    const searched = bundle.manifest.searched.map((entry: Json) => entry.place);
    for (const place of ['operations', 'dataRequests', 'lifecycleEventOutbox']) assert.ok(searched.includes(place), `${place} searched`);

    const dry = await dataRequest('places-1-dry', { type: 'erase', subject: { registrationId: 'places-1' }, dryRun: true });
    const places = [...dry.result.deleted, ...dry.result.pseudonymized];
    const byPlace = Object.fromEntries(places.map((entry: Json) => [entry.place, entry]));
    for (const place of ['registrations', 'operations', 'enrollments', 'auditEvents', 'dataRequests', 'lifecycleEventOutbox', 'hub:localhost/devices']) {
      assert.ok(byPlace[place] !== undefined, `dry run lists ${place}`);
    }
    assert.equal(byPlace.dataRequests.count, 2);
    for (const entry of places) assert.doesNotMatch(entry.name, /^[a-z]+[A-Z]|^hub:/, `human name for ${entry.place}: ${entry.name}`);
    assert.equal(byPlace.lifecycleEventOutbox.name, 'Undelivered lifecycle events');
  });
});

describe('an unknown subject is said to be unknown', () => {
  test('API: the erase completes, says nothing was found, and so does its receipt', async () => {
    const done = await dataRequest('nosuch-erase', { type: 'erase', subject: { registrationId: 'nosuch' } });
    assert.equal(done.status, 'completed');
    assert.equal(done.result.nothingFound, true);
    assert.match(done.result.warning, /Nothing was found/);
    const receipt = await api('GET', '/dataRequests/nosuch-erase/receipt');
    assert.equal(receipt.body.receipt.nothingFound, true);
    const exported = await dataRequest('nosuch-export', { type: 'export', subject: { deviceId: 'nosuch-dev' } });
    assert.equal(exported.result.nothingFound, true);
  });

  test('CLI: data erase and data export warn and exit 3', async () => {
    const { runInProcess } = cliRunners(() => server.connectionString);
    const erase = await runInProcess(['data', 'erase', '--registration-id', 'nosuch-cli', '--yes']);
    assert.equal(erase.code, 3, erase.stderr);
    assert.match(erase.stderr, /nothing found for registration ID 'nosuch-cli'|nothing found for .*nosuch-cli/);
    const exported = await runInProcess(['data', 'export', '--device-id', 'nosuch-cli-dev']);
    assert.equal(exported.code, 3, exported.stderr);
    assert.match(exported.stderr, /nothing found/);
  });
});

describe('refused sign-ins on every transport are in the system log', () => {
  test('MQTT and AMQP refusals are logged with why: no such enrollment, or a wrong key (the wire says only 401002)', async () => {
    await enroll('refuse-1');
    const wrongKey = Buffer.alloc(32, 7).toString('base64');
    for (const transport of ['mqtt', 'amqp'] as const) {
      assert.ok((await mqttRegister('refuse-1', wrongKey, transport)) instanceof Error);
      assert.ok((await mqttRegister('refuse-nosuch', wrongKey, transport)) instanceof Error);
    }
    const reasons = async (registrationId: string): Promise<string[]> =>
      (await server.app.store.findAuditEventsAbout(instanceId, { registrationIds: [registrationId], deviceIds: [], groupIds: [] }))
        .filter((event) => event.outcome === 'failure' && event.errorCode === 401002)
        .map((event) => `${event.transport ?? ''}: ${event.reason ?? ''}`);
    for (const transport of ['mqtt', 'amqp']) {
      assert.ok((await reasons('refuse-1')).some((line) => line.startsWith(`${transport}: wrong key`)), `${transport} wrong key in ${(await reasons('refuse-1')).join(' | ')}`);
      assert.ok((await reasons('refuse-nosuch')).some((line) => line.startsWith(`${transport}: no such enrollment`)), `${transport} unknown in ${(await reasons('refuse-nosuch')).join(' | ')}`);
    }
  });
});

/**
 * Issue 12 P5: an erase of one device wrote each of its store places' rows, and its progress after each place, as
 * commits of their own (~19 per erase, each WAL frames the closing checkpoint copies back). The store's places of one
 * pass are one transaction with their progress now, and a failure inside it still ends as before: place by place,
 * each failure recorded as its own, the counts exact.
 */
describe('an erase of one device writes its store places in one transaction (SQLite)', () => {
  const onSqlite = process.env.PROVISIOND_TEST_STORE !== 'postgres';

  /** The SQLite writes this process runs while `work` does (commits among them), in order. */
  async function recordingWrites<T>(work: () => Promise<T>): Promise<{ result: T; writes: Array<{ sql: string; inTransaction: boolean }> }> {
    type Statement = { source: string; reader: boolean; database: { inTransaction: boolean } };
    const probe = new Database(':memory:');
    const prototype = Object.getPrototypeOf(probe.prepare('select 1')) as Record<'run' | 'get' | 'all', (...args: unknown[]) => unknown>;
    probe.close();
    const originals = { run: prototype.run, get: prototype.get, all: prototype.all };
    const writes: Array<{ sql: string; inTransaction: boolean }> = [];
    for (const method of ['run', 'get', 'all'] as const) {
      const original = originals[method];
      prototype[method] = function (this: Statement, ...args: unknown[]) {
        if (!this.reader) writes.push({ sql: this.source.trim().toLowerCase(), inTransaction: this.database.inTransaction });
        return original.apply(this, args);
      };
    }
    try {
      return { result: await work(), writes };
    } finally {
      Object.assign(prototype, originals);
    }
  }

  test('the rows of every store place and the progress are one commit', { skip: !onSqlite }, async () => {
    const key = await enroll('tx-one-1');
    assert.equal((await rawRegister(idScope, 'tx-one-1', key)).status, 'assigned');
    const { result: done, writes } = await recordingWrites(() => dataRequest('tx-one-erase', { type: 'erase', subject: { registrationId: 'tx-one-1' } }));
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.deepEqual(await leftovers({ registrationId: 'tx-one-1', deviceId: 'tx-one-1' }), []);
    // The deletes only an erase makes (the log's rows are updated by every read's access entry too), first to last place.
    const placeWrite = /^delete from "(registrations|operations|hub_device_links|enrollments)"/;
    const first = writes.findIndex((write) => placeWrite.test(write.sql));
    const last = writes.findLastIndex((write) => placeWrite.test(write.sql));
    assert.ok(first >= 0, 'the erase wrote the places');
    const between = writes.slice(first, last + 1);
    assert.deepEqual(
      between.filter((write) => !write.inTransaction && !write.sql.startsWith('begin')).map((write) => write.sql.slice(0, 60)),
      [],
      'no write of a place commits on its own',
    );
    assert.deepEqual(between.filter((write) => write.sql.startsWith('commit')).map((write) => write.sql), [], 'no commit between the places');
    // The last places (the log's) and the progress they all made are in the same transaction: before its commit.
    const commit = writes.findIndex((write, index) => index > last && write.sql.startsWith('commit'));
    const rest = writes.slice(last + 1, commit);
    assert.ok(rest.every((write) => write.inTransaction));
    assert.ok(rest.some((write) => write.sql.startsWith('update "audit_events"')), 'the log is pseudonymized in it');
    assert.ok(rest.some((write) => /^(update|insert into) "data_requests"/.test(write.sql)), 'the progress is saved in it');
  });

  test('a place that fails inside the transaction rolls it back; the places then run one by one, and a retry counts exactly', { skip: !onSqlite }, async () => {
    const key = await enroll('tx-fail-1');
    assert.equal((await rawRegister(idScope, 'tx-fail-1', key)).status, 'assigned');
    const eventsBefore = await server.app.store.findAuditEventsAbout(instanceId, { registrationIds: ['tx-fail-1'], deviceIds: ['tx-fail-1'], groupIds: [] });
    const operationsBefore = await server.app.store.countOperationsOfRegistration(instanceId, 'tx-fail-1');
    assert.ok(eventsBefore.length > 0 && operationsBefore > 0);
    // A store that refuses one place's delete (as a full disk or a corrupt page would): a trigger, from a second connection.
    const db = new Database(join(server.dataDir, 'provisiond.db'));
    try {
      db.exec(`CREATE TRIGGER refuse_tx_fail BEFORE DELETE ON operations WHEN old.registration_id_key = 'tx-fail-1'
        BEGIN SELECT RAISE(ABORT, 'operations refused by the test'); END`);
      const partial = await dataRequest('tx-fail-erase', { type: 'erase', subject: { registrationId: 'tx-fail-1' } });
      assert.equal(partial.status, 'partiallyCompleted', JSON.stringify(partial));
      assert.deepEqual(
        (partial.result.failures as Json[]).map((failure) => [failure.place, failure.reason]),
        [['operations', 'operations refused by the test']],
      );
      // Every other place is done: the rollback undid their writes, and they ran again one by one.
      assert.deepEqual(await leftovers({ registrationId: 'tx-fail-1', deviceId: 'tx-fail-1' }), [`${operationsBefore} operations`]);
      db.exec('DROP TRIGGER refuse_tx_fail');
    } finally {
      db.close();
    }
    const retried = await api('POST', '/dataRequests/tx-fail-erase/retry');
    assert.equal(retried.status, 200, retried.text);
    assert.equal((await finished('tx-fail-erase')).status, 'completed');
    assert.deepEqual(await leftovers({ registrationId: 'tx-fail-1', deviceId: 'tx-fail-1' }), []);
    const counts = await receiptCounts('tx-fail-erase');
    assert.deepEqual(
      [counts['hub:localhost/devices'], counts.registrations, counts.operations, counts.hubDeviceLinks, counts.enrollments, counts.auditEvents],
      [1, 1, operationsBefore, 1, 1, eventsBefore.length],
    );
  });
});
