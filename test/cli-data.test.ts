import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sdkRegister } from './devices.js';
import { startServer, type TestServer } from './harness.js';
import { cliRunners, type Env, type Run } from './cli-runner.js';

/**
 * `provisiond data …` and `provisiond audit query` against a real server, for one device provisioned with the official
 * SDK: export (to stdout in a child process, as a shell redirect uses it, and to a file), a dry run that changes
 * nothing, the confirmation an erase needs, the erase with its receipt, the offline receipt check (in a child
 * process: exit codes are the contract), the request list, the system log before and after, a policy without the
 * rights, and a partial erase (an unreachable hub) finished by `data retry`.
 */
let server: TestServer;
let scratch: string;

const KEY = Buffer.alloc(32, 7).toString('base64');
const KEY_2 = Buffer.alloc(32, 8).toString('base64');
const DEVICE = 'data-dev-1';
const DEVICE_2 = 'data-dev-2';

type Doc = Record<string, unknown>;

before(async () => {
  server = await startServer();
  scratch = mkdtempSync(join(tmpdir(), 'provisiond-cli-data-'));
  for (const [id, key] of [
    [DEVICE, KEY],
    [DEVICE_2, KEY_2],
  ] as const) {
    const created = await runInProcess(['enrollment', 'create', id, '--primary-key', key, '--secondary-key', key, '--initial-twin', '{"tags":{"site":"berlin"}}']);
    assert.equal(created.code, 0, created.stderr);
    const state = await sdkRegister(server.info.idScope, id, key);
    assert.equal(state.assignedHub, 'localhost');
  }
});
after(async () => {
  await server.close();
  rmSync(scratch, { recursive: true, force: true });
});

const { runChild, runInProcess } = cliRunners(() => server.connectionString);

async function ok(args: string[], env: Env = {}): Promise<string> {
  const result = await runInProcess(args, env);
  assert.equal(result.code, 0, `provisiond ${args.join(' ')} failed: ${result.stderr}`);
  assert.equal(result.stderr, '');
  return result.stdout;
}

async function json(args: string[], env: Env = {}): Promise<unknown> {
  return JSON.parse(await ok([...args, '--json'], env)) as unknown;
}

function assertRefused(run: Run, pattern: RegExp): void {
  assert.equal(run.code, 1, `expected exit code 1, got ${String(run.code)}; stdout: ${run.stdout}`);
  assert.equal(run.stdout, '');
  assert.match(run.stderr, /^provisiond: [^\n]+\n$/);
  assert.match(run.stderr, pattern);
}

const file = (name: string): string => join(scratch, name);
const readJson = (path: string): Doc => JSON.parse(readFileSync(path, 'utf8')) as Doc;
const places = (entries: unknown): Record<string, number> =>
  Object.fromEntries((entries as { place: string; count: number }[]).map((entry) => [entry.place, entry.count]));

describe('provisiond data and audit', () => {
  test('data export to stdout: the bundle alone on stdout, secrets redacted (child process)', async () => {
    const run = await runChild(['data', 'export', '--registration-id', DEVICE, '--request-id', 'exp-stdout']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, '');
    const bundle = JSON.parse(run.stdout) as Doc;
    const manifest = bundle.manifest as Doc;
    assert.equal(manifest.requestId, 'exp-stdout');
    assert.deepEqual(manifest.subject, { kind: 'registrationId', id: DEVICE });
    assert.equal(manifest.secretsIncluded, false);
    assert.deepEqual((bundle.individualEnrollment as Doc).attestation, { type: 'symmetricKey' });
    assert.ok(!run.stdout.includes(KEY), 'keys must be redacted without --include-secrets');
    const [hubDevice] = bundle.hubDevices as { hub: string; device: { authentication: { symmetricKey: unknown } } }[];
    assert.deepEqual(hubDevice?.device.authentication.symmetricKey, { primaryKey: '<redacted>', secondaryKey: '<redacted>' });
  });

  test('data export --output: enrollment, record, hub device and twin, and the log, with secrets', async () => {
    const out = await ok(['data', 'export', '--registration-id', DEVICE, '--include-secrets', '--request-id', 'exp-file', '--output', file('bundle.json')]);
    assert.match(out, new RegExp(`^wrote the export bundle of registrationId '${DEVICE}' to .*bundle\\.json \\(data request 'exp-file'\\)\\n  found:\\n`));
    assert.match(out, /\n {4}Device identity and twin on hub localhost +1\n/);
    assert.equal(statSync(file('bundle.json')).mode & 0o777, 0o600);

    const bundle = readJson(file('bundle.json'));
    const enrollment = bundle.individualEnrollment as Doc;
    assert.equal(enrollment.registrationId, DEVICE);
    assert.deepEqual(enrollment.attestation, { type: 'symmetricKey', symmetricKey: { primaryKey: KEY, secondaryKey: KEY } });
    const [record] = bundle.registrationRecords as Doc[];
    assert.equal(record?.registrationId, DEVICE);
    assert.equal(record?.status, 'assigned');
    assert.equal(record?.assignedHub, 'localhost');
    const [hubDevice] = bundle.hubDevices as { hub: string; device: Doc; twin: { tags: Doc } }[];
    assert.equal(hubDevice?.hub, 'localhost');
    assert.equal(hubDevice?.device.deviceId, DEVICE);
    assert.deepEqual(hubDevice?.twin.tags, { site: 'berlin' });
    const events = bundle.auditEvents as { kind: string; operation: string; subject: Doc }[];
    assert.ok(
      events.some((event) => event.kind === 'serviceApi' && event.operation === 'IndividualEnrollment_CreateOrUpdate' && event.subject.registrationId === DEVICE),
      `the enrollment's creation is in the log: ${JSON.stringify(events)}`,
    );
    const searched = places((bundle.manifest as Doc).searched);
    assert.equal(searched.enrollments, 1);
    assert.equal(searched.registrations, 1);
    assert.equal(searched['hub:localhost/devices'], 1);

    // The same ID with other options is a different request: the server refuses it.
    assertRefused(await runInProcess(['data', 'export', '--registration-id', DEVICE, '--request-id', 'exp-file']), /different body.*HTTP 409/);
    assertRefused(await runInProcess(['data', 'export', '--registration-id', DEVICE, '--device-id', DEVICE]), /exactly one of --registration-id, --device-id/);
  });

  test('audit query --subject shows what the log holds about the device', async () => {
    const events = (await json(['audit', 'query', '--subject', DEVICE])) as Doc[];
    assert.ok(events.length >= 2, JSON.stringify(events));
    // Newest first.
    const times = events.map((event) => String(event.timeUtc));
    assert.deepEqual(times, [...times].sort().reverse());
    assert.ok(events.some((event) => event.kind === 'dataRequest' && event.operation === 'export'));
    const table = await ok(['audit', 'query', '--subject', DEVICE, '--kind', 'serviceApi', '--from', '2020-01-01', '--outcome', 'success']);
    assert.match(table, /^TIME +CLASS +KIND +OPERATION +ACTOR +SUBJECT +OUTCOME +ERROR\n/);
    assert.match(table, new RegExp(`\\n\\S+Z +change +serviceApi +IndividualEnrollment_CreateOrUpdate +provisioningserviceowner +registrationId=${DEVICE} +success +-\\n`));
    assert.deepEqual(await json(['audit', 'query', '--subject', DEVICE, '--to', '2020-01-01T00:00:00+01:00']), []);
    // Reading the log about the device is itself logged about it: the queries above are one access event, the newest.
    const one = (await json(['audit', 'query', '--subject', DEVICE, '--max', '1'])) as Doc[];
    assert.deepEqual(one.map((event) => [event.class, event.operation, event.subject]), [['access', 'AuditEvent_Query', { registrationId: DEVICE, deviceId: DEVICE, enrollmentGroupId: DEVICE }]]);
    assert.ok(Number((one[0]?.details as Doc).repeats) >= 2, JSON.stringify(one));
    assert.deepEqual((await json(['audit', 'query', '--subject', DEVICE, '--class', 'change', '--max', '1'])) as Doc[], events.filter((event) => event.class === 'change').slice(0, 1));
    // A usage mistake, reported by the argument parser.
    const badTime = await runInProcess(['audit', 'query', '--from', 'yesterday']);
    assert.equal(badTime.code, 1);
    assert.match(badTime.stderr, /^error: option '--from <time>' argument 'yesterday' is invalid\. it must be an ISO 8601 date or time/);
  });

  test('data erase --dry-run lists what would go and changes nothing', async () => {
    const out = await ok(['data', 'erase', '--registration-id', DEVICE, '--dry-run', '--request-id', 'dry-1']);
    assert.match(out, new RegExp(`^dry run of erasing registrationId '${DEVICE}': nothing was changed \\(data request 'dry-1'\\)\\. An erase would\\n  delete:\\n`));
    for (const place of ['Device identity and twin on hub localhost', 'Registration records', 'Registration operations \\(with custom allocation payloads\\)', 'Individual enrollment']) {
      assert.match(out, new RegExp(`\\n {4}${place} +1  ${DEVICE}\\n`));
    }
    assert.match(out, /\n {2}pseudonymize:\n(?: {4}.*\n)* {4}System log events +\d+ {2}[0-9a-f]{24}/);

    const request = (await json(['data', 'show', 'dry-1'])) as Doc;
    assert.equal(request.status, 'completed');
    assert.equal(request.dryRun, true);
    assert.equal(request.hasReceipt, false);
    assert.deepEqual((request.result as { deleted: Doc[] }).deleted.find((entry) => entry.place === 'enrollments'), { place: 'enrollments', name: 'Individual enrollment', count: 1, items: [DEVICE] });

    // Still there: the enrollment, the record, the device on its hub.
    assert.equal(((await json(['enrollment', 'show', DEVICE])) as Doc).registrationId, DEVICE);
    assert.equal(((await json(['registration', 'show', DEVICE])) as Doc).status, 'assigned');
    const again = await runInProcess(['data', 'export', '--registration-id', DEVICE, '--request-id', 'exp-after-dry-run']);
    assert.equal(places(((JSON.parse(again.stdout) as Doc).manifest as Doc).searched)['hub:localhost/devices'], 1);
    assertRefused(await runInProcess(['data', 'erase', '--registration-id', DEVICE, '--dry-run', '--receipt', file('x.json')]), /a dry run changes nothing and has no receipt/);
  });

  test('data erase asks for confirmation: --yes without a terminal, the subject ID typed at one', async () => {
    assertRefused(
      await runInProcess(['data', 'erase', '--registration-id', DEVICE]),
      new RegExp(`^provisiond: erasing registrationId '${DEVICE}' cannot be undone: pass --yes to confirm \\(stdin is not a terminal\\)`),
    );
    const asked: string[] = [];
    const typo = await runInProcess(['data', 'erase', '--registration-id', DEVICE], {}, async (question) => {
      asked.push(question);
      return 'data-dev-X';
    });
    assertRefused(typo, /not confirmed: nothing was erased/);
    assert.match(asked[0] ?? '', new RegExp(`Type '${DEVICE}' to confirm: $`));
    assert.equal(((await json(['enrollment', 'show', DEVICE])) as Doc).registrationId, DEVICE);
  });

  test('data erase --yes --receipt: everything goes, the log forgets the ID, the receipt verifies offline', async () => {
    const out = await ok(['data', 'erase', '--registration-id', DEVICE, '--yes', '--request-id', 'erase-1', '--receipt', file('receipt.json')]);
    assert.match(out, new RegExp(`^erase of registrationId '${DEVICE}': completed \\(data request 'erase-1'\\)\\n  deleted:\\n`));
    // Places by their human names (the API's `name`), never table names.
    for (const place of ['Device identity and twin on hub localhost', 'Registration records', 'Registration operations \\(with custom allocation payloads\\)', 'Individual enrollment']) {
      assert.match(out, new RegExp(`\\n {4}${place} +[1-9]\\n`));
    }
    assert.match(out, /\n {2}pseudonymized:\n(?: {4}.+ +\d+\n)* {4}System log events +[1-9]\d*\n/);
    assert.match(out, /\nreceipt: written to .*receipt\.json \(signed by key [0-9a-f]{16}\); check it with 'provisiond data verify-receipt .*receipt\.json'\n$/);

    // Straight after the erase (any later call naming the ID would be logged under it again).
    assert.deepEqual(await json(['audit', 'query', '--subject', DEVICE]), []);
    const eraseEvents = (await json(['audit', 'query', '--kind', 'dataRequest', '--max', '1'])) as Doc[];
    assert.equal(eraseEvents[0]?.operation, 'erase');
    assert.match(String((eraseEvents[0]?.subject as Doc).hash), /^[0-9a-f]{64}$/);

    const receipt = readJson(file('receipt.json'));
    const body = receipt.receipt as Doc;
    assert.equal(body.requestId, 'erase-1');
    assert.equal(body.subjectKind, 'registrationId');
    assert.ok(!JSON.stringify(receipt).includes(DEVICE), 'the receipt names the subject only by its hash');
    assert.deepEqual(await json(['data', 'receipt', 'erase-1']), receipt);

    const shown = await ok(['data', 'show', 'erase-1']);
    assert.match(shown, /^data request 'erase-1'\n/);
    assert.match(shown, /\n {2}subject: +registrationId \(erased, hash [0-9a-f]{12}…\)\n/);
    assert.match(shown, /\n {2}receipt: +provisiond data receipt erase-1 --output receipt\.json\n/);
    assert.ok(!shown.includes(DEVICE));

    assertRefused(await runInProcess(['enrollment', 'show', DEVICE]), /errorCode 404201/);
    assertRefused(await runInProcess(['registration', 'show', DEVICE]), /errorCode 404202/);
  });

  test('data verify-receipt: valid, tampered, pinned to the right key and to another (child process)', async () => {
    const keyText = await ok(['data', 'signing-key']);
    assert.match(keyText, /^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n$/);
    const key = (await json(['data', 'signing-key'])) as Doc;
    assert.match(
      await ok(['data', 'signing-key', '--output', file('signing-key.pem')]),
      new RegExp(`^wrote the receipt signing key ${String(key.keyId)} \\(Ed25519\\) to .*signing-key\\.pem\\n$`),
    );
    assert.equal(readFileSync(file('signing-key.pem'), 'utf8'), keyText);

    // Offline: no connection string at all.
    const offline = { PROVISIOND_CONNECTION_STRING: '' };
    const valid = await runChild(['data', 'verify-receipt', file('receipt.json')], offline);
    assert.equal(valid.code, 0, valid.stderr);
    assert.equal(valid.stderr, '');
    assert.match(valid.stdout, new RegExp(`^valid: signed by key ${String(key.keyId)} \\(Ed25519, the key the receipt carries; pin it with --public-key\\)\\n  request: +erase-1\\n`));
    assert.match(valid.stdout, /\n {2}deleted: +hub:localhost\/devices 1, registrations 1, operations \d+, registrationIntents 0, hubDeviceLinks 1, issuedCertificates 0, enrollments 1, enrollmentGroups 0, lifecycleEventOutbox 0\n/);

    const pinned = await runChild(['data', 'verify-receipt', file('receipt.json'), '--public-key', file('signing-key.pem')], offline);
    assert.equal(pinned.code, 0, pinned.stderr);
    assert.match(pinned.stdout, /^valid: signed by key [0-9a-f]{16} \(Ed25519, the trusted key from .*signing-key\.pem\)\n/);
    const online = await runInProcess(['data', 'verify-receipt', file('receipt.json'), '--connection-string', server.connectionString, '--json']);
    assert.deepEqual(JSON.parse(online.stdout), { valid: true, keyId: key.keyId, pinned: true });

    // One changed count breaks the signature, however the file is formatted.
    const receipt = readJson(file('receipt.json'));
    const deleted = (receipt.receipt as { deleted: { place: string; count: number }[] }).deleted;
    const entry = deleted.find((item) => item.place === 'enrollments');
    assert.ok(entry !== undefined);
    entry.count = 0;
    writeFileSync(file('tampered.json'), JSON.stringify(receipt));
    const tampered = await runChild(['data', 'verify-receipt', file('tampered.json')], offline);
    assert.deepEqual(tampered, { code: 1, stdout: 'invalid: the signature does not match the receipt\n', stderr: '' });

    const other = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    writeFileSync(file('other-key.pem'), other);
    const otherKey = await runChild(['data', 'verify-receipt', file('receipt.json'), '--public-key', file('other-key.pem')], offline);
    assert.deepEqual(otherKey, { code: 1, stdout: 'invalid: the receipt was signed by a different key than the trusted one\n', stderr: '' });

    writeFileSync(file('not-json.json'), 'receipt?');
    assert.deepEqual(await runInProcess(['data', 'verify-receipt', file('not-json.json')], offline), { code: 1, stdout: 'invalid: the file is not JSON\n', stderr: '' });
    assertRefused(await runInProcess(['data', 'verify-receipt', file('receipt.json'), '--public-key', file('not-json.json')], offline), /--public-key: .* holds no PEM public key/);
  });

  test('data requests lists the exports and erases, newest first', async () => {
    const items = (await json(['data', 'requests'])) as Doc[];
    assert.deepEqual(
      items.map((item) => item.requestId),
      ['erase-1', 'exp-after-dry-run', 'dry-1', 'exp-file', 'exp-stdout'],
    );
    const erases = (await json(['data', 'requests', '--where', "type = 'erase'", '--max', '1'])) as Doc[];
    assert.deepEqual(
      erases.map((item) => item.requestId),
      ['erase-1'],
    );
    const table = await ok(['data', 'requests', '--where', "type = 'erase'"]);
    assert.match(table, /^REQUEST ID +TYPE +STATUS +SUBJECT +CREATED\n/);
    assert.match(table, /\nerase-1 +erase +completed +registrationId \(erased, hash [0-9a-f]{12}…\) +\S+Z\n/);
    // The erase scrubbed the earlier dry run of the same device: it keeps only the hash too.
    assert.match(table, /\ndry-1 +erase \(dry run\) +completed +registrationId \(erased, hash [0-9a-f]{12}…\) +\S+Z\n/);
    assert.equal(table.includes(DEVICE), false);
  });

  test('a policy with read rights only exports but cannot erase: the server’s 401', async () => {
    assert.equal((await runInProcess(['policy', 'create', 'data-reader', '--rights', 'EnrollmentRead,RegistrationStatusRead'])).code, 0);
    const keys = await ok(['policy', 'keys', 'data-reader']);
    const connectionString = /primary connection string: +(\S+)\n/.exec(keys)?.[1] ?? '';
    const asReader = { PROVISIOND_CONNECTION_STRING: connectionString };
    assertRefused(
      await runInProcess(['data', 'erase', '--registration-id', DEVICE_2, '--yes'], asReader),
      /^provisiond: Unauthorized: this operation needs the EnrollmentWrite right\. \(HTTP 401, errorCode 401002, trackingId /,
    );
    assertRefused(await runInProcess(['data', 'receipt', 'erase-1'], asReader), /HTTP 401/);
    const bundle = JSON.parse(await ok(['data', 'export', '--device-id', DEVICE_2], asReader)) as Doc;
    assert.equal((bundle.individualEnrollment as Doc).registrationId, DEVICE_2);
  });

  test('an unreachable hub: export and erase end partially completed (exit 2), the CLI waits for a slow one, retry finishes', async () => {
    await ok(['hub', 'link', '127.0.0.2', '--hub-connection-string', `HostName=127.0.0.2;SharedAccessKeyName=iothubowner;SharedAccessKey=${KEY}`, '--no-apply-allocation-policy']);
    const exported = await runInProcess(['data', 'export', '--device-id', DEVICE_2]);
    assert.equal(exported.code, 2, exported.stderr);
    const bundle = JSON.parse(exported.stdout) as Doc;
    assert.equal((bundle.hubDevices as Doc[]).length, 1, 'the reachable hub is in the bundle');
    assert.match(exported.stderr, /^provisiond: the export is incomplete: Some hubs could not be searched; see result\.searched\.; run it again with a new --request-id once they are reachable\n$/);
    const dry = await ok(['data', 'erase', '--device-id', DEVICE_2, '--dry-run']);
    assert.match(dry, /\n {4}Device identity and twin on hub 127\.0\.0\.2 +0  \(could not be checked: .+\)\n/);
    await ok(['hub', 'unlink', '127.0.0.2']);

    // A hub that accepts connections and never answers keeps the erase running past the server's wait (5 s): the CLI
    // says on stderr that it waits and polls until the hub connection fails.
    const held = new Set<Socket>();
    const silent = createServer((socket) => void held.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const hub = `127.0.0.1:${(silent.address() as AddressInfo).port}`;
    await ok(['hub', 'link', hub, '--hub-connection-string', `HostName=${hub};SharedAccessKeyName=iothubowner;SharedAccessKey=${KEY}`, '--no-apply-allocation-policy']);
    const release = setTimeout(() => {
      silent.close();
      for (const socket of held) socket.destroy();
    }, 6500);
    let partial: Run;
    try {
      partial = await runInProcess(['data', 'erase', '--device-id', DEVICE_2, '--yes', '--request-id', 'erase-2', '--receipt', file('receipt-2.json')]);
    } finally {
      clearTimeout(release);
      silent.close();
      for (const socket of held) socket.destroy();
    }
    assert.equal(partial.code, 2, partial.stderr);
    assert.match(partial.stdout, new RegExp(`^erase of deviceId '${DEVICE_2}': partially completed \\(data request 'erase-2'\\)\\n`));
    assert.match(partial.stdout, /\n {4}Device identity and twin on hub localhost +1\n/);
    assert.match(partial.stdout, new RegExp(`\\n {2}failed:\\n {4}hub:${hub.replaceAll('.', '\\.')}/devices: .+\\n$`));
    assert.match(
      partial.stderr,
      /^waiting for data request 'erase-2' \(\d+ of \d+ items done\); Ctrl-C stops the waiting, not the request: see 'provisiond data show erase-2'\n/,
    );
    assert.match(partial.stderr, /\nprovisiond: the erase is not complete; fix what failed, then run 'provisiond data retry erase-2'\n$/);
    assert.equal(((await json(['data', 'show', 'erase-2'])) as Doc).status, 'partiallyCompleted');
    assertRefused(await runInProcess(['data', 'receipt', 'erase-2']), /has no receipt yet \(status partiallyCompleted\).*HTTP 404/);

    // The hub is gone for good: unlinked, it is no longer provisiond's to clean, and the retry completes.
    await ok(['hub', 'unlink', hub]);
    const retried = await ok(['data', 'retry', 'erase-2']);
    assert.match(retried, /^erase of deviceId \(erased, hash [0-9a-f]{12}…\): completed \(data request 'erase-2'\)\n/);
    assert.match(retried, /\nreceipt: get it with 'provisiond data receipt erase-2 --output receipt\.json'\n$/);
    assert.match(await ok(['data', 'receipt', 'erase-2', '--output', file('receipt-2.json')]), /^wrote the receipt of data request 'erase-2' to .*receipt-2\.json; check it with/);
    const verified = await runInProcess(['data', 'verify-receipt', file('receipt-2.json')], { PROVISIOND_CONNECTION_STRING: '' });
    assert.equal(verified.code, 0, verified.stdout);
    // Erasing by device ID reached the enrollment and record the device came from.
    assertRefused(await runInProcess(['enrollment', 'show', DEVICE_2]), /errorCode 404201/);
    assertRefused(await runInProcess(['registration', 'show', DEVICE_2]), /errorCode 404202/);
  });
});
