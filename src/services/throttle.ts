import { ProvisioningError } from '../domain/errors.js';
import { idKey } from '../domain/ids.js';
import type { RateToken, Store } from '../store/store.js';

/**
 * Token buckets keyed by whatever is limited (an instance's registrations, a device's polls): `ratePerSecond`
 * tokens a second, bursts up to twice that. A refused call is a 429 with Retry-After; nothing about the device's
 * state changes, so the retry finds it as it was.
 *
 * Where several nodes share the database, the buckets live in the store (one conditional statement per take), so a
 * limit holds for the whole cluster, not per node; the tolerance is the clock difference between nodes (each
 * refills by its own clock, and a clock behind the bucket's last take adds nothing). On a single-writer store
 * there is one node, and the buckets stay in memory.
 */
export interface RateLimiter {
  /** Takes one token or throws Throttled. A rate of 0 means unlimited. */
  take(key: string): Promise<void>;
  /**
   * Takes one token and reads: `read` gets the token to take in its own statement where the buckets live in the store
   * (one round trip for both, issue 11) and answers whether it was taken; otherwise the token is taken first (or
   * none is needed) and `read` gets undefined. Throws Throttled, whatever was read, when no token was taken.
   */
  takeWith<T>(key: string, read: (token: RateToken | undefined) => Promise<{ taken: boolean; value: T }>): Promise<T>;
  /** Drops what this process keeps under the key (an erased device's bucket in memory); the store's is the erase's. */
  forget(key: string): void;
}

/** The limiters whose buckets live in the store (several nodes): each key begins with its limiter's name. */
export type LimiterName = 'registrations' | 'polls';

/**
 * A bucket's key in the store: its limiter's name, then the limiter's own key (an instance ID; an instance ID and a
 * device's registration ID key). Not the rate (before session 33 the key began with it): an erase finds a device's
 * poll budget by its ID alone, whatever the rate was, and a changed rate refills the same bucket to its new burst.
 */
export function bucketKey(limiter: LimiterName, key: string): string {
  return `${limiter}/${key}`;
}

/** The poll limiter's key for a device (RegistrationService takes its polls' and status lookups' tokens by it). */
export function devicePollKey(instanceId: string, registrationId: string): string {
  return `${instanceId}/${idKey(registrationId)}`;
}

export function createRateLimiter(limiter: LimiterName, ratePerSecond: number, store: Store, now: () => number = Date.now): RateLimiter {
  return store.capabilities.singleWriter ? new MemoryRateLimiter(ratePerSecond, now) : new StoreRateLimiter(limiter, ratePerSecond, store, now);
}

function throttled(waitSeconds: number): ProvisioningError {
  return new ProvisioningError('Throttled', `Too many requests; retry after ${waitSeconds} s.`, { 'Retry-After': String(waitSeconds) });
}

/** The buckets of one process (one node). */
export class MemoryRateLimiter implements RateLimiter {
  readonly #ratePerSecond: number;
  readonly #burst: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #now: () => number;

  constructor(ratePerSecond: number, now: () => number = Date.now) {
    this.#ratePerSecond = ratePerSecond;
    this.#burst = Math.max(1, ratePerSecond * 2);
    this.#now = now;
  }

  take(key: string): Promise<void> {
    try {
      this.#take(key);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  async takeWith<T>(key: string, read: (token: RateToken | undefined) => Promise<{ taken: boolean; value: T }>): Promise<T> {
    this.#take(key);
    return (await read(undefined)).value;
  }

  forget(key: string): void {
    this.#buckets.delete(key);
  }

  #take(key: string): void {
    if (this.#ratePerSecond === 0) return;
    const now = this.#now();
    const bucket = this.#buckets.get(key) ?? { tokens: this.#burst, at: now };
    bucket.tokens = Math.min(this.#burst, bucket.tokens + ((now - bucket.at) / 1000) * this.#ratePerSecond);
    bucket.at = now;
    if (bucket.tokens < 1) {
      this.#buckets.set(key, bucket);
      throw throttled(Math.max(1, Math.ceil((1 - bucket.tokens) / this.#ratePerSecond)));
    }
    bucket.tokens -= 1;
    this.#buckets.set(key, bucket);
    // Forget full buckets now and then so idle devices do not accumulate.
    if (this.#buckets.size > 100_000) {
      for (const [name, entry] of this.#buckets) {
        if (entry.tokens + ((now - entry.at) / 1000) * this.#ratePerSecond >= this.#burst) this.#buckets.delete(name);
      }
    }
  }
}

/**
 * Buckets in the store, shared by every node. A high rate (an instance's registrations) is taken from the store in
 * handfuls of {@link leaseOf} tokens — 1 % of a second's worth — that this node then spends alone for up to
 * {@link LEASE_MS}: one statement per handful instead of one per request, and fewer writes to a bucket row that every
 * node updates (issue 11). The cluster still never admits more than the bucket gives out; what a handful can cost is
 * admissions: tokens a node took and did not spend before its lease ran out are lost (at most one handful per node a
 * second), and a handful may be spent up to {@link LEASE_MS} after the bucket gave it. A low rate (a device's polls:
 * less than 200 a second) is taken one token at a time, as every take needs the bucket as it is.
 */
export class StoreRateLimiter implements RateLimiter {
  readonly #ratePerSecond: number;
  readonly #burst: number;
  readonly #store: Store;
  readonly #now: () => number;
  readonly #prefix: string;
  readonly #lease: number;
  /** Per key, the tokens of this node's handful and until when they may be spent. */
  readonly #leases = new Map<string, { tokens: number; untilMs: number }>();
  /** Per key, the handful being taken from the store: concurrent takes wait for it rather than take one each. */
  readonly #leasing = new Map<string, Promise<void>>();

  constructor(limiter: LimiterName, ratePerSecond: number, store: Store, now: () => number = Date.now) {
    this.#ratePerSecond = ratePerSecond;
    this.#burst = Math.max(1, ratePerSecond * 2);
    this.#store = store;
    this.#now = now;
    // Different limiters on one key (registrations vs polls) never share a bucket.
    this.#prefix = bucketKey(limiter, '');
    this.#lease = leaseOf(ratePerSecond);
  }

  async take(key: string): Promise<void> {
    if (this.#ratePerSecond === 0) return;
    if (this.#lease > 1) return this.#takeLeased(key);
    if (await this.#store.takeRateToken(this.#prefix + key, this.#ratePerSecond, this.#burst, this.#now())) return;
    throw this.#throttled();
  }

  async takeWith<T>(key: string, read: (token: RateToken | undefined) => Promise<{ taken: boolean; value: T }>): Promise<T> {
    if (this.#ratePerSecond === 0) return (await read(undefined)).value;
    if (this.#lease > 1) {
      await this.#takeLeased(key);
      return (await read(undefined)).value;
    }
    const { taken, value } = await read({ bucketKey: this.#prefix + key, ratePerSecond: this.#ratePerSecond, burst: this.#burst, nowMs: this.#now() });
    if (!taken) throw this.#throttled();
    return value;
  }

  forget(key: string): void {
    this.#leases.delete(key);
  }

  /** One token of this node's handful; a new handful when it is spent or expired (one token, when the bucket has fewer). */
  async #takeLeased(key: string): Promise<void> {
    for (;;) {
      const held = this.#leases.get(key);
      if (held !== undefined && held.tokens >= 1 && this.#now() < held.untilMs) {
        held.tokens -= 1;
        return;
      }
      const pending = this.#leasing.get(key);
      if (pending !== undefined) {
        await pending;
        continue;
      }
      let single = false;
      const leasing = (async () => {
        const nowMs = this.#now();
        const bucket = this.#prefix + key;
        if (await this.#store.takeRateToken(bucket, this.#ratePerSecond, this.#burst, nowMs, this.#lease)) {
          this.#leases.set(key, { tokens: this.#lease, untilMs: nowMs + LEASE_MS });
          return;
        }
        // Fewer than a handful left: near the limit, each take goes to the bucket as it is.
        this.#leases.delete(key);
        single = true;
      })();
      this.#leasing.set(key, leasing);
      try {
        await leasing;
      } finally {
        this.#leasing.delete(key);
      }
      if (single) {
        if (await this.#store.takeRateToken(this.#prefix + key, this.#ratePerSecond, this.#burst, this.#now())) return;
        throw this.#throttled();
      }
    }
  }

  #throttled(): ProvisioningError {
    return throttled(Math.max(1, Math.ceil(1 / this.#ratePerSecond)));
  }
}

/** How long a node may spend a handful of tokens it took (StoreRateLimiter). */
export const LEASE_MS = 1000;

/** A handful: 1 % of a second's tokens, whole; 1 (no handfuls) below 200 a second. */
export function leaseOf(ratePerSecond: number): number {
  return Math.max(1, Math.floor(ratePerSecond / 100));
}

export function retryAfterOf(error: ProvisioningError): number | undefined {
  const value = error.info?.['Retry-After'];
  return value === undefined ? undefined : Number(value);
}
