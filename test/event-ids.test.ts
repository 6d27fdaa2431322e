import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dpsTimestamp } from '../src/domain/time.js';
import { newEventId, reserveEventIds } from '../src/services/audit-log.js';

/**
 * Event IDs (the log's and the lifecycle outbox's) sort in the order they were made, and the store finds a time range
 * of the log as a range of IDs: 12 hex digits of milliseconds, then a four-digit sequence within the millisecond.
 * A bulk call of up to `bulkMaxItems` (100,000) items logs one event per item, so one millisecond can ask for more
 * IDs than the sequence holds.
 */
test('more IDs than one millisecond holds stay 24 characters and in order', () => {
  const now = new Date('2031-01-01T00:00:00.000Z');
  const ids = Array.from({ length: 70_000 }, () => newEventId(now));
  for (const [index, id] of ids.entries()) assert.equal(id.length, 24, `ID ${index} is ${id}`);
  for (let i = 1; i < ids.length; i += 1) assert.ok((ids[i - 1] as string) < (ids[i] as string), `ID ${i} (${ids[i]}) sorts before ID ${i - 1} (${ids[i - 1]})`);
  // Past the sequence's end the IDs go on in the next millisecond, never back in time.
  assert.ok(Number.parseInt((ids.at(-1) as string).slice(0, 12), 16) > now.getTime());
});

test('reserved IDs keep their place in the order, however late they are made', () => {
  const now = new Date('2032-01-01T00:00:00.000Z');
  const reserved = reserveEventIds(now, 3);
  const later = newEventId(now);
  const made = [reserved(2), reserved(0), reserved(1)];
  assert.deepEqual([...made].sort(), [made[1], made[2], made[0]]);
  for (const id of made) assert.ok(id < later, `${id} was reserved before ${later}`);
  // A reservation larger than the sequence space stays in order too.
  const big = reserveEventIds(now, 100_000);
  const after = newEventId(now);
  assert.ok(big(0) > later && big(65_535) < big(65_536) && big(99_999) < after && big(99_999).length === 24);
});

test('DPS timestamps: seven fractional digits; the same instant twice is the same text, the next instant its own, an invalid date throws', () => {
  const at = new Date('2031-01-01T00:00:00.123Z');
  assert.equal(dpsTimestamp(at), '2031-01-01T00:00:00.1230000Z');
  assert.equal(dpsTimestamp(new Date(at.getTime())), '2031-01-01T00:00:00.1230000Z');
  assert.equal(dpsTimestamp(new Date(at.getTime() + 1)), '2031-01-01T00:00:00.1240000Z');
  assert.equal(dpsTimestamp(at), '2031-01-01T00:00:00.1230000Z');
  assert.throws(() => dpsTimestamp(new Date(Number.NaN)), RangeError);
  assert.throws(() => dpsTimestamp(new Date(Number.NaN)), RangeError);
});
