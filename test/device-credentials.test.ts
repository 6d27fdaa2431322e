import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer as createHttpServer, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyBaseLogger } from 'fastify';
import { connectAsync } from 'mqtt';
import pino from 'pino';
import rhea, { type AmqpError, type Message } from 'rhea';
import { parseResponseTopic } from '../src/transports/mqtt/topics.js';
import { deriveDeviceKey, type Json } from './devices.js';
import { call, readCa, startServer, type TestServer } from './harness.js';

/**
 * Device credentials on every transport (HTTPS, MQTT, AMQP), as a device presents them on the wire: a SAS token
 * (`sr={idScope}/registrations/{registrationId}`, dps-wire.md §4.3) is accepted only when it is unexpired, names this
 * device in this ID scope, and is signed by the device's key — for a group device, the key derived from the group key,
 * checked on every attempt, also when the device already has a record from that group. Group device keys are pinned
 * to vectors computed outside this project (openssl), so the server and the tests cannot agree on a wrong formula.
 * No token or signature ever reaches the server log or the database, for accepted and refused attempts alike. And a
 * poll during a slow assignment answers 202 with Retry-After.
 */
const API_VERSION = '2019-03-31';
const SERVICE_API = 'api-version=2021-10-01';
type Transport = 'https' | 'mqtt' | 'amqp';
const TRANSPORTS: readonly Transport[] = ['https', 'mqtt', 'amqp'];
/** A reply that never comes fails the test rather than hanging it. */
const REPLY_TIMEOUT_MS = 10_000;

let server: TestServer;
let idScope: string;
/** Every line the server logged. */
const logLines: string[] = [];
/** Every Authorization value presented in this file: none may be logged or stored. */
const presented = new Set<string>();

/**
 * HMAC-SHA256 group-key derivations computed with openssl, independently of src/ and of test/devices.ts:
 * `printf %s "$id" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf %s "$groupKey" | base64 -d | xxd -p | tr -d '\n') -binary | base64`
 */
const KNOWN_ANSWERS = [
  {
    groupKey: 'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw==',
    registrationId: 'device-001',
    deviceKey: 'et2jOsEfmtm4DzD2oxPLFhjPK65PrW1YamhBVrDP6Vw=',
  },
  {
    groupKey: '8mXgQWlm0u5w4Z4o1QvC6Ht6D2kq6Mj3WmU1b9JtQe2HjdvT0kQh3A9c7N1rZxR0yqUm1pQd6a9gk0Ew3Dz6Nw==',
    registrationId: 'pump.42:a_b-c',
    deviceKey: '6ko6BZeSBrqVxGsTWfxcpnB2yDeeK8O6YUof2UWny60=',
  },
  {
    groupKey: 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=',
    registrationId: 'x',
    deviceKey: 's/tGx/LjzJe1mqDZ7rD7yBhcmEW3pB3jKtbcg/zlYyQ=',
  },
] as const;

/** A device SAS token, built here from its parts (the format of dps-wire.md §4.3), so each part can be wrong. */
function sasToken(options: { resource: string; key: string; expirySeconds?: number; keyName?: string | null }): string {
  // Each default expiry a second later than the last: two tokens for one device made in the same second would be the
  // same string, and the scan below looks for every distinct token presented, however fast the tests ran.
  const se = options.expirySeconds ?? Math.floor(Date.now() / 1000) + 3600 + presented.size;
  const sig = createHmac('sha256', Buffer.from(options.key, 'base64')).update(`${options.resource}\n${se}`).digest('base64');
  const skn = options.keyName === null ? '' : `&skn=${options.keyName ?? 'registration'}`;
  const token = `SharedAccessSignature sr=${options.resource}&sig=${encodeURIComponent(sig)}&se=${se}${skn}`;
  presented.add(token);
  return token;
}
const resourceOf = (registrationId: string, scope = idScope): string => `${scope}/registrations/${registrationId}`;

async function servicePut(path: string, body: Json): Promise<Json> {
  const response = await call('PUT', `${path}?${SERVICE_API}`, { headers: { authorization: server.token() }, body });
  assert.equal(response.status, 200, response.text);
  return response.body as Json;
}
async function enroll(registrationId: string): Promise<string> {
  const enrollment = await servicePut(`/enrollments/${registrationId}`, { registrationId, attestation: { type: 'symmetricKey' } });
  return enrollment.attestation.symmetricKey.primaryKey as string;
}
/** Another group's key never signs for this one, so each group gets its own devices. */
async function group(enrollmentGroupId: string, primaryKey?: string): Promise<string> {
  const keys = primaryKey === undefined ? {} : { symmetricKey: { primaryKey, secondaryKey: randomBytes(64).toString('base64') } };
  const created = await servicePut(`/enrollmentGroups/${enrollmentGroupId}`, { enrollmentGroupId, attestation: { type: 'symmetricKey', ...keys } });
  return created.attestation.symmetricKey.primaryKey as string;
}

/**
 * Presents `authorization` as `registrationId` in `scope` on one transport and sends a register request. Resolves
 * with the DPS status the device got: 202 (accepted, an operation to poll), or the error status; a refusal at
 * connection time (MQTT CONNACK 5 "not authorized", AMQP SASL failure) is 401, as the transports document it.
 */
async function present(transport: Transport, registrationId: string, authorization: string, scope = idScope): Promise<number> {
  if (transport === 'https') {
    const response = await call('PUT', `/${scope}/registrations/${registrationId}/register?api-version=${API_VERSION}`, {
      headers: { authorization },
      body: { registrationId },
    });
    if (response.status !== 202) assert.equal(Math.floor(((response.body as Json | undefined)?.errorCode ?? 0) / 1000), response.status, response.text);
    return response.status;
  }
  if (transport === 'mqtt') {
    let client;
    try {
      client = await connectAsync('mqtts://localhost:8883', {
        clientId: registrationId,
        username: `${scope}/registrations/${registrationId}/api-version=${API_VERSION}&ClientVersion=credential-test`,
        password: authorization,
        protocolVersion: 4,
        ca: readCa(),
        reconnectPeriod: 0,
        connectTimeout: 5000,
      });
    } catch (error) {
      assert.equal((error as { code?: number }).code, 5, String(error));
      return 401;
    }
    try {
      const reply = new Promise<number>((resolve, reject) => {
        setTimeout(() => reject(new Error(`no MQTT reply for ${registrationId}`)), REPLY_TIMEOUT_MS).unref();
        client.on('message', (topic) => {
          const parsed = parseResponseTopic(topic);
          if (parsed?.rid === 'credential-1') resolve(parsed.status);
        });
      });
      await client.subscribeAsync('$dps/registrations/res/#', { qos: 1 });
      await client.publishAsync('$dps/registrations/PUT/iotdps-register/?$rid=credential-1', '{}', { qos: 1 });
      return await reply;
    } finally {
      await client.endAsync();
    }
  }
  const container = rhea.create_container();
  container.on('error', () => undefined);
  const connection = container.connect({
    host: 'localhost',
    port: 5671,
    transport: 'tls',
    ca: readCa(),
    username: `${scope}/registrations/${registrationId}`,
    password: authorization,
    reconnect: false,
  });
  try {
    await once(connection, 'connection_open');
  } catch {
    return 401;
  }
  try {
    const address = `${scope}/registrations/${registrationId}`;
    const receiver = connection.open_receiver({ source: { address } });
    const sender = connection.open_sender({ target: { address } });
    await once(sender, 'sendable');
    return await new Promise<number>((resolve, reject) => {
      setTimeout(() => reject(new Error(`no AMQP reply or rejection for ${registrationId}`)), REPLY_TIMEOUT_MS).unref();
      receiver.on('message', (context) => {
        if ((context.message as Message).correlation_id === 'credential-1') resolve(202);
      });
      const delivery = sender.send({
        correlation_id: 'credential-1',
        application_properties: { 'iotdps-operation-type': 'iotdps-register', 'iotdps-forceRegistration': false },
        body: rhea.message.data_section(Buffer.from('{}')),
      });
      sender.on('rejected', (context) => {
        if (context.delivery !== delivery) return;
        const error = (context.delivery.remote_state as { error: AmqpError & { info?: Json } }).error;
        resolve(Math.floor(Number(error.info?.errorCode) / 1000));
      });
    });
  } finally {
    connection.close();
  }
}

before(async () => {
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
  // Each refusal below is judged on its own flaw: the per-address limit on refused attempts (20 a second, bursts of
  // 40; its own tests are test/throttling.test.ts and the raw MQTT/AMQP suites) is off, or this file's ~45 refusals
  // from 127.0.0.1 within a second or two would be answered 429 however their credential was wrong.
  server = await startServer({ hostNames: ['localhost', '127.0.0.1'], registrationWaitMs: 100, refusedAttemptsPerSecondPerSource: 0 }, { logger: logger as unknown as FastifyBaseLogger });
  idScope = server.info.idScope;
});
after(async () => {
  await server.close();
});

describe('group device keys', () => {
  test('the test derivation matches the openssl vectors', () => {
    for (const vector of KNOWN_ANSWERS) assert.equal(deriveDeviceKey(vector.groupKey, vector.registrationId), vector.deviceKey, vector.registrationId);
  });

  test('the server accepts exactly the openssl-derived key of a group device, on every transport', async () => {
    for (const [index, vector] of KNOWN_ANSWERS.entries()) {
      await group(`known-answer-${index}`, vector.groupKey);
    }
    for (const transport of TRANSPORTS) {
      for (const vector of KNOWN_ANSWERS) {
        // The same device on each transport: a second registration re-checks the key against the group.
        const resource = resourceOf(vector.registrationId);
        assert.equal(await present(transport, vector.registrationId, sasToken({ resource, key: vector.deviceKey })), 202, `${transport} ${vector.registrationId}`);
        // The group key itself is not the device's key; nor is the key derived without decoding the group key first.
        const undecoded = createHmac('sha256', Buffer.from(vector.groupKey, 'utf8')).update(vector.registrationId).digest('base64');
        for (const wrong of [vector.groupKey, undecoded]) {
          assert.equal(await present(transport, vector.registrationId, sasToken({ resource, key: wrong })), 401, `${transport} ${vector.registrationId} with a wrong key`);
        }
      }
    }
  });
});

describe('device SAS tokens on every transport', () => {
  let individualKey = '';
  let groupKey = '';
  before(async () => {
    individualKey = await enroll('cred-individual');
    groupKey = await group('cred-group');
    await enroll('cred-neighbour');
  });

  for (const transport of TRANSPORTS) {
    describe(transport, () => {
      test('a valid token is accepted (so each refusal below is for its one flaw)', async () => {
        assert.equal(await present(transport, 'cred-individual', sasToken({ resource: resourceOf('cred-individual'), key: individualKey })), 202);
        const member = `cred-member-${transport}`;
        assert.equal(await present(transport, member, sasToken({ resource: resourceOf(member), key: deriveDeviceKey(groupKey, member) })), 202);
        // skn may be absent (dps-wire.md §14).
        assert.equal(await present(transport, 'cred-individual', sasToken({ resource: resourceOf('cred-individual'), key: individualKey, keyName: null })), 202);
      });

      test('an expired token is refused with 401, for an individual and a group device', async () => {
        const past = Math.floor(Date.now() / 1000) - 60;
        assert.equal(await present(transport, 'cred-individual', sasToken({ resource: resourceOf('cred-individual'), key: individualKey, expirySeconds: past })), 401);
        const member = `cred-member-${transport}`;
        assert.equal(await present(transport, member, sasToken({ resource: resourceOf(member), key: deriveDeviceKey(groupKey, member), expirySeconds: past })), 401);
      });

      test("a token signed with the device's own key for another resource is refused with 401", async () => {
        const member = `cred-member-${transport}`;
        const memberKey = deriveDeviceKey(groupKey, member);
        const cases: [string, string, string][] = [
          // Another registration ID (one that exists, and one that does not).
          ['cred-individual', resourceOf('cred-neighbour'), individualKey],
          ['cred-individual', resourceOf('cred-nobody'), individualKey],
          [member, resourceOf('cred-individual'), memberKey],
          // Another ID scope.
          ['cred-individual', resourceOf('cred-individual', '0ne00000000'), individualKey],
          [member, resourceOf(member, '0ne0FFFFFFF'), memberKey],
          // The scope alone, and the resource with something after it.
          ['cred-individual', idScope, individualKey],
          ['cred-individual', `${resourceOf('cred-individual')}/register`, individualKey],
        ];
        for (const [registrationId, resource, key] of cases) {
          assert.equal(await present(transport, registrationId, sasToken({ resource, key })), 401, `${registrationId} with sr=${resource}`);
        }
        // A policy name other than `registration` is not a device token.
        assert.equal(await present(transport, 'cred-individual', sasToken({ resource: resourceOf('cred-individual'), key: individualKey, keyName: 'provisioningserviceowner' })), 401);
      });

      test('a group device that already has a record from its group is still refused a wrong key', async () => {
        const member = `cred-member-${transport}`;
        // The accepted registration above may still be finishing in the background.
        const groupRecords = async (): Promise<string[]> => {
          const page = await call('POST', `/registrations/cred-group/query?${SERVICE_API}`, { headers: { authorization: server.token() }, body: { query: 'SELECT *' } });
          assert.equal(page.status, 200, page.text);
          return (page.body as Json[]).map((item) => item.registrationId as string);
        };
        for (let attempt = 0; !(await groupRecords()).includes(member); attempt += 1) {
          assert.ok(attempt < 50, `${member} has a record from cred-group`);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        for (const wrong of [randomBytes(32).toString('base64'), groupKey, deriveDeviceKey(groupKey, `${member}-other`), individualKey]) {
          assert.equal(await present(transport, member, sasToken({ resource: resourceOf(member), key: wrong })), 401);
        }
        // Its right key still works, and the record still names the group.
        assert.equal(await present(transport, member, sasToken({ resource: resourceOf(member), key: deriveDeviceKey(groupKey, member) })), 202);
      });
    });
  }
});

describe('a poll during a slow assignment', () => {
  let webhook: Server;
  let webhookUrl = '';
  /** Answers held back until the test releases them. */
  const waiting: ServerResponse[] = [];
  before(async () => {
    webhook = createHttpServer((request, response) => {
      request.resume();
      request.on('end', () => waiting.push(response));
    });
    webhook.listen(0, '127.0.0.1');
    await once(webhook, 'listening');
    webhookUrl = `http://127.0.0.1:${(webhook.address() as { port: number }).port}/allocate`;
  });
  after(async () => {
    webhook.closeAllConnections();
    await new Promise((resolve) => webhook.close(resolve));
  });

  test('answers 202 assigning with Retry-After until the webhook answers, then 200 assigned', async () => {
    const registrationId = 'cred-slow';
    const enrollment = await servicePut(`/enrollments/${registrationId}`, {
      registrationId,
      attestation: { type: 'symmetricKey' },
      allocationPolicy: 'custom',
      customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' },
    });
    const authorization = sasToken({ resource: resourceOf(registrationId), key: enrollment.attestation.symmetricKey.primaryKey as string });
    const devicePath = (suffix: string): string => `/${idScope}/registrations/${registrationId}${suffix}?api-version=${API_VERSION}`;
    const registered = await call('PUT', devicePath('/register'), { headers: { authorization }, body: { registrationId } });
    assert.equal(registered.status, 202, registered.text);
    assert.equal(registered.headers.get('retry-after'), '1');
    const operationId = (registered.body as Json).operationId as string;
    assert.deepEqual(registered.body, { operationId, status: 'assigning' });

    // The webhook has the request and has not answered: every poll now is 202.
    for (let waited = 0; waiting.length === 0; waited += 1) {
      assert.ok(waited < 100, 'the webhook was called');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (let poll = 0; poll < 2; poll += 1) {
      const polled = await call('GET', devicePath(`/operations/${operationId}`), { headers: { authorization } });
      assert.equal(polled.status, 202, polled.text);
      assert.equal(polled.headers.get('retry-after'), '1');
      assert.deepEqual(polled.body, { operationId, status: 'assigning', registrationState: { registrationId, status: 'assigning' } });
      await new Promise((resolve) => setTimeout(resolve, 300));
    }

    for (const response of waiting.splice(0)) response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ iotHubHostName: 'localhost' }));
    for (let attempt = 0; ; attempt += 1) {
      assert.ok(attempt < 50, 'the assignment finished');
      const polled = await call('GET', devicePath(`/operations/${operationId}`), { headers: { authorization } });
      if (polled.status === 202) {
        assert.equal(polled.headers.get('retry-after'), '1');
        await new Promise((resolve) => setTimeout(resolve, 200));
        continue;
      }
      assert.equal(polled.status, 200, polled.text);
      assert.equal(polled.headers.get('retry-after'), null);
      const body = polled.body as Json;
      assert.equal(body.status, 'assigned');
      assert.equal(body.registrationState.assignedHub, 'localhost');
      break;
    }
  });
});

/** Every file under the data directory (the database, its WAL, everything the server wrote). */
function filesUnder(directory: string): string[] {
  return readdirSync(directory).flatMap((name) => {
    const path = join(directory, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

test('no token or signature reaches the server log, the system log or the database, accepted or refused', async () => {
  // Runs after the tests above: they presented valid, expired, misdirected and wrongly signed tokens on every transport.
  assert.ok(presented.size > 50, `tokens were presented (${presented.size})`);
  assert.ok(logLines.length > 0, 'the server logged');
  const audit = await call('POST', `/auditEvents/query?${SERVICE_API}`, { headers: { authorization: server.token(), 'x-ms-max-item-count': '1000' }, body: {} });
  assert.equal(audit.status, 200, audit.text);
  const events = audit.body as Json[];
  assert.ok(events.some((event) => event.outcome === 'failure' && event.kind === 'registration'), 'refused attempts are in the system log');
  assert.ok(events.some((event) => event.outcome === 'success' && event.kind === 'registration'), 'accepted attempts are in the system log');
  // Audit events are written asynchronously by some paths; the database is read after the log has settled.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const places: [string, string][] = [
    ['the server log', logLines.join('\n')],
    ['the system log', JSON.stringify(events)],
    ...filesUnder(server.dataDir).map((path): [string, string] => [path, readFileSync(path).toString('latin1')]),
  ];
  for (const token of presented) {
    const sig = decodeURIComponent(/sig=([^&]+)/.exec(token)?.[1] ?? '');
    assert.ok(sig.length >= 40);
    for (const [where, text] of places) {
      for (const secret of [token, sig, encodeURIComponent(sig), sig.slice(0, 24)]) {
        assert.equal(text.includes(secret), false, `${where} holds ${secret === token ? 'a token' : 'a signature'}`);
      }
    }
  }
});
