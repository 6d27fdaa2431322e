import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { after, before, test } from 'node:test';
import { call, startServer, type TestServer } from '../harness.js';
import { deviceToken, rawRegister, type Json } from '../devices.js';

/**
 * No stranger can stall a device (issue 13.2). A stranger who knows a device's registration ID and sends junk tokens
 * for it — polls, status lookups, registers — from its own address must never make the real device's valid requests
 * answer 429; the flood throttles the flooder (by its source address) instead, before any credential work.
 *
 * The stranger connects from 127.0.0.2 (a loopback address of its own), the device from 127.0.0.1.
 */
const STRANGER = '127.0.0.2';
const API = 'api-version=2019-03-31';
let server: TestServer;
let idScope = '';
let deviceKey = '';

interface Answer {
  status: number;
  body: Json;
  retryAfter: string | undefined;
}

/** A device API request from a chosen local address (fetch cannot choose one). */
function from(localAddress: string, method: string, path: string, authorization: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const outgoing = httpsRequest(
      {
        host: '127.0.0.1',
        servername: 'localhost',
        port: 443,
        method,
        path,
        localAddress,
        headers: { host: 'localhost', authorization, ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
        agent: false,
      },
      (response) => {
        let text = '';
        response.on('data', (chunk: Buffer) => (text += chunk.toString()));
        response.on('end', () => {
          const retryAfter = response.headers['retry-after'];
          resolve({ status: response.statusCode ?? 0, body: text === '' ? {} : (JSON.parse(text) as Json), retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter });
        });
      },
    );
    outgoing.on('error', reject);
    outgoing.end(payload);
  });
}

before(async () => {
  // A small refusal budget (2/s, burst 4) so the flood below is over it for certain, however slow the machine.
  server = await startServer({ refusedAttemptsPerSecondPerSource: 2 });
  idScope = server.info.idScope;
  const enrollment = await call('PUT', '/enrollments/victim?api-version=2021-10-01', {
    headers: { authorization: server.token() },
    body: { registrationId: 'victim', attestation: { type: 'symmetricKey' } },
  });
  assert.equal(enrollment.status, 200, enrollment.text);
  deviceKey = (enrollment.body as Json).attestation.symmetricKey.primaryKey as string;
});

after(async () => {
  await server.close();
});

test("a stranger's junk polls, lookups and registers throttle the stranger, never the device", async () => {
  const registered = await rawRegister(idScope, 'victim', deviceKey);
  assert.equal(registered.status, 'assigned');
  const operationId = registered.operationId as string;
  const junk = `SharedAccessSignature sr=${idScope}%2Fregistrations%2Fvictim&sig=${encodeURIComponent(Buffer.alloc(32, 7).toString('base64'))}&se=${Math.floor(Date.now() / 1000) + 3600}`;

  const junkRequest = (i: number): Promise<Answer> => {
    const kind = i % 3;
    return kind === 0
      ? from(STRANGER, 'GET', `/${idScope}/registrations/victim/operations/${operationId}?${API}`, junk)
      : kind === 1
        ? from(STRANGER, 'POST', `/${idScope}/registrations/victim?${API}`, junk, { registrationId: 'victim' })
        : from(STRANGER, 'PUT', `/${idScope}/registrations/victim/register?${API}`, junk, { registrationId: 'victim' });
  };
  // The stranger's refusal budget (burst 4) runs out: 401s, then a 429 with Retry-After.
  const first: number[] = [];
  for (let i = 0; i < 8 && !first.includes(429); i += 1) first.push((await junkRequest(i)).status);
  assert.deepEqual(first, [401, 401, 401, 401, 429], 'four refusals, then the source is throttled');
  // Inside that Retry-After window even a valid token from the stranger's address is a 429, answered before any
  // credential work.
  const fromStranger = await from(STRANGER, 'POST', `/${idScope}/registrations/victim?${API}`, deviceToken(idScope, 'victim', deviceKey), { registrationId: 'victim' });
  assert.equal(fromStranger.status, 429, JSON.stringify(fromStranger.body));
  assert.equal(fromStranger.body.errorCode, 429001);
  assert.match(fromStranger.retryAfter ?? '', /^[1-9]\d*$/, 'a 429 says when to retry');

  // The rest of the flood: far more than the device's poll budget (5/s, burst 10), all refused or throttled.
  const started = Date.now();
  const statuses: number[] = [];
  for (let i = 0; i < 40; i += 1) statuses.push((await junkRequest(i)).status);
  const elapsedSeconds = (Date.now() - started) / 1000;
  assert.ok(statuses.every((status) => status === 401 || status === 429), `stranger statuses: ${statuses.join(',')}`);
  // At 2 refusals a second, the stranger gets at most that many more 401s; the rest are cheap 429s.
  const refusals = statuses.filter((status) => status === 401).length;
  assert.ok(refusals <= Math.ceil(elapsedSeconds * 2) + 2, `${refusals} refusals in ${elapsedSeconds} s: ${statuses.join(',')}`);

  // The device, right after the flood, from its own address: every valid poll and lookup is answered.
  const authorization = deviceToken(idScope, 'victim', deviceKey);
  // 4 polls and 4 lookups: within the device's own budget (burst 10).
  for (let i = 0; i < 4; i += 1) {
    const poll = await from('127.0.0.1', 'GET', `/${idScope}/registrations/victim/operations/${operationId}?${API}`, authorization);
    assert.equal(poll.status, 200, `poll ${i}: ${JSON.stringify(poll.body)}`);
    assert.equal(poll.body.status, 'assigned');
    const lookup = await from('127.0.0.1', 'POST', `/${idScope}/registrations/victim?${API}`, authorization, { registrationId: 'victim' });
    assert.equal(lookup.status, 200, `lookup ${i}: ${JSON.stringify(lookup.body)}`);
  }
  const again = await rawRegister(idScope, 'victim', deviceKey);
  assert.equal(again.status, 'assigned', 'the device can register again');

  // The device's own limit still holds for the device itself: a valid poll flood is throttled per device.
  const own: number[] = [];
  for (let i = 0; i < 20; i += 1) {
    own.push((await from('127.0.0.1', 'GET', `/${idScope}/registrations/victim/operations/${operationId}?${API}`, authorization)).status);
  }
  assert.ok(own.includes(429), `a device polling 20 times at once is throttled: ${own.join(',')}`);
});
