import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { after, describe, test } from 'node:test';
import { checkReadiness, type ReadinessDeps } from '../src/health/readiness.js';
import type { Store } from '../src/store/store.js';
import { createServerCertificate } from '../src/tls/x509-issuer.js';
import { CA_DIR, call, startServer } from './harness.js';
import { serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * Running provisiond as an operator does: /healthz and /readyz, the logs a collector reads on stdout (the banner on
 * stderr), per-component levels, the pretty format, and a certificate renewed with a real SIGHUP.
 */
const scratch: string[] = [];
const children: ServedProvisiond[] = [];
after(async () => {
  for (const child of children) await child.stop('SIGKILL');
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function dataDirWithTestCa(owner?: { uid: number; gid: number }): string {
  const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-ops-'));
  scratch.push(dataDir);
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
  if (owner !== undefined) {
    for (const path of [dataDir, join(dataDir, 'tls'), ...readdirSync(join(dataDir, 'tls')).map((name) => join(dataDir, 'tls', name))]) chownSync(path, owner.uid, owner.gid);
  }
  return dataDir;
}

/** `provisiond serve` as a real process; resolves once the banner (stderr) is complete. */
async function serve(args: string[], options: { uid?: number; gid?: number } = {}): Promise<ServedProvisiond> {
  const served = await serveProvisiond({ args: ['--listen-host', '127.0.0.1', '--no-mqtt', '--no-amqp', ...args], ...options });
  children.push(served);
  return served;
}

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('liveness and readiness', () => {
  test('/healthz is a cheap liveness answer; /readyz names every part it checked', async () => {
    const server = await startServer();
    try {
      assert.deepEqual((await call('GET', '/healthz')).body, { status: 'ok' });
      const ready = await call('GET', '/readyz');
      assert.equal(ready.status, 200);
      const body = ready.body as { checks: { store: { latencyMs: number }; eventOutbox: { lastSweepSecondsAgo: number } } };
      assert.equal(typeof body.checks.store.latencyMs, 'number');
      // The outbox is swept once a second: a reading taken just before the next sweep rounds to 1.
      const { lastSweepSecondsAgo } = body.checks.eventOutbox;
      assert.ok(lastSweepSecondsAgo === 0 || lastSweepSecondsAgo === 1, `lastSweepSecondsAgo ${lastSweepSecondsAgo}`);
      assert.deepEqual(ready.body, {
        status: 'ready',
        failing: [],
        checks: {
          store: { status: 'ok', latencyMs: body.checks.store.latencyMs },
          migrations: { status: 'ok' },
          listeners: { status: 'ok', https: 'up', mqtt: 'up', amqp: 'up' },
          eventOutbox: { status: 'ok', depth: 0, oldestAgeSeconds: 0, lastSweepSecondsAgo },
        },
      });
    } finally {
      await server.close();
    }
  });

  test('a database file the server can no longer open makes /readyz 503, naming the store; fixing it makes it ready again', async () => {
    // Root opens any file whatever its mode, so the server runs as an unprivileged user (as it should in production).
    const asRoot = process.getuid?.() === 0;
    const user = asRoot ? { uid: 65534, gid: 65534 } : undefined;
    const dataDir = dataDirWithTestCa(user);
    const served = await serve(['--data-dir', dataDir, '--https-port', '8443', '--log-level', 'warn'], user ?? {});
    try {
      assert.equal((await call('GET', '/readyz', { host: 'localhost:8443' })).status, 200);
      chmodSync(join(dataDir, 'provisiond.db'), 0o000);
      const failing = await call('GET', '/readyz', { host: 'localhost:8443' });
      assert.equal(failing.status, 503);
      const body = failing.body as { status: string; failing: string[]; checks: { store: { status: string; reason: string } } };
      assert.equal(body.status, 'notReady');
      assert.deepEqual(body.failing, ['store']);
      assert.equal(body.checks.store.status, 'failing');
      assert.match(body.checks.store.reason, /EACCES.*provisiond\.db/);
      // Liveness is not readiness: the process still answers.
      assert.equal((await call('GET', '/healthz', { host: 'localhost:8443' })).status, 200);
      chmodSync(join(dataDir, 'provisiond.db'), 0o600);
      assert.equal((await call('GET', '/readyz', { host: 'localhost:8443' })).status, 200);
    } finally {
      await served.stop();
    }
  });

  test('each failing part is named: pending migrations, a listener down, an outbox nobody sweeps', async () => {
    const store = { getInstance: async () => ({ id: 'i' }) } as unknown as Store;
    const now = 1_000_000;
    const deps: ReadinessDeps = {
      store,
      instanceId: 'i',
      pendingMigrations: async () => ['0009_future'],
      listeners: () => ({ https: true, mqtt: false }),
      outbox: async () => ({ depth: 3, oldestAgeSeconds: 95.4 }),
      lastOutboxSweepAt: () => now - 45_000,
      now: () => now,
    };
    assert.deepEqual(await checkReadiness(deps), {
      httpStatus: 503,
      body: {
        status: 'notReady',
        failing: ['migrations', 'listeners', 'eventOutbox'],
        checks: {
          store: { status: 'ok', latencyMs: 0 },
          migrations: { status: 'failing', reason: 'migrations not applied: 0009_future', pending: ['0009_future'] },
          listeners: { status: 'failing', reason: 'not listening: mqtt', https: 'up', mqtt: 'down' },
          eventOutbox: {
            status: 'failing',
            reason: 'lifecycle events are waiting and delivery has not swept the outbox for 30 s',
            depth: 3,
            oldestAgeSeconds: 95,
            lastSweepSecondsAgo: 45,
          },
        },
      },
    });
    // A store that does not answer in time fails on its own, without holding the answer.
    const hanging = { ...deps, store: { getInstance: () => new Promise(() => undefined) } as unknown as Store, timeoutMs: 50, pendingMigrations: async () => [] };
    const result = await checkReadiness(hanging);
    assert.deepEqual(result.body.checks.store, { status: 'failing', reason: 'no answer within 50 ms' });
  });
});

describe('logs for operators', () => {
  test('JSON lines on stdout, the banner on stderr, levels per component, and a certificate renewed by SIGHUP', async () => {
    const dataDir = dataDirWithTestCa();
    // Issued by the CA the test process trusts (NODE_EXTRA_CA_CERTS), so plain fetch calls work too.
    const ca = { certPem: readFileSync(join(CA_DIR, 'ca.pem'), 'utf8'), keyPem: readFileSync(join(CA_DIR, 'ca.key'), 'utf8') };
    const first = await createServerCertificate(ca, ['localhost', '127.0.0.1'], 90);
    const certFile = join(dataDir, 'operator.pem');
    const keyFile = join(dataDir, 'operator.key');
    writeFileSync(certFile, first.certPem);
    writeFileSync(keyFile, first.keyPem);
    // Everything at warn, except HTTP request lines (info) and the TLS component (info: reloads).
    const served = await serve([
      '--data-dir',
      dataDir,
      '--https-port',
      '443',
      '--log-level',
      'warn',
      '--log-levels',
      'http=info,tls=info',
      '--tls-cert-file',
      certFile,
      '--tls-key-file',
      keyFile,
    ]);
    try {
      assert.match(served.stderr(), /ID scope: +\S+/);
      assert.match(served.stderr(), /server certificate: +.*operator\.pem +\(yours, used as it is; issued by CN=provisiond test CA\)/);
      const fingerprint = () =>
        new Promise<string>((resolve, reject) => {
          const socket = connect({ host: '127.0.0.1', port: 443, servername: 'localhost', ca: [ca.certPem] }, () => {
            resolve(socket.getPeerCertificate().fingerprint256);
            socket.destroy();
          });
          socket.once('error', reject);
        });
      assert.equal(await fingerprint(), new X509Certificate(first.certPem).fingerprint256);
      assert.equal((await call('GET', '/healthz')).status, 200);

      const renewed = await createServerCertificate(ca, ['localhost', '127.0.0.1'], 365);
      writeFileSync(certFile, renewed.certPem);
      writeFileSync(keyFile, renewed.keyPem);
      served.child.kill('SIGHUP');
      await until(async () => (await fingerprint()) === new X509Certificate(renewed.certPem).fingerprint256, 'the renewed certificate');
      await until(() => served.stdout().includes('server certificate reloaded'), 'the reload log line');

      const records = served
        .stdout()
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      assert.ok(!served.stdout().includes('ID scope'), 'the banner is not on stdout');
      const requestLine = records.find((record) => record.component === 'http' && record.msg === 'request completed');
      assert.ok(requestLine !== undefined, 'the http component logs requests at info');
      assert.equal(requestLine.level, 30);
      assert.ok(records.some((record) => record.component === 'tls' && record.msg === 'server certificate reloaded'));
      // Nothing below warn from any other component.
      assert.deepEqual(records.filter((record) => Number(record.level) < 40 && record.component !== 'http' && record.component !== 'tls'), []);
    } finally {
      await served.stop();
    }
  });

  test('--log-format pretty prints readable lines', async () => {
    const dataDir = dataDirWithTestCa();
    const served = await serve(['--data-dir', dataDir, '--https-port', '443', '--log-format', 'pretty', '--log-levels', 'http=info', '--log-level', 'warn']);
    try {
      assert.equal((await call('GET', '/healthz')).status, 200);
      await until(() => served.stdout().includes('request completed'), 'a request line');
      const line = served.stdout().split('\n').find((text) => text.includes('request completed')) ?? '';
      assert.match(line, /^\d\d:\d\d:\d\d\.\d{3} INFO +\[http\] request completed .*res=\{"statusCode":200\}/);
    } finally {
      await served.stop();
    }
  });
});
