import type { HubClientFactory } from '../hubs/hub-client.js';
import type { LinkedHubRecord } from '../store/store.js';

/**
 * Measured round-trip time from this server to each hub, for geoLatency allocation. provisiond cannot see where a
 * device is, so "lowest latency" is measured from the server; measurements are cached and refreshed in the
 * background of the registration that needs them. An unreachable hub measures as Infinity.
 */
export class HubLatencies {
  readonly #clients: HubClientFactory;
  readonly #cacheMs: number;
  readonly #measured = new Map<string, { ms: number; at: number; pending?: Promise<number> }>();

  constructor(clients: HubClientFactory, cacheMs: number) {
    this.#clients = clients;
    this.#cacheMs = cacheMs;
  }

  async latencies(hubs: readonly LinkedHubRecord[]): Promise<Map<string, number>> {
    const results = await Promise.all(hubs.map(async (hub) => [hub.name, await this.#latency(hub)] as const));
    return new Map(results);
  }

  async #latency(hub: LinkedHubRecord): Promise<number> {
    const now = Date.now();
    const known = this.#measured.get(hub.name);
    if (known !== undefined && now - known.at < this.#cacheMs) return known.ms;
    if (known?.pending !== undefined) return known.pending;
    const pending = this.#clients
      .forHub(hub)
      .measureLatency()
      .catch(() => Infinity)
      .then((ms) => {
        this.#measured.set(hub.name, { ms, at: Date.now() });
        return ms;
      });
    this.#measured.set(hub.name, { ms: known?.ms ?? Infinity, at: known?.at ?? 0, pending });
    return pending;
  }
}
