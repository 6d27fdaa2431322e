import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { KyselyStore } from '../src/store/kysely-store.js';
import type { Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * Etags under concurrency (dps-wire.md §2.3, §2.5): many writers that read the same etag race to change one entry.
 * If-Match names one version, so exactly one of them wins and every other gets 412 — whether it comes as a PUT, a
 * DELETE or a bulk `updateIfMatchETag`/`delete` item. Check and write are one step, or two writers both pass the check.
 *
 * Embedded SQLite answers synchronously, so two requests never interleave between a check and its write and a
 * missing transaction would go unnoticed. Here every store call first yields to the event loop, as a networked or busy
 * database does; a transaction still holds the one connection for its whole duration, so only unguarded
 * check-then-write sequences interleave.
 */
const API = 'api-version=2021-10-01';
const WRITERS = 20;

let server: TestServer;

const unpatched = new Map<string, unknown>();
before(async () => {
  const prototype = KyselyStore.prototype as unknown as Record<string, unknown>;
  for (const name of Object.getOwnPropertyNames(prototype)) {
    // Getters (the store's capabilities) are left alone: only methods are patched.
    if (Object.getOwnPropertyDescriptor(prototype, name)?.get !== undefined) continue;
    const method = prototype[name];
    if (name === 'constructor' || name === 'transaction' || name === 'close' || typeof method !== 'function') continue;
    unpatched.set(name, method);
    prototype[name] = async function yieldingFirst(this: unknown, ...args: unknown[]): Promise<unknown> {
      await nextTurn();
      return (method as (...args: unknown[]) => Promise<unknown>).apply(this, args);
    };
  }
  server = await startServer();
});
after(async () => {
  await server.close();
  const prototype = KyselyStore.prototype as unknown as Record<string, unknown>;
  for (const [name, method] of unpatched) prototype[name] = method;
});

async function send(
  method: string,
  path: string,
  options: { body?: unknown; ifMatch?: string; ifNoneMatch?: string } = {},
): Promise<{ status: number; body: Json; text: string }> {
  const response = await call(method, `${path}?${API}`, {
    headers: {
      authorization: server.token(),
      ...(options.ifMatch === undefined ? {} : { 'if-match': options.ifMatch }),
      ...(options.ifNoneMatch === undefined ? {} : { 'if-none-match': options.ifNoneMatch }),
    },
    ...(options.body === undefined ? {} : { body: options.body }),
  });
  return { status: response.status, body: response.body as Json, text: response.text };
}

/** The two kinds of enrollment entry, by their paths and ID fields. */
const KINDS = [
  { name: 'enrollments', collection: '/enrollments', idField: 'registrationId', listField: 'enrollments', getter: 'getEnrollment', deleter: 'deleteEnrollment' },
  {
    name: 'enrollment groups',
    collection: '/enrollmentGroups',
    idField: 'enrollmentGroupId',
    listField: 'enrollmentGroups',
    getter: 'getEnrollmentGroup',
    deleter: 'deleteEnrollmentGroup',
  },
] as const;

type StoreMethod = (this: unknown, ...args: unknown[]) => Promise<unknown>;

/**
 * Runs `work` while the first read of entry `id` is followed at once by its deletion, as when another request's
 * delete commits between this request's read and its write (PostgreSQL, READ COMMITTED). The store's own delete does
 * it, on the reader's transaction, so the effect is the same on SQLite.
 */
async function deletedAfterFirstRead<T>(kind: (typeof KINDS)[number], id: string, work: () => Promise<T>): Promise<T> {
  const prototype = KyselyStore.prototype as unknown as Record<string, StoreMethod>;
  const read = prototype[kind.getter] as StoreMethod;
  const remove = prototype[kind.deleter] as StoreMethod;
  let first = true;
  prototype[kind.getter] = async function readThenLose(this: unknown, ...args: unknown[]): Promise<unknown> {
    const found = await read.apply(this, args);
    if (first && found !== undefined && String(args[1]).toLowerCase() === id.toLowerCase()) {
      first = false;
      await remove.apply(this, [args[0], id]);
    }
    return found;
  };
  try {
    return await work();
  } finally {
    prototype[kind.getter] = read;
  }
}

/** Statuses, counted. */
function tally(statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1;
  return counts;
}

for (const kind of KINDS) {
  describe(`${WRITERS} concurrent writers with one etag: ${kind.name}`, () => {
    const entry = (id: string, extra: Json = {}): Json => ({ [kind.idField]: id, attestation: { type: 'symmetricKey' }, ...extra });
    async function create(id: string): Promise<Json> {
      const created = await send('PUT', `${kind.collection}/${id}`, { body: entry(id) });
      assert.equal(created.status, 200, created.text);
      return created.body;
    }

    test('PUT with If-Match: one 200, the rest 412; the winner’s version is stored', async () => {
      const id = `race-put-${kind.idField.length}`;
      const { etag } = await create(id);
      const results = await Promise.all(
        Array.from({ length: WRITERS }, (_, writer) =>
          send('PUT', `${kind.collection}/${id}`, { ifMatch: etag as string, body: entry(id, { initialTwin: { tags: { writer } } }) }),
        ),
      );
      assert.deepEqual(tally(results.map((result) => result.status)), { 200: 1, 412: WRITERS - 1 }, results.map((result) => result.text).join('\n'));
      for (const lost of results.filter((result) => result.status === 412)) assert.equal(lost.body.errorCode, 412002);
      const winner = results.find((result) => result.status === 200)?.body as Json;
      const stored = (await send('GET', `${kind.collection}/${id}`)).body;
      assert.equal(stored.etag, winner.etag);
      assert.deepEqual(stored.initialTwin, winner.initialTwin);
    });

    test('PUT with If-None-Match: * (create only): one 200, the rest 412003; the winner’s version is stored', async () => {
      const id = `race-create-${kind.idField.length}`;
      const results = await Promise.all(
        Array.from({ length: WRITERS }, (_, writer) =>
          send('PUT', `${kind.collection}/${id}`, { ifNoneMatch: '*', body: entry(id, { initialTwin: { tags: { writer } } }) }),
        ),
      );
      assert.deepEqual(tally(results.map((result) => result.status)), { 200: 1, 412: WRITERS - 1 }, results.map((result) => result.text).join('\n'));
      for (const lost of results.filter((result) => result.status === 412)) assert.equal(lost.body.errorCode, 412003);
      const winner = results.find((result) => result.status === 200)?.body as Json;
      const stored = (await send('GET', `${kind.collection}/${id}`)).body;
      assert.equal(stored.etag, winner.etag);
      assert.deepEqual(stored.initialTwin, winner.initialTwin);
    });

    test('DELETE with If-Match: one 204, the rest 412', async () => {
      const id = `race-delete-${kind.idField.length}`;
      const { etag } = await create(id);
      const results = await Promise.all(Array.from({ length: WRITERS }, () => send('DELETE', `${kind.collection}/${id}`, { ifMatch: etag as string })));
      assert.deepEqual(tally(results.map((result) => result.status)), { 204: 1, 412: WRITERS - 1 }, results.map((result) => result.text).join('\n'));
      assert.equal((await send('GET', `${kind.collection}/${id}`)).status, 404);
    });

    test('bulk updateIfMatchETag: one request succeeds, the others report 412002 for the item', async () => {
      const id = `race-bulk-${kind.idField.length}`;
      const { etag } = await create(id);
      const results = await Promise.all(
        Array.from({ length: WRITERS }, (_, writer) =>
          send('POST', kind.collection, { body: { mode: 'updateIfMatchETag', [kind.listField]: [entry(id, { etag, initialTwin: { tags: { writer } } })] } }),
        ),
      );
      for (const result of results) assert.equal(result.status, 200, result.text);
      const succeeded = results.filter((result) => result.body.isSuccessful === true);
      assert.equal(succeeded.length, 1, results.map((result) => result.text).join('\n'));
      for (const result of results.filter((candidate) => candidate.body.isSuccessful !== true)) {
        assert.deepEqual(result.body, {
          isSuccessful: false,
          errors: [{ [kind.idField]: id, errorCode: 412002, errorStatus: 'The etag does not match the current resource.' }],
        });
      }
      const stored = (await send('GET', `${kind.collection}/${id}`)).body;
      assert.notEqual(stored.etag, etag);
    });

    test('bulk create racing with itself: one request creates the entry, the others report it exists', async () => {
      const id = `race-bulk-create-${kind.idField.length}`;
      const results = await Promise.all(
        Array.from({ length: WRITERS }, (_, writer) =>
          send('POST', kind.collection, { body: { mode: 'create', [kind.listField]: [entry(id, { initialTwin: { tags: { writer } } })] } }),
        ),
      );
      for (const result of results) assert.equal(result.status, 200, result.text);
      const succeeded = results.filter((result) => result.body.isSuccessful === true);
      assert.equal(succeeded.length, 1, results.map((result) => result.text).join('\n'));
      for (const result of results.filter((candidate) => candidate.body.isSuccessful !== true)) {
        const [error] = result.body.errors as Json[];
        assert.equal(error?.[kind.idField], id, result.text);
        assert.equal(error?.errorCode, 409001, result.text);
      }
      assert.equal((await send('GET', `${kind.collection}/${id}`)).status, 200);
    });

    test('one item twice in one bulk request: the second names a version the first replaced', async () => {
      const id = `race-twice-${kind.idField.length}`;
      const { etag } = await create(id);
      const result = await send('POST', kind.collection, {
        body: { mode: 'updateIfMatchETag', [kind.listField]: [entry(id, { etag, initialTwin: { tags: { n: 1 } } }), entry(id, { etag, initialTwin: { tags: { n: 2 } } })] },
      });
      assert.deepEqual(result.body, {
        isSuccessful: false,
        errors: [{ [kind.idField]: id, errorCode: 412002, errorStatus: 'The etag does not match the current resource.' }],
      });
      assert.deepEqual((await send('GET', `${kind.collection}/${id}`)).body.initialTwin.tags, { n: 1 });
    });

    test('an entry deleted between a writer’s read and its write: 412 with If-Match, single or bulk, never 404', async () => {
      const lost = 'The etag does not match the current resource.';
      const single = `gap-single-${kind.idField.length}`;
      const { etag } = await create(single);
      const deleted = await deletedAfterFirstRead(kind, single, () => send('DELETE', `${kind.collection}/${single}`, { ifMatch: etag as string }));
      assert.equal(deleted.status, 412, deleted.text);
      assert.equal(deleted.body.errorCode, 412002);

      const item = `gap-bulk-${kind.idField.length}`;
      const { etag: itemEtag } = await create(item);
      const bulk = await deletedAfterFirstRead(kind, item, () => send('POST', kind.collection, { body: { mode: 'delete', [kind.listField]: [entry(item, { etag: itemEtag })] } }));
      assert.equal(bulk.status, 200, bulk.text);
      assert.deepEqual(bulk.body, { isSuccessful: false, errors: [{ [kind.idField]: item, errorCode: 412002, errorStatus: lost }] });

      const put = `gap-put-${kind.idField.length}`;
      const { etag: putEtag } = await create(put);
      const replaced = await deletedAfterFirstRead(kind, put, () => send('PUT', `${kind.collection}/${put}`, { ifMatch: putEtag as string, body: entry(put) }));
      assert.equal(replaced.status, 412, replaced.text);
      assert.equal(replaced.body.errorCode, 412002);
    });

    test('PUT, DELETE, bulk update and bulk delete racing with one etag: exactly one of them wins', async () => {
      const id = `race-mixed-${kind.idField.length}`;
      const { etag } = await create(id);
      const attempts = Array.from({ length: WRITERS }, (_, writer) => {
        switch (writer % 4) {
          case 0:
            return send('PUT', `${kind.collection}/${id}`, { ifMatch: etag as string, body: entry(id, { initialTwin: { tags: { writer } } }) });
          case 1:
            return send('DELETE', `${kind.collection}/${id}`, { ifMatch: etag as string });
          case 2:
            return send('POST', kind.collection, { body: { mode: 'updateIfMatchETag', [kind.listField]: [entry(id, { etag, initialTwin: { tags: { writer } } })] } });
          default:
            return send('POST', kind.collection, { body: { mode: 'delete', [kind.listField]: [entry(id, { etag })] } });
        }
      });
      const results = await Promise.all(attempts);
      const won = results.filter((result) => result.status === 200 || result.status === 204).filter((result) => result.body?.isSuccessful !== false);
      assert.equal(won.length, 1, results.map((result) => `${result.status} ${result.text}`).join('\n'));
      // Every loser named a version that is gone, whether a delete or a replace won: 412, as the single routes answer.
      for (const result of results) {
        if (result === won[0]) continue;
        const errorCode = result.status === 200 ? (result.body.errors as Json[])[0]?.errorCode : result.body.errorCode;
        assert.equal(errorCode, 412002, result.text);
      }
    });
  });
}

test('registration records: DELETE with If-Match by 20 writers, one 204 and the rest 412', async () => {
  const operator = (await server.app.store.listInstances()).find((instance) => instance.name === 'default');
  assert.ok(operator !== undefined);
  await server.app.store.putRegistration(operator.id, {
    registrationId: 'race-record',
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    assignedHub: 'localhost',
    deviceId: 'race-record',
    status: 'assigned',
    substatus: 'initialAssignment',
    etag: '"race"',
  });
  const etag = (await send('GET', '/registrations/race-record')).body.etag as string;
  const results = await Promise.all(Array.from({ length: WRITERS }, () => send('DELETE', '/registrations/race-record', { ifMatch: etag })));
  assert.deepEqual(tally(results.map((result) => result.status)), { 204: 1, 412: WRITERS - 1 }, results.map((result) => result.text).join('\n'));
});
