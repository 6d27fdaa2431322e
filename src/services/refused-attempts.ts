import { ProvisioningError } from '../domain/errors.js';
import { retryAfterOf, type RateLimiter } from './throttle.js';

/**
 * Refused device attempts, counted by where they come from (issue 13.2). A device's own limits (its polls, its
 * instance's registrations) are taken only after it has proved who it is, so a stranger with a junk token can never
 * spend them; what a stranger spends is the budget of its own source address. Once that is gone, the source is
 * answered 429 before any credential work (no store reads, no HMACs) until its Retry-After has passed — a flood of bad
 * tokens throttles the flooder and costs the server next to nothing.
 *
 * The count lives in a RateLimiter, wherever that keeps its state; the "blocked until" shortcut is this node's own
 * memory and only saves work (a source blocked on one node is still counted on the others).
 */
export class RefusedAttempts {
  readonly #limiter: RateLimiter;
  readonly #now: () => number;
  readonly #blockedUntil = new Map<string, number>();

  constructor(limiter: RateLimiter, now: () => number = Date.now) {
    this.#limiter = limiter;
    this.#now = now;
  }

  /**
   * Runs `attempt` for a caller from `source`. A source over its budget is a 429 at once; a 401 from `attempt`
   * counts against the source (and becomes the 429 when it was the one too many). An unknown source (undefined) is
   * not counted: only in-process callers have none.
   */
  async guard<T>(source: string | undefined, attempt: () => Promise<T>): Promise<T> {
    if (source === undefined) return attempt();
    const key = `refused:${source}`;
    const blocked = this.#blockedUntil.get(key);
    if (blocked !== undefined) {
      const waitMs = blocked - this.#now();
      if (waitMs > 0) {
        const seconds = Math.max(1, Math.ceil(waitMs / 1000));
        throw new ProvisioningError('Throttled', `Too many refused attempts from this address; retry after ${seconds} s.`, { 'Retry-After': String(seconds) });
      }
      this.#blockedUntil.delete(key);
    }
    try {
      return await attempt();
    } catch (error) {
      if (error instanceof ProvisioningError && error.httpStatus === 401) await this.#count(key);
      throw error;
    }
  }

  async #count(key: string): Promise<void> {
    try {
      await this.#limiter.take(key);
    } catch (error) {
      if (!(error instanceof ProvisioningError)) throw error;
      const seconds = retryAfterOf(error) ?? 1;
      this.#blockedUntil.set(key, this.#now() + seconds * 1000);
      // Forget sources whose block has passed, so a scan of many addresses cannot grow this map without end.
      if (this.#blockedUntil.size > 10_000) {
        const now = this.#now();
        for (const [name, until] of this.#blockedUntil) if (until <= now) this.#blockedUntil.delete(name);
      }
      throw new ProvisioningError('Throttled', `Too many refused attempts from this address; retry after ${seconds} s.`, { 'Retry-After': String(seconds) });
    }
  }
}
