import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Command } from 'commander';
import { buildProgram } from '../src/cli/program.js';
import { CONFIG_ENV_VARS, ConfigSchema } from '../src/config/config.js';
import { lockDataDir } from '../src/store/data-dir-lock.js';
import { CA_DIR, startServer, type TestServer } from './harness.js';
import { cliRunners, type Env, type Run } from './cli-runner.js';

/**
 * The provisiond command line against a real server over HTTPS. The round trips a user depends on run `provisiond` as
 * a child process, exactly as a shell does (the connection string from PROVISIOND_CONNECTION_STRING, trust from the
 * NODE_EXTRA_CA_CERTS that scripts/test.sh sets, exit codes and stderr from main.ts); the many smaller checks run the
 * same program in this process, because every process start costs seconds. `info` and `serve` run on their own data
 * directories. The docs are checked against the program and the config schema, so a new command, option or setting
 * cannot go undocumented.
 */
let server: TestServer;
const scratch: string[] = [];

before(async () => {
  server = await startServer();
});
after(async () => {
  await server.close();
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

type Doc = Record<string, unknown>;

const { runChild, runInProcess } = cliRunners(() => server.connectionString);

/** Helpers over one way of running the program. */
function runner(run: (args: string[], env?: Env) => Promise<Run>) {
  const ok = async (args: string[], env: Env = {}): Promise<string> => {
    const result = await run(args, env);
    assert.equal(result.code, 0, `provisiond ${args.join(' ')} failed: ${result.stderr}`);
    assert.equal(result.stderr, '');
    return result.stdout;
  };
  const json = async (args: string[], env: Env = {}): Promise<unknown> => JSON.parse(await ok([...args, '--json'], env)) as unknown;
  return {
    run,
    ok,
    /** A command run with --json that prints one object. */
    async object(args: string[], env: Env = {}): Promise<Doc> {
      const value = await json(args, env);
      assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value), `expected an object, got ${JSON.stringify(value)}`);
      return value as Doc;
    },
    /** A command run with --json that prints a list. */
    async list(args: string[], env: Env = {}): Promise<Doc[]> {
      const value = await json(args, env);
      assert.ok(Array.isArray(value), `expected an array, got ${JSON.stringify(value)}`);
      return value as Doc[];
    },
  };
}
const child = runner(runChild);
const local = runner(runInProcess);

/** The values of one field of listed documents, in order. */
const field = (items: Doc[], name: string): unknown[] => items.map((item) => item[name]);

/** A refused command: exit code 1, one `provisiond: …` line on stderr with no stack trace, nothing on stdout. */
function assertRefused(run: Run, pattern: RegExp): void {
  assert.equal(run.code, 1, `expected exit code 1, got ${String(run.code)}; stdout: ${run.stdout}`);
  assert.equal(run.stdout, '');
  assert.match(run.stderr, /^provisiond: [^\n]+\n$/);
  assert.match(run.stderr, pattern);
  assert.doesNotMatch(run.stderr, /\n\s+at /);
}

async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

const KEY_1 = Buffer.alloc(32, 1).toString('base64');
const KEY_2 = Buffer.alloc(32, 2).toString('base64');
const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$/;

// The commands' tests touch different entries, so they run side by side: each CLI run is a process start.
describe('provisiond CLI', { concurrency: 4 }, () => {
  test('enrollment: create, show, keys, update, list --where, delete', async () => {
    const created = await child.object([
      'enrollment', 'create', 'cli-dev-1',
      '--primary-key', KEY_1, '--secondary-key', KEY_2,
      '--device-id', 'cli-device-1',
      '--iot-hub', 'localhost',
      '--initial-twin', '{"tags":{"line":"a"},"properties":{"desired":{"interval":5}}}',
      '--reprovision', 'reset',
    ]);
    assert.match(String(created.etag), /^".+"$/);
    assert.match(String(created.createdDateTimeUtc), TIMESTAMP);
    // PUT answers carry the keys (dps-wire.md §2.3).
    assert.deepEqual(created, {
      registrationId: 'cli-dev-1',
      deviceId: 'cli-device-1',
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: KEY_1, secondaryKey: KEY_2 } },
      capabilities: { iotEdge: false },
      initialTwin: { tags: { line: 'a' }, properties: { desired: { interval: 5 } } },
      etag: created.etag,
      provisioningStatus: 'enabled',
      reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: false },
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.createdDateTimeUtc,
      iotHubs: ['localhost'],
    });

    // GET shows no secrets.
    const shown = await child.object(['enrollment', 'show', 'cli-dev-1']);
    assert.deepEqual(shown, { ...created, attestation: { type: 'symmetricKey' } });
    const human = await local.ok(['enrollment', 'show', 'cli-dev-1']);
    assert.match(human, /^enrollment 'cli-dev-1'\n/);
    assert.match(human, /device ID: +cli-device-1\n/);
    assert.match(human, /reprovisioning: +reset to the initial twin\n/);
    assert.ok(!human.includes(KEY_1), 'show must not print keys');

    assert.deepEqual(await child.object(['enrollment', 'keys', 'cli-dev-1']), {
      type: 'symmetricKey',
      symmetricKey: { primaryKey: KEY_1, secondaryKey: KEY_2 },
    });
    assert.match(await local.ok(['enrollment', 'keys', 'cli-dev-1']), new RegExp(`primary key: +${KEY_1.replaceAll('+', '\\+')}\n`));

    const updated = await child.object(['enrollment', 'update', 'cli-dev-1', '--disabled']);
    assert.notEqual(updated.etag, created.etag);
    assert.deepEqual(updated, {
      ...created,
      provisioningStatus: 'disabled',
      etag: updated.etag,
      lastUpdatedDateTimeUtc: updated.lastUpdatedDateTimeUtc,
    });
    // GET-modify-PUT keeps the keys it never saw.
    assert.deepEqual(await local.object(['enrollment', 'keys', 'cli-dev-1']), created.attestation);

    await local.object(['enrollment', 'create', 'cli-dev-2']);
    await local.object(['enrollment', 'create', 'cli-dev-3', '--disabled']);
    const disabled = await child.list(['enrollment', 'list', '--where', "provisioningStatus = 'disabled'"]);
    assert.deepEqual(field(disabled, 'registrationId'), ['cli-dev-1', 'cli-dev-3']);
    const table = await local.ok(['enrollment', 'list', '--where', "registrationId LIKE 'cli-dev-%' AND provisioningStatus = 'enabled'"]);
    assert.equal(table.split('\n')[0]?.replace(/ +/g, ' '), 'REGISTRATION ID ATTESTATION STATUS DEVICE ID REGISTRATION IOT HUBS');
    assert.match(table, /\ncli-dev-2 +symmetricKey +enabled +- +- +\*\n$/);

    // One item per page: the CLI follows x-ms-continuation to the end, or stops at --max.
    const all = await local.list(['enrollment', 'list', '--page-size', '1', '--where', "registrationId LIKE 'cli-dev-%'"]);
    assert.deepEqual(field(all, 'registrationId'), ['cli-dev-1', 'cli-dev-2', 'cli-dev-3']);
    assert.deepEqual(field(await local.list(['enrollment', 'list', '--page-size', '1', '--max', '2', '--where', "registrationId LIKE 'cli-dev-%'"]), 'registrationId'), ['cli-dev-1', 'cli-dev-2']);

    assertRefused(await local.run(['enrollment', 'create', 'cli-dev-2']), /enrollment 'cli-dev-2' already exists/);
    assertRefused(
      await local.run(['enrollment', 'update', 'cli-dev-1', '--disabled', '--primary-key', 'not base64!']),
      /errorCode 400011/,
    );
    assert.equal(await child.ok(['enrollment', 'delete', 'cli-dev-1']), "deleted enrollment 'cli-dev-1'\n");
    assertRefused(await child.run(['enrollment', 'show', 'cli-dev-1']), /Enrollment 'cli-dev-1' was not found\. \(HTTP 404, errorCode 404201, trackingId [0-9a-f-]{36}\)/);
  });

  test('enrollment: X.509 from a certificate file, and a group with a CA reference', async () => {
    const certificate = join(CA_DIR, 'ca.pem');
    const x509 = await local.object(['enrollment', 'create', 'cli-x509', '--certificate', certificate]);
    const attestation = x509.attestation as { type: string; x509: { clientCertificates: { primary: { info: { subjectName: string } } } } };
    assert.equal(attestation.type, 'x509');
    assert.equal(attestation.x509.clientCertificates.primary.info.subjectName, 'CN=provisiond test CA');
    const keys = await local.object(['enrollment', 'keys', 'cli-x509']);
    assert.equal(
      (keys as { x509: { clientCertificates: { primary: { certificate: string } } } }).x509.clientCertificates.primary.certificate.trim(),
      readFileSync(certificate, 'utf8').trim(),
    );
    // An update that touches something else keeps the certificate (GET shows only its info).
    const edged = await local.object(['enrollment', 'update', 'cli-x509', '--edge']);
    assert.deepEqual(edged.attestation, attestation);
    assert.deepEqual(edged.capabilities, { iotEdge: true });

    const group = await local.object(['group', 'create', 'cli-ca-group', '--ca-reference', 'my-root', '--allocation-policy', 'hashed']);
    assert.deepEqual(group.attestation, { type: 'x509', x509: { caReferences: { primary: 'my-root' } } });
    assert.equal(group.allocationPolicy, 'hashed');
    assertRefused(await local.run(['group', 'create', 'cli-bad', '--attestation', 'x509']), /an X\.509 group needs --certificate or --ca-reference/);
  });

  test('group: create with symmetric keys, show, keys, list, delete', async () => {
    const created = await child.object(['group', 'create', 'cli-group', '--edge', '--webhook-url', 'https://alloc.example.com/api?code=secret']);
    const keys = (created.attestation as { symmetricKey: { primaryKey: string; secondaryKey: string } }).symmetricKey;
    assert.match(keys.primaryKey, /^[A-Za-z0-9+/]+={0,2}$/);
    assert.deepEqual(created, {
      enrollmentGroupId: 'cli-group',
      attestation: { type: 'symmetricKey', symmetricKey: keys },
      capabilities: { iotEdge: true },
      etag: created.etag,
      provisioningStatus: 'enabled',
      reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
      createdDateTimeUtc: created.createdDateTimeUtc,
      lastUpdatedDateTimeUtc: created.createdDateTimeUtc,
      allocationPolicy: 'custom',
      customAllocationDefinition: { webhookUrl: 'https://alloc.example.com/api?code=secret', apiVersion: '2021-10-01' },
    });
    const shown = await local.ok(['group', 'show', 'cli-group']);
    assert.match(shown, /^enrollment group 'cli-group'\n/);
    assert.match(shown, /allocation webhook: +https:\/\/alloc\.example\.com\/api\?code=\*\*\*\* \(api-version 2021-10-01\)\n/);
    assert.deepEqual(await local.object(['group', 'keys', 'cli-group']), { type: 'symmetricKey', symmetricKey: keys });
    // The redacted webhook URL that GET returns goes back on update, and the server keeps the real one.
    const updated = await local.object(['group', 'update', 'cli-group', '--disabled']);
    assert.deepEqual(updated.customAllocationDefinition, created.customAllocationDefinition);

    assert.ok(field(await local.list(['group', 'list']), 'enrollmentGroupId').includes('cli-group'));
    assert.equal(await local.ok(['registration', 'list', '--group', 'cli-group']), "no registration records in group 'cli-group'\n");
    assert.deepEqual(await local.list(['registration', 'list', '--group', 'cli-group']), []);
    assertRefused(await local.run(['registration', 'show', 'never-registered']), /errorCode 404202/);
    assert.equal(await local.ok(['group', 'delete', 'cli-group']), "deleted enrollment group 'cli-group'\n");
    assertRefused(await local.run(['registration', 'list', '--group', 'cli-group']), /errorCode 404203/);
  });

  test('policy: a policy with limited rights reads but is refused writes and configuration', async () => {
    const policy = await child.object(['policy', 'create', 'cli-reader', '--rights', 'EnrollmentRead,RegistrationStatusRead']);
    assert.equal(policy.keyName, 'cli-reader');
    assert.equal(policy.rights, 'EnrollmentRead, RegistrationStatusRead');
    const keysText = await local.ok(['policy', 'keys', 'cli-reader']);
    const connectionString = /primary connection string: +(\S+)\n/.exec(keysText)?.[1] ?? '';
    assert.equal(connectionString, `HostName=localhost;SharedAccessKeyName=cli-reader;SharedAccessKey=${String(policy.primaryKey)}`);

    const asReader = { PROVISIOND_CONNECTION_STRING: connectionString };
    assert.ok(Array.isArray(await local.list(['enrollment', 'list'], asReader)));
    assertRefused(
      await child.run(['enrollment', 'create', 'cli-by-reader'], asReader),
      /^provisiond: Unauthorized: this operation needs the EnrollmentWrite right\. \(HTTP 401, errorCode 401002, trackingId /,
    );
    assertRefused(await local.run(['policy', 'list', '--connection-string', connectionString]), /needs the ServiceConfig right.*errorCode 401002/);

    const regenerated = await local.object(['policy', 'regenerate', 'cli-reader', '--key', 'secondary']);
    assert.equal(regenerated.primaryKey, policy.primaryKey);
    assert.notEqual(regenerated.secondaryKey, policy.secondaryKey);
    assert.deepEqual(field(await local.list(['policy', 'list']), 'keyName').sort(), ['cli-reader', 'provisioningserviceowner']);
    assert.equal(await local.ok(['policy', 'delete', 'cli-reader']), "deleted policy 'cli-reader'\n");
    // A deleted policy's key no longer opens anything.
    assertRefused(await local.run(['enrollment', 'list'], asReader), /^provisiond: Unauthorized \(HTTP 401, errorCode 401002/);
  });

  test('hub: link a built-in hub, change it, list, show, unlink', async () => {
    assert.deepEqual(await child.object(['hub', 'link', 'cli-hub.example.com', '--built-in', '--weight', '5']), {
      name: 'cli-hub.example.com',
      builtIn: true,
      allocationWeight: 5,
      applyAllocationPolicy: true,
    });
    // Settings not given are kept: the hub stays built-in with weight 5.
    assert.deepEqual(await local.object(['hub', 'link', 'cli-hub.example.com', '--no-apply-allocation-policy']), {
      name: 'cli-hub.example.com',
      builtIn: true,
      allocationWeight: 5,
      applyAllocationPolicy: false,
    });
    const hubs = await child.list(['hub', 'list']);
    assert.ok(field(hubs, 'name').includes('cli-hub.example.com'));
    const table = await local.ok(['hub', 'list']);
    assert.match(table, /^NAME +BUILT-IN +WEIGHT +APPLY ALLOCATION POLICY +LOCATION\n/);
    assert.match(table, /\ncli-hub\.example\.com +yes +5 +no +-\n/);
    assert.match(await local.ok(['hub', 'show', 'cli-hub.example.com']), /^linked hub 'cli-hub\.example\.com'\n  built-in: +yes\n/);
    assertRefused(await local.run(['hub', 'link', 'new-hub.example.com']), /not linked yet: give --built-in or --hub-connection-string/);
    assertRefused(
      await local.run(['hub', 'link', 'ext.example.com', '--hub-connection-string', 'HostName=other.example.com;SharedAccessKeyName=x;SharedAccessKey=' + KEY_1]),
      /errorCode 400019/,
    );
    assert.equal(await local.ok(['hub', 'unlink', 'cli-hub.example.com']), "unlinked hub 'cli-hub.example.com'\n");
    assertRefused(await local.run(['hub', 'show', 'cli-hub.example.com']), /errorCode 404206/);
  });

  test('instance: show, update, and the operator creates, lists and deletes instances', async () => {
    const instance = await local.object(['instance', 'show']);
    assert.equal(instance.name, 'default');
    assert.equal(instance.idScope, server.info.idScope);
    assert.equal((await local.object(['instance', 'update', '--allocation-policy', 'geoLatency'])).allocationPolicy, 'geoLatency');
    assert.equal((await local.object(['instance', 'update', '--allocation-policy', 'hashed'])).allocationPolicy, 'hashed');

    const created = await local.ok(['instance', 'create', 'cli-tenant', '--host-names', 'tenant.localhost']);
    assert.match(created, /^instance 'cli-tenant'\n  ID scope: +0ne[0-9A-F]{8}\n/);
    assert.match(created, /connection string: +HostName=tenant\.localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=\S+\n$/);
    assert.deepEqual(field(await local.list(['instance', 'list']), 'name').sort(), ['cli-tenant', 'default']);
    assert.equal(await local.ok(['instance', 'delete', 'cli-tenant']), "deleted instance 'cli-tenant'\n");
  });

  test('connection problems are one line on stderr with exit code 1', async () => {
    assertRefused(await local.run(['enrollment', 'list'], { PROVISIOND_CONNECTION_STRING: '' }), /no connection string: pass --connection-string or set PROVISIOND_CONNECTION_STRING/);
    assertRefused(await local.run(['enrollment', 'list'], { PROVISIOND_CONNECTION_STRING: 'HostName=localhost' }), /lacks SharedAccessKeyName, SharedAccessKey/);
    // The owner's key signing for the wrong policy name: the server's plain 401.
    assertRefused(
      await local.run(['enrollment', 'list'], { PROVISIOND_CONNECTION_STRING: server.connectionString.replace('provisioningserviceowner', 'nobody') }),
      /^provisiond: Unauthorized \(HTTP 401, errorCode 401002, trackingId /,
    );
    // A port in HostName is used to connect (and left out of the token); nothing listens on this one.
    const port = await freePort();
    assertRefused(
      await local.run(['enrollment', 'list'], { PROVISIOND_CONNECTION_STRING: server.connectionString.replace('HostName=localhost', `HostName=localhost:${port}`) }),
      new RegExp(`^provisiond: cannot reach https://localhost:${port}: .*ECONNREFUSED`),
    );
    // Without the test CA the server is not trusted; --ca names it.
    const untrusted = { NODE_EXTRA_CA_CERTS: '' };
    assertRefused(await child.run(['instance', 'show'], untrusted), /the server certificate is not trusted.*pass --ca <file> or set NODE_EXTRA_CA_CERTS/);
    assert.match(await child.ok(['instance', 'show', '--ca', join(CA_DIR, 'ca.pem')], untrusted), /^instance 'default'\n/);
  });

  test('info --json reads the details of a data directory a running server holds, and changes nothing in it', async () => {
    const before = readdirSync(server.dataDir).sort();
    const caBefore = readFileSync(join(server.dataDir, 'tls', 'ca.pem'), 'utf8');
    const run = await child.run(['info', '--data-dir', server.dataDir, '--json']);
    assert.equal(run.code, 0, run.stderr);
    const info = JSON.parse(run.stdout) as Record<string, unknown>;
    assert.equal(info.serviceConnectionString, server.info.serviceConnectionString);
    assert.match(String(info.serviceConnectionString), /^HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=[A-Za-z0-9+/]+={0,2}$/);
    assert.equal(info.idScope, server.info.idScope);
    assert.match(String(info.idScope), /^0ne[0-9A-F]{8}$/);
    assert.equal(info.caCertificatePath, join(server.dataDir, 'tls', 'ca.pem'));
    assert.equal(info.builtInHubConnectionString, server.info.builtInHubConnectionString);
    assert.deepEqual(info.hostNames, ['localhost', '127.0.0.1']);
    assert.equal(info.dataDir, server.dataDir);
    assert.deepEqual(readdirSync(server.dataDir).sort(), before, 'no file created or removed');
    assert.equal(readFileSync(join(server.dataDir, 'tls', 'ca.pem'), 'utf8'), caBefore, 'the CA is the one the server serves');
  });

  test('info on a missing or never-started data directory says so and how to start the server, and creates nothing', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'provisiond-cli-info-'));
    scratch.push(parent);
    const missing = join(parent, 'missing');
    const run = await child.run(['info', '--data-dir', missing]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, '');
    assert.equal(
      run.stderr,
      `provisiond: the data directory ${missing} does not exist; nothing to show yet. Start the server once to initialise it: provisiond serve --data-dir ${missing}\n`,
    );
    assert.equal(existsSync(missing), false, 'info did not create the directory');
    const empty = mkdtempSync(join(parent, 'empty-'));
    const again = await child.run(['info', '--data-dir', empty, '--json']);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^provisiond: the data directory .* is not initialised \(no tls\/ca\.pem\); nothing to show yet\. Start the server once to initialise it: provisiond serve --data-dir /);
    assert.deepEqual(readdirSync(empty), [], 'info created nothing (no CA, no database)');
  });

  test('a second serve on a data directory a running server holds refuses at once, naming the holder', async () => {
    const before = readdirSync(server.dataDir).sort();
    const run = await child.run(['serve', '--data-dir', server.dataDir, '--https-port', '0', '--listen-host', '127.0.0.1', '--no-mqtt', '--no-amqp', '--log-level', 'silent']);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, '');
    assert.equal(
      run.stderr,
      `provisiond: the data directory ${server.dataDir} is in use by another provisiond server (PID ${process.pid}); stop that server first, or give this one its own --data-dir\n`,
    );
    assert.deepEqual(readdirSync(server.dataDir).sort(), before, 'the refused server left nothing behind');
    assert.equal(readFileSync(join(server.dataDir, 'provisiond.pid'), 'utf8').split('\n')[0], String(process.pid));
  });

  test('a lock left by a server that was killed is taken over; the lock goes when the server stops', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-cli-stale-'));
    scratch.push(dataDir);
    // A PID that is surely not running: a finished child's.
    const dead = await new Promise<number>((resolve) => {
      const exited = spawn(process.execPath, ['-e', '0']);
      exited.on('exit', () => resolve(exited.pid ?? 999_999));
    });
    writeFileSync(join(dataDir, 'provisiond.pid'), `${dead}\n2020-01-01T00:00:00.000Z\nx\n`);
    const lock = lockDataDir(dataDir);
    assert.equal(readFileSync(join(dataDir, 'provisiond.pid'), 'utf8').split('\n')[0], String(process.pid));
    assert.throws(() => lockDataDir(dataDir), /is in use by another provisiond server \(PID \d+\)/);
    lock.release();
    assert.equal(existsSync(join(dataDir, 'provisiond.pid')), false);
  });

  test('serve on a port in use says so in one line naming --https-port and exits non-zero', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as AddressInfo).port;
    const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-cli-serve-'));
    scratch.push(dataDir);
    try {
      // Only HTTPS, so the port in use is the one the error must name (the test server may hold the device ports).
      const httpsOnly = { PROVISIOND_MQTT_ENABLED: 'false', PROVISIOND_AMQP_ENABLED: 'false' };
      const run = await child.run(['serve', '--data-dir', dataDir, '--https-port', String(port), '--listen-host', '127.0.0.1', '--log-level', 'silent'], httpsOnly);
      assert.notEqual(run.code, 0);
      assert.equal(run.stdout, '');
      assert.match(run.stderr, /^provisiond: [^\n]+\n$/);
      assert.match(run.stderr, new RegExp(`127\\.0\\.0\\.1:${port}.*already in use.*--https-port`));
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });
});

/** Every command path with its long options, from the program itself. */
function commandsOf(command: Command, prefix: string[] = []): { path: string; options: string[] }[] {
  return command.commands.flatMap((sub) => {
    const path = [...prefix, sub.name()];
    const options = sub.options.map((option) => option.long ?? '').filter((flag) => flag !== '');
    return [{ path: path.join(' '), options }, ...commandsOf(sub, path)];
  });
}

test('docs/cli.md documents every command and option; docs/configuration.md every setting and variable', () => {
  const program = buildProgram(
    { env: {}, out: () => undefined, err: () => undefined },
    { serve: () => Promise.reject(new Error('unused')), info: () => Promise.reject(new Error('unused')) },
    '0.0.0',
  );
  const cliDoc = readFileSync(join(process.cwd(), 'docs', 'cli.md'), 'utf8');
  const missing: string[] = [];
  for (const { path, options } of commandsOf(program)) {
    if (!cliDoc.includes(`provisiond ${path}`)) missing.push(`provisiond ${path}`);
    for (const option of options) if (!cliDoc.includes(option)) missing.push(`${path} ${option}`);
  }
  assert.deepEqual(missing, [], 'undocumented in docs/cli.md');

  const configDoc = readFileSync(join(process.cwd(), 'docs', 'configuration.md'), 'utf8');
  const undocumented = [...Object.keys(ConfigSchema.properties), ...CONFIG_ENV_VARS].filter((name) => !configDoc.includes(`\`${name}\``));
  assert.deepEqual(undocumented, [], 'undocumented in docs/configuration.md');
});

test('docs/service-api.md lists every authenticated route of /openapi.json with the right it needs', async () => {
  const response = await fetch('https://localhost/openapi.json');
  const document = (await response.json()) as { paths: Record<string, Record<string, { operationId?: string; description?: string }>> };
  const serviceDoc = readFileSync(join(process.cwd(), 'docs', 'service-api.md'), 'utf8').split('\n');
  const problems: string[] = [];
  let checked = 0;
  for (const [path, operations] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const right = /Needs the (\w+) right/.exec(operation.description ?? '')?.[1];
      if (right === undefined || operation.operationId === undefined) continue;
      checked += 1;
      const row = serviceDoc.find((line) => line.includes(`| ${operation.operationId} |`));
      if (row === undefined) problems.push(`${method.toUpperCase()} ${path} (${operation.operationId}) is not listed`);
      else if (right !== 'ServiceConfig' && !row.includes(right)) problems.push(`${operation.operationId}: the row does not name ${right}`);
    }
  }
  assert.ok(checked >= 29, `only ${checked} authenticated routes found`);
  assert.deepEqual(problems, []);
});
