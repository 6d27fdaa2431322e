/**
 * A flood from another process (issue 13.7), as an attacker's would be: it keeps `width` attempts of one kind in
 * flight against one port, from the source addresses 127.0.0.30–39, until its stdin closes (or `durationMs` has
 * passed), then prints what it did as one JSON line. It prints `flooding` once its first 20 handshakes are done. Kinds:
 * - `tls`: a TLS handshake, then the connection is dropped;
 * - `mqtt`: a TLS handshake and an MQTT CONNECT with a SAS token signed by a wrong key (CONNACK 5);
 * - `amqp`: a TLS handshake and AMQP SASL PLAIN with a wrong token (SASL outcome auth).
 *
 * Usage: node --import tsx test/resilience/flood.ts <kind> <port> <width> <durationMs> <idScope> <caFile>
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect, createSecureContext, type TLSSocket } from 'node:tls';
import { mqttConnectPacket } from './mqtt-connect-packet.js';

const [kind = 'tls', portText = '443', widthText = '100', durationText = '3000', idScope = '', caFile = ''] = process.argv.slice(2);
const port = Number(portText);
const width = Number(widthText);
const deadline = Date.now() + Number(durationText);
let stopped = false;
process.stdin.on('end', () => (stopped = true));
process.stdin.on('close', () => (stopped = true));
process.stdin.resume();
// One context for every attempt, and no check of the server's certificate: an attacker spends nothing it need not.
const secureContext = createSecureContext({ ca: readFileSync(caFile, 'utf8') });
const counts = { attempts: 0, handshakes: 0, refused: 0, dropped: 0 };

function connect(index: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // A TCP socket from the chosen address first: TLS options cannot name a local address.
    const raw = netConnect({ host: '127.0.0.1', port, localAddress: `127.0.0.${30 + (index % 10)}` });
    raw.on('error', reject);
    const socket = tlsConnect({ socket: raw, servername: 'localhost', secureContext, rejectUnauthorized: false }, () => {
      counts.handshakes += 1;
      if (counts.handshakes === 20) process.stdout.write('flooding\n');
      resolve(socket);
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('closed')));
    socket.setTimeout(15000, () => socket.destroy());
  });
}

function junkToken(registrationId: string): string {
  const sig = encodeURIComponent(Buffer.alloc(32, 1).toString('base64'));
  return `SharedAccessSignature sr=${idScope}%2Fregistrations%2F${registrationId}&sig=${sig}&se=${Math.floor(Date.now() / 1000) + 3600}&skn=registration`;
}

/** Resolves when the server has answered the sign-in (or closed the connection). */
function answered(socket: TLSSocket): Promise<void> {
  return new Promise((resolve) => {
    socket.once('data', () => {
      counts.refused += 1;
      resolve();
    });
    socket.once('close', () => resolve());
  });
}

async function mqttConnect(socket: TLSSocket, registrationId: string): Promise<void> {
  const username = `${idScope}/registrations/${registrationId}/api-version=2019-03-31`;
  const reply = answered(socket);
  socket.write(mqttConnectPacket(registrationId, username, junkToken(registrationId)));
  await reply;
}

/** AMQP SASL: the protocol header, then a sasl-init for PLAIN once the server has offered its mechanisms. */
async function amqpSasl(socket: TLSSocket, registrationId: string): Promise<void> {
  const mechanisms = new Promise<void>((resolve) => {
    let seen = 0;
    const onData = (chunk: Buffer): void => {
      seen += chunk.length;
      // 8 bytes of protocol header, then the sasl-mechanisms frame.
      if (seen > 8) {
        socket.off('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
    socket.once('close', () => resolve());
  });
  socket.write(Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]));
  await mechanisms;
  const reply = answered(socket);
  socket.write(saslInit(`${idScope}/registrations/${registrationId}`, junkToken(registrationId)));
  await reply;
}

function saslInit(username: string, password: string): Buffer {
  const symbol = (text: string): Buffer => Buffer.concat([Buffer.from([0xa3, text.length]), Buffer.from(text, 'ascii')]);
  const response = Buffer.concat([Buffer.from([0]), Buffer.from(username, 'utf8'), Buffer.from([0]), Buffer.from(password, 'utf8')]);
  const binary = Buffer.concat([Buffer.from([0xb0]), u32(response.length), response]);
  // list32 of [mechanism, initial-response]
  const fields = Buffer.concat([symbol('PLAIN'), binary]);
  const list = Buffer.concat([Buffer.from([0xd0]), u32(fields.length + 4), u32(2), fields]);
  // described type: descriptor ulong 0x41 (sasl-init)
  const performative = Buffer.concat([Buffer.from([0x00, 0x53, 0x41]), list]);
  const header = Buffer.concat([u32(8 + performative.length), Buffer.from([2, 1, 0, 0])]);
  return Buffer.concat([header, performative]);
}

function u32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}

async function attempt(index: number): Promise<void> {
  counts.attempts += 1;
  let socket: TLSSocket | undefined;
  try {
    socket = await connect(index);
    if (kind === 'mqtt') await mqttConnect(socket, `flood-${index}`);
    else if (kind === 'amqp') await amqpSasl(socket, `flood-${index}`);
  } catch {
    counts.dropped += 1;
  } finally {
    socket?.destroy();
  }
}

async function lane(lane: number): Promise<void> {
  for (let i = lane; !stopped && Date.now() < deadline; i += width) await attempt(i);
}

await Promise.all(Array.from({ length: width }, (_, i) => lane(i)));
process.stdout.write(`${JSON.stringify({ kind, port, ...counts })}\n`);
process.exit(0);
