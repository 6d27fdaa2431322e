import assert from 'node:assert/strict';
import { connect as tlsConnect } from 'node:tls';
import { after, before, test } from 'node:test';
import { createSasToken } from '../../src/domain/sas.js';
import { call, readCa, startServer, type TestServer } from '../harness.js';
import { inBatches, rawRegister, type Json } from '../devices.js';
import { LONG, SEED, seededRandom } from './resilience-mode.js';

/**
 * A seeded fuzz of every route in the app's own /openapi.json (issue 13, "a standing suite"), plus raw MQTT and AMQP
 * garbage: random path parameters, queries, headers, credentials and bodies — mutations of valid bodies, wrong types,
 * deep nesting, huge strings, bytes that are not JSON. Nothing may answer 5xx, hang or take the server down; afterwards
 * a device still registers. 2,000 HTTP requests in CI, 10,000 with PROVISIOND_RESILIENCE_LONG=1; the seed is printed
 * and PROVISIOND_RESILIENCE_SEED repeats a run.
 */
const HTTP_REQUESTS = LONG ? 10_000 : 2_000;
const RAW_CONNECTIONS = LONG ? 1_000 : 200;
const random = seededRandom(SEED);
let server: TestServer;
let hubKey = '';

interface Operation {
  method: string;
  template: string;
  operationId: string;
  hasBody: boolean;
}
let operations: Operation[] = [];

/** encodeURIComponent of text with lone surrogates made well-formed (they cannot be percent-encoded). */
const encode = (text: string): string => encodeURIComponent(Buffer.from(text, 'utf8').toString('utf8'));
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
const chance = (p: number): boolean => random() < p;

function randomString(): string {
  return pick<() => string>([
    () => '',
    () => 'fuzz-' + Math.floor(random() * 1000),
    () => 'a'.repeat(1 + Math.floor(random() * 400)),
    () => pick(['..', '.', '%', '%zz', '%00', '\u0000', 'é', '☃', '\ud83d\ude00', ' ', '/', '?', '#', '*', "'", '"', '\\', '$', '{}']),
    () => Array.from({ length: 1 + Math.floor(random() * 30) }, () => String.fromCharCode(Math.floor(random() * 0xffff))).join(''),
    () => "SELECT * WHERE registrationId = '" + 'x'.repeat(Math.floor(random() * 50)) + "'",
    () => pick(['null', 'true', '-1', '1e309', 'NaN', '0x10', '__proto__', 'constructor']),
  ])();
}

function randomValue(depth = 0): unknown {
  const kinds: Array<() => unknown> = [
    () => null,
    () => chance(0.5),
    () => pick([0, -1, 1.5, 2 ** 53, -(2 ** 63), 1e308]),
    () => randomString(),
  ];
  if (depth < 4) {
    kinds.push(
      () => Array.from({ length: Math.floor(random() * 4) }, () => randomValue(depth + 1)),
      () => Object.fromEntries(Array.from({ length: Math.floor(random() * 5) }, () => [pick([randomString(), 'registrationId', 'attestation', 'type', 'query', 'rights', 'deviceId', 'tags', '__proto__']), randomValue(depth + 1)])),
    );
  }
  return pick(kinds)();
}

/** A valid body per operation to mutate, so the fuzz gets past the first check and into the deeper ones. */
const seeds: Record<string, Json> = {
  IndividualEnrollment_CreateOrUpdate: { registrationId: 'fuzz-1', attestation: { type: 'symmetricKey' }, initialTwin: { tags: { a: 1 } } },
  EnrollmentGroup_CreateOrUpdate: { enrollmentGroupId: 'fuzz-1', attestation: { type: 'symmetricKey' } },
  IndividualEnrollment_RunBulkOperation: { mode: 'create', enrollments: [{ registrationId: 'fuzz-2', attestation: { type: 'symmetricKey' } }] },
  DataRequest_Create: { type: 'export', subject: { registrationId: 'fuzz-1' } },
  HubDevices_CreateOrUpdateIdentity: { deviceId: 'fuzz-1' },
  HubTwin_UpdateDeviceTwin: { tags: { a: 1 }, properties: { desired: { b: 2 } } },
};

function mutate(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return chance(0.5) ? randomValue() : value;
  const copy: Json = Array.isArray(value) ? [...value] : { ...(value as Json) };
  const keys = Object.keys(copy);
  if (keys.length > 0 && chance(0.7)) {
    const key = pick(keys);
    copy[key] = chance(0.5) ? mutate(copy[key]) : randomValue();
  } else {
    copy[randomString()] = randomValue();
  }
  return copy;
}

function randomBody(operation: Operation): { body?: unknown; rawBody?: string; contentType?: string } {
  return pick<() => { body?: unknown; rawBody?: string; contentType?: string }>([
    () => ({ body: mutate(seeds[operation.operationId] ?? {}) }),
    () => ({ body: randomValue() }),
    () => ({ rawBody: '{"a":' + '['.repeat(Math.floor(random() * 5000)) }),
    () => ({ rawBody: Buffer.from(Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256))).toString('latin1') }),
    () => ({ rawBody: JSON.stringify(randomValue()), contentType: pick(['text/plain', 'application/xml', 'application/json; charset=utf-16', 'multipart/form-data', '']) }),
    () => ({}),
  ])();
}

function authorization(operation: Operation): string | undefined {
  const se = Math.floor(Date.now() / 1000) + 3600;
  const isHub = operation.operationId.startsWith('Hub');
  const valid = isHub
    ? createSasToken({ resource: 'localhost', keyBase64: hubKey, keyName: 'iothubowner', expirySeconds: se })
    : createSasToken({ resource: 'localhost', keyBase64: server.ownerKey, keyName: 'provisioningserviceowner', expirySeconds: se });
  return pick<() => string | undefined>([
    () => valid,
    () => valid,
    () => valid,
    () => undefined,
    () => `SharedAccessSignature ${randomString()}`,
    () => `SharedAccessSignature sr=${encode(randomString())}&sig=${encode(randomString())}&se=${se}&skn=${randomString()}`,
    () => randomString(),
  ])();
}

function fill(template: string): string {
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    if (name === 'idScope' && chance(0.7)) return server.info.idScope;
    const value = chance(0.3) ? `fuzz-${Math.floor(random() * 5)}` : randomString();
    // Never the policies this run authenticates with (a fuzzed update could lock the fuzz out).
    if (/provisioningserviceowner|iothubowner/i.test(value)) return 'fuzz-x';
    return chance(0.8) ? encode(value) : value.replace(/[/?#]/g, '_');
  });
}

before(async () => {
  // Every device-route request here comes from one address with a wrong credential; counting those refusals is
  // test/resilience/stranger-stall.test.ts's subject, not this one's.
  server = await startServer({ refusedAttemptsPerSecondPerSource: 0 });
  hubKey = /SharedAccessKey=([^;]+)$/.exec(server.info.builtInHubConnectionString)?.[1] ?? '';
  const document = (await call('GET', '/openapi.json')).body as { paths: Record<string, Record<string, { operationId: string; requestBody?: unknown }>> };
  for (const [template, entries] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(entries)) {
      operations.push({ method: method.toUpperCase(), template, operationId: operation.operationId, hasBody: operation.requestBody !== undefined });
    }
  }
});

after(async () => {
  await server.close();
});

test(`fuzz: ${HTTP_REQUESTS} seeded requests over every route of /openapi.json — no 5xx, no hang`, async () => {
  assert.ok(operations.length >= 50, `the document lists the routes (${operations.length})`);
  console.log(`# fuzz seed ${SEED} (repeat with PROVISIOND_RESILIENCE_SEED=${SEED}), ${operations.length} operations`);
  // A fifth more than the target: requests the client itself refuses to send (an invalid header) do not count.
  const plans = Array.from({ length: Math.ceil(HTTP_REQUESTS * 1.2) }, (_, i) => {
    const operation = operations[i % operations.length] as Operation;
    const auth = authorization(operation);
    const query = pick(['', '?api-version=2021-10-01', '?api-version=2019-03-31', '?api-version=2021-04-12', `?api-version=${encode(randomString())}`, '?api-version=2021-10-01&api-version=2019-03-31', `?${encode(randomString())}=1`]);
    return { operation, path: `${fill(operation.template)}${query}`, auth, ...(operation.hasBody || chance(0.1) ? randomBody(operation) : {}) };
  });
  const failures: string[] = [];
  const statuses = new Map<number, number>();
  await inBatches(plans, 8, async (plan) => {
    const headers: Record<string, string> = {};
    if (plan.auth !== undefined) headers.authorization = plan.auth;
    if (plan.contentType !== undefined) headers['content-type'] = plan.contentType;
    else if (plan.rawBody !== undefined) headers['content-type'] = 'application/json';
    if (chance(0.05)) headers['if-match'] = pick(['*', '"x"', randomString().replace(/[^\x20-\x7e]/g, '')]);
    const what = `${plan.operation.method} ${plan.path.slice(0, 200)}`;
    try {
      const response = await Promise.race([
        call(plan.operation.method, plan.path, { headers, ...(plan.body === undefined ? {} : { body: plan.body }), ...(plan.rawBody === undefined ? {} : { rawBody: plan.rawBody }) }),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 30 s')), 30_000).unref()),
      ]);
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      if (response.status >= 500) failures.push(`${what} → ${response.status} ${response.text.slice(0, 200)}`);
    } catch (error) {
      // A request the client itself refuses to send (an invalid header or URL) is not the server's answer.
      if (error instanceof TypeError && !/fetch failed/.test(error.message)) return;
      failures.push(`${what} → ${(error as Error).message}`);
    }
  });
  const answered = [...statuses.values()].reduce((sum, count) => sum + count, 0);
  console.log(`# fuzz: ${answered} answered requests, statuses ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}`);
  assert.ok(answered >= HTTP_REQUESTS, `${answered} requests answered`);
  assert.deepEqual(failures.slice(0, 20), [], `${failures.length} failures`);
  assert.equal((await call('GET', '/healthz')).status, 200);
});

test(`raw MQTT and AMQP garbage: ${RAW_CONNECTIONS} connections end only themselves; devices still register`, async () => {
  const prefixes = [
    Buffer.alloc(0),
    Buffer.from([0x10]), // MQTT CONNECT, then a random remaining length and body
    Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]),
    Buffer.from([0x30, 0x05]), // PUBLISH before CONNECT
    Buffer.from('AMQP\x03\x01\x00\x00', 'latin1'), // SASL header
    Buffer.from('AMQP\x00\x01\x00\x00', 'latin1'),
    Buffer.from('GET / HTTP/1.1\r\n\r\n'),
  ];
  const plans = Array.from({ length: RAW_CONNECTIONS }, () => ({
    port: chance(0.5) ? 8883 : 5671,
    bytes: Buffer.concat([pick(prefixes), Buffer.from(Array.from({ length: Math.floor(random() * 600) }, () => Math.floor(random() * 256)))]),
  }));
  await inBatches(plans, 10, async (plan) => {
    await new Promise<void>((resolve) => {
      const socket = tlsConnect({ host: '127.0.0.1', servername: 'localhost', port: plan.port, ca: readCa() }, () => {
        socket.write(plan.bytes);
        // Either the server closes it, or it waits for more: both are fine; it must not take the server down.
        setTimeout(() => socket.destroy(), 200);
      });
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
    });
  });
  assert.equal((await call('GET', '/healthz')).status, 200);
  const enrollment = await call('PUT', '/enrollments/fuzz-survivor?api-version=2021-10-01', {
    headers: { authorization: server.token() },
    body: { registrationId: 'fuzz-survivor', attestation: { type: 'symmetricKey' } },
  });
  assert.equal(enrollment.status, 200, enrollment.text);
  const key = (enrollment.body as Json).attestation.symmetricKey.primaryKey as string;
  assert.equal((await rawRegister(server.info.idScope, 'fuzz-survivor', key)).status, 'assigned');
});
