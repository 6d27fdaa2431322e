import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config/config.js';
import { startServer, type TestServer } from './harness.js';
import { cliRunners } from './cli-runner.js';
import { rawRegister, type Json } from './devices.js';

/**
 * What the CLI used to leave to hand work: a group device's key, the instance's log retention and event webhook, an
 * initial twin of the wrong shape, config errors and help texts that said too little. In-process runs of the real
 * program against a real server (the child-process path is covered by cli.test.ts).
 */
let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.close();
});

const { runInProcess } = cliRunners(() => server.connectionString);
const ok = async (args: string[]): Promise<string> => {
  const result = await runInProcess(args);
  assert.equal(result.code, 0, `provisiond ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
};
const json = async (args: string[]): Promise<Json> => JSON.parse(await ok([...args, '--json'])) as Json;

test('group device-key prints the key a device of the group registers with, and the device registers with it', async () => {
  const group = await json(['group', 'create', 'derive-line']);
  const groupKeys = group.attestation.symmetricKey as { primaryKey: string; secondaryKey: string };
  const derived = await json(['group', 'device-key', 'derive-line', 'derive-sensor-1']);
  const expected = (key: string) => createHmac('sha256', Buffer.from(key, 'base64')).update('derive-sensor-1').digest('base64');
  assert.deepEqual(derived, {
    enrollmentGroupId: 'derive-line',
    registrationId: 'derive-sensor-1',
    primaryKey: expected(groupKeys.primaryKey),
    secondaryKey: expected(groupKeys.secondaryKey),
  });
  const human = await ok(['group', 'device-key', 'derive-line', 'derive-sensor-1']);
  assert.match(human, new RegExp(`primary key: +${derived.primaryKey.replace(/[+/]/g, '\\$&')}`));
  assert.match(human, /formula: +base64\(HMAC-SHA256/);

  const registered = await rawRegister(server.info.idScope, 'derive-sensor-1', derived.primaryKey as string);
  assert.equal(registered.status, 'assigned');

  const missing = await runInProcess(['group', 'device-key', 'no-such-group', 'derive-sensor-1']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /errorCode 404/);
  const badId = await runInProcess(['group', 'device-key', 'derive-line', 'not valid!']);
  assert.equal(badId.code, 1);
  assert.match(badId.stderr, /'not valid!' is not a valid registration ID/);
});

test('instance update sets the system-log retention and the lifecycle-event webhook, and removes it', async () => {
  const updated = await json(['instance', 'update', '--audit-retention-days', '30', '--event-webhook', 'https://hooks.example.com/provisiond']);
  assert.equal(updated.auditRetentionDays, 30);
  assert.equal(updated.eventWebhookUrl, 'https://hooks.example.com/provisiond');
  // A generated secret is printed once (the server never shows it again), long enough to be accepted.
  assert.match(String(updated.eventWebhookSecret), /^[A-Za-z0-9_-]{43}$/);
  const shown = await ok(['instance', 'show']);
  assert.match(shown, /system log retention: +30 days/);
  assert.match(shown, /lifecycle event webhook: +https:\/\/hooks\.example\.com\/provisiond/);
  assert.doesNotMatch(shown, new RegExp(String(updated.eventWebhookSecret)));

  const given = await json(['instance', 'update', '--event-webhook', 'https://hooks.example.com/other', '--event-webhook-secret', 'a-secret-of-20-chars']);
  assert.equal(given.eventWebhookUrl, 'https://hooks.example.com/other');
  assert.equal(given.eventWebhookSecret, undefined);
  const short = await runInProcess(['instance', 'update', '--event-webhook', 'https://hooks.example.com/x', '--event-webhook-secret', 'short']);
  assert.equal(short.code, 1);
  assert.match(short.stderr, /eventWebhook\.secret must NOT have fewer than 16 characters.*errorCode 400004/);

  const removed = await json(['instance', 'update', '--no-event-webhook']);
  assert.equal(removed.eventWebhookUrl, null);
  const nothing = await runInProcess(['instance', 'update']);
  assert.equal(nothing.code, 1);
  assert.match(nothing.stderr, /nothing to update: give .*--audit-retention-days/);
  const zero = await runInProcess(['instance', 'update', '--audit-retention-days', '0']);
  assert.equal(zero.code, 1);
});

test('--initial-twin refuses what is not a twin, naming where a value belongs', async () => {
  for (const [twin, message] of [
    ['{"foo":1}', /--initial-twin takes only "tags" and "properties" .*not "foo"; a desired property is written \{"properties":\{"desired":\{"foo":1\}\}\}/],
    ['{"properties":{"reported":{"a":1}}}', /"properties" takes only "desired" \(reported properties come from the device\), not "reported"/],
    ['{"tags":[1]}', /"tags" must be an object/],
    ['{"properties":{"desired":3}}', /"properties.desired" must be an object/],
    ['[1]', /--initial-twin must be a JSON object/],
  ] as const) {
    const result = await runInProcess(['enrollment', 'create', 'twin-shape', '--initial-twin', twin]);
    assert.equal(result.code, 1, twin);
    assert.match(result.stderr, message);
  }
  const absent = await runInProcess(['enrollment', 'show', 'twin-shape']);
  assert.match(absent.stderr, /errorCode 404/, 'nothing was created');
  const created = await json(['enrollment', 'create', 'twin-shape', '--initial-twin', '{"tags":{"line":"1"},"properties":{"desired":{"foo":1}}}']);
  assert.deepEqual(created.initialTwin, { tags: { line: '1' }, properties: { desired: { foo: 1 } } });
});

test('a config error names the allowed values', () => {
  assert.throws(
    () => loadConfig({ flags: { logLevel: 'loud', httpsPort: 70000 } }),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.problems.includes('logLevel: must be one of fatal, error, warn, info, debug, trace, silent (got "loud")') &&
      error.problems.includes('httpsPort: Expected integer to be less or equal to 65535 (got 70000)'),
  );
});

test('info --help lists only what info uses; registration list --help filters on registration fields', async () => {
  const info = await ok(['info', '--help']);
  for (const flag of ['--data-dir', '--config', '--https-port', '--host-names', '--json']) assert.ok(info.includes(flag), flag);
  for (const flag of ['--listen-host', '--log-level', '--max-device-connections', '--device-idle-timeout-ms', '--websockets', '--mqtt-max-packet-bytes']) {
    assert.ok(!info.includes(flag), `info --help lists ${flag}`);
  }
  const serve = await ok(['serve', '--help']);
  for (const flag of ['--data-dir', '--listen-host', '--log-level', '--max-device-connections']) assert.ok(serve.includes(flag), flag);
  const unknown = await runInProcess(['info', '--listen-host', '0.0.0.0']);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /unknown option '--listen-host'/);

  const registrations = await ok(['registration', 'list', '--help']);
  assert.match(registrations, /status = 'failed'/);
  assert.doesNotMatch(registrations, /provisioningStatus/);
});
