import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, test } from 'node:test';
import { createSasToken } from '../../src/domain/sas.js';
import { apiPath, API_VERSION } from '../api-assertions.js';
import { call } from '../harness.js';
import { deriveDeviceKey, rawRegister, type Json } from '../devices.js';
import { dataDirWithTestCa, serveProvisiond, type ServedProvisiond } from '../provisiond-process.js';

/**
 * Secrets stay out of the wrong places (issue 13.5): no key, webhook secret or secret-bearing URL query in any read
 * answer of the service API (every GET route of /openapi.json and every query), nor anywhere in the whole log of a
 * real `provisiond serve` process at debug level; the owner connection string is printed on the start that creates it
 * and never again (`provisiond info` shows it on demand).
 */
const dataDir = dataDirWithTestCa('provisiond-secrets-');
let served: ServedProvisiond | undefined;
/** Everything both runs wrote, stdout and stderr. */
let log = '';

const ARGS = ['--data-dir', dataDir, '--https-port', '443', '--listen-host', '127.0.0.1', '--no-mqtt', '--no-amqp'];

/** Starts the server; resolves with all it wrote until its banner was complete. */
async function serve(): Promise<string> {
  served = await serveProvisiond({ args: [...ARGS, '--log-level', 'debug'] });
  return served.output().toString();
}

async function stop(): Promise<void> {
  const running = served;
  served = undefined;
  await running?.stop();
  log += running?.output().toString() ?? '';
}

after(async () => {
  await stop();
  rmSync(dataDir, { recursive: true, force: true });
});

test('no secret in any read answer or anywhere in the log; the owner key is printed only when created', async () => {
  const firstBanner = await serve();
  const connectionString = /service connection string:\s+(\S+)/.exec(firstBanner)?.[1] ?? '';
  const ownerKey = /SharedAccessKey=([^;\s]+)/.exec(connectionString)?.[1] ?? '';
  assert.match(ownerKey, /^[A-Za-z0-9+/]{40,}={0,2}$/, 'the first start prints the owner key');
  const idScope = /ID scope:\s+(\S+)/.exec(firstBanner)?.[1] ?? '';
  const token = (): string =>
    createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const api = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: Json; text: string }> => {
    const separator = path.includes('?') ? '&' : '?';
    const response = await call(method, `${path}${separator}api-version=${API_VERSION}`, { headers: { authorization: token() }, ...(body === undefined ? {} : { body }) });
    return { status: response.status, body: response.body as Json, text: response.text };
  };
  const ok = async (method: string, path: string, body?: unknown): Promise<Json> => {
    const response = await api(method, path, body);
    assert.ok(response.status >= 200 && response.status < 300, `${method} ${path}: ${response.status} ${response.text}`);
    return response.body;
  };

  // Everything that holds a secret, once each.
  const secrets = new Map<string, string>([['owner primary key', ownerKey]]);
  const ownerKeys = await ok('POST', '/accessPolicies/provisioningserviceowner/listKeys');
  secrets.set('owner secondary key', ownerKeys.secondaryKey as string);
  const reader = await ok('PUT', '/accessPolicies/sec-reader', { rights: 'EnrollmentRead' });
  secrets.set('policy primary key', reader.primaryKey as string).set('policy secondary key', reader.secondaryKey as string);
  const individual = await ok('PUT', '/enrollments/sec-dev', { registrationId: 'sec-dev', attestation: { type: 'symmetricKey' } });
  secrets.set('enrollment primary key', individual.attestation.symmetricKey.primaryKey as string);
  secrets.set('enrollment secondary key', individual.attestation.symmetricKey.secondaryKey as string);
  const group = await ok('PUT', '/enrollmentGroups/sec-group', { enrollmentGroupId: 'sec-group', attestation: { type: 'symmetricKey' } });
  const groupKey = group.attestation.symmetricKey.primaryKey as string;
  secrets.set('group primary key', groupKey).set('group secondary key', group.attestation.symmetricKey.secondaryKey as string);
  secrets.set('derived device key', deriveDeviceKey(groupKey, 'sec-group-dev'));
  await ok('PUT', '/enrollments/sec-custom', {
    registrationId: 'sec-custom',
    attestation: { type: 'symmetricKey' },
    allocationPolicy: 'custom',
    customAllocationDefinition: { webhookUrl: 'https://alloc.example.com/api?code=allocation-query-secret-1', apiVersion: '2021-10-01' },
  });
  secrets.set('custom allocation URL query', 'allocation-query-secret-1');
  await ok('PATCH', '/instance', { eventWebhook: { url: 'http://127.0.0.1:9/events?sig=event-query-secret-2', secret: 'event-signing-secret-3-long-enough' } });
  secrets.set('event webhook URL query', 'event-query-secret-2').set('event webhook secret', 'event-signing-secret-3-long-enough');
  const externalKey = Buffer.alloc(32, 9).toString('base64');
  await ok('PUT', '/linkedHubs/sec-hub.example.net', {
    connectionString: `HostName=sec-hub.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=${externalKey}`,
    applyAllocationPolicy: false,
  });
  secrets.set('external hub key', externalKey);
  const other = await ok('PUT', '/instances/sec-other', { serviceHostNames: ['sec-other.localhost'] });
  secrets.set('second instance owner key', other.ownerPolicy.primaryKey as string);

  // Devices register (the log records attempts, hub writes and outcomes), one with a wrong key.
  assert.equal((await rawRegister(idScope, 'sec-dev', secrets.get('enrollment primary key') ?? '')).status, 'assigned');
  assert.equal((await rawRegister(idScope, 'sec-group-dev', secrets.get('derived device key') ?? '')).status, 'assigned');
  assert.equal((await rawRegister(idScope, 'sec-dev', Buffer.alloc(32, 1).toString('base64'))).httpStatus, 401);
  await ok('PUT', '/dataRequests/sec-export', { type: 'export', subject: { registrationId: 'sec-dev' } });

  // Every read of the service API: each GET route of the app's own document, and each query.
  const document = (await call('GET', '/openapi.json')).body as { paths: Record<string, Record<string, { operationId: string }>> };
  const params: Record<string, Record<string, string>> = {
    '/enrollments/{id}': { id: 'sec-dev' },
    '/enrollmentGroups/{id}': { id: 'sec-group' },
    '/registrations/{id}': { id: 'sec-dev' },
    '/dataRequests/{id}': { id: 'sec-export' },
    '/dataRequests/{id}/bundle': { id: 'sec-export' },
    '/linkedHubs/{name}': { name: 'sec-hub.example.net' },
  };
  const queries: Record<string, unknown> = {
    IndividualEnrollment_Query: { query: 'SELECT *' },
    EnrollmentGroup_Query: { query: 'SELECT *' },
    DeviceRegistrationState_Query: { query: 'SELECT *' },
    DataRequest_Query: { query: 'SELECT *' },
    AuditEvent_Query: {},
  };
  const reads: string[] = [];
  for (const [template, operations] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const query = queries[operation.operationId];
      const isRead = (method === 'get' && !operation.operationId.startsWith('Hub') && !template.includes('{idScope}')) || query !== undefined;
      if (!isRead) continue;
      const path = apiPath(template, params[template] ?? { id: 'sec-dev', name: 'sec-dev' }, null);
      const response = await api(method.toUpperCase(), path, query);
      reads.push(`${method.toUpperCase()} ${template} ${response.status}`);
      for (const [what, secret] of secrets) assert.ok(!response.text.includes(secret), `${what} in ${method.toUpperCase()} ${template}: ${response.text.slice(0, 300)}`);
    }
  }
  assert.ok(reads.length >= 20, `every read route was tried: ${reads.join('; ')}`);
  // The instance views name the webhook with its query redacted.
  const instance = await ok('GET', '/instance');
  assert.equal(instance.eventWebhookUrl, 'http://127.0.0.1:9/events?sig=****');
  const listed = (await ok('GET', '/instances')) as unknown as Json[];
  assert.equal(listed.find((entry) => entry.name === 'default')?.eventWebhookUrl, 'http://127.0.0.1:9/events?sig=****');

  // A restart prints the connection details without the key; `info` shows it on demand.
  await stop();
  const secondBanner = await serve();
  assert.match(secondBanner, /service connection string:\s+HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=\*\*\*\*/);
  assert.ok(!secondBanner.includes(ownerKey), 'a restart does not print the owner key');
  await stop();
  const info = await new Promise<string>((resolve, reject) => {
    // `info` takes only the options that change what it prints (not --listen-host or --log-level; it logs nothing).
    const run = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'info', '--data-dir', dataDir, '--https-port', '443', '--no-mqtt', '--no-amqp'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let text = '';
    run.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    run.once('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`info exited ${code}`))));
  });
  assert.ok(info.includes(connectionString), 'provisiond info shows the owner connection string');

  // The whole log of both runs, at debug level: the only key in it is the one the first banner printed on purpose.
  const scanned = log.replace(connectionString, '(the first banner)');
  for (const [what, secret] of secrets) assert.ok(!scanned.includes(secret), `${what} in the log`);
  assert.ok(log.split('\n').length > 20, 'the log was collected');
});
