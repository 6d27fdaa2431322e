import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { createSasToken } from '../src/domain/sas.js';
import { createServerCertificate } from '../src/tls/x509-issuer.js';
import { CA_DIR, call } from './harness.js';
import { deriveDeviceKey, inBatches, rawRegister, type Json } from './devices.js';
import { dataDirWithTestCa, serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * An erase killed with SIGKILL halfway finishes when the server comes back, with nothing left behind and nothing
 * else touched. The server runs as a real `provisiond serve` process, so the kill is a real one.
 */
const dataDir = dataDirWithTestCa('provisiond-crash-');
let served: ServedProvisiond | undefined;

async function serve(): Promise<{ connectionString: string; idScope: string }> {
  served = await serveProvisiond({
    args: ['--data-dir', dataDir, '--https-port', '443', '--listen-host', '127.0.0.1', '--log-level', 'warn', '--no-mqtt', '--no-amqp'],
    env: { PROVISIOND_DATA_REQUEST_WAIT_MS: '0' },
    stdout: 'inherit',
  });
  return { connectionString: served.connectionString, idScope: served.idScope };
}

async function kill(signal: NodeJS.Signals): Promise<void> {
  const running = served;
  served = undefined;
  await running?.stop(signal);
}

after(async () => {
  await kill('SIGTERM');
  rmSync(dataDir, { recursive: true, force: true });
});

test('an erase killed halfway (SIGKILL) finishes after restart, with nothing left and nothing else touched', async () => {
  let { connectionString, idScope } = await serve();
  const key = /SharedAccessKey=([^;]+)/.exec(connectionString)?.[1] ?? '';
  const token = () =>
    createSasToken({ resource: 'localhost', keyBase64: key, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const api = async (method: string, path: string, body?: unknown) => {
    const response = await call(method, `${path}?api-version=2021-10-01`, { headers: { authorization: token() }, ...(body === undefined ? {} : { body }) });
    return { status: response.status, body: response.body as Json };
  };

  const group = await api('PUT', '/enrollmentGroups/crash-group', { enrollmentGroupId: 'crash-group', attestation: { type: 'symmetricKey' } });
  const groupKey = group.body.attestation.symmetricKey.primaryKey as string;
  const ids = Array.from({ length: 600 }, (_, i) => `crash-${String(i).padStart(3, '0')}`);
  await inBatches(ids, 25, async (id) => {
    assert.equal((await rawRegister(idScope, id, deriveDeviceKey(groupKey, id))).status, 'assigned');
  });
  // Data that must survive: a device of another enrollment.
  const bystander = await api('PUT', '/enrollments/crash-bystander', { registrationId: 'crash-bystander', attestation: { type: 'symmetricKey' } });
  await rawRegister(idScope, 'crash-bystander', bystander.body.attestation.symmetricKey.primaryKey as string);

  // A slow external hub (15 ms a call, none of the devices there): the erase must ask it about every device, which
  // holds the job open long enough to kill the server in the middle of it.
  const certificate = await createServerCertificate(
    { certPem: readFileSync(join(CA_DIR, 'ca.pem'), 'utf8'), keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') },
    ['127.0.0.1'],
    1,
  );
  const slowHub = createHttpsServer({ key: certificate.keyPem, cert: certificate.certPem }, (_request, response) => {
    setTimeout(() => response.writeHead(404, { 'content-type': 'application/json' }).end('{"Message":"ErrorCode:DeviceNotFound;no such device"}'), 15);
  });
  await new Promise<void>((resolve) => slowHub.listen(0, '127.0.0.1', resolve));
  after(() => {
    slowHub.closeAllConnections();
    slowHub.close();
  });
  const slowName = `127.0.0.1:${(slowHub.address() as { port: number }).port}`;
  const linked = await api('PUT', `/linkedHubs/${encodeURIComponent(slowName)}`, {
    connectionString: `HostName=${slowName};SharedAccessKeyName=iothubowner;SharedAccessKey=${Buffer.alloc(32, 3).toString('base64')}`,
    applyAllocationPolicy: false,
  });
  assert.equal(linked.status, 200);

  const created = await api('PUT', '/dataRequests/crash-erase', { type: 'erase', subject: { enrollmentGroupId: 'crash-group' } });
  assert.equal(created.status, 200);
  // Kill the server as soon as the erase has made some, but not all, of its progress.
  let progress: Json = created.body.progress;
  for (let i = 0; i < 2000 && !(progress.done > 0 && progress.done < progress.total); i += 1) {
    progress = (await api('GET', '/dataRequests/crash-erase')).body.progress;
  }
  assert.ok(progress.done > 0 && progress.done < progress.total, `caught the erase halfway (${JSON.stringify(progress)})`);
  await kill('SIGKILL');

  // What the crash left: the request still running, with its plan and part of its progress stored.
  const db = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
  const row = db.prepare("SELECT status, doc FROM data_requests WHERE request_id_key = 'crash-erase'").get() as { status: string; doc: string };
  db.close();
  assert.equal(row.status, 'running');
  const stored = JSON.parse(row.doc) as Json;
  assert.ok(stored.progress.done > 0 && stored.progress.done < stored.progress.total, `stored progress ${JSON.stringify(stored.progress)}`);

  ({ connectionString, idScope } = await serve());
  let request: Json = {};
  for (let i = 0; i < 600; i += 1) {
    request = (await api('GET', '/dataRequests/crash-erase')).body;
    if (request.status !== 'running') break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(request.status, 'completed', JSON.stringify(request));
  const receipt = await api('GET', '/dataRequests/crash-erase/receipt');
  const deleted = Object.fromEntries((receipt.body.receipt.deleted as Json[]).map((entry) => [entry.place, entry.count]));
  assert.equal(deleted['hub:localhost/devices'], 600);
  assert.equal(deleted[`hub:${slowName}/devices`], 0);
  assert.equal(deleted.registrations, 600);
  assert.equal(deleted.enrollmentGroups, 1);

  // Nothing of the group is left, anywhere; the bystander is untouched.
  const check = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
  const count = (sql: string): number => (check.prepare(sql).get() as { n: number }).n;
  assert.equal(count("SELECT count(*) AS n FROM hub_devices WHERE device_id_key LIKE 'crash-%' AND device_id_key <> 'crash-bystander'"), 0);
  assert.equal(count("SELECT count(*) AS n FROM registrations WHERE group_id_key = 'crash-group'"), 0);
  assert.equal(count("SELECT count(*) AS n FROM operations WHERE registration_id_key LIKE 'crash-%' AND registration_id_key <> 'crash-bystander'"), 0);
  assert.equal(count("SELECT count(*) AS n FROM enrollment_groups WHERE group_id_key = 'crash-group'"), 0);
  assert.equal(count("SELECT count(*) AS n FROM audit_events WHERE doc LIKE '%crash-0%' OR doc LIKE '%crash-group%'"), 0);
  assert.equal(count("SELECT count(*) AS n FROM hub_devices WHERE device_id_key = 'crash-bystander'"), 1);
  assert.equal(count("SELECT count(*) AS n FROM registrations WHERE registration_id_key = 'crash-bystander'"), 1);
  assert.equal(count("SELECT count(*) AS n FROM enrollments WHERE registration_id_key = 'crash-bystander'"), 1);
  check.close();
});
