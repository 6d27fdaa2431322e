import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../src/config/config.js';
import { AuditLog, type AuditInput } from '../src/services/audit-log.js';
import { openSqliteStore } from '../src/store/open-store.js';

/**
 * The erase fence's guarantee for the log rests on an event being stamped when it is written, after its fence lookup
 * (docs/customer-data.md "The erase fence"): an entry written in the clear then bears a time after the erase became
 * final. A caller that hands `record` an event it made earlier (a spread AuditEvent, as the registration flow's undo
 * path did) must not smuggle in that earlier time — on PostgreSQL that left an entry in the clear before the receipt.
 */
test('the log stamps an event when it writes it, whatever ID and time its input carries', async () => {
  const store = await openSqliteStore(':memory:');
  let now = new Date('2026-12-02T08:00:00.000Z');
  const audit = new AuditLog({ store, config: loadConfig({ flags: {} }), now: () => now }, pino({ level: 'silent' }));
  const decided = audit.event({ kind: 'registration', operation: 'register', actor: 'device', subject: { registrationId: 'stamp-1' }, outcome: 'failure' });
  now = new Date('2026-12-02T08:00:05.000Z');
  await audit.record('instance-stamp', { ...decided, errorCode: 409210 } as AuditInput);
  const written = (await store.queryAuditEvents('instance-stamp', { limit: 10 })).items;
  assert.equal(written.length, 1);
  assert.notEqual(written[0]?.eventId, decided.eventId);
  assert.equal(written[0]?.timeUtc, '2026-12-02T08:00:05.0000000Z');
  await store.close();
});
