import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { SHARED_READ_BEGIN, SHARED_READ_END } from '../src/store/dialects/sqlite-shared-reads.js';
import { GroupCommit } from '../src/store/group-commit.js';
import { openSqliteStore } from '../src/store/open-store.js';
import type { Store, StoredOperation } from '../src/store/store.js';
import { call, startServer, type TestServer } from './harness.js';
import { deriveDeviceKey, deviceToken, inBatches, rawRegister, type Json } from './devices.js';
import { registryFor, twinOf } from './hubs.js';

/**
 * One durable write per registration (issue 12): a registration on a built-in hub writes its hub identity, twin,
 * record, link, operation and log entries in ONE transaction (no registration intent: nothing outside the database to
 * undo), and concurrent registrations share that transaction's commit on SQLite (store/group-commit.ts), each in its
 * own savepoint.
 */
const onSqlite = process.env.PROVISIOND_TEST_STORE !== 'postgres';

/**
 * Counts the SQLite statements (and COMMITs among them) this process executes while `work` runs. The `begin` and
 * `end` of the reads' shared transaction (dialects/sqlite-shared-reads.ts) are counted apart, as `sharedReads`: they
 * stand for the transaction each read outside a transaction was anyway, and how many there are depends on how the
 * reads fall into turns of the event loop.
 */
async function countingStatements<T>(work: () => Promise<T>): Promise<{ result: T; statements: number; commits: number; sharedReads: number; texts: Map<string, number> }> {
  const probe = new Database(':memory:');
  const prototype = Object.getPrototypeOf(probe.prepare('select 1')) as Record<'run' | 'get' | 'all' | 'iterate', (...args: unknown[]) => unknown>;
  probe.close();
  const originals = { run: prototype.run, get: prototype.get, all: prototype.all, iterate: prototype.iterate };
  const counts = { statements: 0, commits: 0, sharedReads: 0 };
  const texts = new Map<string, number>();
  for (const method of ['run', 'get', 'all', 'iterate'] as const) {
    const original = originals[method];
    prototype[method] = function (this: { source: string }, ...args: unknown[]) {
      if (this.source === SHARED_READ_BEGIN) counts.sharedReads += 1;
      if (this.source === SHARED_READ_BEGIN || this.source === SHARED_READ_END) return original.apply(this, args);
      counts.statements += 1;
      if (/^\s*commit/i.test(this.source)) counts.commits += 1;
      texts.set(this.source, (texts.get(this.source) ?? 0) + 1);
      return original.apply(this, args);
    };
  }
  try {
    const result = await work();
    return { result, ...counts, texts };
  } finally {
    Object.assign(prototype, originals);
  }
}

describe('a registration is one transaction', () => {
  let server: TestServer;
  let idScope: string;
  let instanceId: string;
  let groupKey: string;

  before(async () => {
    // Background work (the outbox sweep, the operations purge, the intent sweep) must not run inside a counted window.
    server = await startServer({ registrationWaitMs: 3000 });
    idScope = server.info.idScope;
    instanceId = (await server.app.store.listInstances())[0]?.id as string;
    const group = await call('PUT', '/enrollmentGroups/one-commit?api-version=2021-10-01', {
      headers: { authorization: server.token() },
      body: { enrollmentGroupId: 'one-commit', attestation: { type: 'symmetricKey' }, initialTwin: { tags: { line: 4 }, properties: { desired: { rate: 2 } } } },
    });
    assert.equal(group.status, 200, group.text);
    groupKey = (group.body as Json).attestation.symmetricKey.primaryKey as string;
  });
  after(async () => {
    await server.close();
  });

  /** Register, and the poll the answer's Retry-After: 0 invites; the operation of a fast registration is finished. */
  async function registerAndPoll(registrationId: string): Promise<{ register: { status: number; retryAfter: string | null }; poll: Json }> {
    const authorization = deviceToken(idScope, registrationId, deriveDeviceKey(groupKey, registrationId));
    const registered = await call('PUT', `/${idScope}/registrations/${registrationId}/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId } });
    const operationId = (registered.body as Json).operationId as string;
    const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, { headers: { authorization } });
    return { register: { status: registered.status, retryAfter: registered.headers.get('retry-after') }, poll: { httpStatus: polled.status, ...(polled.body as Json) } };
  }

  test('a first registration and a re-registration on the built-in hub: one commit each, no intent, the operation finished at once', { skip: !onSqlite }, async () => {
    const first = await countingStatements(() => registerAndPoll('one-commit-1'));
    assert.deepEqual(first.result.register, { status: 202, retryAfter: '0' });
    assert.equal(first.result.poll.httpStatus, 200);
    assert.equal(first.result.poll.status, 'assigned');
    const again = await countingStatements(() => registerAndPoll('one-commit-1'));
    assert.equal(again.result.poll.status, 'assigned');
    assert.equal(again.result.poll.registrationState.substatus, 'initialAssignment');
    const describe = (counted: { statements: number; commits: number; texts: Map<string, number> }) =>
      `${counted.statements} statements, ${counted.commits} commits: ${JSON.stringify([...counted.texts].sort((a, b) => b[1] - a[1]))}`;
    // Exactly one COMMIT for register + poll: the hub identity, the twin, the record, the link, the operation and the
    // log entries (bench/README.md "H1"). It was 4 (operation, intent, hub device, outcome) before issue 12.
    assert.equal(first.commits, 1, describe(first));
    assert.equal(again.commits, 1, describe(again));
    // The statements of this path may only go down: one that adds a statement to every registration fails here. (A
    // background sweep can add a statement or two to the window, never take one away.)
    assert.ok(first.statements <= FIRST_REGISTRATION_STATEMENTS + BACKGROUND_SLACK, `first: ${describe(first)}`);
    assert.ok(again.statements <= RE_REGISTRATION_STATEMENTS + BACKGROUND_SLACK, `again: ${describe(again)}`);
    // Outside the transaction a re-registration reads once, the register's first read (its poll is answered from what
    // its transaction wrote): one shared read transaction.
    assert.ok(again.sharedReads >= 1 && again.sharedReads <= 1 + BACKGROUND_SLACK, `again: ${again.sharedReads} shared reads`);
    for (const counted of [first, again]) {
      const texts = [...counted.texts.keys()];
      assert.equal(texts.filter((text) => /registration_intents/.test(text)).length, 0, 'no registration intent is written for a built-in hub');
    }
    assert.deepEqual(await server.app.store.listRegistrationIntentsOf(instanceId), []);
  });

  /** Registers (the fast path: finished before the answer) and returns how to poll the operation with the same token. */
  async function registered(registrationId: string): Promise<() => Promise<{ status: number; body: Json }>> {
    const authorization = deviceToken(idScope, registrationId, deriveDeviceKey(groupKey, registrationId));
    const answer = await call('PUT', `/${idScope}/registrations/${registrationId}/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId } });
    assert.equal(answer.headers.get('retry-after'), '0', answer.text);
    const operationId = (answer.body as Json).operationId as string;
    return async () => {
      const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, { headers: { authorization } });
      return { status: polled.status, body: polled.body as Json };
    };
  }

  test("the poll of an operation this process just finished, with the register's token, reads nothing from the store", { skip: !onSqlite }, async () => {
    const poll = await registered('one-commit-memory');
    const counted = await countingStatements(poll);
    assert.equal(counted.result.status, 200);
    assert.equal(counted.result.body.status, 'assigned');
    assert.equal(counted.result.body.registrationState.deviceId, 'one-commit-memory');
    const reads = [...counted.texts.keys()].filter((text) => /"operations"|erase_fences/.test(text));
    assert.deepEqual(reads, [], 'no read of the operation or of the erase fences');
    // Answered once: the next poll (a device that asks again) reads the store as any other.
    const again = await countingStatements(poll);
    assert.equal(again.result.body.status, 'assigned');
    assert.ok([...again.texts.keys()].some((text) => /"operations"/.test(text)), 'the second poll reads the operation');
  });

  test('an erase fence, a finished erase or a purge between the register and its poll: the poll answers what the store holds', async () => {
    const store = server.app.store;
    // A fence written after the registration committed (an erase that has begun): the poll is refused as the store's
    // read refuses it, not answered `assigned` from memory.
    const fenced = await registered('one-commit-fenced');
    await store.putEraseFences(instanceId, [{ kind: 'registrationId', id: 'one-commit-fenced', requestId: 'fence-before-poll', subjectHash: 'hash' }]);
    const refused = await fenced();
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.errorCode, 409210);
    // The fence gone again (the erase ended), a poll with the same token reads the store again.
    const unfenced = await registered('one-commit-unfenced');
    await store.deleteEraseFences(instanceId, 'fence-before-poll');
    assert.equal((await unfenced()).body.status, 'assigned');
    assert.equal((await fenced()).body.status, 'assigned');
    // The erase itself: the device's operations are gone, and so is the answer.
    const erased = await registered('one-commit-erased');
    const request = await call('PUT', '/dataRequests/erase-before-poll?api-version=2021-10-01', {
      headers: { authorization: server.token() },
      body: { type: 'erase', subject: { registrationId: 'one-commit-erased' } },
    });
    assert.equal(request.status, 200, request.text);
    for (const deadline = Date.now() + 60_000; ; ) {
      const current = await call('GET', '/dataRequests/erase-before-poll?api-version=2021-10-01', { headers: { authorization: server.token() } });
      if ((current.body as Json).status !== 'running') {
        assert.equal((current.body as Json).status, 'completed', current.text);
        break;
      }
      assert.ok(Date.now() < deadline, 'the erase did not finish');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const gone = await erased();
    assert.equal(gone.status, 404, JSON.stringify(gone.body));
    // The retention purge (operations older than a cutoff) removes it too.
    const purged = await registered('one-commit-purged');
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.ok((await store.deleteOperationsBefore('9999-12-31T00:00:00.0000000Z', 1000)) >= 1);
    assert.equal((await purged()).status, 404);
  });

  test('a re-registration whose hub identity is gone (deleted on the hub) creates it again', async () => {
    const registrationId = 'one-commit-gone';
    assert.equal((await registerAndPoll(registrationId)).poll.status, 'assigned');
    // The record says the identity is there, so the registration replaces first; the hub no longer has it.
    await server.app.builtInHubs.deleteDevice('localhost', registrationId, '*');
    const again = await registerAndPoll(registrationId);
    assert.equal(again.poll.status, 'assigned', JSON.stringify(again.poll));
    const device = await server.app.builtInHubs.getDevice('localhost', registrationId);
    assert.equal(device.deviceId, registrationId);
    assert.equal(device.authentication.symmetricKey.primaryKey, deriveDeviceKey(groupKey, registrationId));
    // Created afresh, it starts from the enrollment's initial twin, as on its first registration (not an empty one).
    const twin = await server.app.builtInHubs.getTwin('localhost', registrationId);
    assert.deepEqual(twin.tags, { line: 4 });
    assert.equal((twin.properties.desired as Json).rate, 2);
  });

  test('an operation a dead process left `assigning` (no intent to settle) ends failed with RegistrationInterrupted on its poll', async () => {
    const registrationId = 'one-commit-abandoned';
    const authorization = deviceToken(idScope, registrationId, deriveDeviceKey(groupKey, registrationId));
    // As a process killed after telling the device its operation ID, before its one transaction committed, leaves it.
    const operationId = '5.0123456789abcdef.00000000-0000-4000-8000-000000000001';
    const before = '2020-01-01T00:00:00.0000000Z';
    await server.app.store.putOperation(instanceId, { operationId, registrationId, status: 'assigning', createdDateTimeUtc: before, lastUpdatedDateTimeUtc: before });
    const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, { headers: { authorization } });
    assert.equal(polled.status, 200, polled.text);
    const body = polled.body as Json;
    assert.equal(body.status, 'failed');
    assert.equal(body.registrationState.errorCode, 500209);
    assert.equal((await server.app.store.getOperation(instanceId, operationId))?.status, 'failed');
    // The device registers again, and that works.
    assert.equal((await rawRegister(idScope, registrationId, deriveDeviceKey(groupKey, registrationId))).status, 'assigned');
  });

  test('concurrent registrations share commits, and each is acknowledged only with its record and hub identity', async () => {
    const ids = Array.from({ length: 48 }, (_, index) => `one-commit-many-${index}`);
    const counted = await countingStatements(async () => {
      const states = new Map<string, Json>();
      await inBatches(ids, 24, async (id) => {
        states.set(id, await rawRegister(idScope, id, deriveDeviceKey(groupKey, id)));
      });
      return states;
    });
    for (const id of ids) assert.equal(counted.result.get(id)?.status, 'assigned', id);
    const registry = await registryFor(server, 'localhost');
    for (const id of ids) {
      const record = await server.app.store.getRegistration(instanceId, id);
      assert.equal(record?.status, 'assigned');
      assert.deepEqual((await twinOf(registry, id)).tags, { line: 4 }, id);
    }
    assert.deepEqual(await server.app.store.listRegistrationIntentsOf(instanceId), []);
    if (onSqlite) assert.ok(counted.commits <= ids.length, `at most one commit per registration (${counted.commits} for ${ids.length})`);
  });
});

/**
 * SQLite statements of register + its first poll after issue 12's one transaction and compiled statements (bench/README.md "H1", "H2": 43.5 and 4
 * commits before; 27 and 20 before session 20's replace-first hub write, fence-guarded reads, reused record read and enrollment + record in one read). Lower them when a change
 * saves statements; never raise them.
 */
const FIRST_REGISTRATION_STATEMENTS = 22;
const RE_REGISTRATION_STATEMENTS = 13;
/** The outbox sweep's one read, when its timer fires inside the counted window. */
const BACKGROUND_SLACK = 1;

describe('registrations remembered for their polls', () => {
  let server: TestServer;
  let clockMs = Date.now();
  before(async () => {
    server = await startServer({ registrationWaitMs: 3000 }, { now: () => new Date(clockMs) });
  });
  after(async () => {
    await server.close();
  });

  test('are forgotten after two minutes unpolled, and a later poll still gets its answer (authenticated in full)', async () => {
    const { idScope } = server.info;
    const instanceId = (await server.app.store.listInstances())[0]?.id as string;
    const enrolled = await call('PUT', '/enrollments/remembered-1?api-version=2021-10-01', {
      headers: { authorization: server.token() },
      body: { registrationId: 'remembered-1', attestation: { type: 'symmetricKey' } },
    });
    assert.equal(enrolled.status, 200, enrolled.text);
    const authorization = deviceToken(idScope, 'remembered-1', (enrolled.body as Json).attestation.symmetricKey.primaryKey as string);
    const registered = await call('PUT', `/${idScope}/registrations/remembered-1/register?api-version=2019-03-31`, { headers: { authorization }, body: { registrationId: 'remembered-1' } });
    assert.equal(registered.status, 202, registered.text);
    const registrations = server.app.registrations;
    assert.equal(registrations.rememberedRegistrations(instanceId, 'remembered-1'), 1);
    clockMs += 119_000;
    await registrations.reconcile({ olderThanMs: 3_600_000 });
    assert.equal(registrations.rememberedRegistrations(instanceId, 'remembered-1'), 1, 'kept for two minutes');
    clockMs += 1_000;
    // The periodic sweep (an idle node registers nothing new that would drop it).
    await registrations.reconcile({ olderThanMs: 3_600_000 });
    assert.equal(registrations.rememberedRegistrations(instanceId, 'remembered-1'), 0, 'forgotten after two minutes');
    const polled = await call('GET', `/${idScope}/registrations/remembered-1/operations/${(registered.body as Json).operationId as string}?api-version=2019-03-31`, { headers: { authorization } });
    assert.equal(polled.status, 200, polled.text);
    assert.equal((polled.body as Json).status, 'assigned');
  });
});

describe('group commit', () => {
  let store: Store;
  before(async () => {
    store = await openSqliteStore(':memory:');
  });
  after(async () => {
    await store.close();
  });

  const operation = (id: string): StoredOperation => ({
    operationId: id,
    registrationId: `device-${id}`,
    status: 'assigning',
    createdDateTimeUtc: '2026-01-01T00:00:00.0000000Z',
    lastUpdatedDateTimeUtc: '2026-01-01T00:00:00.0000000Z',
  });

  test('units that arrive together share one transaction; a failing one rolls back only itself', async () => {
    const batcher = new GroupCommit(store, { maxBatch: 64, windowMs: 0 });
    const ids = ['gc-1', 'gc-2', 'gc-3', 'gc-4', 'gc-5'];
    const outcomes = await Promise.allSettled(
      ids.map((id) =>
        batcher.run(async (tx) => {
          await tx.putOperation('instance-gc', operation(id));
          if (id === 'gc-3') throw new Error('this registration fails after its first write');
          return id;
        }),
      ),
    );
    assert.deepEqual(
      outcomes.map((outcome) => (outcome.status === 'fulfilled' ? outcome.value : (outcome.reason as Error).message)),
      ['gc-1', 'gc-2', 'this registration fails after its first write', 'gc-4', 'gc-5'],
    );
    assert.deepEqual(batcher.stats, { batches: 1, units: 5 });
    for (const id of ids) assert.equal((await store.getOperation('instance-gc', id)) !== undefined, id !== 'gc-3', id);
  });

  test('units that arrive during a commit form the next batch; a lone unit is a transaction of its own', async () => {
    const batcher = new GroupCommit(store, { maxBatch: 3, windowMs: 0 });
    const first = batcher.run(async (tx) => tx.putOperation('instance-gc', operation('next-0')));
    await first;
    assert.deepEqual(batcher.stats, { batches: 1, units: 1 });
    const many = Array.from({ length: 7 }, (_, index) => batcher.run(async (tx) => tx.putOperation('instance-gc', operation(`next-${index + 1}`))));
    await Promise.all(many);
    // maxBatch 3: seven units are three transactions (3 + 3 + 1).
    assert.deepEqual(batcher.stats, { batches: 4, units: 8 });
  });

  test('a failed COMMIT fails every unit of the batch, and none of it is written', async () => {
    // The store's transaction runs the batch and then fails as a COMMIT would: everything rolls back.
    const failing = Object.create(store) as Store;
    failing.transaction = <T>(work: (tx: Store) => Promise<T>): Promise<T> =>
      store.transaction(async (tx) => {
        await work(tx);
        throw new Error('disk I/O error');
      });
    const batcher = new GroupCommit(failing, { maxBatch: 64, windowMs: 0 });
    const outcomes = await Promise.allSettled(['fail-1', 'fail-2', 'fail-3'].map((id) => batcher.run(async (tx) => tx.putOperation('instance-gc', operation(id)))));
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status === 'rejected' && (outcome.reason as Error).message),
      ['disk I/O error', 'disk I/O error', 'disk I/O error'],
    );
    for (const id of ['fail-1', 'fail-2', 'fail-3']) assert.equal(await store.getOperation('instance-gc', id), undefined);
  });
});
