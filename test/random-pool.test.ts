import assert from 'node:assert/strict';
import { test } from 'node:test';
import { newEtag } from '../src/domain/etag.js';
import { newOperationId } from '../src/domain/ids.js';
import { randomBase64, randomBelow, randomHex } from '../src/domain/random-pool.js';

/** The pooled random source keeps the formats of the IDs it replaced and never hands out the same bytes twice. */
test('pooled IDs and etags keep their formats', () => {
  assert.match(newEtag(), /^"[0-9a-f]{24}"$/);
  assert.match(newOperationId(), /^5\.[0-9a-f]{16}\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.match(randomBase64(8), /^[A-Za-z0-9+/]{11}=$/);
  assert.match(randomHex(4), /^[0-9a-f]{8}$/);
});

test('operation IDs made later sort after earlier ones (their rows go to the end of the key index)', async () => {
  const first = newOperationId();
  await new Promise((resolve) => setTimeout(resolve, 2));
  const later = Array.from({ length: 50 }, () => newOperationId());
  for (const id of later) assert.ok(id > first, `${id} sorts after ${first}`);
  // The time part is the creation time in milliseconds; the rest stays random.
  const millis = Number.parseInt(first.slice(2, 14), 16);
  assert.ok(Math.abs(millis - Date.now()) < 1_000);
  assert.equal(new Set(later).size, 50);
});

test('values drawn across many refills of the pool are all distinct', () => {
  // 20,000 × 12 bytes is about 60 refills of the 4 KiB pool: a refill that reused bytes would repeat values.
  const seen = new Set<string>();
  for (let i = 0; i < 20_000; i += 1) seen.add(randomHex(12));
  assert.equal(seen.size, 20_000);
});

test('randomBelow stays in range and reaches every value', () => {
  const counts = new Array<number>(7).fill(0);
  for (let i = 0; i < 7_000; i += 1) {
    const value = randomBelow(7);
    assert.ok(Number.isInteger(value) && value >= 0 && value < 7);
    counts[value] = (counts[value] ?? 0) + 1;
  }
  for (const count of counts) assert.ok(count > 700, `each of 7 values drawn about 1,000 times, got ${counts.join(',')}`);
  assert.throws(() => randomBelow(0), RangeError);
  assert.throws(() => randomHex(5000), RangeError);
});
