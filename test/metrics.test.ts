import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { call, startServer, type TestServer } from './harness.js';
import { deviceToken, sdkRegister, type Json } from './devices.js';
import { parsePrometheusText, sampleValue, type MetricFamily } from './prometheus-text.js';

/**
 * /metrics scraped the way Prometheus does it, and parsed as the text exposition format: each metric the operations
 * guide documents is there, and moves when devices register, callers call and data requests run.
 */
const TOKEN = 'metrics-test-token-0123456789';

async function scrape(url: string, token: string | undefined = TOKEN): Promise<{ status: number; contentType: string | null; families: Map<string, MetricFamily> }> {
  const response = await fetch(url, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  const text = await response.text();
  return { status: response.status, contentType: response.headers.get('content-type'), families: response.status === 200 ? parsePrometheusText(text) : new Map() };
}

describe('metrics on the HTTPS port with a bearer token', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ metricsEnabled: true, metricsToken: TOKEN, pollsPerSecondPerDevice: 1 });
  });
  after(async () => {
    await server.close();
  });

  test('a scrape without the token is refused', async () => {
    const refused = await call('GET', '/metrics');
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('www-authenticate'), 'Bearer');
    assert.equal((refused.body as Json).errorCode, 401002);
    assert.equal((await scrape('https://localhost/metrics', 'wrong-token-wrong-token')).status, 401);
  });

  test('registrations, throttling, service API, hub writes, store, connections, data requests and the outbox are measured', async () => {
    const owner = { authorization: server.token() };
    const idScope = server.info.idScope;
    const created = await call('PUT', '/enrollments/metrics-1?api-version=2021-10-01', {
      headers: owner,
      body: { registrationId: 'metrics-1', attestation: { type: 'symmetricKey' } },
    });
    assert.equal(created.status, 200);
    const key = (created.body as Json).attestation.symmetricKey.primaryKey as string;
    // A device registers with the official SDK; another is refused (wrong key); a third polls too fast.
    assert.equal((await sdkRegister(idScope, 'metrics-1', key)).status, 'assigned');
    const refused = await call('PUT', `/${idScope}/registrations/metrics-1/register?api-version=2019-03-31`, {
      headers: { authorization: deviceToken(idScope, 'metrics-1', Buffer.alloc(32, 7).toString('base64')) },
      body: { registrationId: 'metrics-1' },
    });
    assert.equal(refused.status, 401);
    const authorization = deviceToken(idScope, 'metrics-1', key);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i += 1) {
      statuses.push((await call('POST', `/${idScope}/registrations/metrics-1?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId: 'metrics-1' } })).status);
    }
    assert.ok(statuses.includes(429), `statuses ${statuses.join(',')}`);
    const exported = await call('PUT', '/dataRequests/metrics-export?api-version=2021-10-01', { headers: owner, body: { type: 'export', subject: { registrationId: 'metrics-1' } } });
    assert.equal((exported.body as Json).status, 'completed');
    // A webhook nobody answers keeps lifecycle events in the outbox.
    await call('PATCH', '/instance?api-version=2021-10-01', { headers: owner, body: { eventWebhook: { url: 'https://127.0.0.1:9/hook', secret: 'a-secret-of-sixteen-chars' } } });
    await call('PUT', '/enrollments/metrics-2?api-version=2021-10-01', { headers: owner, body: { registrationId: 'metrics-2', attestation: { type: 'symmetricKey' } } });

    const { status, contentType, families } = await scrape('https://localhost/metrics');
    assert.equal(status, 200);
    assert.match(contentType ?? '', /^text\/plain; version=0\.0\.4/);
    const family = (name: string) => {
      const found = families.get(name);
      assert.ok(found !== undefined, `${name} is missing`);
      return found;
    };
    assert.equal(family('provisiond_registrations_total').type, 'counter');
    assert.equal(
      sampleValue(family('provisiond_registrations_total'), 'provisiond_registrations_total', { transport: 'http', attestation: 'symmetricKey', outcome: 'assigned', error_code: '' }),
      1,
    );
    assert.equal(
      sampleValue(family('provisiond_registrations_total'), 'provisiond_registrations_total', { transport: 'http', attestation: 'symmetricKey', outcome: 'refused', error_code: '401002' }),
      1,
    );
    assert.equal(family('provisiond_registration_duration_seconds').type, 'histogram');
    assert.equal(sampleValue(family('provisiond_registration_duration_seconds'), 'provisiond_registration_duration_seconds_count', { outcome: 'assigned' }), 1);
    assert.ok((sampleValue(family('provisiond_throttled_requests_total'), 'provisiond_throttled_requests_total', { transport: 'http', operation: 'statusLookup' }) ?? 0) >= 1);
    assert.equal(
      sampleValue(family('provisiond_service_api_requests_total'), 'provisiond_service_api_requests_total', { method: 'PUT', route: '/enrollments/:id', status: '200' }),
      2,
    );
    // Each of those two requests was timed, by route and method.
    assert.equal(family('provisiond_service_api_request_duration_seconds').type, 'histogram');
    const timed = (name: string, labels: Record<string, string> = {}) => sampleValue(family('provisiond_service_api_request_duration_seconds'), name, { method: 'PUT', route: '/enrollments/:id', ...labels });
    assert.equal(timed('provisiond_service_api_request_duration_seconds_count'), 2);
    assert.equal(timed('provisiond_service_api_request_duration_seconds_bucket', { le: '+Inf' }), 2);
    const seconds = timed('provisiond_service_api_request_duration_seconds_sum') ?? 0;
    assert.ok(seconds > 0 && seconds < 60, `a plausible duration in seconds (not milliseconds): ${seconds}`);
    // The built-in hub got the device identity and its twin.
    assert.equal(sampleValue(family('provisiond_hub_writes_total'), 'provisiond_hub_writes_total', { operation: 'putDevice', outcome: 'success' }), 1);
    assert.equal(sampleValue(family('provisiond_hub_write_duration_seconds'), 'provisiond_hub_write_duration_seconds_count', { operation: 'putDevice' }), 1);
    assert.ok((sampleValue(family('provisiond_store_query_duration_seconds'), 'provisiond_store_query_duration_seconds_count', { statement: 'select' }) ?? 0) > 5);
    assert.ok((sampleValue(family('provisiond_store_query_duration_seconds'), 'provisiond_store_query_duration_seconds_count', { statement: 'insert' }) ?? 0) > 0);
    // This scrape's own connection is open on the HTTPS listener; the device listeners are there (and idle).
    assert.ok((sampleValue(family('provisiond_open_connections'), 'provisiond_open_connections', { listener: 'https' }) ?? 0) >= 1);
    assert.equal(sampleValue(family('provisiond_open_connections'), 'provisiond_open_connections', { listener: 'mqtt' }), 0);
    assert.equal(sampleValue(family('provisiond_open_connections'), 'provisiond_open_connections', { listener: 'amqp' }), 0);
    assert.equal(sampleValue(family('provisiond_data_requests'), 'provisiond_data_requests', { kind: 'export', outcome: 'completed' }), 1);
    assert.ok((sampleValue(family('provisiond_event_outbox_depth'), 'provisiond_event_outbox_depth', {}) ?? 0) >= 1);
    assert.ok((sampleValue(family('provisiond_event_outbox_oldest_age_seconds'), 'provisiond_event_outbox_oldest_age_seconds', {}) ?? -1) >= 0);
    // Process metrics come with it.
    assert.ok(families.has('provisiond_process_resident_memory_bytes'));
    // docs/operations.md documents every metric of provisiond's own (prom-client's process metrics as one row).
    const guide = readFileSync(join(process.cwd(), 'docs', 'operations.md'), 'utf8');
    const own = [...families.keys()].filter((name) => !/^provisiond_(process|nodejs)_/.test(name));
    assert.ok(own.length >= 11);
    assert.deepEqual(own.filter((name) => !guide.includes(`| \`${name}\` |`)), [], 'undocumented in docs/operations.md');
    // No label anywhere carries a registration ID, a device ID or a key.
    for (const metric of families.values()) {
      for (const sample of metric.samples) assert.ok(!JSON.stringify(sample.labels).includes('metrics-1'), `${sample.name} labels an ID`);
    }
  });
});

describe('metrics switched off, or on a separate listener', () => {
  test('off by default: /metrics is a 404', async () => {
    const server = await startServer({ mqttEnabled: false, amqpEnabled: false });
    try {
      assert.equal((await call('GET', '/metrics')).status, 404);
    } finally {
      await server.close();
    }
  });

  test('metricsListen serves /metrics over plain HTTP on its own address, and not on the HTTPS port', async () => {
    const server = await startServer({ metricsEnabled: true, metricsListen: '127.0.0.1:9464', mqttEnabled: false, amqpEnabled: false });
    try {
      const { status, families } = await scrape('http://127.0.0.1:9464/metrics', undefined);
      assert.equal(status, 200);
      assert.equal(families.get('provisiond_registrations_total')?.type, 'counter');
      assert.equal((await call('GET', '/metrics')).status, 404);
      assert.equal((await fetch('http://127.0.0.1:9464/other')).status, 404);
    } finally {
      await server.close();
    }
  });
});
