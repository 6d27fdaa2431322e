import { sql, type Kysely, type QueryResult } from 'kysely';
import type { JsonMap } from '../domain/enrollment.js';
import { CONFIG_COUNTER, configCacheOf, deepFreeze, type ConfigCache } from './config-cache.js';
import { hotDoc, hotWrite, hubStatements, runHot, type HubStatements } from './hot-statements.js';
import type { Database } from './schema.js';
import type { Page } from './store.js';

/**
 * Storage for the IoT hubs provisiond hosts itself ("built-in hubs"): each hub's record (name and access policies)
 * and its devices, one JSON document per device holding the identity and the twin together, so one write changes
 * both atomically. Hubs are not owned by an instance: several instances may link the same built-in hub, as they may
 * link the same external hub. Keys are lower-cased (IDs compare case-insensitively).
 */

/** IoT Hub shared access policy rights (the subset the registry API checks). RegistryWrite implies RegistryRead. */
export type HubRight = 'RegistryRead' | 'RegistryWrite' | 'ServiceConnect' | 'DeviceConnect';
export const ALL_HUB_RIGHTS: readonly HubRight[] = ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect'];

export interface HubAccessPolicy {
  keyName: string;
  primaryKey: string;
  secondaryKey: string;
  rights: HubRight[];
}

export interface BuiltInHubRecord {
  /** The hub's host name; lower-case. */
  name: string;
  createdDateTimeUtc: string;
  policies: HubAccessPolicy[];
}

export type StoredHubAuthenticationType = 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';

/** Stored exactly as IoT Hub renders it: both sub-objects always present, unused members null. */
export interface StoredHubAuthentication {
  type: StoredHubAuthenticationType;
  symmetricKey: { primaryKey: string | null; secondaryKey: string | null };
  x509Thumbprint: { primaryThumbprint: string | null; secondaryThumbprint: string | null };
}

export interface StoredTwin {
  etag: string;
  version: number;
  tags: JsonMap;
  desired: JsonMap;
  desiredVersion: number;
  desiredMetadata: JsonMap;
  reported: JsonMap;
  reportedVersion: number;
  reportedMetadata: JsonMap;
}

export interface StoredHubDevice {
  deviceId: string;
  generationId: string;
  etag: string;
  status: 'enabled' | 'disabled';
  statusReason: string | null;
  statusUpdatedTime: string;
  createdDateTimeUtc: string;
  authentication: StoredHubAuthentication;
  capabilities: { iotEdge: boolean };
  twin: StoredTwin;
}

/** A device document and the revision that guards it: writes compare-and-swap on the revision. */
export interface HubDeviceRow {
  device: StoredHubDevice;
  revision: string;
}

export interface HubDeviceQuery {
  /** Only this device (compared case-insensitively). */
  deviceId?: string | undefined;
  /** Devices whose key sorts after this one (keyset paging). */
  afterKey?: string | undefined;
  limit: number;
}

export interface BuiltInHubStore {
  getHub(name: string): Promise<BuiltInHubRecord | undefined>;
  /** Inserts the hub unless one of that name exists; true when this call inserted it. */
  insertHub(hub: BuiltInHubRecord): Promise<boolean>;
  /** Replaces an existing hub's record (policies). */
  updateHub(hub: BuiltInHubRecord): Promise<void>;
  listHubs(): Promise<BuiltInHubRecord[]>;
  /** Deletes the hub and every device in it. */
  deleteHub(name: string): Promise<boolean>;

  getDevice(hubName: string, deviceId: string): Promise<HubDeviceRow | undefined>;
  /** Inserts unless the device exists; true when this call inserted it. */
  insertDevice(hubName: string, device: StoredHubDevice, revision: string): Promise<boolean>;
  /** Writes the device only if its revision is still `expectedRevision`; false when another write came first. */
  replaceDevice(hubName: string, device: StoredHubDevice, expectedRevision: string, revision: string): Promise<boolean>;
  /** Deletes the device (and so its twin); with `expectedRevision`, only if nothing wrote it since. */
  deleteDevice(hubName: string, deviceId: string, expectedRevision?: string): Promise<boolean>;
  queryDevices(hubName: string, query: HubDeviceQuery): Promise<Page<StoredHubDevice>>;
  countDevices(hubName: string): Promise<{ enabled: number; disabled: number }>;
}

const key = (value: string): string => value.toLowerCase();

/**
 * Thrown by a device write while a data request of an instance that links the hub is erasing the device (the erase
 * fence, docs/customer-data.md). The check and the write are one transaction, so no write lands behind the erase.
 */
export class DeviceFencedError extends Error {
  readonly requestId: string;
  constructor(requestId: string) {
    super(`Data request '${requestId}' is erasing this device; it cannot be written until the erase is final.`);
    this.name = 'DeviceFencedError';
    this.requestId = requestId;
  }
}

async function refuseFenced(db: Kysely<Database>, statements: HubStatements, hubName: string, deviceId: string): Promise<void> {
  const fence = await hotDoc<{ requestId: string }>(db, statements.deviceFence, [key(hubName), key(deviceId)]);
  if (fence !== undefined) throw new DeviceFencedError(fence.requestId);
}
const parse = <T>(doc: string): T => JSON.parse(doc) as T;

/** Hub statements compiled once per root database; a store joined to one of its transactions shares them. */
const compiledHubStatements = new WeakMap<Kysely<Database>, HubStatements>();
function hubStatementsOf(root: Kysely<Database>): HubStatements {
  let statements = compiledHubStatements.get(root);
  if (statements === undefined) compiledHubStatements.set(root, (statements = hubStatements(root)));
  return statements;
}

export class KyselyHubStore implements BuiltInHubStore {
  readonly #db: Kysely<Database>;
  readonly #hot: HubStatements;
  readonly #cache: ConfigCache;
  /**
   * Set when `db` is a transaction this store was handed (KyselyStore.builtInHubsInTransaction, issue 12): a write
   * of several statements (fence check + write) joins it instead of opening its own, and commits or rolls back with it.
   */
  readonly #joined: boolean;

  /**
   * `singleWriter`: the dialect's flag (one process writes everything), which lets hub rows be cached for free.
   * `joinedFrom`: the root database whose open transaction `db` is — its compiled statements and its cache are shared.
   */
  constructor(db: Kysely<Database>, singleWriter = true, joinedFrom?: Kysely<Database>) {
    const root = joinedFrom ?? db;
    this.#db = db;
    this.#joined = joinedFrom !== undefined;
    this.#hot = hubStatementsOf(root);
    this.#cache = configCacheOf(root, singleWriter);
  }

  /** A write of several statements: its own transaction, or the one this store joined. */
  async #atomic<T>(work: (db: Kysely<Database>) => Promise<T>): Promise<T> {
    if (this.#joined) return work(this.#db);
    return this.#db.transaction().execute(work);
  }

  // ---- hubs

  async getHub(name: string): Promise<BuiltInHubRecord | undefined> {
    const cacheKey = `built-in-hub/${key(name)}`;
    if (!this.#cache.singleWriter) {
      // PostgreSQL: a hub's own requests carry no device request's version and read the store. A registration's
      // transaction (the joined store) validates by the highest version this process has read (store/config-cache.ts).
      if (!this.#joined) return hotDoc<BuiltInHubRecord>(this.#db, this.#hot.hub, [key(name)]);
      const hit = this.#cache.get<string | undefined>(cacheKey, this.#cache.highestVersion);
      if (hit !== undefined) return hit.value === undefined ? undefined : parse<BuiltInHubRecord>(hit.value);
      const generation = this.#cache.generation;
      const row = (await runHot<{ version: number | string; doc: string | null }>(this.#db, this.#hot.hubVersioned, [key(name)])).rows[0];
      const text = row?.doc ?? undefined;
      this.#cache.set(cacheKey, text, generation, Number(row?.version ?? 0));
      return text === undefined ? undefined : parse<BuiltInHubRecord>(text);
    }
    // SQLite: the record parsed once and kept frozen (every caller only reads it or copies it to write): a registration
    // asks for its hub two or three times, and parsing it each time was ~1.5% of the bytes a registration allocated.
    const hit = this.#cache.get<Readonly<BuiltInHubRecord> | undefined>(cacheKey);
    if (hit !== undefined) return hit.value;
    const generation = this.#cache.generation;
    const text = (await runHot<{ doc: string }>(this.#db, this.#hot.hub, [key(name)])).rows[0]?.doc;
    const hub = text === undefined ? undefined : deepFreeze(parse<BuiltInHubRecord>(text));
    this.#cache.set(cacheKey, hub, generation);
    return hub;
  }

  /** A hub record write and the shared config counter in one transaction; this node's cache forgets at once and again at the end. */
  async #changeHubs<T>(write: (trx: Kysely<Database>) => Promise<T>, changed: (result: T) => boolean): Promise<T> {
    this.#cache.invalidate();
    try {
      return await this.#atomic(async (trx) => {
        const result = await write(trx);
        if (changed(result)) {
          await trx
            .insertInto('change_counters')
            .values({ name: CONFIG_COUNTER, version: 1 })
            .onConflict((oc) => oc.column('name').doUpdateSet({ version: sql<number>`change_counters.version + 1` }))
            .execute();
        }
        return result;
      });
    } finally {
      this.#cache.invalidate();
    }
  }

  async insertHub(hub: BuiltInHubRecord): Promise<boolean> {
    // ON CONFLICT DO NOTHING: two nodes bootstrapping the same hub at once both succeed, and one record wins.
    return this.#changeHubs(
      async (trx) => {
        const result = await trx
          .insertInto('built_in_hubs')
          .values({ name_key: key(hub.name), doc: JSON.stringify(hub) })
          .onConflict((oc) => oc.column('name_key').doNothing())
          .executeTakeFirst();
        return (result.numInsertedOrUpdatedRows ?? 0n) > 0n;
      },
      (inserted) => inserted,
    );
  }

  async updateHub(hub: BuiltInHubRecord): Promise<void> {
    await this.#changeHubs(
      (trx) => trx.updateTable('built_in_hubs').set({ doc: JSON.stringify(hub) }).where('name_key', '=', key(hub.name)).execute(),
      () => true,
    );
  }

  async listHubs(): Promise<BuiltInHubRecord[]> {
    const rows = await this.#db.selectFrom('built_in_hubs').select('doc').orderBy('name_key').execute();
    return rows.map((row) => parse<BuiltInHubRecord>(row.doc));
  }

  async deleteHub(name: string): Promise<boolean> {
    return this.#changeHubs(
      async (trx) => {
        await trx.deleteFrom('hub_devices').where('hub_key', '=', key(name)).execute();
        const result = await trx.deleteFrom('built_in_hubs').where('name_key', '=', key(name)).executeTakeFirst();
        return result.numDeletedRows > 0n;
      },
      (deleted) => deleted,
    );
  }

  // ---- devices (identity + twin)

  async getDevice(hubName: string, deviceId: string): Promise<HubDeviceRow | undefined> {
    const row = (await runHot<{ doc: string; revision: string }>(this.#db, this.#hot.device, [key(hubName), key(deviceId)])).rows[0];
    return row === undefined ? undefined : { device: parse<StoredHubDevice>(row.doc), revision: row.revision };
  }

  async insertDevice(hubName: string, device: StoredHubDevice, revision: string): Promise<boolean> {
    if (!this.#cache.singleWriter) {
      // PostgreSQL: the fence check and the insert are one statement (one round trip; atomic without a transaction).
      const args = [key(hubName), key(device.deviceId), device.status, revision, JSON.stringify(device)];
      return this.#unlessFenced(await runHot(this.#db, this.#hot.insertDeviceUnlessFenced, args));
    }
    return this.#atomic(async (trx) => {
      await refuseFenced(trx, this.#hot, hubName, device.deviceId);
      return this.#insertDevice(trx, hubName, device, revision);
    });
  }

  /** A device write's answer on PostgreSQL (…UnlessFenced): refused under a fence, else whether it wrote. */
  #unlessFenced(result: QueryResult<unknown>): boolean {
    const row = result.rows[0] as { fence: string | null; written: number | string } | undefined;
    if (row !== undefined && row.fence !== null) throw new DeviceFencedError(parse<{ requestId: string }>(row.fence).requestId);
    return Number(row?.written ?? 0) > 0;
  }

  async #insertDevice(db: Kysely<Database>, hubName: string, device: StoredHubDevice, revision: string): Promise<boolean> {
    return (await hotWrite(db, this.#hot.insertDevice, [key(hubName), key(device.deviceId), device.status, revision, JSON.stringify(device)])) > 0;
  }

  async replaceDevice(hubName: string, device: StoredHubDevice, expectedRevision: string, revision: string): Promise<boolean> {
    if (!this.#cache.singleWriter) {
      // PostgreSQL: the fence check and the guarded update are one statement, as in insertDevice.
      const args = [key(hubName), key(device.deviceId), device.status, revision, JSON.stringify(device), expectedRevision];
      return this.#unlessFenced(await runHot(this.#db, this.#hot.replaceDeviceUnlessFenced, args));
    }
    return this.#atomic(async (trx) => {
      await refuseFenced(trx, this.#hot, hubName, device.deviceId);
      return this.#replaceDevice(trx, hubName, device, expectedRevision, revision);
    });
  }

  async #replaceDevice(db: Kysely<Database>, hubName: string, device: StoredHubDevice, expectedRevision: string, revision: string): Promise<boolean> {
    return (await hotWrite(db, this.#hot.replaceDevice, [key(hubName), key(device.deviceId), device.status, revision, JSON.stringify(device), expectedRevision])) > 0;
  }

  async deleteDevice(hubName: string, deviceId: string, expectedRevision?: string): Promise<boolean> {
    let query = this.#db.deleteFrom('hub_devices').where('hub_key', '=', key(hubName)).where('device_id_key', '=', key(deviceId));
    if (expectedRevision !== undefined) query = query.where('revision', '=', expectedRevision);
    const result = await query.executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  async queryDevices(hubName: string, query: HubDeviceQuery): Promise<Page<StoredHubDevice>> {
    let builder = this.#db.selectFrom('hub_devices').select(['doc', 'device_id_key']).where('hub_key', '=', key(hubName));
    if (query.deviceId !== undefined) builder = builder.where('device_id_key', '=', key(query.deviceId));
    if (query.afterKey !== undefined) builder = builder.where('device_id_key', '>', query.afterKey);
    const rows = await builder
      .orderBy('device_id_key')
      .limit(query.limit + 1)
      .execute();
    const more = rows.length > query.limit;
    const pageRows = more ? rows.slice(0, query.limit) : rows;
    return {
      items: pageRows.map((row) => parse<StoredHubDevice>(row.doc)),
      nextKey: more ? pageRows[pageRows.length - 1]?.device_id_key : undefined,
    };
  }

  async countDevices(hubName: string): Promise<{ enabled: number; disabled: number }> {
    const rows = await this.#db
      .selectFrom('hub_devices')
      .select(['status', sql<string | number | bigint>`count(*)`.as('count')])
      .where('hub_key', '=', key(hubName))
      .groupBy('status')
      .execute();
    // count(*) is a number on SQLite and a string (bigint) on PostgreSQL.
    const count = (status: string): number => Number(rows.find((row) => row.status === status)?.count ?? 0);
    return { enabled: count('enabled'), disabled: count('disabled') };
  }
}
