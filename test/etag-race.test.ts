import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { call, startServer, type TestServer } from './harness.js';
import { freshPostgresDatabase } from './postgres.js';

/**
 * Etag-guarded writes are one compare-and-swap, never check-then-write: 20 concurrent PUTs or DELETEs holding the
 * same etag give exactly one success and 412 for the rest, on SQLite and on PostgreSQL (where transactions really
 * interleave).
 */
for (const dialect of ['sqlite', 'postgres'] as const) {
  describe(`etag races on ${dialect}`, () => {
    let server: TestServer | undefined;
    after(async () => server?.close());

    const api = (method: string, path: string, options: { body?: unknown; ifMatch?: string } = {}) =>
      call(method, `${path}?api-version=2021-10-01`, {
        headers: { authorization: server?.token() ?? '', ...(options.ifMatch === undefined ? {} : { 'if-match': options.ifMatch }) },
        ...(options.body === undefined ? {} : { body: options.body }),
      });

    test('20 concurrent PUTs with one If-Match: one 200, nineteen 412; the same for DELETE', async () => {
      server = await startServer(dialect === 'postgres' ? { store: await freshPostgresDatabase() } : {});
      for (const [collection, idField] of [
        ['enrollments', 'registrationId'],
        ['enrollmentGroups', 'enrollmentGroupId'],
      ] as const) {
        const path = `/${collection}/race-${dialect}`;
        const body = { [idField]: `race-${dialect}`, attestation: { type: 'symmetricKey' } };
        const created = await api('PUT', path, { body });
        assert.equal(created.status, 200);
        const etag = (created.body as { etag: string }).etag;
        const puts = await Promise.all(Array.from({ length: 20 }, (_, i) => api('PUT', path, { body: { ...body, initialTwin: { tags: { writer: i } } }, ifMatch: etag })));
        assert.deepEqual(puts.map((r) => r.status).sort(), [200, ...Array<number>(19).fill(412)], collection);
        const winner = puts.find((r) => r.status === 200)?.body as { etag: string; initialTwin: { tags: { writer: number } } };
        const stored = (await api('GET', path)).body as { etag: string; initialTwin: { tags: { writer: number } } };
        assert.equal(stored.etag, winner.etag, 'what is stored is what the winner was told');
        assert.deepEqual(stored.initialTwin.tags, winner.initialTwin.tags);
        const deletes = await Promise.all(Array.from({ length: 20 }, () => api('DELETE', path, { ifMatch: winner.etag })));
        const statuses = deletes.map((r) => r.status);
        // The losers either lost the compare-and-swap (412) or read after the winner and found nothing (404).
        assert.equal(statuses.filter((status) => status === 204).length, 1, `${collection}: ${statuses.join(',')}`);
        assert.ok(statuses.every((status) => [204, 404, 412].includes(status)), statuses.join(','));
      }
    });
  });
}
