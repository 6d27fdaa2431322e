import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { createSasToken } from '../src/domain/sas.js';
import { call, readCa } from './harness.js';
import { deviceToken, type Json } from './devices.js';
import { dataDirWithTestCa, FROM_DIST, serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * Stopping the server as an operator does: SIGTERM to `npm start` (what a process manager or Ctrl-C in a container
 * sends), and a stop with work in flight. The server runs as a real process.
 */
const PORTS = [443, 8883, 5671];
const dirs: string[] = [];
const served: ServedProvisiond[] = [];

function dataDir(): string {
  const dir = dataDirWithTestCa('provisiond-stop-');
  dirs.push(dir);
  return dir;
}

const serveFlags = (dir: string) => ['--data-dir', dir, '--listen-host', '127.0.0.1', '--log-level', 'warn'];

/** `provisiond serve` through `command`, once its banner is out; the process keeps running. */
async function serve(command: readonly string[], dir: string, grace: number): Promise<ServedProvisiond> {
  const server = await serveProvisiond({ command, args: serveFlags(dir), env: { PROVISIOND_SHUTDOWN_GRACE_MS: String(grace) } });
  served.push(server);
  return server;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createNetServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

async function busyPorts(waitMs: number): Promise<number[]> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const busy: number[] = [];
    for (const port of PORTS) if (!(await portFree(port))) busy.push(port);
    if (busy.length === 0 || Date.now() > deadline) return busy;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

let webhook: Server;
let webhookUrl = '';
before(async () => {
  // A custom-allocation webhook that takes 1.5 s: a registration that is still running when the stop comes.
  webhook = createHttpServer((request, response) => {
    request.resume();
    request.on('end', () =>
      setTimeout(() => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ iotHubHostName: 'localhost' })), 1500),
    );
  });
  await new Promise<void>((resolve) => webhook.listen(0, '127.0.0.1', resolve));
  webhookUrl = `http://127.0.0.1:${(webhook.address() as { port: number }).port}/allocate`;
});

after(async () => {
  for (const server of served) await server.stop('SIGKILL');
  webhook.closeAllConnections();
  await new Promise((resolve) => webhook.close(resolve));
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

test('SIGTERM to `npm start` stops the server: npm exits and ports 443, 8883 and 5671 are free', async () => {
  assert.deepEqual(await busyPorts(0), [], 'the ports are free before the test');
  // --ignore-scripts skips only prestart (the portal and dist builds, done by npm test and npm install already).
  const npm = await serve(['npm', 'start', '--ignore-scripts', '--'], dataDir(), 3000);
  assert.deepEqual(await busyPorts(0), PORTS, 'the server listens on every port');
  const stoppedAt = Date.now();
  await npm.stop('SIGTERM');
  assert.deepEqual(await busyPorts(10_000), [], 'no process keeps the ports after npm exits');
  assert.ok(Date.now() - stoppedAt < 10_000);
});

test('a stop is graceful and bounded: a running registration finishes, device connections close, a stuck client is cut', async () => {
  const grace = 4000;
  const dir = dataDir();
  const server = await serve(FROM_DIST, dir, grace);
  const { idScope, ownerKey: key } = server;
  const authorization = createSasToken({
    resource: 'localhost',
    keyBase64: key,
    keyName: 'provisioningserviceowner',
    expirySeconds: Math.floor(Date.now() / 1000) + 3600,
  });
  const enrollment = await call('PUT', '/enrollments/slow-1?api-version=2021-10-01', {
    headers: { authorization },
    body: { registrationId: 'slow-1', attestation: { type: 'symmetricKey' }, allocationPolicy: 'custom', customAllocationDefinition: { webhookUrl, apiVersion: '2021-10-01' } },
  });
  assert.equal(enrollment.status, 200);
  const deviceKey = (enrollment.body as Json).attestation.symmetricKey.primaryKey as string;

  // An MQTT device connection, idle; and a client that sent half a request body and went quiet.
  const device = tlsConnect({ host: '127.0.0.1', port: 8883, servername: 'localhost', ca: readCa() });
  await new Promise<void>((resolve, reject) => device.once('secureConnect', resolve).once('error', reject));
  const deviceClosed = new Promise<number>((resolve) => device.once('close', () => resolve(Date.now())));
  const stuck = tlsConnect({ host: '127.0.0.1', port: 443, servername: 'localhost', ca: readCa() });
  await new Promise<void>((resolve, reject) => stuck.once('secureConnect', resolve).once('error', reject));
  // Authenticated, so the server waits for the body that never comes.
  stuck.write(
    `PUT /enrollments/stuck-1?api-version=2021-10-01 HTTP/1.1\r\nhost: localhost\r\nauthorization: ${authorization}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{`,
  );
  stuck.on('error', () => undefined);
  // Read (and drop) what arrives, so the end of the connection is seen.
  stuck.resume();
  device.resume();
  const stuckClosed = new Promise<void>((resolve) => stuck.once('close', () => resolve()));

  const registering = call('PUT', `/${idScope}/registrations/slow-1/register?api-version=2019-03-31`, {
    headers: { authorization: deviceToken(idScope, 'slow-1', deviceKey) },
    body: { registrationId: 'slow-1' },
  });
  await new Promise((resolve) => setTimeout(resolve, 500));
  const stoppedAt = Date.now();
  const stopped = server.stop('SIGTERM');

  const registered = await registering;
  assert.equal(registered.status, 202, 'the registration running at the stop is answered');
  assert.equal((registered.body as Json).status, 'assigning');
  // At once, not after the grace period the HTTPS requests get.
  assert.ok((await deviceClosed) - stoppedAt < grace - 1000, 'device connections close at once');
  await stuckClosed;
  assert.equal(await stopped, 0);
  const took = Date.now() - stoppedAt;
  assert.ok(took >= grace - 500 && took < grace + 4000, `stopped in ${took} ms with a stuck client and a grace of ${grace} ms`);
  assert.deepEqual(await busyPorts(0), []);
  // …and the registration it answered was finished and stored before the process ended.
  const db = new Database(join(dir, 'provisiond.db'), { readonly: true });
  try {
    assert.deepEqual(db.prepare("SELECT status FROM registrations WHERE registration_id_key = 'slow-1'").all(), [{ status: 'assigned' }]);
  } finally {
    db.close();
  }
});
