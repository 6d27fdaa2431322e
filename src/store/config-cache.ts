import type { Kysely } from 'kysely';
import type { Database } from './schema.js';

/**
 * What a registration reads that almost never changes — the instance (by ID scope and by ID), its linked hubs, the
 * built-in hub rows — and what every service-API request reads (the instance by host name, the caller's access policy,
 * on SQLite only) kept in memory with invalidation that is exact on both dialects (issue 12 "nothing looked up
 * twice", issue 11 "a change on one node is seen by the next registration on every other node"):
 *
 * - **This process's writes** bump {@link ConfigCache.generation} when they run and again when their transaction
 *   ends (commit or rollback), so nothing read before or inside a changing transaction outlives it.
 * - **SQLite** has one server per data directory (the data-directory lock), so this process writes everything: the
 *   generation alone is exact, and a cached read costs no statement at all.
 * - **PostgreSQL** has other nodes. Every instance, linked-hub, access-policy and built-in hub write also bumps the
 *   shared counter `config` (change_counters) in its own transaction. A device request's first read, the instance by ID
 *   scope, reads that counter in the same statement (one snapshot), and the record it returns carries the version it
 *   was read at ({@link ConfigCache.stamp}). Later reads of the same request that pass that record
 *   (`Store.linkedHubsOf`, `Store.currentInstance`) are answered from memory when the entry was read at that version or
 *   a later one; otherwise they read again, with the counter in the same statement. So one statement per request
 *   validates everything the request reads, and a write committed on any node before a request starts is seen by it.
 *   Reads that carry no such record (the service API, a built-in hub's own requests) read the store as before.
 * - **The built-in hub row on PostgreSQL**, read by a registration's transaction (the hub client joined to it): the
 *   hub client carries no request record, so its entry is valid when read at {@link ConfigCache.highestVersion} or
 *   later — the highest version any read of this process has seen, so at least the version of every request under way
 *   (each read its version before it reached the hub). A config write on any node moves the counter; the next request
 *   that reads it raises the bar, and the hub row is read again, with the counter, in one statement.
 */
export const CONFIG_COUNTER = 'config';

interface Entry<T> {
  value: T;
  generation: number;
  /** The shared counter's value the entry was read with (PostgreSQL), or undefined on SQLite. */
  version: number | undefined;
}

export class ConfigCache {
  readonly singleWriter: boolean;
  #generation = 0;
  /** The highest shared counter value any read of this process has seen (PostgreSQL). */
  #highestVersion = 0;
  readonly #entries = new Map<string, Entry<unknown>>();
  readonly #stamps = new WeakMap<object, number>();

  constructor(singleWriter: boolean) {
    this.singleWriter = singleWriter;
  }

  get generation(): number {
    return this.#generation;
  }

  /**
   * The highest version of the shared counter this process has read so far. A request's own version was read before
   * it asked, so it is at most this: an entry read at this version or later is valid for every request under way.
   */
  get highestVersion(): number {
    return this.#highestVersion;
  }

  /** A config write of this process: nothing cached before it is served again. */
  invalidate(): void {
    this.#generation += 1;
    this.#entries.clear();
  }

  /**
   * The cached value, if still valid: read in the current generation and, on PostgreSQL, at `atLeastVersion` of the
   * shared counter or later (an undefined version on PostgreSQL never hits: there is nothing to validate against).
   */
  get<T>(key: string, atLeastVersion?: number): { value: T } | undefined {
    const entry = this.#entries.get(key) as Entry<T> | undefined;
    if (entry === undefined || entry.generation !== this.#generation) return undefined;
    if (!this.singleWriter && (atLeastVersion === undefined || entry.version === undefined || entry.version < atLeastVersion)) return undefined;
    return { value: entry.value };
  }

  /** Keeps a value read while the generation was `generation` (taken before the read began). */
  set(key: string, value: unknown, generation: number, version?: number): void {
    if (version !== undefined && version > this.#highestVersion) this.#highestVersion = version;
    if (generation !== this.#generation) return;
    // The entry map only holds a node's instances, their hub lists and its built-in hubs; a bound keeps a store with
    // very many instances from growing it without end.
    if (this.#entries.size >= 10_000) this.#entries.clear();
    this.#entries.set(key, { value, generation, version });
  }

  /** Marks a record as read at `version` of the shared counter. */
  stamp<T extends object>(record: T, version: number): T {
    if (version > this.#highestVersion) this.#highestVersion = version;
    this.#stamps.set(record, version);
    return record;
  }

  stampOf(record: object): number | undefined {
    return this.#stamps.get(record);
  }
}

/**
 * A parsed document frozen through and through, to be kept in the cache and handed to every reader: a reader that
 * tried to change it would throw (ES modules run in strict mode) instead of changing what every later reader gets.
 * Readers copy what they change (`{ ...instance, secrets }`).
 */
export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

const caches = new WeakMap<Kysely<Database>, ConfigCache>();

/** The one cache of a database handle, shared by the store, its transactions and the built-in hub store. */
export function configCacheOf(db: Kysely<Database>, singleWriter: boolean): ConfigCache {
  let cache = caches.get(db);
  if (cache === undefined) caches.set(db, (cache = new ConfigCache(singleWriter)));
  return cache;
}
