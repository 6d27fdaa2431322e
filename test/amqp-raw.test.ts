import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import rhea, { type AmqpError, type Connection, type Message, type Receiver, type Sender } from 'rhea';
import serviceSdk from 'azure-iot-provisioning-service';
import type { FastifyBaseLogger } from 'fastify';
import { pino } from 'pino';
import { deviceToken, type Json } from './devices.js';
import { readCa, startServer, type TestServer } from './harness.js';

/**
 * The AMQP endpoint on the wire, with a plain rhea client: the request and reply properties (dps-wire.md §6), the
 * rejections that carry the DPS error, links at another device's address, and frames over the limit.
 */
const { ProvisioningServiceClient } = serviceSdk;
const PORT = 5671;
const REPLY_TIMEOUT_MS = 10_000;

let server: TestServer;
let idScope: string;
let service: InstanceType<typeof ProvisioningServiceClient>;
/** What the server logged about refused links. */
const linkRefusals: Json[] = [];

before(async () => {
  const logger = pino({ level: 'info' }, {
    write(line: string) {
      const entry = JSON.parse(line) as Json;
      if (entry.msg === 'amqp link refused') linkRefusals.push(entry);
    },
  });
  server = await startServer({ pollsPerSecondPerDevice: 1, amqpMaxMessageBytes: 4096 }, { logger: logger as unknown as FastifyBaseLogger });
  idScope = server.info.idScope;
  service = ProvisioningServiceClient.fromConnectionString(server.connectionString);
});
after(async () => {
  await server.close();
});

async function enroll(registrationId: string): Promise<string> {
  const enrollment = (await service.createOrUpdateIndividualEnrollment({ registrationId, attestation: { type: 'symmetricKey' } } as never)).responseBody as unknown as Json;
  return enrollment.attestation.symmetricKey.primaryKey as string;
}

interface Device {
  connection: Connection;
  sender: Sender;
  receiver: Receiver;
  replies: Message[];
  /** Sends a request; resolves with the reply message, or rejects with the AMQP error of the rejection. */
  request(properties: Record<string, unknown>, body?: unknown): Promise<Message>;
}

async function connectDevice(registrationId: string, key: string, address = `${idScope}/registrations/${registrationId}`): Promise<Device> {
  const container = rhea.create_container();
  const connection = container.connect({
    host: 'localhost',
    port: PORT,
    transport: 'tls',
    ca: readCa(),
    username: `${idScope}/registrations/${registrationId}`,
    password: deviceToken(idScope, registrationId, key),
    reconnect: false,
  });
  container.on('error', () => undefined);
  await once(connection, 'connection_open');
  const replies: Message[] = [];
  const receiver = connection.open_receiver({ source: { address } });
  receiver.on('message', (context) => replies.push(context.message as Message));
  const sender = connection.open_sender({ target: { address } });
  // A refused link is closed instead of becoming sendable: fail rather than wait forever.
  await Promise.race([
    once(sender, 'sendable'),
    once(sender, 'sender_close').then(() => Promise.reject(new Error(`the link at '${address}' was closed by the server`))),
  ]);
  let next = 0;
  return {
    connection,
    sender,
    receiver,
    replies,
    request(properties, body = '') {
      next += 1;
      const correlationId = `corr-${next}`;
      return new Promise((resolve, reject) => {
        const delivery = sender.send({ correlation_id: correlationId, application_properties: properties, body });
        // A reply that never comes (a lost correlation_id, an unsettled delivery) fails the test instead of hanging it.
        const deadline = Date.now() + REPLY_TIMEOUT_MS;
        const timer = setTimeout(() => reject(new Error(`no disposition for the request with correlation_id ${correlationId}`)), REPLY_TIMEOUT_MS);
        const waitForReply = (): void => {
          clearTimeout(timer);
          const reply = replies.find((message) => message.correlation_id === correlationId);
          if (reply !== undefined) resolve(reply);
          else if (Date.now() > deadline) reject(new Error(`no reply with correlation_id ${correlationId}; got ${JSON.stringify(replies.map((message) => message.correlation_id))}`));
          else setTimeout(waitForReply, 20);
        };
        sender.on('accepted', (context) => {
          if (context.delivery === delivery) waitForReply();
        });
        sender.on('rejected', (context) => {
          if (context.delivery !== delivery) return;
          clearTimeout(timer);
          reject((context.delivery.remote_state as { error: AmqpError }).error);
        });
      });
    },
  };
}

const register = (device: Device, body: unknown = rhea.message.data_section(Buffer.from('{}'))): Promise<Message> =>
  device.request({ 'iotdps-operation-type': 'iotdps-register', 'iotdps-forceRegistration': false }, body);
const poll = (device: Device, operationId: string): Promise<Message> =>
  device.request({ 'iotdps-operation-type': 'iotdps-get-operationstatus', 'iotdps-operation-id': operationId });
const json = (message: Message): Json => JSON.parse((message.body as { content: Buffer }).content.toString('utf8')) as Json;

describe('AMQP on the wire', () => {
  test('register and poll: correlation_id echoed, data-section bodies, retry-after in both spellings on 202', async () => {
    const device = await connectDevice('amqp-raw-1', await enroll('amqp-raw-1'));
    const accepted = await register(device, rhea.message.data_section(Buffer.from(JSON.stringify({ registrationId: 'amqp-raw-1', payload: { a: 1 } }))));
    assert.equal(accepted.correlation_id, 'corr-1');
    assert.equal((accepted.body as { typecode: number }).typecode, 0x75);
    const body = json(accepted);
    assert.deepEqual(Object.keys(body), ['operationId', 'status']);
    assert.equal(body.status, 'assigning');
    const retryAfter = accepted.application_properties?.['retry-after'] as string;
    assert.match(retryAfter, /^\d+$/);
    assert.equal(accepted.application_properties?.['Retry-After'], retryAfter);

    await new Promise((resolve) => setTimeout(resolve, Number(retryAfter) * 1000));
    const done = await poll(device, body.operationId as string);
    assert.equal(done.correlation_id, 'corr-2');
    assert.equal(done.application_properties, undefined);
    assert.equal(json(done).status, 'assigned');
    assert.equal(json(done).registrationState.registrationId, 'amqp-raw-1');

    const lookup = await device.request({ 'iotdps-operation-type': 'iotdps-get-registration' });
    assert.equal(json(lookup).status, 'assigned');
    device.connection.close();
  });

  test('failures reject the request with the DPS error in the description and info; throttling carries retry-after', async () => {
    const device = await connectDevice('amqp-raw-2', await enroll('amqp-raw-2'));
    const rejection = async (request: Promise<Message>): Promise<AmqpError & { info?: Json }> =>
      request.then(
        () => assert.fail('expected a rejection'),
        (error: unknown) => error as AmqpError & { info?: Json },
      );

    const unknownOperation = await rejection(poll(device, 'nope'));
    assert.equal(unknownOperation.condition, 'amqp:not-found');
    const body = JSON.parse(unknownOperation.description ?? '') as Json;
    assert.equal(body.errorCode, 404204);
    assert.deepEqual(Object.keys(body).sort(), ['errorCode', 'message', 'timestampUtc', 'trackingId']);
    assert.deepEqual({ errorCode: unknownOperation.info?.errorCode, trackingId: unknownOperation.info?.trackingId }, { errorCode: 404204, trackingId: body.trackingId });

    const badType = await rejection(device.request({ 'iotdps-operation-type': 'iotdps-reboot' }));
    assert.equal(badType.condition, 'com.microsoft:argument-error');
    assert.equal(badType.info?.errorCode, 400001);

    const mismatch = await rejection(register(device, rhea.message.data_section(Buffer.from(JSON.stringify({ registrationId: 'other' })))));
    assert.equal(mismatch.info?.errorCode, 400009);

    // One poll per second per device, bursts of two: quick polls are soon throttled.
    let throttled = await rejection(poll(device, 'nope'));
    for (let attempt = 0; attempt < 3 && throttled.condition === 'amqp:not-found'; attempt += 1) throttled = await rejection(poll(device, 'nope'));
    assert.equal(throttled.condition, 'com.microsoft:device-container-throttled');
    assert.equal(throttled.info?.errorCode, 429001);
    assert.match(String(throttled.info?.['retry-after']), /^\d+$/);
    assert.equal(throttled.info?.['Retry-After'], throttled.info?.['retry-after']);
    device.connection.close();
  });

  test("a link at another device's address is closed with unauthorized-access, and the refusal is logged with why", async () => {
    await enroll('amqp-raw-victim');
    const device = await connectDevice('amqp-raw-3', await enroll('amqp-raw-3'));
    const foreign = device.connection.open_receiver({ source: { address: `${idScope}/registrations/amqp-raw-victim` } });
    const [context] = (await once(foreign, 'receiver_close')) as [{ receiver: Receiver }];
    assert.equal((context.receiver.error as AmqpError | undefined)?.condition, 'amqp:unauthorized-access');
    const logged = linkRefusals.find((entry) => entry.address === `${idScope}/registrations/amqp-raw-victim`);
    assert.equal(logged?.reason, `the link names registration '${idScope}/registrations/amqp-raw-victim', the connection authenticated '${idScope}/registrations/amqp-raw-3'`);
    assert.equal(logged?.role, 'sender');
    // The device's own links still work.
    assert.equal(json(await register(device)).status, 'assigning');
    device.connection.close();
  });

  test('links at the full URI form (azure-iot-sdk-c) work; the attach reply advertises max-message-size', async () => {
    const uri = `amqps://localhost/${idScope}/registrations/amqp-raw-uri`;
    const device = await connectDevice('amqp-raw-uri', await enroll('amqp-raw-uri'), uri);
    // The reply attach keeps the address the device used, and names the largest message taken.
    const attachOf = (link: Sender | Receiver): Json => (link as unknown as { remote: { attach: Json } }).remote.attach;
    assert.equal(attachOf(device.sender).target.address, uri);
    assert.equal(attachOf(device.receiver).source.address, uri);
    assert.equal(Number(attachOf(device.sender).max_message_size), 4096);
    assert.equal(Number(attachOf(device.receiver).max_message_size), 4096);
    const accepted = json(await register(device));
    assert.equal(accepted.status, 'assigning');
    await new Promise((resolve) => setTimeout(resolve, 1100));
    assert.equal(json(await poll(device, accepted.operationId as string)).status, 'assigned');
    device.connection.close();
  });

  test('a URI-form link whose host is not one of the instance host names is refused and logged', async () => {
    const device = await connectDevice('amqp-raw-host', await enroll('amqp-raw-host'));
    const address = `amqps://elsewhere.example.net/${idScope}/registrations/amqp-raw-host`;
    const stray = device.connection.open_receiver({ source: { address } });
    const [context] = (await once(stray, 'receiver_close')) as [{ receiver: Receiver }];
    assert.equal((context.receiver.error as AmqpError | undefined)?.condition, 'amqp:unauthorized-access');
    const logged = linkRefusals.find((entry) => entry.address === address);
    assert.equal(logged?.reason, "the host 'elsewhere.example.net' is not one of this server's host names (localhost, 127.0.0.1)");
    device.connection.close();
  });

  test('a wrong key fails SASL', async () => {
    await enroll('amqp-raw-4');
    await assert.rejects(connectDevice('amqp-raw-4', Buffer.alloc(32, 7).toString('base64')));
  });

  test('garbage and a frame over the limit close that connection only; the endpoint keeps serving', async () => {
    const bystander = await connectDevice('amqp-raw-5', await enroll('amqp-raw-5'));
    const raw = (): Promise<TLSSocket> =>
      new Promise((resolve, reject) => {
        const socket = tlsConnect({ host: 'localhost', port: PORT, ca: readCa() }, () => resolve(socket));
        socket.on('error', reject);
      });
    const closedByServer = async (socket: TLSSocket): Promise<void> => {
      socket.on('error', () => undefined);
      await Promise.race([new Promise((resolve) => socket.once('close', resolve)), new Promise((_, reject) => setTimeout(() => reject(new Error('still open')), 3000).unref())]);
    };
    const garbage = await raw();
    garbage.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closedByServer(garbage);
    // After the SASL protocol header, a frame announcing 1 GB.
    const oversized = await raw();
    oversized.write(Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0, 0x40, 0, 0, 0, 2, 1, 0, 0]));
    oversized.write(Buffer.alloc(8192));
    await closedByServer(oversized);

    assert.equal(json(await register(bystander)).status, 'assigning');
    bystander.connection.close();
  });
});
