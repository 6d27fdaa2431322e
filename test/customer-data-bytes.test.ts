import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import deviceSdk from 'azure-iot-provisioning-device';
import httpTransport from 'azure-iot-provisioning-device-http';
import x509Security from 'azure-iot-security-x509';
import { createSasToken } from '../src/domain/sas.js';
import { createSelfSignedDeviceCertificate } from '../src/tls/x509-issuer.js';
import { call } from './harness.js';
import { deriveDeviceKey, rawRegister, type Json } from './devices.js';
import { dataDirWithTestCa, serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * Erasure down to the bytes: after an erase, a raw scan of every file in the data directory (database, WAL, shared
 * memory, everything) and of everything the server wrote to stdout and stderr finds no trace of the subject — with the
 * server still running. Done for an individual device (symmetric key and X.509), a group device and a whole group,
 * for every kind of identifier: registration ID, device ID, group ID, keys in base64, twin tag values, thumbprints.
 */
const dataDir = dataDirWithTestCa('provisiond-bytes-');
let served: ServedProvisiond | undefined;
let idScope = '';
let ownerKey = '';

before(async () => {
  served = await serveProvisiond({
    args: ['--data-dir', dataDir, '--https-port', '443', '--listen-host', '127.0.0.1', '--log-level', 'info', '--no-mqtt', '--no-amqp'],
    env: { PROVISIOND_DATA_REQUEST_WAIT_MS: '0' },
  });
  // Read from the store, not the banner: what the banner prints is not this test's business.
  const db = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
  idScope = (JSON.parse((db.prepare('SELECT doc FROM instances').get() as { doc: string }).doc) as { idScope: string }).idScope;
  const policies = (db.prepare('SELECT doc FROM access_policies').all() as { doc: string }[]).map((row) => JSON.parse(row.doc) as { keyName: string; primaryKey: string; rights: string[] });
  ownerKey = policies.find((policy) => policy.keyName === 'provisioningserviceowner')?.primaryKey ?? '';
  db.close();
});

after(async () => {
  await served?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json; text: string }> {
  const authorization = createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const response = await call(method, `${path}?api-version=2021-10-01`, { headers: { authorization }, ...(body === undefined ? {} : { body }) });
  return { status: response.status, body: response.body as Json, text: response.text };
}

async function erase(requestId: string, subject: Json): Promise<void> {
  assert.equal((await api('PUT', `/dataRequests/${requestId}`, { type: 'erase', subject })).status, 200);
  for (let attempt = 0; attempt < 1200; attempt += 1) {
    const current = await api('GET', `/dataRequests/${requestId}`);
    if (current.body.status !== 'running') {
      assert.equal(current.body.status, 'completed', current.text);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${requestId} did not finish`);
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

function occurrences(haystack: Buffer, needle: string): number {
  const bytes = Buffer.from(needle, 'utf8');
  let count = 0;
  for (let at = haystack.indexOf(bytes); at >= 0; at = haystack.indexOf(bytes, at + 1)) count += 1;
  return count;
}

/** Where each identifier still occurs: every file of the data directory, and the server's stdout + stderr. */
function scan(identifiers: Record<string, string>): Record<string, string[]> {
  const sources: Array<[string, Buffer]> = [...filesUnder(dataDir).map((file): [string, Buffer] => [file.slice(dataDir.length + 1), readFileSync(file)]), ['server output', served?.output() ?? Buffer.alloc(0)]];
  const found: Record<string, string[]> = {};
  for (const [kind, value] of Object.entries(identifiers)) {
    const places = sources.flatMap(([name, bytes]) => {
      const count = occurrences(bytes, value) + (value.toLowerCase() === value ? 0 : occurrences(bytes, value.toLowerCase()));
      return count > 0 ? [`${name}: ${count}`] : [];
    });
    if (places.length > 0) found[kind] = places;
  }
  return found;
}

function x509Register(registrationId: string, certPem: string, keyPem: string): Promise<Json> {
  const client = deviceSdk.ProvisioningDeviceClient.create('localhost', idScope, new httpTransport.Http(), new x509Security.X509Security(registrationId, { cert: certPem, key: keyPem }) as never);
  return new Promise((resolve, reject) => {
    client.register((error?: Error, result?: unknown) => (error ? reject(error) : resolve(result as Json)));
  });
}

test('after each erase no byte of the subject is left in the data directory or the server output, while the server runs', async () => {
  // An individual device with a symmetric key, a device ID of its own and a twin tag.
  const individual = await api('PUT', '/enrollments/scanind-1', {
    registrationId: 'scanind-1',
    deviceId: 'scanind-dev',
    attestation: { type: 'symmetricKey' },
    initialTwin: { tags: { site: 'scantagind' } },
  });
  assert.equal(individual.status, 200, individual.text);
  const individualKeys = individual.body.attestation.symmetricKey as { primaryKey: string; secondaryKey: string };
  assert.equal((await rawRegister(idScope, 'scanind-1', individualKeys.primaryKey)).status, 'assigned');

  // An individual X.509 device (its certificate's thumbprints are on the enrollment and on the hub identity).
  const certificate = await createSelfSignedDeviceCertificate({ commonName: 'scanx-1' });
  const x509 = new X509Certificate(certificate.certPem);
  const enrolledX509 = await api('PUT', '/enrollments/scanx-1', {
    registrationId: 'scanx-1',
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: certificate.certPem } } } },
  });
  assert.equal(enrolledX509.status, 200, enrolledX509.text);
  assert.equal((await x509Register('scanx-1', certificate.certPem, certificate.keyPem)).deviceId, 'scanx-1');

  // A group with two devices and a twin tag.
  const group = await api('PUT', '/enrollmentGroups/scangrp', { enrollmentGroupId: 'scangrp', attestation: { type: 'symmetricKey' }, initialTwin: { tags: { zone: 'scantaggrp' } } });
  assert.equal(group.status, 200, group.text);
  const groupKeys = group.body.attestation.symmetricKey as { primaryKey: string; secondaryKey: string };
  for (const id of ['scangdev-a', 'scangdev-b']) assert.equal((await rawRegister(idScope, id, deriveDeviceKey(groupKeys.primaryKey, id))).status, 'assigned');
  // Some reads and an export, so the log and the data requests name the subjects too.
  assert.equal((await api('GET', '/registrations/scanind-1')).status, 200);
  assert.equal((await api('PUT', '/dataRequests/scan-export', { type: 'export', subject: { registrationId: 'scanind-1' } })).status, 200);

  const subjects: Array<{ erase: Json; identifiers: Record<string, string> }> = [
    {
      erase: { registrationId: 'scanind-1' },
      identifiers: {
        registrationId: 'scanind-1',
        deviceId: 'scanind-dev',
        primaryKey: individualKeys.primaryKey,
        secondaryKey: individualKeys.secondaryKey,
        twinTag: 'scantagind',
      },
    },
    {
      erase: { registrationId: 'scanx-1' },
      identifiers: {
        registrationId: 'scanx-1',
        sha1Thumbprint: x509.fingerprint.replaceAll(':', ''),
        sha256Thumbprint: x509.fingerprint256.replaceAll(':', ''),
      },
    },
    {
      erase: { deviceId: 'scangdev-a' },
      identifiers: { deviceId: 'scangdev-a', derivedKey: deriveDeviceKey(groupKeys.primaryKey, 'scangdev-a'), derivedSecondaryKey: deriveDeviceKey(groupKeys.secondaryKey, 'scangdev-a') },
    },
    {
      erase: { enrollmentGroupId: 'scangrp' },
      identifiers: {
        groupId: 'scangrp',
        memberDeviceId: 'scangdev-b',
        groupPrimaryKey: groupKeys.primaryKey,
        groupSecondaryKey: groupKeys.secondaryKey,
        memberKey: deriveDeviceKey(groupKeys.primaryKey, 'scangdev-b'),
        twinTag: 'scantaggrp',
      },
    },
  ];
  for (const [index, subject] of subjects.entries()) {
    // The scan sees the subject before its erase (so finding nothing afterwards means something).
    const before = scan({ id: Object.values(subject.identifiers)[0] as string });
    assert.ok(before.id !== undefined, `${JSON.stringify(subject.erase)} is on disk before its erase`);
    await erase(`scan-erase-${index}`, subject.erase);
    assert.deepEqual(scan(subject.identifiers), {}, `left after erasing ${JSON.stringify(subject.erase)}`);
  }
  assert.equal(served?.child.exitCode, null, 'the server ran throughout');
});
