import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import serviceSdk from 'azure-iot-provisioning-service';
import { parseResponseTopic } from '../src/transports/mqtt/topics.js';
import { deviceToken, type Json } from './devices.js';
import { readCa, startServer, type TestServer } from './harness.js';

/**
 * The MQTT endpoint on the wire, with a plain MQTT client (the `mqtt` package) and raw TLS sockets: what the
 * official SDK never does — other topics, spoofed replies, garbage, oversized packets, bad CONNECTs — and the exact
 * reply topics and bodies.
 */
const { ProvisioningServiceClient } = serviceSdk;
const PORT = 8883;
const API_VERSION = '2019-03-31';

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;

before(async () => {
  // One poll per second per device (burst 2), so the third quick poll is throttled.
  server = await startServer({ pollsPerSecondPerDevice: 1, mqttMaxPacketBytes: 4096 });
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
});
after(async () => {
  await server.close();
});

interface Reply {
  status: number;
  rid: string;
  retryAfterSeconds: number | undefined;
  topic: string;
  body: Json;
}

/** A connected plain MQTT client with every reply it receives. */
interface Device {
  client: MqttClient;
  replies: Reply[];
  next(rid: string, timeoutMs?: number): Promise<Reply>;
}

async function enroll(registrationId: string): Promise<string> {
  const enrollment = (await service.createOrUpdateIndividualEnrollment({ registrationId, attestation: { type: 'symmetricKey' } } as never)).responseBody as unknown as Json;
  return enrollment.attestation.symmetricKey.primaryKey as string;
}

function options(registrationId: string, key: string, overrides: Partial<IClientOptions> = {}): IClientOptions {
  return {
    clientId: registrationId,
    username: `${idScope}/registrations/${registrationId}/api-version=${API_VERSION}&ClientVersion=raw-test`,
    password: deviceToken(idScope, registrationId, key),
    protocolVersion: 4,
    ca: readCa(),
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ...overrides,
  };
}

async function connectDevice(registrationId: string, key: string, subscribe = true): Promise<Device> {
  const client = await connectAsync(`mqtts://localhost:${PORT}`, options(registrationId, key));
  const replies: Reply[] = [];
  const waiters: Array<() => void> = [];
  client.on('message', (topic, payload) => {
    const parsed = parseResponseTopic(topic);
    replies.push({ status: parsed?.status ?? -1, rid: parsed?.rid ?? '', retryAfterSeconds: parsed?.retryAfterSeconds, topic, body: JSON.parse(payload.toString('utf8')) as Json });
    for (const wake of waiters.splice(0)) wake();
  });
  if (subscribe) {
    const granted = await client.subscribeAsync('$dps/registrations/res/#', { qos: 1 });
    assert.deepEqual(granted.map((grant) => grant.qos), [1]);
  }
  return {
    client,
    replies,
    async next(rid, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = replies.find((reply) => reply.rid === rid);
        if (found !== undefined) return found;
        if (Date.now() > deadline) throw new Error(`no reply for $rid=${rid}; got ${JSON.stringify(replies.map((reply) => reply.topic))}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

/** The SUBACK return codes (the client rejects its promise when any is 0x80, with the packet attached). */
function subackCodes(client: MqttClient, subscriptions: Record<string, { qos: 0 | 1 | 2 }>): Promise<number[]> {
  return new Promise((resolve, reject) => {
    client.subscribe(subscriptions, (error, granted) => {
      const packet = (error as { packet?: { granted?: number[] } } | null)?.packet;
      if (packet?.granted !== undefined) resolve(packet.granted);
      else if (error) reject(error);
      else resolve((granted ?? []).map((grant) => grant.qos));
    });
  });
}

const registerTopic = (rid: string): string => `$dps/registrations/PUT/iotdps-register/?$rid=${rid}`;
const pollTopic = (rid: string, operationId: string): string => `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=${rid}&operationId=${operationId}`;

/** Register and poll until assigned: proves the connection (and the broker) still serve. */
async function registerOver(device: Device, registrationId: string, rid: string): Promise<Json> {
  await device.client.publishAsync(registerTopic(rid), Buffer.alloc(0), { qos: 1 });
  const accepted = await device.next(rid);
  assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
  const polled = await pollUntilDone(device, accepted.body.operationId as string, `${rid}.poll`);
  assert.equal(polled.body.registrationState.registrationId, registrationId);
  return polled.body;
}

async function pollUntilDone(device: Device, operationId: string, ridPrefix: string): Promise<Reply> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const rid = `${ridPrefix}.${attempt}`;
    await device.client.publishAsync(pollTopic(rid, operationId), ' ', { qos: 1 });
    const reply = await device.next(rid);
    if (reply.status === 200) return reply;
    await new Promise((resolve) => setTimeout(resolve, (reply.retryAfterSeconds ?? 1) * 1000));
  }
  throw new Error('the operation did not finish');
}

function rawSocket(): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: 'localhost', port: PORT, ca: readCa() }, () => resolve(socket));
    socket.on('error', reject);
  });
}

/** Resolves once the server has closed the socket; fails after the timeout. */
async function closedByServer(socket: TLSSocket, timeoutMs = 3000): Promise<void> {
  socket.on('error', () => undefined);
  if (socket.destroyed) return;
  await Promise.race([
    new Promise((resolve) => socket.once('close', resolve)),
    new Promise((_, reject) => setTimeout(() => reject(new Error('the server kept the connection open')), timeoutMs).unref()),
  ]);
}

describe('MQTT on the wire', () => {
  test('an empty register payload registers the device; replies echo $rid verbatim with retry-after on 202', async () => {
    const key = await enroll('raw-empty');
    const device = await connectDevice('raw-empty', key);
    await device.client.publishAsync(registerTopic('Rid-1.a_b'), Buffer.alloc(0), { qos: 1 });
    const accepted = await device.next('Rid-1.a_b');
    assert.match(accepted.topic, /^\$dps\/registrations\/res\/202\/\?\$rid=Rid-1\.a_b&retry-after=\d+$/);
    assert.deepEqual(Object.keys(accepted.body), ['operationId', 'status']);
    assert.equal(accepted.body.status, 'assigning');

    const operationId = accepted.body.operationId as string;
    await device.client.publishAsync(pollTopic('7', operationId), ' ', { qos: 1 });
    const done = await device.next('7');
    assert.equal(done.topic, '$dps/registrations/res/200/?$rid=7');
    assert.equal(done.body.operationId, operationId);
    assert.equal(done.body.status, 'assigned');
    assert.equal(done.body.registrationState.registrationId, 'raw-empty');
    assert.equal(done.body.registrationState.assignedHub, 'localhost');
    await device.client.endAsync();
  });

  test("the packet writer keeps no number cache (issue 12, P6: mqtt-packet's 65,536 Buffers are 6.6 MiB of heap)", async () => {
    // The mqtt-packet aedes writes with, as aedes resolves it; the exchange above has written packets with it.
    const mqttPacket = createRequire(import.meta.resolve('aedes'))('mqtt-packet') as { writeToStream: { cacheNumbers: boolean } };
    assert.equal(mqttPacket.writeToStream.cacheNumbers, false);
  });

  test('a register payload is passed on; a registrationId in it must name the connected device (400)', async () => {
    const key = await enroll('raw-payload');
    const device = await connectDevice('raw-payload', key);
    await device.client.publishAsync(registerTopic('mismatch'), JSON.stringify({ registrationId: 'someone-else' }), { qos: 1 });
    const mismatch = await device.next('mismatch');
    assert.equal(mismatch.topic, '$dps/registrations/res/400/?$rid=mismatch');
    assert.equal(mismatch.body.errorCode, 400009);
    assert.deepEqual(Object.keys(mismatch.body).sort(), ['errorCode', 'message', 'timestampUtc', 'trackingId']);

    await device.client.publishAsync(registerTopic('bad-json'), '{"payload":', { qos: 1 });
    assert.equal((await device.next('bad-json')).body.errorCode, 400002);

    await device.client.publishAsync(registerTopic('ok'), JSON.stringify({ registrationId: 'raw-payload', payload: { modelId: 'dtmi:x;1' } }), { qos: 0 });
    const accepted = await device.next('ok');
    assert.equal(accepted.status, 202);
    await device.client.endAsync();
  });

  test('an unknown operation is answered 404 with the DPS error body', async () => {
    const key = await enroll('raw-unknown-op');
    const device = await connectDevice('raw-unknown-op', key);
    await device.client.publishAsync(pollTopic('x', '5.0000000000000000.00000000-0000-0000-0000-000000000000'), '', { qos: 1 });
    const reply = await device.next('x');
    assert.equal(reply.topic, '$dps/registrations/res/404/?$rid=x');
    assert.equal(reply.body.errorCode, 404204);
    assert.match(reply.body.trackingId as string, /^[0-9a-f-]{36}$/);
    await device.client.endAsync();
  });

  test('throttled polls are answered 429 with retry-after in the topic and the DPS error body', async () => {
    const key = await enroll('raw-throttled');
    const device = await connectDevice('raw-throttled', key);
    for (const rid of ['t1', 't2', 't3']) await device.client.publishAsync(pollTopic(rid, 'unknown'), '', { qos: 1 });
    const statuses = await Promise.all(['t1', 't2', 't3'].map((rid) => device.next(rid)));
    const throttled = statuses.find((reply) => reply.status === 429);
    assert.ok(throttled !== undefined, JSON.stringify(statuses.map((reply) => reply.topic)));
    assert.match(throttled.topic, /^\$dps\/registrations\/res\/429\/\?\$rid=t\d&retry-after=\d+$/);
    assert.ok((throttled.retryAfterSeconds ?? 0) >= 1);
    assert.equal(throttled.body.errorCode, 429001);
    await device.client.endAsync();
  });

  test('a subscription outside $dps/registrations/res/# is refused with SUBACK 0x80; the connection keeps serving', async () => {
    const key = await enroll('raw-subscriber');
    const device = await connectDevice('raw-subscriber', key, false);
    const granted = await subackCodes(device.client, {
      '$dps/registrations/res/#': { qos: 1 },
      '#': { qos: 0 },
      'devices/raw-subscriber/messages/devicebound/#': { qos: 1 },
      '$dps/registrations/PUT/#': { qos: 0 },
      '$dps/registrations/res/+': { qos: 1 },
    });
    assert.deepEqual(granted, [1, 128, 128, 128, 128]);
    await registerOver(device, 'raw-subscriber', 'after-suback');
    await device.client.endAsync();
  });

  test('replies are published at QoS 1 at most, even to a QoS 2 subscription', async () => {
    const key = await enroll('raw-qos2');
    const device = await connectDevice('raw-qos2', key, false);
    const qualities: number[] = [];
    device.client.on('message', (_topic, _payload, packet) => qualities.push(packet.qos));
    // aedes reports the requested QoS in the SUBACK; what matters is the QoS replies go out with.
    await subackCodes(device.client, { '$dps/registrations/res/#': { qos: 2 } });
    await registerOver(device, 'raw-qos2', 'q');
    assert.ok(qualities.length >= 2 && qualities.every((qos) => qos === 1), JSON.stringify(qualities));
    await device.client.endAsync();
  });

  test("a publish to another device's topics is dropped: the other device receives nothing, nothing is retained", async () => {
    const victim = await connectDevice('raw-victim', await enroll('raw-victim'));
    const attacker = await connectDevice('raw-attacker', await enroll('raw-attacker'));
    const spoof = JSON.stringify({ operationId: 'spoofed', status: 'assigned', registrationState: { assignedHub: 'evil.example' } });
    await attacker.client.publishAsync('$dps/registrations/res/200/?$rid=1', spoof, { qos: 1, retain: true });
    await attacker.client.publishAsync('$dps/registrations/res/202/?$rid=2&retry-after=1', spoof, { qos: 0 });
    await attacker.client.publishAsync('devices/raw-victim/messages/devicebound/', 'hello', { qos: 1 });
    await attacker.client.publishAsync('$dps/registrations/PUT/iotdps-register-other/?$rid=3', '', { qos: 1 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.deepEqual(victim.replies, []);
    // A device subscribing afterwards gets no retained copy either.
    const late = await connectDevice('raw-late', await enroll('raw-late'));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(late.replies, []);
    // The attacker's own replies reach the attacker only, and its connection still serves.
    await registerOver(attacker, 'raw-attacker', 'own');
    assert.deepEqual(victim.replies, []);
    assert.deepEqual(late.replies, []);
    for (const device of [victim, attacker, late]) await device.client.endAsync();
  });

  test('bad CONNECTs are refused with the matching CONNACK code', async () => {
    const key = await enroll('raw-connect');
    const refusal = async (overrides: Partial<IClientOptions>, without?: 'password'): Promise<number | undefined> => {
      const connectOptions = options('raw-connect', key, overrides);
      if (without !== undefined) delete connectOptions[without];
      const error = await connectAsync(`mqtts://localhost:${PORT}`, connectOptions).then(
        async (client) => {
          await client.endAsync();
          return assert.fail('expected a refused CONNECT');
        },
        (failure: unknown) => failure as { code?: number },
      );
      return error.code;
    };
    assert.equal(await refusal({ password: deviceToken(idScope, 'raw-connect', Buffer.alloc(32, 7).toString('base64')) }), 5);
    assert.equal(await refusal({ password: 'not a token' }), 5);
    assert.equal(await refusal({}, 'password'), 5);
    assert.equal(await refusal({ username: `0ne00000000/registrations/raw-connect/api-version=${API_VERSION}`, password: deviceToken('0ne00000000', 'raw-connect', key) }), 5);
    assert.equal(await refusal({ clientId: 'someone-else' }), 2);
    assert.equal(await refusal({ username: 'raw-connect' }), 4);
    assert.equal(await refusal({ username: `${idScope}/registrations/raw-connect` }), 4);
    // The right credentials still connect.
    const device = await connectDevice('raw-connect', key);
    await device.client.endAsync();
  });

  test("the C device SDKs' CONNECTs (dps-wire.md §14): MQTT 3.1 fallback, persistent session, keep-alive 0 and 240, usernames with and without ClientVersion", async () => {
    const variants: Array<Partial<IClientOptions>> = [
      // Paho retries a refused CONNECT once with MQTT 3.1 (`MQIsdp`, level 3) and the same credentials.
      { protocolId: 'MQIsdp', protocolVersion: 3 },
      { clean: false, keepalive: 0, username: `${idScope}/registrations/raw-c-sdk-1/api-version=2021-06-01` },
      { keepalive: 240, username: `${idScope}/registrations/raw-c-sdk-2/api-version=2021-06-01&ClientVersion=1.14.0` },
    ];
    let key = '';
    for (const [index, variant] of variants.entries()) {
      // One device each: this server allows one poll per second per device.
      const registrationId = `raw-c-sdk-${index}`;
      key = await enroll(registrationId);
      const client = await connectAsync(`mqtts://localhost:${PORT}`, options(registrationId, key, variant));
      const replies: Reply[] = [];
      client.on('message', (topic, payload) => {
        const parsed = parseResponseTopic(topic);
        replies.push({ status: parsed?.status ?? -1, rid: parsed?.rid ?? '', retryAfterSeconds: parsed?.retryAfterSeconds, topic, body: JSON.parse(payload.toString('utf8')) as Json });
      });
      await client.subscribeAsync('$dps/registrations/res/#', { qos: 1 });
      // The embedded SDK registers at QoS 1 with an empty payload and polls at QoS 0 with `$rid` fixed at 1.
      await client.publishAsync(registerTopic('1'), Buffer.alloc(0), { qos: 1 });
      const waitFor = async (count: number): Promise<Reply> => {
        for (let i = 0; i < 100 && replies.length < count; i += 1) await new Promise((resolve) => setTimeout(resolve, 50));
        const reply = replies[count - 1];
        assert.ok(reply !== undefined, `variant ${index}: no reply`);
        return reply;
      };
      const accepted = await waitFor(1);
      assert.equal(accepted.status, 202, `variant ${index}: ${JSON.stringify(accepted.body)}`);
      assert.ok(accepted.retryAfterSeconds !== undefined, `variant ${index}: retry-after in ${accepted.topic}`);
      await new Promise((resolve) => setTimeout(resolve, (accepted.retryAfterSeconds ?? 0) * 1000));
      await client.publishAsync(pollTopic('1', accepted.body.operationId as string), '', { qos: 0 });
      const done = await waitFor(2);
      assert.equal(done.topic, '$dps/registrations/res/200/?$rid=1', `variant ${index}`);
      assert.equal(done.body.status, 'assigned');
      // assignedHub and deviceId come together (the embedded SDK reads both or neither).
      assert.equal(done.body.registrationState.assignedHub, 'localhost');
      assert.equal(done.body.registrationState.deviceId, registrationId);
      await client.endAsync();
    }
    // A refused MQTT 3.1 CONNECT is refused the same way (CONNACK 5).
    const refused = await connectAsync(`mqtts://localhost:${PORT}`, options('raw-c-sdk-0', Buffer.alloc(32, 7).toString('base64'), { protocolId: 'MQIsdp', protocolVersion: 3 })).then(
      async (client) => {
        await client.endAsync();
        return -1;
      },
      (failure: unknown) => (failure as { code?: number }).code,
    );
    assert.equal(refused, 5);
  });

  test('garbage, a malformed length and oversized packets close that connection only; the broker keeps serving', async () => {
    const bystander = await connectDevice('raw-bystander', await enroll('raw-bystander'));

    const garbage = await rawSocket();
    garbage.write(Buffer.concat([Buffer.from([0xff, 0x00, 0x13]), Buffer.from('GET / HTTP/1.1\r\n\r\n')]));
    await closedByServer(garbage);

    const malformedLength = await rawSocket();
    malformedLength.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]));
    await closedByServer(malformedLength);

    // A PUBLISH announcing 10 MB: refused from its fixed header, long before the body.
    const oversized = await rawSocket();
    oversized.write(Buffer.from([0x30, 0x80, 0xad, 0xe2, 0x04]));
    oversized.write(Buffer.alloc(8192, 0x41));
    await closedByServer(oversized);

    // An authenticated device that sends a packet over the limit (4096 bytes here) loses its connection.
    const big = await connectDevice('raw-big', await enroll('raw-big'));
    const closed = new Promise<void>((resolve) => big.client.once('close', () => resolve()));
    big.client.publish(registerTopic('big'), JSON.stringify({ payload: { blob: 'x'.repeat(8000) } }), { qos: 0 });
    await closed;
    assert.deepEqual(big.replies, []);

    await registerOver(bystander, 'raw-bystander', 'still-serving');
    const newcomer = await connectDevice('raw-newcomer', await enroll('raw-newcomer'));
    await registerOver(newcomer, 'raw-newcomer', 'new');
    for (const device of [bystander, newcomer]) await device.client.endAsync();
  });
});
