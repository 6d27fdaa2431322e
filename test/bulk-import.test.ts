import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { call, startServer, type TestServer } from './harness.js';
import { freshPostgresDatabase } from './postgres.js';

/**
 * Bulk import (issue 12): one transaction per call, multi-row statements, one log entry per item with its own outcome.
 * `mode: create` never overwrites an enrollment, also when several calls create the same IDs at once — the primary key
 * decides, on SQLite and on PostgreSQL (where transactions really interleave).
 */
type Json = Record<string, unknown>;
const API = 'api-version=2021-10-01';
const item = (registrationId: string, writer: number): Json => ({
  registrationId,
  attestation: { type: 'symmetricKey' },
  initialTwin: { tags: { writer } },
});

for (const storeName of ['sqlite', 'postgres'] as const) {
  describe(`bulk import on ${storeName}`, () => {
    let server: TestServer;
    before(async () => {
      server = await startServer(storeName === 'postgres' ? { store: await freshPostgresDatabase() } : {});
    });
    after(async () => {
      await server?.close();
    });
    const send = (method: string, path: string, body?: unknown) =>
      call(method, `${path}${path.includes('?') ? '&' : '?'}${API}`, { headers: { authorization: server.token() }, ...(body === undefined ? {} : { body }) });

    test('concurrent creates of the same IDs: each ID is created once, the others get 409001, nothing is overwritten', async () => {
      const WRITERS = 6;
      const ids = Array.from({ length: 300 }, (_, i) => `race-${String(i).padStart(3, '0')}`);
      // Each writer sends the IDs in its own order, so calls overlap in every way.
      const results = await Promise.all(
        Array.from({ length: WRITERS }, (_, writer) => {
          const order = writer % 2 === 0 ? ids : [...ids].reverse();
          return send('POST', '/enrollments', { mode: 'create', enrollments: order.map((id) => item(id, writer)) });
        }),
      );
      const winners = new Map<string, number>();
      for (const [writer, result] of results.entries()) {
        assert.equal(result.status, 200, result.text);
        const body = result.body as { isSuccessful: boolean; errors?: Array<{ registrationId: string; errorCode: number; errorStatus: string }> };
        const lost = new Set<string>();
        for (const error of body.errors ?? []) {
          assert.deepEqual(error, { registrationId: error.registrationId, errorCode: 409001, errorStatus: `The enrollment '${error.registrationId}' already exists.` });
          lost.add(error.registrationId);
        }
        for (const id of ids) {
          if (lost.has(id)) continue;
          assert.equal(winners.get(id), undefined, `${id} was reported created by writers ${winners.get(id)} and ${writer}`);
          winners.set(id, writer);
        }
      }
      assert.equal(winners.size, ids.length, 'every ID was created by exactly one call');
      // What is stored is what the winner wrote.
      for (const id of ['race-000', 'race-150', 'race-299']) {
        const stored = await send('GET', `/enrollments/${id}`);
        assert.deepEqual((stored.body as { initialTwin: Json }).initialTwin.tags, { writer: winners.get(id) }, id);
      }
    });

    test('a full call of bulkMaxItems (1,000) items goes in whole', async () => {
      const ids = Array.from({ length: 1000 }, (_, i) => `full-${String(i).padStart(4, '0')}`);
      const result = await send('POST', '/enrollments', { mode: 'create', enrollments: ids.map((id) => item(id, 0)) });
      assert.deepEqual(result.body, { isSuccessful: true }, result.text.slice(0, 300));
      const page = await send('POST', '/enrollments/query', { query: "SELECT * FROM enrollments WHERE registrationId LIKE 'full-%'" });
      assert.equal(page.status, 200);
      assert.equal((await send('GET', '/enrollments/full-0999')).status, 200);
      const logged = await send('POST', '/auditEvents/query', { subject: 'full-0500' });
      assert.deepEqual((logged.body as Json[]).map((event) => [event.operation, event.outcome]), [['IndividualEnrollment_RunBulkOperation', 'success']]);
    });

    test('a bulk call logs each item once, with its own outcome', async () => {
      await send('PUT', '/enrollments/log-existing', item('log-existing', 0));
      const result = await send('POST', '/enrollments', {
        mode: 'create',
        enrollments: [item('log-new-1', 1), item('log-existing', 1), item('log bad id', 1), item('log-new-2', 1)],
      });
      assert.equal((result.body as { isSuccessful: boolean }).isSuccessful, false);
      const events = async (subject: string) => {
        const page = await send('POST', '/auditEvents/query', { subject });
        return (page.body as Json[]).filter((event) => event.operation === 'IndividualEnrollment_RunBulkOperation');
      };
      for (const [subject, outcome, errorCode] of [
        ['log-new-1', 'success', undefined],
        ['log-existing', 'failure', 409001],
        ['log-new-2', 'success', undefined],
      ] as const) {
        const found = await events(subject);
        assert.equal(found.length, 1, `${subject}: ${JSON.stringify(found)}`);
        const [event] = found as [Json];
        assert.equal(event.outcome, outcome, subject);
        assert.equal(event.errorCode, errorCode, subject);
        assert.deepEqual(event.subject, { registrationId: subject });
        assert.equal(event.actor, 'provisioningserviceowner');
      }
    });

    test('update and delete keep their semantics inside the one transaction', async () => {
      const ids = ['keep-1', 'keep-2', 'keep-3'];
      assert.deepEqual((await send('POST', '/enrollments', { mode: 'create', enrollments: ids.map((id) => item(id, 0)) })).body, { isSuccessful: true });
      const before = await Promise.all(ids.map(async (id) => (await send('GET', `/enrollments/${id}`)).body as Json));
      // update replaces, regardless of etag; an ID twice in one call applies both, in order.
      const updated = await send('POST', '/enrollments', { mode: 'update', enrollments: [...ids.map((id) => item(id, 1)), item('keep-2', 2), item('keep-new', 1)] });
      assert.deepEqual(updated.body, { isSuccessful: true });
      const after = await Promise.all(ids.map(async (id) => (await send('GET', `/enrollments/${id}`)).body as Json));
      assert.deepEqual(after.map((doc) => (doc.initialTwin as { tags: Json }).tags.writer), [1, 2, 1]);
      for (const [index, doc] of after.entries()) {
        assert.notEqual(doc.etag, before[index]?.etag);
        assert.equal(doc.createdDateTimeUtc, before[index]?.createdDateTimeUtc);
      }
      // delete honours each item's etag; a failing item leaves the others done.
      const deleted = await send('POST', '/enrollments', {
        mode: 'delete',
        enrollments: [{ registrationId: 'keep-1', etag: '"stale"' }, { registrationId: 'keep-2', etag: after[1]?.etag }, { registrationId: 'keep-3' }, { registrationId: 'keep-none' }],
      });
      assert.deepEqual(deleted.body, {
        isSuccessful: false,
        errors: [
          { registrationId: 'keep-1', errorCode: 412002, errorStatus: 'The etag does not match the current resource.' },
          { registrationId: 'keep-none', errorCode: 404201, errorStatus: "Enrollment 'keep-none' was not found." },
        ],
      });
      assert.deepEqual(
        await Promise.all(['keep-1', 'keep-2', 'keep-3', 'keep-new'].map(async (id) => (await send('GET', `/enrollments/${id}`)).status)),
        [200, 404, 404, 200],
      );
    });
  });
}
