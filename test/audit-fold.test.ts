import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../src/config/config.js';
import { AuditLog, type AuditInput } from '../src/services/audit-log.js';
import { openSqliteStore } from '../src/store/open-store.js';
import type { Store } from '../src/store/store.js';

/**
 * An operator's reads that name no subject fold, per reader and operation, into one event that counts them
 * (services/audit-log.ts). The node remembers where each reader's reads of an operation went and looks at that one
 * event first; these check the remembered event is only a hint: a read is never lost or folded into the wrong event,
 * and the search of the reader's recent events still runs when the hint does not hold.
 */
const INSTANCE = 'instance-fold';

function read(operation: string, actor = 'operator'): AuditInput {
  return { kind: 'serviceApi', operation, actor, source: '127.0.0.1', subject: {}, outcome: 'success', class: 'access' };
}

/** The store, counting the searches of recent events the log makes inside its transactions. */
function counted(store: Store): { store: Store; searches: () => number } {
  let searches = 0;
  const wrap = (inner: Store): Store =>
    new Proxy(inner, {
      get(target, property, receiver) {
        if (property === 'queryAuditEvents') {
          return (...args: Parameters<Store['queryAuditEvents']>) => {
            searches += 1;
            return target.queryAuditEvents(...args);
          };
        }
        if (property === 'transaction') return <T>(work: (tx: Store) => Promise<T>) => target.transaction((tx) => work(wrap(tx)));
        const value: unknown = Reflect.get(target, property, receiver);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  return { store: wrap(store), searches: () => searches };
}

/** `start`: the test's clock (event IDs never go back, across the process: each test starts later than the last). */
async function setup(start: string) {
  const store = await openSqliteStore(':memory:');
  let now = new Date(start);
  const { store: watched, searches } = counted(store);
  const audit = new AuditLog({ store: watched, config: loadConfig({ flags: {} }), now: () => now }, pino({ level: 'silent' }));
  const events = async () => (await store.queryAuditEvents(INSTANCE, { limit: 100 })).items;
  const repeats = (event: { details?: Record<string, unknown> } | undefined) => Number(event?.details?.repeats ?? 0);
  return { store, audit, searches, events, repeats, later: (ms: number) => (now = new Date(now.getTime() + ms)) };
}

test("a reader's repeated reads fold into its event by the remembered ID, without searching the log again", async () => {
  const { store, audit, searches, events, repeats, later } = await setup('2026-12-04T08:00:00.000Z');
  await audit.record(INSTANCE, read('IndividualEnrollment_Query'));
  const afterFirst = searches();
  for (let i = 0; i < 5; i += 1) {
    later(1_000);
    await audit.record(INSTANCE, read('IndividualEnrollment_Query'));
  }
  assert.equal(searches(), afterFirst, 'no search of recent events for a read whose event is remembered');
  const written = await events();
  assert.equal(written.length, 1);
  assert.equal(repeats(written[0]), 5);
  // More than the search's look-back of other reads in between: the remembered event is still found.
  for (let i = 0; i < 25; i += 1) await audit.record(INSTANCE, read(`Other_${i}`));
  await audit.record(INSTANCE, read('IndividualEnrollment_Query'));
  const query = (await events()).filter((event) => event.operation === 'IndividualEnrollment_Query');
  assert.equal(query.length, 1);
  assert.equal(repeats(query[0]), 6);
  await store.close();
});

test('a remembered event that is gone or too old is not folded into: the read is written, none is lost', async () => {
  const { store, audit, events, repeats, later } = await setup('2026-12-04T09:00:00.000Z');
  await audit.record(INSTANCE, read('LinkedHub_List'));
  await audit.record(INSTANCE, read('LinkedHub_List'));
  const [first] = await events();
  assert.equal(repeats(first), 1);
  // The event disappears (its instance removed, a purge): the next read makes a new one.
  assert.equal(await store.deleteAuditEvents(INSTANCE, [first?.eventId ?? '']), 1);
  await audit.record(INSTANCE, read('LinkedHub_List'));
  const [second] = await events();
  assert.ok(second !== undefined && second.eventId !== first?.eventId);
  assert.equal(repeats(second), 0);
  // Past the fold window (60 s from the event's first read): a new event, the old one left as it was.
  later(61_000);
  await audit.record(INSTANCE, read('LinkedHub_List'));
  const after = await events();
  assert.equal(after.length, 2);
  assert.deepEqual(
    after.map((event) => repeats(event)),
    [0, 0],
  );
  // Another reader's read of the same operation is its own event, and does not disturb this reader's.
  await audit.record(INSTANCE, read('LinkedHub_List', 'portal'));
  await audit.record(INSTANCE, read('LinkedHub_List'));
  const byActor = (await events()).map((event) => [event.actor, repeats(event)]);
  assert.deepEqual(byActor, [
    ['portal', 0],
    ['operator', 1],
    ['operator', 0],
  ]);
  await store.close();
});
