import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { purgeIdleRateBuckets, IDLE_RATE_BUCKET_MS } from '../src/services/retention-purge.js';
import { bucketKey, LEASE_MS, leaseOf, StoreRateLimiter } from '../src/services/throttle.js';
import { loadConfig } from '../src/config/config.js';
import { openSqliteStore, openStore } from '../src/store/open-store.js';
import type { Store } from '../src/store/store.js';
import { freshPostgresDatabase } from './postgres.js';

/**
 * The store's rate limiter (services/throttle.ts): where several nodes share the buckets, a high rate is taken from
 * the store by the handful (issue 11) — one statement per handful, never more admitted than the bucket gives out —
 * and a low rate one token at a time. Each runs on SQLite and on the test run's PostgreSQL.
 */
const stores: Array<[string, () => Promise<Store>]> = [['SQLite', () => openSqliteStore(':memory:')]];
if (process.env.PROVISIOND_TEST_PG_URL !== undefined) {
  stores.push(['PostgreSQL', async () => (await openStore(loadConfig({ flags: { store: await freshPostgresDatabase(), storePoolSize: 4 } }))).store]);
}

/** The store with its token takes counted. */
function counted(store: Store): { store: Store; takes: number[] } {
  const takes: number[] = [];
  const take = store.takeRateToken.bind(store);
  store.takeRateToken = (bucketKey, ratePerSecond, burst, nowMs, count) => {
    takes.push(count ?? 1);
    return take(bucketKey, ratePerSecond, burst, nowMs, count);
  };
  return { store, takes };
}

const throttled = (error: unknown) => error instanceof Error && /Too many requests/.test(error.message);

for (const [name, open] of stores) {
  describe(`StoreRateLimiter on ${name}`, () => {
    const opened: Store[] = [];
    const fresh = async () => {
      const store = await open();
      opened.push(store);
      return counted(store);
    };
    after(async () => {
      for (const store of opened) await store.close();
    });

    test('a high rate goes to the store once per handful, also when many requests arrive together', async () => {
      const { store, takes } = await fresh();
      const clock = { now: 1_000_000 };
      const limiter = new StoreRateLimiter('registrations', 10_000, store, () => clock.now);
      assert.equal(leaseOf(10_000), 100);
      for (let i = 0; i < 250; i += 1) await limiter.take('instance-a');
      assert.deepEqual(takes, [100, 100, 100]);
      // 300 at once: they wait for one handful at a time instead of each taking its own.
      takes.length = 0;
      await Promise.all(Array.from({ length: 300 }, () => limiter.take('instance-a')));
      assert.deepEqual(takes, [100, 100, 100]);
      // Another key has its own bucket and handful.
      await limiter.take('instance-b');
      assert.deepEqual(takes, [100, 100, 100, 100]);
    });

    test('a handful is spent within its lease; what is left then is lost, and a new handful is taken', async () => {
      const { store, takes } = await fresh();
      const clock = { now: 5_000_000 };
      const limiter = new StoreRateLimiter('registrations', 1000, store, () => clock.now);
      await limiter.take('instance-c');
      clock.now += LEASE_MS - 1;
      await limiter.take('instance-c');
      assert.deepEqual(takes, [10]);
      clock.now += 1;
      await limiter.take('instance-c');
      assert.deepEqual(takes, [10, 10]);
    });

    test('two nodes on one bucket admit exactly what it gives out, and then refuse', async () => {
      const { store, takes } = await fresh();
      const clock = { now: 9_000_000 };
      // 1,000 a second, bursts of 2,000: handfuls of 10, and the last few tokens one at a time.
      const nodes = [new StoreRateLimiter('registrations', 1000, store, () => clock.now), new StoreRateLimiter('registrations', 1000, store, () => clock.now)];
      let admitted = 0;
      const refusedBy = new Set<number>();
      for (let i = 0; refusedBy.size < 2 && i < 5000; i += 1) {
        const node = i % 2;
        if (refusedBy.has(node)) continue;
        try {
          await (nodes[node] as StoreRateLimiter).take('instance-d');
          admitted += 1;
        } catch (error) {
          assert.ok(throttled(error), String(error));
          refusedBy.add(node);
        }
      }
      assert.equal(admitted, 2000);
      assert.ok(takes.length < 2000 / 10 + 10, `${takes.length} statements for 2,000 tokens`);
      // A refusal holds on both until the bucket refills: 10 ms at 1,000 a second is 10 tokens, a handful.
      await assert.rejects((nodes[0] as StoreRateLimiter).take('instance-d'), throttled);
      clock.now += 10;
      await (nodes[1] as StoreRateLimiter).take('instance-d');
    });

    test("the purge deletes the buckets nothing took from for an hour, in batches, and keeps the others", async () => {
      const { store } = await fresh();
      const now = 50_000_000;
      const limiter = new StoreRateLimiter('polls', 5, store, () => now - IDLE_RATE_BUCKET_MS - 1);
      // 2,500 idle buckets (more than two batches), then every fifth one taken from again just now.
      for (let i = 0; i < 2_500; i += 1) await limiter.take(`instance/device-${String(i).padStart(4, '0')}`);
      const recent = new StoreRateLimiter('polls', 5, store, () => now);
      for (let i = 0; i < 2_500; i += 5) await recent.take(`instance/device-${String(i).padStart(4, '0')}`);
      const deleted = await purgeIdleRateBuckets({ store, config: loadConfig({ flags: {} }), now: () => new Date(now) });
      // Only on a store several nodes share: a single node keeps its buckets in memory and leaves the table alone.
      assert.equal(deleted, store.capabilities.singleWriter ? 0 : 2_000);
      const recentKeys = Array.from({ length: 500 }, (_, i) => bucketKey('polls', `instance/device-${String(i * 5).padStart(4, '0')}`));
      assert.equal(await store.deleteRateBuckets(recentKeys), 500, 'the recent ones stayed');
    });

    test('a low rate takes each token from the store', async () => {
      const { store, takes } = await fresh();
      const limiter = new StoreRateLimiter('polls', 5, store, () => 7_000_000);
      for (let i = 0; i < 10; i += 1) await limiter.take('device-e');
      await assert.rejects(limiter.take('device-e'), throttled);
      assert.deepEqual(takes, Array<number>(11).fill(1));
    });
  });
}
