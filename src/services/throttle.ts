import { ProvisioningError } from '../domain/errors.js';

/**
 * Token buckets keyed by whatever is limited (an instance's registrations, a device's polls). A refused call is a
 * 429 with Retry-After; nothing about the device's state changes, so the retry finds it as it was.
 */
export class RateLimiter {
  readonly #ratePerSecond: number;
  readonly #burst: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #now: () => number;

  constructor(ratePerSecond: number, now: () => number = Date.now) {
    this.#ratePerSecond = ratePerSecond;
    this.#burst = Math.max(1, ratePerSecond * 2);
    this.#now = now;
  }

  /** Takes one token or throws Throttled. A rate of 0 means unlimited. */
  take(key: string): void {
    if (this.#ratePerSecond === 0) return;
    const now = this.#now();
    const bucket = this.#buckets.get(key) ?? { tokens: this.#burst, at: now };
    bucket.tokens = Math.min(this.#burst, bucket.tokens + ((now - bucket.at) / 1000) * this.#ratePerSecond);
    bucket.at = now;
    if (bucket.tokens < 1) {
      this.#buckets.set(key, bucket);
      const waitSeconds = Math.max(1, Math.ceil((1 - bucket.tokens) / this.#ratePerSecond));
      throw new ProvisioningError('Throttled', `Too many requests; retry after ${waitSeconds} s.`, { 'Retry-After': String(waitSeconds) });
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

export function retryAfterOf(error: ProvisioningError): number | undefined {
  const value = error.info?.['Retry-After'];
  return value === undefined ? undefined : Number(value);
}
