import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect, type TLSSocket } from 'node:tls';
import { after, describe, test } from 'node:test';
import type { FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import { createApp, type App } from '../src/app.js';
import { loadConfig, type Config } from '../src/config/config.js';
import { createIntermediateCertificate, createRootCertificate, createServerCertificate, type CertificateAndKey } from '../src/tls/x509-issuer.js';
import { CA_DIR } from './harness.js';

/**
 * The server certificate an operator brings is served as it is: devices whose trust store holds only the operator's
 * CA connect, on every listener, and a renewed certificate is picked up on SIGHUP without dropping a connection.
 */
const scratch: string[] = [];
after(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function freshDataDir(): string {
  const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-tls-'));
  scratch.push(dataDir);
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  return dataDir;
}

function capturingLogger(): { logger: FastifyBaseLogger; lines: () => Array<Record<string, unknown>> } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString().split('\n').filter((line) => line !== ''));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream) as unknown as FastifyBaseLogger, lines: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

async function start(dataDir: string, overrides: Partial<Record<keyof Config, unknown>> = {}, logger?: FastifyBaseLogger): Promise<App> {
  const config = loadConfig({
    flags: { dataDir, httpsPort: 443, mqttPort: 8883, amqpPort: 5671, listenHost: '127.0.0.1', logLevel: 'silent', ...overrides },
  });
  const app = await createApp({ config, ...(logger === undefined ? {} : { logger }) });
  await app.listen();
  return app;
}

/** A TLS connection that trusts only `ca` (nothing from the system or NODE_EXTRA_CA_CERTS). */
function handshake(port: number, ca: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca: [ca], rejectUnauthorized: true }, () => resolve(socket));
    socket.once('error', reject);
  });
}

async function servedFingerprint(port: number, ca: string): Promise<string> {
  const socket = await handshake(port, ca);
  const fingerprint = socket.getPeerCertificate().fingerprint256;
  socket.destroy();
  return fingerprint;
}

function fingerprintOf(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** One HTTP/1.1 request on an open TLS socket; resolves with the status line. */
function requestOn(socket: TLSSocket, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const headerEnd = text.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(text)?.[1];
      if (headerEnd >= 0 && length !== undefined && text.length >= headerEnd + 4 + Number(length)) {
        socket.off('data', onData);
        resolve(text.split('\r\n')[0] ?? '');
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n`);
  });
}

async function operatorPki(days = 90, hostNames = ['localhost', '127.0.0.1']): Promise<{ ca: CertificateAndKey; server: CertificateAndKey }> {
  const ca = await createRootCertificate({ commonName: 'Operator Root CA', days: 365 });
  return { ca, server: await createServerCertificate(ca, hostNames, days) };
}

describe('the operator’s own server certificate', () => {
  test('a certificate and key placed in <dataDir>/tls are served as they are on HTTPS, MQTT and AMQP, and never replaced', async () => {
    const dataDir = freshDataDir();
    const { ca, server } = await operatorPki();
    writeFileSync(join(dataDir, 'tls', 'server.pem'), server.certPem);
    writeFileSync(join(dataDir, 'tls', 'server.key'), server.keyPem, { mode: 0o600 });
    const app = await start(dataDir);
    try {
      for (const port of [443, 8883, 5671]) assert.equal(await servedFingerprint(port, ca.certPem), fingerprintOf(server.certPem), `port ${port}`);
      assert.equal(readFileSync(join(dataDir, 'tls', 'server.pem'), 'utf8'), server.certPem);
      assert.equal(readFileSync(join(dataDir, 'tls', 'server.key'), 'utf8'), server.keyPem);
      const info = await app.info();
      assert.deepEqual(
        { ...info.serverCertificate, validTo: undefined },
        { source: 'operator', path: join(dataDir, 'tls', 'server.pem'), subject: 'CN=localhost', issuer: 'CN=Operator Root CA', validTo: undefined },
      );
    } finally {
      await app.close();
    }
    // A restart (with other host names, which would re-issue a dev-CA certificate) leaves it alone too.
    const again = await start(dataDir, { hostNames: ['localhost', '127.0.0.1', 'dps.example.com'] });
    try {
      assert.equal(await servedFingerprint(443, ca.certPem), fingerprintOf(server.certPem));
      assert.equal(readFileSync(join(dataDir, 'tls', 'server.pem'), 'utf8'), server.certPem);
    } finally {
      await again.close();
    }
  });

  test('tlsCertFile/tlsKeyFile: a chain file (leaf + intermediate) outside the data directory is served whole', async () => {
    const dataDir = freshDataDir();
    const root = await createRootCertificate({ commonName: 'Operator Root CA', days: 365 });
    const intermediate = await createIntermediateCertificate(root, { commonName: 'Operator Issuing CA', days: 365 });
    const leaf = await createServerCertificate(intermediate, ['localhost', '127.0.0.1'], 90);
    const certFile = join(dataDir, 'chain.pem');
    const keyFile = join(dataDir, 'leaf.key');
    writeFileSync(certFile, leaf.certPem + intermediate.certPem);
    writeFileSync(keyFile, leaf.keyPem, { mode: 0o600 });
    const app = await start(dataDir, { tlsCertFile: certFile, tlsKeyFile: keyFile });
    try {
      // Trusting only the root works because the server sends the intermediate.
      const socket = await handshake(443, root.certPem);
      const peer = socket.getPeerCertificate(true);
      socket.destroy();
      assert.equal(peer.fingerprint256, fingerprintOf(leaf.certPem));
      assert.equal(peer.issuerCertificate.fingerprint256, fingerprintOf(intermediate.certPem));
      assert.equal((await app.info()).serverCertificate.source, 'operator');
    } finally {
      await app.close();
    }
  });

  test('a key that does not belong to the certificate stops the start with a message naming both files', async () => {
    const dataDir = freshDataDir();
    const { server } = await operatorPki();
    const other = await operatorPki();
    writeFileSync(join(dataDir, 'tls', 'server.pem'), server.certPem);
    writeFileSync(join(dataDir, 'tls', 'server.key'), other.server.keyPem);
    const config = loadConfig({ flags: { dataDir, httpsPort: 443, listenHost: '127.0.0.1', logLevel: 'silent', mqttEnabled: false, amqpEnabled: false } });
    await assert.rejects(createApp({ config }), (error: Error) => {
      assert.match(error.message, /the key in .*server\.key does not belong to the certificate in .*server\.pem/);
      return true;
    });
  });

  test('warns at start about host names the certificate does not cover and an expiry within 30 days', async () => {
    const dataDir = freshDataDir();
    const { server } = await operatorPki(10, ['localhost']);
    writeFileSync(join(dataDir, 'tls', 'server.pem'), server.certPem);
    writeFileSync(join(dataDir, 'tls', 'server.key'), server.keyPem);
    const { logger, lines } = capturingLogger();
    const app = await start(dataDir, { hostNames: ['localhost', '127.0.0.1', 'dps.example.com'], mqttEnabled: false, amqpEnabled: false }, logger);
    await app.close();
    const warnings = lines().filter((line) => line.level === 40 && line.component === 'tls').map((line) => String(line.msg));
    assert.equal(warnings.length, 2, JSON.stringify(warnings));
    assert.match(warnings[0] ?? '', /does not cover the configured host name\(s\) 127\.0\.0\.1, dps\.example\.com/);
    assert.match(warnings[1] ?? '', /expires in (9|10) day\(s\)/);
  });

  test('the dev CA stays the default: no warning, and its certificate is re-issued when the host names change', async () => {
    const dataDir = freshDataDir();
    copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
    copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
    const ca = readFileSync(join(CA_DIR, 'ca.pem'), 'utf8');
    const { logger, lines } = capturingLogger();
    const app = await start(dataDir, { mqttEnabled: false, amqpEnabled: false }, logger);
    const first = await servedFingerprint(443, ca);
    assert.equal((await app.info()).serverCertificate.source, 'devCa');
    await app.close();
    assert.deepEqual(lines().filter((line) => line.level === 40), []);
    const again = await start(dataDir, { hostNames: ['localhost', '127.0.0.1', 'dps.example.com'], mqttEnabled: false, amqpEnabled: false });
    try {
      const second = await servedFingerprint(443, ca);
      assert.notEqual(second, first);
      assert.ok(new X509Certificate(readFileSync(join(dataDir, 'tls', 'server.pem'))).checkHost('dps.example.com'));
    } finally {
      await again.close();
    }
  });

  test('reload serves a renewed certificate to new connections while open ones go on; a broken one leaves the old in place', async () => {
    const dataDir = freshDataDir();
    const { ca, server } = await operatorPki();
    const certPath = join(dataDir, 'tls', 'server.pem');
    const keyPath = join(dataDir, 'tls', 'server.key');
    writeFileSync(certPath, server.certPem);
    writeFileSync(keyPath, server.keyPem);
    const { logger, lines } = capturingLogger();
    const app = await start(dataDir, {}, logger);
    try {
      const open = await handshake(443, ca.certPem);
      assert.equal(await requestOn(open, '/healthz'), 'HTTP/1.1 200 OK');
      const renewed = await createServerCertificate(ca, ['localhost', '127.0.0.1'], 365);
      writeFileSync(certPath, renewed.certPem);
      writeFileSync(keyPath, renewed.keyPem);
      const reloaded = await app.reloadTls();
      assert.equal(reloaded.source, 'operator');
      for (const port of [443, 8883, 5671]) assert.equal(await servedFingerprint(port, ca.certPem), fingerprintOf(renewed.certPem), `port ${port}`);
      // The connection opened before the reload is still up and still answers, with the certificate it started with.
      assert.equal(await requestOn(open, '/healthz'), 'HTTP/1.1 200 OK');
      assert.equal(open.getPeerCertificate().fingerprint256, fingerprintOf(server.certPem));
      open.destroy();
      assert.ok(lines().some((line) => line.msg === 'server certificate reloaded' && line.fingerprint256 === fingerprintOf(renewed.certPem)));

      writeFileSync(keyPath, 'not a key');
      await assert.rejects(app.reloadTls(), /is not a PEM private key/);
      assert.equal(await servedFingerprint(443, ca.certPem), fingerprintOf(renewed.certPem));
      assert.ok(lines().some((line) => line.level === 50 && String(line.msg).includes('not reloaded')));
    } finally {
      await app.close();
    }
  });
});
