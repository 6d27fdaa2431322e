import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { describe, test } from 'node:test';
import { createApp, ListenError, type App } from '../src/app.js';
import { loadConfig, type Config } from '../src/config/config.js';
import { CA_DIR, readCa } from './harness.js';

/**
 * The device listeners as a whole: ports that cannot be bound, listeners switched off, and the connection and idle
 * limits. Each test runs its own server on ports of its own (HTTPS on an ephemeral port).
 */
async function withApp(overrides: Partial<Record<keyof Config, unknown>>, body: (app: App, config: Config) => Promise<void>): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-listeners-'));
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
  const config = loadConfig({ flags: { dataDir, httpsPort: 0, mqttPort: 18883, amqpPort: 15671, listenHost: '127.0.0.1', logLevel: 'silent', ...overrides } });
  const app = await createApp({ config });
  try {
    await body(app, config);
  } finally {
    await app.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function occupy(port: number): Promise<Server> {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
  return blocker;
}

function tlsSocket(port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: 'localhost', port, ca: readCa() }, () => resolve(socket));
    socket.on('error', reject);
  });
}

async function closesWithin(socket: TLSSocket, ms: number): Promise<void> {
  socket.on('error', () => undefined);
  await Promise.race([new Promise((resolve) => socket.once('close', resolve)), new Promise((_, reject) => setTimeout(() => reject(new Error('still open')), ms).unref())]);
}

describe('device listeners', () => {
  // The suggested port is the protocol's usual unprivileged one, or the next when that is the busy one.
  for (const [what, port, flag, suggested, overrides] of [
    ['MQTT', 8883, '--mqtt-port', 18883, { mqttPort: 8883 }],
    ['AMQP', 5671, '--amqp-port', 15671, { mqttEnabled: false, amqpPort: 5671 }],
    ['MQTT', 18883, '--mqtt-port', 18884, {}],
  ] as const) {
    test(`a ${what} port in use is a one-line ListenError naming ${flag}`, async () => {
      const blocker = await occupy(port);
      try {
        await withApp(overrides, async (app) => {
          const error = await app.listen().then(
            () => assert.fail('expected a ListenError'),
            (failure: unknown) => failure as Error,
          );
          assert.ok(error instanceof ListenError);
          assert.equal(
            error.message,
            `cannot listen for ${what} on 127.0.0.1:${port}: the address is already in use; choose another port with ${flag} (e.g. ${flag} ${suggested})`,
          );
        });
      } finally {
        blocker.close();
      }
    });
  }

  test('switched-off listeners do not listen, and info leaves their ports out', async () => {
    await withApp({ mqttEnabled: false, amqpEnabled: false, webSocketsEnabled: false }, async (app) => {
      await app.listen();
      for (const port of [18883, 15671]) await assert.rejects(tlsSocket(port), /ECONNREFUSED/);
      const info = await app.info();
      assert.deepEqual(Object.keys(info.ports), ['https']);
      // No WebSocket endpoint: the upgrade is not answered with 101.
      const address = app.http.server.address();
      assert.ok(address !== null && typeof address === 'object');
      const socket = await tlsSocket(address.port);
      socket.write('GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n');
      const answer = await new Promise<string>((resolve) => {
        let text = '';
        socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
        socket.on('close', () => resolve(text));
        setTimeout(() => resolve(text), 1000).unref();
      });
      assert.doesNotMatch(answer, /^HTTP\/1\.1 101/);
      socket.destroy();
    });
  });

  test('connections beyond maxDeviceConnections are closed at once; a freed slot admits the next', async () => {
    await withApp({ maxDeviceConnections: 2 }, async (app) => {
      await app.listen();
      const first = await tlsSocket(18883);
      const second = await tlsSocket(15671);
      const third = tlsConnect({ host: 'localhost', port: 18883, ca: readCa() });
      await closesWithin(third, 2000);
      first.destroy();
      await new Promise((resolve) => setTimeout(resolve, 200));
      const fourth = await tlsSocket(18883);
      assert.equal(fourth.destroyed, false);
      for (const socket of [second, fourth]) socket.destroy();
    });
  });

  test('a silent device connection is closed after deviceIdleTimeoutMs', async () => {
    await withApp({ deviceIdleTimeoutMs: 1000 }, async (app) => {
      await app.listen();
      const started = Date.now();
      const silent = await tlsSocket(15671);
      await closesWithin(silent, 4000);
      assert.ok(Date.now() - started >= 900, `closed after ${Date.now() - started} ms`);
    });
  });
});
