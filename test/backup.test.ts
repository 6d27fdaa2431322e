import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config/config.js';
import { createSasToken } from '../src/domain/sas.js';
import { call, startServer, type TestServer } from './harness.js';
import { deriveDeviceKey, inBatches, rawRegister, sdkRegister, type Json } from './devices.js';

/**
 * `provisiond backup` run as a real command while devices register against the server, then `provisiond restore`
 * into an empty directory: the restored server has the same ID scope, keys, certificate and data, and the restore
 * warns about the erase the backup predates.
 */
const scratch: string[] = [];
after(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function provisiond(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('backup under registration load, restore into an empty directory', () => {
  const work = mkdtempSync(join(tmpdir(), 'provisiond-backup-'));
  scratch.push(work);
  const archive = join(work, 'backup.tar.gz');
  const restored = join(work, 'restored');
  let server: TestServer | undefined;
  let groupKey = '';
  let idScope = '';
  let connectionString = '';
  let fingerprint = '';
  let signingKey: unknown;
  let groupBefore: unknown;
  const assignedBeforeBackup: string[] = [];
  const assignedAfterBackup: string[] = [];

  after(async () => {
    await server?.close();
  });

  test('the backup is taken while devices register, and holds the database and every key file', async () => {
    server = await startServer({ mqttEnabled: false, amqpEnabled: false });
    const owner = { authorization: server.token() };
    idScope = server.info.idScope;
    connectionString = server.connectionString;
    const group = await call('PUT', '/enrollmentGroups/backup-group?api-version=2021-10-01', {
      headers: owner,
      body: { enrollmentGroupId: 'backup-group', attestation: { type: 'symmetricKey' } },
    });
    groupKey = (group.body as Json).attestation.symmetricKey.primaryKey as string;
    signingKey = (await call('GET', '/receiptSigningKey?api-version=2021-10-01', { headers: owner })).body;
    groupBefore = (await call('GET', '/enrollmentGroups/backup-group?api-version=2021-10-01', { headers: owner })).body;
    const register = async (registrationId: string, into: string[]) => {
      const result = await rawRegister(idScope, registrationId, deriveDeviceKey(groupKey, registrationId));
      assert.equal(result.status, 'assigned', JSON.stringify(result));
      into.push(registrationId);
    };
    await inBatches(Array.from({ length: 20 }, (_, i) => `before-${i}`), 4, (id) => register(id, assignedBeforeBackup));

    // Registrations keep coming while the backup runs; it must neither stop them nor be torn by them.
    let loading = true;
    let next = 0;
    const load = Promise.all(
      Array.from({ length: 3 }, async () => {
        while (loading) await register(`during-${(next += 1)}`, assignedAfterBackup);
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const backup = await provisiond(['backup', '--data-dir', server.dataDir, '--out', archive, '--json']);
    loading = false;
    await load;
    assert.equal(backup.code, 0, backup.stderr);
    assert.ok(assignedAfterBackup.length > 0, 'no registration ran during the backup');
    const manifest = JSON.parse(backup.stdout) as Json;
    assert.equal(manifest.format, 'provisiond-backup');
    assert.deepEqual(manifest.instances, [{ name: server.info.instance, idScope }]);
    assert.deepEqual(
      (manifest.files as Json[]).map((file) => file.path),
      ['tls/ca.key', 'tls/ca.pem', 'tls/server.issued', 'tls/server.key', 'tls/server.pem'],
    );
    assert.equal(statSync(archive).mode & 0o777, 0o600);
    fingerprint = new X509Certificate(readFileSync(join(server.dataDir, 'tls', 'server.pem'))).fingerprint256;

    // After the backup, one device is erased: restoring the backup would bring it back.
    const erased = await call('PUT', '/dataRequests/erase-before-restore?api-version=2021-10-01', {
      headers: owner,
      body: { type: 'erase', subject: { registrationId: 'before-3' } },
    });
    assert.equal((erased.body as Json).status, 'completed');
  });

  test('restore refuses a directory that is not empty, and an archive that is not a backup', async () => {
    const busy = join(work, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'something'), 'x');
    const refused = await provisiond(['restore', archive, '--data-dir', busy]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /is not empty: restore only into an empty or new directory/);
    const junk = join(work, 'junk.tar.gz');
    writeFileSync(junk, 'not an archive');
    const bad = await provisiond(['restore', junk, '--data-dir', join(work, 'never')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /cannot read .*junk\.tar\.gz as a provisiond backup/);
  });

  test('restore lists the erase the backup predates, with the command that runs it again', async () => {
    assert.ok(server !== undefined);
    const run = await provisiond(['restore', archive, '--data-dir', restored, '--compare-data-dir', server.dataDir]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, new RegExp(`instances: +.*\\(${idScope}\\)`));
    assert.match(run.stderr, /older than 1 completed erase\(s\)/);
    assert.match(run.stderr, /erase-before-restore +completed .* ID scope .* registrationId hash [0-9a-f]{16}… +→ +provisiond data erase --registration-id before-3 --yes/);
    assert.equal(statSync(join(restored, 'tls', 'ca.key')).mode & 0o777, 0o600);
  });

  test('the restored server answers with the same ID scope, keys, certificate and data', async () => {
    assert.ok(server !== undefined);
    await server.close();
    server = undefined;
    const config = loadConfig({ flags: { dataDir: restored, httpsPort: 443, listenHost: '127.0.0.1', logLevel: 'silent', mqttEnabled: false, amqpEnabled: false } });
    const app = await createApp({ config });
    await app.listen();
    try {
      const info = await app.info();
      assert.equal(info.idScope, idScope);
      assert.equal(info.serviceConnectionString, connectionString);
      assert.equal(new X509Certificate(readFileSync(join(restored, 'tls', 'server.pem'))).fingerprint256, fingerprint);
      const ownerKey = /SharedAccessKey=([^;]+)/.exec(connectionString)?.[1] ?? '';
      const owner = {
        authorization: createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 }),
      };
      const group = await call('GET', '/enrollmentGroups/backup-group?api-version=2021-10-01', { headers: owner });
      assert.equal(group.status, 200, group.text);
      assert.deepEqual(group.body, groupBefore);
      // The group key is the one devices derive theirs from: a device from before registers again below.
      assert.deepEqual((await call('GET', '/receiptSigningKey?api-version=2021-10-01', { headers: owner })).body, signingKey);
      const records = await call('POST', '/registrations/backup-group/query?api-version=2021-10-01', { headers: { ...owner, 'x-ms-max-item-count': '1000' } });
      const ids = new Set((records.body as Json[]).map((record) => String(record.registrationId)));
      // Everything assigned before the backup started is there (the erased device too: the backup predates the erase).
      for (const id of assignedBeforeBackup) assert.ok(ids.has(id), `${id} is missing`);
      assert.ok(ids.size <= assignedBeforeBackup.length + assignedAfterBackup.length);
      for (const record of records.body as Json[]) assert.equal(record.status, 'assigned');
      // A device from before the backup registers again on the restored server with its same derived key.
      const again = await sdkRegister(idScope, 'before-7', deriveDeviceKey(groupKey, 'before-7'));
      assert.equal(again.status, 'assigned');
      assert.equal(again.deviceId, 'before-7');
    } finally {
      await app.close();
    }
  });
});
