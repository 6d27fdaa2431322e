import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { request as httpsRequest, Agent } from 'node:https';
import { after, before, test } from 'node:test';
import { call, readCa, startServer, type TestServer } from '../harness.js';
import { raiseFileLimit } from '../../src/transports/file-limit.js';
import { mqttConnectPacket } from './mqtt-connect-packet.js';
import { LONG } from './resilience-mode.js';

/**
 * Resource exhaustion on the listeners (issue 13.4, 13.7): connections that never send a hello or a request are
 * closed on time, the open-connection caps hold per listener and per source address, the process raises its own
 * open-file limit, and floods of idle connections, TLS handshakes and bad MQTT credentials leave a normal HTTPS
 * request answered within a second.
 */
let server: TestServer;
const opened: Array<Socket | TLSSocket> = [];

before(async () => {
  server = await startServer({
    httpsHandshakeTimeoutMs: 1000,
    httpsIdleTimeoutMs: 1500,
    httpsRequestTimeoutMs: 4000,
    httpsMaxConnectionsPerSource: 50,
    // The flood below comes from one address; its refusals are its own business (test/resilience/stranger-stall).
    refusedAttemptsPerSecondPerSource: 20,
  });
});

after(async () => {
  for (const socket of opened) socket.destroy();
  await server.close();
});

function tcp(localAddress = '127.0.0.1', port = 443): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: '127.0.0.1', port, localAddress }, () => resolve(socket));
    socket.on('error', reject);
    opened.push(socket);
  });
}

function tls(localAddress = '127.0.0.1', port = 443): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // A TCP socket from the chosen address first: TLS options cannot name a local address.
    const raw = netConnect({ host: '127.0.0.1', port, localAddress });
    raw.on('error', reject);
    const socket = tlsConnect({ socket: raw, servername: 'localhost', ca: readCa() }, () => resolve(socket));
    socket.on('error', reject);
    opened.push(socket);
  });
}

/** Milliseconds until the server closes the socket (rejects after `limitMs`). */
function closedWithin(socket: Socket, limitMs: number): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    if (socket.destroyed || socket.readableEnded) return resolve(0);
    const timer = setTimeout(() => reject(new Error(`still open after ${limitMs} ms`)), limitMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
    socket.on('error', () => undefined);
    socket.resume();
  });
}

/** One normal HTTPS request on a fresh connection; its round-trip time in ms. */
function timedHealthz(): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const outgoing = httpsRequest({ host: '127.0.0.1', servername: 'localhost', port: 443, path: '/healthz', agent: new Agent({ keepAlive: false }), ca: readCa() }, (response) => {
      response.resume();
      response.on('end', () => (response.statusCode === 200 ? resolve(Date.now() - started) : reject(new Error(`status ${response.statusCode}`))));
    });
    outgoing.on('error', reject);
    outgoing.end();
  });
}

test('a connection without a TLS hello, and a TLS connection without a request, are closed on time', async () => {
  const silentTcp = await tcp();
  const silentTls = await tls();
  const [tcpMs, tlsMs] = await Promise.all([closedWithin(silentTcp, 5000), closedWithin(silentTls, 6000)]);
  assert.ok(tcpMs < 3000, `no hello: closed after ${tcpMs} ms (handshake timeout 1 s)`);
  assert.ok(tlsMs < 4000, `no request: closed after ${tlsMs} ms (idle timeout 1.5 s)`);
  // A kept-alive connection between requests is closed too; one with a slow answer is not cut (a register that
  // waits for its assignment), which every other test exercises.
  const slowHeaders = await tls();
  slowHeaders.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n');
  assert.ok((await closedWithin(slowHeaders, 40000)) < 40000, 'unfinished headers are cut');
});

test('the per-address cap holds: one address cannot take every connection', async () => {
  const hog = await Promise.all(Array.from({ length: 50 }, async () => tcp('127.0.0.2')));
  // The 51st from the same address is closed at once; another address is served.
  const refused = await tcp('127.0.0.2');
  assert.ok((await closedWithin(refused, 2000)) < 2000, 'over the per-address cap: closed at once');
  const answered = await call('GET', '/healthz');
  assert.equal(answered.status, 200);
  for (const socket of hog) socket.destroy();
});

test('the open-file limit is raised to the hard limit, and the server reports what it got', async () => {
  // Node itself raises its soft limit to the hard one when it starts (node.cc); the server makes sure of it (a
  // runtime that does not would be raised by prlimit) and logs the figure. The raising is shown on a process that
  // keeps the low limit it was started with.
  const low = spawn('prlimit', ['--nofile=256:4096', 'sleep', '30'], { stdio: 'ignore' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(raiseFileLimit(low.pid), { soft: 4096, hard: 4096, raisedFrom: 256 });
    assert.deepEqual(raiseFileLimit(low.pid), { soft: 4096, hard: 4096 });
  } finally {
    low.kill();
  }
  const script = "const { raiseFileLimit } = await import('./src/transports/file-limit.ts'); process.stdout.write(JSON.stringify(raiseFileLimit()));";
  const output = execFileSync('prlimit', ['--nofile=256:4096', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(output), { soft: 4096, hard: 4096 });
});

test('floods of idle connections, TLS handshakes and bad MQTT credentials: a normal request is answered within 1 s', async () => {
  const idle = LONG ? 900 : 300;
  const handshakes = LONG ? 300 : 100;
  const mqtt = LONG ? 300 : 100;
  // Idle TCP on 443 from several addresses (each under its per-address cap).
  await Promise.all(Array.from({ length: idle }, async (_, i) => tcp(`127.0.0.${10 + (i % 10)}`).catch(() => undefined)));
  const flood: Array<Promise<unknown>> = [];
  // TLS handshakes that go nowhere, and MQTT CONNECTs with a bad password (each a TLS handshake plus a refusal).
  for (let i = 0; i < handshakes; i += 1) flood.push(tls(`127.0.0.${30 + (i % 10)}`).then((socket) => socket.destroy(), () => undefined));
  for (let i = 0; i < mqtt; i += 1) flood.push(badMqttConnect(`127.0.0.${50 + (i % 10)}`, `flood-${i}`).catch(() => undefined));
  const timings: number[] = [];
  const probing = (async () => {
    for (let i = 0; i < 5; i += 1) {
      timings.push(await timedHealthz());
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  await Promise.all([...flood, probing]);
  const sorted = [...timings].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)] ?? Infinity;
  console.log(`# flood: ${idle} idle TCP, ${handshakes} TLS handshakes, ${mqtt} bad MQTT CONNECTs; healthz on a new connection ${timings.join(', ')} ms`);
  assert.ok(median < 1000, `a normal request during the flood: ${timings.join(', ')} ms`);
});

/** An MQTT CONNECT over TLS with a junk SAS password; resolves with the CONNACK return code. */
async function badMqttConnect(localAddress: string, registrationId: string): Promise<number> {
  const socket = await tls(localAddress, 8883);
  const username = `${server.info.idScope}/registrations/${registrationId}/api-version=2019-03-31`;
  const password = `SharedAccessSignature sr=${server.info.idScope}%2Fregistrations%2F${registrationId}&sig=${encodeURIComponent(Buffer.alloc(32, 1).toString('base64'))}&se=9999999999&skn=registration`;
  socket.write(mqttConnectPacket(registrationId, username, password));
  return new Promise((resolve, reject) => {
    socket.once('data', (chunk: Buffer) => {
      socket.destroy();
      resolve(chunk[3] ?? -1);
    });
    socket.once('close', () => reject(new Error('closed without CONNACK')));
  });
}
