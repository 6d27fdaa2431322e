import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { createSasToken } from '../src/domain/sas.js';
import { CA_DIR, call, readCa } from './harness.js';
import { deviceToken, type Json } from './devices.js';

/**
 * Stopping the server as an operator does: SIGTERM to `npm start` (what a process manager or Ctrl-C in a container
 * sends), and a stop with work in flight. The server runs as a real process.
 */
const PORTS = [443, 8883, 5671];
const dirs: string[] = [];
const children: ChildProcess[] = [];

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'provisiond-stop-'));
  dirs.push(dir);
  // The test CA, so the harness's HTTPS client (NODE_EXTRA_CA_CERTS) trusts the server certificate made from it.
  mkdirSync(join(dir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dir, 'tls', 'ca.key'));
  return dir;
}

const serveFlags = (dir: string) => ['--data-dir', dir, '--listen-host', '127.0.0.1', '--log-level', 'warn'];

/** Resolves with the banner once the server prints it; the process keeps running. */
function started(child: ChildProcess): Promise<string> {
  children.push(child);
  let output = '';
  return new Promise((resolve, reject) => {
    // The banner is on stderr; stdout carries the JSON log.
    const read = (chunk: Buffer) => {
      output += chunk.toString();
      if (/portal:.*\n/.test(output)) resolve(output);
    };
    child.stdout?.on('data', read);
    child.stderr?.on('data', read);
    child.once('exit', (code) => reject(new Error(`provisiond exited (${code}) before it was up: ${output}`)));
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
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
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  webhook.closeAllConnections();
  await new Promise((resolve) => webhook.close(resolve));
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

test('SIGTERM to `npm start` stops the server: npm exits and ports 443, 8883 and 5671 are free', async () => {
  assert.deepEqual(await busyPorts(0), [], 'the ports are free before the test');
  // --ignore-scripts skips only prestart (the portal and dist builds, done by npm test and npm install already).
  const npm = spawn('npm', ['start', '--ignore-scripts', '--', ...serveFlags(dataDir())], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PROVISIOND_SHUTDOWN_GRACE_MS: '3000' },
  });
  await started(npm);
  assert.deepEqual(await busyPorts(0), PORTS, 'the server listens on every port');
  npm.kill('SIGTERM');
  const stoppedAt = Date.now();
  await exited(npm);
  assert.deepEqual(await busyPorts(10_000), [], 'no process keeps the ports after npm exits');
  assert.ok(Date.now() - stoppedAt < 10_000);
});

test('a stop is graceful and bounded: a running registration finishes, device connections close, a stuck client is cut', async () => {
  const grace = 4000;
  const dir = dataDir();
  const server = spawn(process.execPath, ['bin/provisiond.js', 'serve', ...serveFlags(dir)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PROVISIOND_SHUTDOWN_GRACE_MS: String(grace) },
  });
  const banner = await started(server);
  const connectionString = /service connection string:\s+(\S+)/.exec(banner)?.[1] ?? '';
  const idScope = /ID scope:\s+(\S+)/.exec(banner)?.[1] ?? '';
  const key = /SharedAccessKey=([^;]+)/.exec(connectionString)?.[1] ?? '';
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
  server.kill('SIGTERM');

  const registered = await registering;
  assert.equal(registered.status, 202, 'the registration running at the stop is answered');
  assert.equal((registered.body as Json).status, 'assigning');
  // At once, not after the grace period the HTTPS requests get.
  assert.ok((await deviceClosed) - stoppedAt < grace - 1000, 'device connections close at once');
  await stuckClosed;
  assert.equal(await exited(server), 0);
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
