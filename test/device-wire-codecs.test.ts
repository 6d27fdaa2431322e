import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AmqpFrameSizeGuard } from '../src/transports/amqp/frame-size.js';
import { MqttPacketSizeGuard } from '../src/transports/mqtt/packet-size.js';
import { isResponseFilter, parseRequestTopic, parseResponseTopic, parseUsername, responseTopic } from '../src/transports/mqtt/topics.js';
import { parseRegistrationPath } from '../src/transports/registration-path.js';

/** The pure parts of the MQTT and AMQP device endpoints: the DPS topic codec and the frame size guards. */
describe('MQTT topic codec', () => {
  const usernames: Array<[string, unknown]> = [
    [
      '0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1',
      { idScope: '0ne00000001', registrationId: 'dev-1', apiVersion: '2019-03-31', clientVersion: 'azure-iot-provisioning-device/1.9.1' },
    ],
    ['0ne00000001/registrations/dev-1/api-version=2021-06-01', { idScope: '0ne00000001', registrationId: 'dev-1', apiVersion: '2021-06-01', clientVersion: undefined }],
    // The C SDK may put an unencoded user agent with slashes after the api-version.
    [
      '0ne00000001/registrations/dev:1/api-version=2021-06-01&ClientVersion=iothubclient/1.14.0 (native; Linux)',
      { idScope: '0ne00000001', registrationId: 'dev:1', apiVersion: '2021-06-01', clientVersion: 'iothubclient/1.14.0 (native; Linux)' },
    ],
    ['0ne00000001/registrations/dev-1', undefined],
    ['0ne00000001/registrations/dev-1/', undefined],
    ['0ne00000001/registrations/dev-1/api-version=', undefined],
    ['0ne00000001/devices/dev-1/api-version=2019-03-31', undefined],
    ['/registrations/dev-1/api-version=2019-03-31', undefined],
    ['dev-1', undefined],
    ['', undefined],
  ];
  for (const [username, expected] of usernames) {
    test(`username ${JSON.stringify(username)}`, () => assert.deepEqual(parseUsername(username), expected));
  }

  const requests: Array<[string, unknown]> = [
    ['$dps/registrations/PUT/iotdps-register/?$rid=1', { kind: 'register', rid: '1' }],
    ['$dps/registrations/PUT/iotdps-register/?$rid=edaa4ce0-8e6a-4b8c-a2b6-0f0d2a1c9e11', { kind: 'register', rid: 'edaa4ce0-8e6a-4b8c-a2b6-0f0d2a1c9e11' }],
    ['$dps/registrations/PUT/iotdps-register/?$rid=a%20b', { kind: 'register', rid: 'a%20b' }],
    [
      '$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550',
      { kind: 'operationStatus', rid: '2', operationId: '5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550' },
    ],
    ['$dps/registrations/GET/iotdps-get-operationstatus/?operationId=x&$rid=9', { kind: 'operationStatus', rid: '9', operationId: 'x' }],
    ['$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2', undefined],
    ['$dps/registrations/PUT/iotdps-register/', undefined],
    ['$dps/registrations/PUT/iotdps-register?$rid=1', undefined],
    ['$dps/registrations/res/200/?$rid=1', undefined],
    ['devices/dev-1/messages/events/?$rid=1', undefined],
  ];
  for (const [topic, expected] of requests) {
    test(`request topic ${topic}`, () => assert.deepEqual(parseRequestTopic(topic), expected));
  }

  test('response topics: retry-after only when given, $rid verbatim, and they parse back', () => {
    assert.equal(responseTopic(202, 'edaa4ce0', 3), '$dps/registrations/res/202/?$rid=edaa4ce0&retry-after=3');
    assert.equal(responseTopic(200, '1'), '$dps/registrations/res/200/?$rid=1');
    assert.equal(responseTopic(429, 'a%20b', 1), '$dps/registrations/res/429/?$rid=a%20b&retry-after=1');
    assert.deepEqual(parseResponseTopic(responseTopic(401, 'x.1')), { status: 401, rid: 'x.1', retryAfterSeconds: undefined });
    assert.deepEqual(parseResponseTopic(responseTopic(202, 'r', 0)), { status: 202, rid: 'r', retryAfterSeconds: 0 });
    assert.equal(parseResponseTopic('$dps/registrations/PUT/iotdps-register/?$rid=1'), undefined);
  });

  test('only $dps/registrations/res/# is a response filter', () => {
    assert.equal(isResponseFilter('$dps/registrations/res/#'), true);
    for (const filter of ['#', '$dps/#', '$dps/registrations/res/+', '$dps/registrations/res/#/', '$DPS/registrations/res/#', '$dps/registrations/res/202/#']) {
      assert.equal(isResponseFilter(filter), false, filter);
    }
  });

  test('registration paths', () => {
    assert.deepEqual(parseRegistrationPath('0ne00000001/registrations/dev-1'), { idScope: '0ne00000001', registrationId: 'dev-1' });
    assert.deepEqual(parseRegistrationPath('0ne00000001/Registrations/dev-1'), { idScope: '0ne00000001', registrationId: 'dev-1' });
    for (const text of ['0ne00000001/registrations/', '0ne00000001/registrations/a/b', '/registrations/a', '0ne00000001/devices/a', '']) {
      assert.equal(parseRegistrationPath(text), undefined, text);
    }
  });
});

/** MQTT fixed header: type byte, then the remaining length in 1-4 bytes of 7 bits (low first). */
function mqttHeader(type: number, remainingLength: number): Buffer {
  const bytes = [type];
  let length = remainingLength;
  do {
    let byte = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) byte |= 0x80;
    bytes.push(byte);
  } while (length > 0);
  return Buffer.from(bytes);
}

describe('MQTT packet size guard', () => {
  test('packets up to the limit pass, across any chunking', () => {
    const stream = Buffer.concat([mqttHeader(0x10, 20), Buffer.alloc(20), mqttHeader(0xc0, 0), mqttHeader(0x30, 1019), Buffer.alloc(1019)]);
    for (const size of [1, 2, 3, 7, 1024, stream.length]) {
      const guard = new MqttPacketSizeGuard(1024);
      for (let offset = 0; offset < stream.length; offset += size) assert.equal(guard.accept(stream.subarray(offset, offset + size)), true, `chunks of ${size}`);
    }
  });

  test('a packet over the limit is refused from its header, before its body arrives', () => {
    const guard = new MqttPacketSizeGuard(1024);
    assert.equal(guard.accept(mqttHeader(0x30, 1022)), false, '1 + 2 + 1022 bytes');
    assert.equal(guard.accept(Buffer.alloc(1)), false, 'stays refused');
    const split = new MqttPacketSizeGuard(1024);
    const header = mqttHeader(0x30, 10 * 1024 * 1024);
    assert.equal(split.accept(header.subarray(0, 2)), true);
    assert.equal(split.accept(header.subarray(2)), false);
  });

  test('a remaining length of more than four bytes is malformed', () => {
    assert.equal(new MqttPacketSizeGuard(1 << 30).accept(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])), false);
    assert.equal(new MqttPacketSizeGuard(1 << 30).accept(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f])), true);
  });
});

function amqpFrame(size: number): Buffer {
  const frame = Buffer.alloc(size);
  frame.writeUInt32BE(size, 0);
  frame[4] = 2;
  return frame;
}
const SASL_HEADER = Buffer.from([0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0]);
const AMQP_HEADER = Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 1, 0, 0]);

describe('AMQP frame size guard', () => {
  test('protocol headers and frames up to the limit pass, across any chunking', () => {
    const stream = Buffer.concat([SASL_HEADER, amqpFrame(64), AMQP_HEADER, amqpFrame(8), amqpFrame(512), amqpFrame(100)]);
    for (const size of [1, 3, 5, 64, stream.length]) {
      const guard = new AmqpFrameSizeGuard(512);
      for (let offset = 0; offset < stream.length; offset += size) assert.equal(guard.accept(stream.subarray(offset, offset + size)), true, `chunks of ${size}`);
    }
  });

  test('a frame over the limit, or smaller than a frame header, is refused', () => {
    const big = new AmqpFrameSizeGuard(512);
    assert.equal(big.accept(Buffer.concat([AMQP_HEADER, amqpFrame(16)])), true);
    assert.equal(big.accept(Buffer.from([0, 0, 2, 1])), false);
    assert.equal(big.accept(Buffer.alloc(4)), false, 'stays refused');
    assert.equal(new AmqpFrameSizeGuard(512).accept(Buffer.from([0, 0, 0, 4])), false);
    assert.equal(new AmqpFrameSizeGuard(512).accept(Buffer.from('GET / HTTP/1.1\r\n')), false);
  });
});
