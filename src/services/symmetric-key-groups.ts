import type { StoredEnrollmentGroup } from '../domain/enrollment.js';
import { deriveDeviceKey, signedByOneOf, type SasToken } from '../domain/sas.js';
import { groupsCounterOf, type Store } from '../store/store.js';

/**
 * Finds the symmetric-key enrollment group whose derived key signed a device's token. The token names no group
 * (dps-wire.md §4.3), so each group's key must be tried; to keep that from costing a database scan per
 * registration, the groups' keys are held in memory per instance and reloaded when a lookup misses on a stale list
 * (new groups) — and a match is always confirmed against the store (changed or deleted groups).
 *
 * Several nodes may share the store, and a group written on one must count at the next registration on every other:
 * every group write bumps the instance's change counter in the same transaction, and each lookup compares it (one
 * indexed read) with the counter the cached list was loaded at.
 */
interface CachedGroup {
  id: string;
  keys: string[];
  /**
   * The group's document as loaded (lists of at most {@link DOCS_KEPT} groups): when a request read the groups counter
   * at the list's version together with its other reads, this is the stored group, and it is confirmed without a read.
   */
  doc?: StoredEnrollmentGroup;
}

/** A group device's keys: derived from the group's (dps-wire.md §4.3), the device's identity keys in its hub. */
export interface DeviceKeys {
  primaryKey: string;
  secondaryKey: string;
}

/** The group whose derived key signed a device's token, with the device's keys (each derived once per lookup). */
export interface GroupMatch {
  group: StoredEnrollmentGroup;
  deviceKeys: DeviceKeys;
}

/** The cached group {@link scan} found, and the device keys it derived from the group's keys. */
interface Derived {
  group: CachedGroup;
  deviceKeys: DeviceKeys;
}

const RELOAD_AFTER_MS = 1000;
const CACHE_TTL_MS = 30_000;
/** The most groups whose documents a cached list keeps (memory stays small for an instance with many groups). */
const DOCS_KEPT = 64;

export class SymmetricKeyGroups {
  readonly #store: Store;
  readonly #cache = new Map<string, { groups: CachedGroup[]; at: number; version: number }>();

  constructor(store: Store) {
    this.#store = store;
  }

  /** Forget an instance's cached keys (this node wrote a group, or an erase completed). */
  invalidate(instanceId: string): void {
    this.#cache.delete(instanceId);
  }

  /**
   * Drops the cached lists no lookup could use any more ({@link CACHE_TTL_MS}): a list is refreshed only when a device
   * registers, so on an idle node an erased group's keys and documents would otherwise stay in memory (the periodic
   * sweep runs this).
   */
  forgetStale(nowMs: number = Date.now()): void {
    for (const [instanceId, cached] of this.#cache) if (nowMs - cached.at > CACHE_TTL_MS) this.#cache.delete(instanceId);
  }

  /** The IDs of the groups this node keeps cached for an instance (tests). */
  cachedGroupIds(instanceId: string): string[] {
    return (this.#cache.get(instanceId)?.groups ?? []).map((group) => group.id);
  }

  /**
   * `hint`: the group the device's record names, tried first; `read` is that group as the caller just read it from the
   * store (undefined: gone), so it is confirmed without a read of its own. `groupsVersion`: the instance's groups
   * counter as the caller read it with its other reads (Store.findDeviceByIdScope on PostgreSQL): when it is the cached
   * list's, the list's copy of the matching group is the stored one, and no read confirms it (issue 11).
   */
  async match(
    instanceId: string,
    registrationId: string,
    token: SasToken,
    hint?: { groupId: string; read?: StoredEnrollmentGroup | undefined },
    groupsVersion?: number,
  ): Promise<GroupMatch | undefined> {
    if (hint !== undefined) {
      const hinted = 'read' in hint ? this.#confirmed(instanceId, hint.read, registrationId, token) : await this.#confirm(instanceId, hint.groupId, registrationId, token);
      if (hinted !== undefined) return hinted;
    }
    let cached = this.#cache.get(instanceId);
    // The usual case, a fresh cached list that holds the device's group: the group's confirmation and the counter's
    // check are one read (one statement; on PostgreSQL one round trip instead of two). Anything else — no match in the
    // list, or the counter moved — takes the full path below, as if this read had not happened.
    if (cached !== undefined && Date.now() - cached.at <= CACHE_TTL_MS) {
      const candidate = scan(cached.groups, registrationId, token);
      if (candidate !== undefined) {
        // Every group write bumps the counter in its own transaction: at the list's version, its copy is the stored group.
        if (groupsVersion === cached.version && candidate.group.doc !== undefined) return this.#confirmed(instanceId, candidate.group.doc, registrationId, token, candidate);
        const { group, version } = await this.#store.enrollmentGroupAndCounter(instanceId, candidate.group.id, groupsCounterOf(instanceId));
        if (version === cached.version) return this.#confirmed(instanceId, group, registrationId, token, candidate);
      }
    }
    const version = await this.#store.changeCounter(groupsCounterOf(instanceId));
    // (The counter just read is the one the list is loaded at: read before the list, as #load needs.)
    if (cached === undefined || cached.version !== version || Date.now() - cached.at > CACHE_TTL_MS) cached = await this.#load(instanceId, version);
    let found = scan(cached.groups, registrationId, token);
    if (found === undefined && Date.now() - cached.at > RELOAD_AFTER_MS) {
      cached = await this.#load(instanceId);
      found = scan(cached.groups, registrationId, token);
    }
    return found === undefined ? undefined : this.#confirm(instanceId, found.group.id, registrationId, token, found);
  }

  async #confirm(instanceId: string, groupId: string, registrationId: string, token: SasToken, derived?: Derived): Promise<GroupMatch | undefined> {
    return this.#confirmed(instanceId, await this.#store.getEnrollmentGroup(instanceId, groupId), registrationId, token, derived);
  }

  /**
   * The group as stored now, when it is still a symmetric-key group whose key signed the token. `derived`: the device
   * keys {@link scan} derived from the cached copy and found to sign the token; when the stored group has the same keys,
   * they are the stored group's device keys and the signature is already checked, so neither is computed again.
   */
  #confirmed(instanceId: string, group: StoredEnrollmentGroup | undefined, registrationId: string, token: SasToken, derived?: Derived): GroupMatch | undefined {
    if (group === undefined || group.attestation.type !== 'symmetricKey') {
      this.invalidate(instanceId);
      return undefined;
    }
    const { primaryKey, secondaryKey } = group.attestation.symmetricKey;
    if (derived !== undefined && derived.group.keys[0] === primaryKey && derived.group.keys[1] === secondaryKey) return { group, deviceKeys: derived.deviceKeys };
    const deviceKeys = { primaryKey: deriveDeviceKey(primaryKey, registrationId), secondaryKey: deriveDeviceKey(secondaryKey, registrationId) };
    if (signedByOneOf(token, [deviceKeys.primaryKey, deviceKeys.secondaryKey])) return { group, deviceKeys };
    this.invalidate(instanceId);
    return undefined;
  }

  async #load(instanceId: string, counter?: number): Promise<{ groups: CachedGroup[]; at: number; version: number }> {
    // Read before the list (or by the caller just before): a write between the two makes the next lookup load again,
    // never miss the write.
    const version = counter ?? (await this.#store.changeCounter(groupsCounterOf(instanceId)));
    const groups: CachedGroup[] = [];
    let afterKey: string | undefined;
    do {
      const page = await this.#store.queryEnrollmentGroups(instanceId, {
        filters: [{ field: 'attestationType', op: 'eq', values: ['symmetricKey'] }],
        afterKey,
        limit: 1000,
      });
      for (const group of page.items) {
        if (group.attestation.type === 'symmetricKey') {
          groups.push({ id: group.enrollmentGroupId, keys: [group.attestation.symmetricKey.primaryKey, group.attestation.symmetricKey.secondaryKey], doc: group });
        }
      }
      afterKey = page.nextKey;
    } while (afterKey !== undefined);
    if (groups.length > DOCS_KEPT) for (const group of groups) delete group.doc;
    const entry = { groups, at: Date.now(), version };
    this.#cache.set(instanceId, entry);
    return entry;
  }
}

/** The listed group whose derived key signed the token, if any, with the device keys derived from it. */
function scan(groups: readonly CachedGroup[], registrationId: string, token: SasToken): Derived | undefined {
  for (const group of groups) {
    const [primary = '', secondary = ''] = group.keys;
    const deviceKeys = { primaryKey: deriveDeviceKey(primary, registrationId), secondaryKey: deriveDeviceKey(secondary, registrationId) };
    if (signedByOneOf(token, [deviceKeys.primaryKey, deviceKeys.secondaryKey])) return { group, deviceKeys };
  }
  return undefined;
}
