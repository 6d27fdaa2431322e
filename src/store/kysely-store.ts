import type BetterSqlite3 from 'better-sqlite3';
import { Kysely, Migrator, sql, type SelectQueryBuilder, type Transaction } from 'kysely';
import { ProvisioningError } from '../domain/errors.js';
import { auditClassOf, type AuditClass, type AuditOutcome } from '../domain/audit-class.js';
import type { DialectCapabilities, LockRunner } from './dialects/dialect.js';
import { SQLITE_CAPABILITIES } from './dialects/sqlite.js';
import type { StoredEnrollment, StoredEnrollmentGroup } from '../domain/enrollment.js';
import { certificateThumbprints } from '../domain/enrollment.js';
import type { Filter } from '../domain/query.js';
import { KyselyHubStore, type BuiltInHubStore, type StoredHubDevice } from './hub-store.js';
import { CONFIG_COUNTER, configCacheOf, deepFreeze, type ConfigCache } from './config-cache.js';
import { bindHot, deferredWrite, directSqlite, hotDoc, hotWrite, NO_KEY, parseProbeFence, type HotStatement, runHot, storeStatements, type StoreStatements } from './hot-statements.js';
import { AUDIT_ROW_COLUMNS, bulkStatementsOf, ENROLLMENT_ROW_COLUMNS, rowArguments } from './bulk-statements.js';
import { AUDIT_PAGE_FILTERS, type AuditEventRow, type AuditPageFilter, paddedKeys, subjectStatementsOf, type SubjectStatements } from './subject-statements.js';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';
import { groupsCounterOf } from './store.js';
import type {
  AccessPolicyRecord,
  CaCertificateRecord,
  CredentialPolicyRecord,
  InstanceRecord,
  IssuedCertificateRecord,
  IssuingCaRecord,
  LinkedHubRecord,
  ListQuery,
  Page,
  Store,
  StoredOperation,
  Unfenced,
  RegistrationIntent,
  StoredRegistration,
  AuditEvent,
  AuditQuery,
  DataRequestRecord,
  EraseFence,
  FenceProbe,
  HubDeviceLink,
  SubjectIds,
  OutboxEvent,
  StoreTable,
  RateToken,
  DeviceReads,
  LockedReads,
} from './store.js';

type Db = Kysely<Database> | Transaction<Database>;

/** Store.operationsEpoch's counter, one per root database (its transactions' stores share it). */
const operationsEpochs = new WeakMap<Kysely<Database>, { value: number }>();
function operationsEpochOf(db: Kysely<Database>): { value: number } {
  let epoch = operationsEpochs.get(db);
  if (epoch === undefined) operationsEpochs.set(db, (epoch = { value: 0 }));
  return epoch;
}

/** Tables keyed by (instance, lower-cased name) holding one document. */
type NamedTable = 'access_policies' | 'linked_hubs' | 'ca_certificates' | 'credential_policies';

/**
 * Columns behind the query fields. ID and enum columns hold lower-cased values and are compared case-insensitively,
 * as DPS treats both.
 */
const COLUMNS = {
  enrollments: {
    key: 'registration_id_key',
    fields: {
      registrationId: { column: 'registration_id_key', lower: true },
      deviceId: { column: 'device_id_key', lower: true },
      provisioningStatus: { column: 'provisioning_status', lower: true },
      attestationType: { column: 'attestation_type', lower: true },
    },
  },
  enrollment_groups: {
    key: 'group_id_key',
    fields: {
      enrollmentGroupId: { column: 'group_id_key', lower: true },
      provisioningStatus: { column: 'provisioning_status', lower: true },
      attestationType: { column: 'attestation_type', lower: true },
    },
  },
  data_requests: {
    key: 'sort_key',
    fields: {
      type: { column: 'type', lower: true },
      status: { column: 'status', lower: true },
    },
  },
  registrations: {
    key: 'registration_id_key',
    fields: {
      registrationId: { column: 'registration_id_key', lower: true },
      deviceId: { column: 'device_id_key', lower: true },
      status: { column: 'status', lower: true },
      assignedHub: { column: 'assigned_hub_key', lower: true },
      enrollmentGroupId: { column: 'group_id_key', lower: true },
    },
  },
} as const;

type QueriedTable = keyof typeof COLUMNS;

const parse = <T>(doc: string): T => JSON.parse(doc) as T;

function fenceOf(row: { subject_kind: string; doc: string }): Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'> {
  const doc = parse<{ requestId: string; subjectHash: string }>(row.doc);
  return { kind: row.subject_kind as EraseFence['kind'], requestId: doc.requestId, subjectHash: doc.subjectHash };
}
const lower = (value: string | undefined): string => (value ?? '').toLowerCase();

/**
 * A device's own probe (at most one ID per subject kind: every registration and poll) as its three keys, {@link NO_KEY}
 * for a kind it does not name; undefined for a probe of several IDs of a kind. The same keys as {@link probeKeys}
 * without its sets and arrays, which twice per registration were ~2% of the bytes it allocated.
 */
function deviceProbeKeys(probe: FenceProbe): [string, string, string] | undefined {
  const registrationKey = oneKey(probe.registrationIds);
  const deviceKey = oneKey(probe.deviceIds);
  const groupKey = oneKey(probe.groupIds);
  return registrationKey === undefined || deviceKey === undefined || groupKey === undefined ? undefined : [registrationKey, deviceKey, groupKey];
}

/** The one key of `ids` ({@link NO_KEY} for none or only empty IDs), or undefined when they name several. */
function oneKey(ids: readonly string[] | undefined): string | undefined {
  let found: string | undefined;
  for (const id of ids ?? []) {
    if (id === '') continue;
    const key = id.toLowerCase();
    if (found !== undefined && found !== key) return undefined;
    found = key;
  }
  return found ?? NO_KEY;
}

/** A probe's IDs per subject kind as keys (lower-cased, no empties or repeats), in the fence statements' order. */
function probeKeys(probe: FenceProbe) {
  return (
    [
      ['registrationId', probe.registrationIds],
      ['deviceId', probe.deviceIds],
      ['enrollmentGroupId', probe.groupIds],
    ] as const
  ).map(([kind, ids]) => [kind, [...new Set((ids ?? []).filter((id) => id !== '').map(lower))]] as const);
}

/** The device's reads as one row of scalar subqueries (hot-statements.ts `enrollmentAndRegistration`). */
interface DeviceReadRow {
  enrollment_doc: string | null;
  registration_doc: string | null;
  group_doc: string | null;
}

function deviceReadsOf(row: DeviceReadRow | undefined): DeviceReads {
  return {
    enrollment: row?.enrollment_doc == null ? undefined : parse<StoredEnrollment>(row.enrollment_doc),
    registration: row?.registration_doc == null ? undefined : parse<StoredRegistration>(row.registration_doc),
    group: row?.group_doc == null ? undefined : parse<StoredEnrollmentGroup>(row.group_doc),
  };
}

/** What a dialect adds to the one Kysely implementation. */
export interface KyselyStoreOptions {
  capabilities: DialectCapabilities;
  /** Cross-node locks (PostgreSQL advisory locks on their own connections); absent on a single-writer dialect. */
  withLock?: LockRunner;
  /** Closes what the dialect opened besides the Kysely instance (the lock connections). */
  close?: () => Promise<void>;
}

/** True for a unique-constraint or primary-key violation, on either dialect. */
export function isUniqueViolation(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  // PostgreSQL: SQLSTATE 23505; better-sqlite3: SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY.
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/**
 * Rows per multi-row statement: well under SQLite's 32,766 and PostgreSQL's 65,535 bound parameters at the widest
 * row (10 columns), and big enough that a statement's fixed cost is spread thin.
 */
const BATCH_ROWS = 500;
/** The name of every unit's savepoint (see `atomically`). */
const SAVEPOINT = sql.raw('provisiond_unit');
const SQLITE_SAVEPOINT = {
  open: 'savepoint provisiond_unit',
  rollback: 'rollback to savepoint provisiond_unit',
  release: 'release savepoint provisiond_unit',
} as const;

/** `work` in a savepoint of the SQLite connection's open transaction (see KyselyStore.atomically). */
async function inSqliteSavepoint<T>(connection: BetterSqlite3.Database, work: () => Promise<T>): Promise<T> {
  // The dialect's prepare keeps one prepared statement per text (dialects/sqlite.ts).
  connection.prepare(SQLITE_SAVEPOINT.open).run();
  let result: T;
  try {
    result = await work();
  } catch (error) {
    connection.prepare(SQLITE_SAVEPOINT.rollback).run();
    connection.prepare(SQLITE_SAVEPOINT.release).run();
    throw error;
  }
  connection.prepare(SQLITE_SAVEPOINT.release).run();
  return result;
}
/** Hot statements compiled once per root Kysely instance; its transactions share them. */
const compiledStatements = new WeakMap<Kysely<Database>, StoreStatements>();
function statementsOf(db: Kysely<Database>): StoreStatements {
  let statements = compiledStatements.get(db);
  if (statements === undefined) compiledStatements.set(db, (statements = storeStatements(db)));
  return statements;
}

function enrollmentColumns(enrollment: StoredEnrollment) {
  return {
    device_id_key: lower(enrollment.deviceId ?? enrollment.registrationId),
    provisioning_status: enrollment.provisioningStatus,
    attestation_type: enrollment.attestation.type.toLowerCase(),
    etag: enrollment.etag,
    doc: JSON.stringify(enrollment),
  };
}

const changed = (result: { numUpdatedRows?: bigint; numDeletedRows?: bigint; numInsertedOrUpdatedRows?: bigint | undefined }): boolean =>
  (result.numUpdatedRows ?? result.numDeletedRows ?? result.numInsertedOrUpdatedRows ?? 0n) > 0n;

export class KyselyStore implements Store {
  readonly #db: Db;
  readonly #root: Kysely<Database> | undefined;
  readonly #options: KyselyStoreOptions;
  readonly #hot: StoreStatements;
  /** The customer-data paths' statements, compiled once (subject-statements.ts). */
  readonly #subject: SubjectStatements;
  /** The embedded store: writes that spare unchanged index entries (putRegistration) are worth a row count there. */
  readonly #sqlite: boolean;
  readonly #cache: ConfigCache;
  /** The root database (also inside a transaction): its compiled statements and cache are shared with the built-in hubs. */
  readonly #rootDb: Kysely<Database>;
  /** This transaction changed an instance or a linked hub: its reads must see its own writes, never the cache. */
  #wroteConfig = false;
  /** Store.operationsEpoch (shared with the root's transactions). */
  readonly #operationsEpoch: { value: number };

  constructor(db: Kysely<Database>, options: KyselyStoreOptions = { capabilities: SQLITE_CAPABILITIES }, transaction?: Transaction<Database>) {
    this.#db = transaction ?? db;
    this.#root = transaction === undefined ? db : undefined;
    this.#options = options;
    this.#rootDb = db;
    this.#hot = statementsOf(db);
    this.#subject = subjectStatementsOf(db);
    this.#sqlite = options.capabilities.name === 'sqlite';
    this.#cache = configCacheOf(db, options.capabilities.singleWriter);
    this.#operationsEpoch = operationsEpochOf(db);
  }

  get capabilities(): DialectCapabilities {
    return this.#options.capabilities;
  }

  /**
   * Applies every pending migration; throws with the failing migration's name. On PostgreSQL, Kysely's migrator
   * takes an advisory lock and runs the migrations in one transaction, so nodes starting together migrate once.
   */
  static async migrate(db: Kysely<Database>, capabilities: DialectCapabilities = SQLITE_CAPABILITIES): Promise<void> {
    const migrator = new Migrator({ db, provider: migrationProvider(capabilities) });
    const { error, results } = await migrator.migrateToLatest();
    if (error !== undefined) {
      const failed = results?.find((result) => result.status === 'Error')?.migrationName ?? 'unknown';
      throw new Error(`database migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  async transaction<T>(work: (store: Store) => Promise<T>): Promise<T> {
    // Already inside a transaction: the caller's work joins it.
    if (this.#root === undefined) return work(this);
    const root = this.#root;
    return this.#rootTransaction(() => root.transaction().execute((trx) => work(new KyselyStore(root, this.#options, trx))));
  }

  /**
   * A transaction of the root that changed config leaves nothing cached behind it, committed or rolled back; one that
   * moved the operations epoch moves it again as it ends (what a registration read inside it is stale once it commits).
   */
  async #rootTransaction<T>(run: () => Promise<T>): Promise<T> {
    const generation = this.#cache.generation;
    const epoch = this.#operationsEpoch.value;
    try {
      return await run();
    } finally {
      if (this.#cache.generation !== generation) this.#cache.invalidate();
      if (this.#operationsEpoch.value !== epoch) this.#operationsEpoch.value += 1;
    }
  }

  operationsEpoch(): number | undefined {
    return this.#cache.singleWriter ? this.#operationsEpoch.value : undefined;
  }

  /**
   * A write that can change a finished operation's poll answer (Store.operationsEpoch): the epoch moves once the write
   * has run — outside a transaction, once it is committed — and, inside a transaction, again as that ends
   * (#rootTransaction). Not before it runs: a registration whose transaction began after such a move but before the
   * write would not see the write, yet read the moved epoch.
   */
  async #changingOperations<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } finally {
      this.#operationsEpoch.value += 1;
    }
  }

  /**
   * Every instance, linked-hub and access-policy write: this node's cache forgets, and other nodes see the shared
   * counter move.
   */
  async #configChanged(db: Db = this.#db): Promise<void> {
    if (this.#root === undefined) this.#wroteConfig = true;
    this.#cache.invalidate();
    await bumpCounter(db, CONFIG_COUNTER);
  }

  /** Cached reads: never inside a transaction that changed config, and only the root's reads fill the cache. */
  get #cached(): ConfigCache | undefined {
    return this.#wroteConfig ? undefined : this.#cache;
  }

  /**
   * A config document read through the cache (SQLite: this process writes everything, the generation alone is
   * exact). Parsed once and kept frozen ({@link deepFreeze}): a registration asks for its instance and linked hubs,
   * a service-API request for its instance and policy, and parsing them on every hit was ~4 µs of a registration.
   */
  async #cachedDoc<T>(key: string, read: () => Promise<T | undefined>): Promise<T | undefined> {
    const hit = this.#cached?.get<T | undefined>(key);
    if (hit !== undefined) return hit.value;
    const generation = this.#cache.generation;
    const value = deepFreeze(await read());
    if (this.#root !== undefined) this.#cache.set(key, value, generation);
    return value;
  }

  async atomically<T>(work: (store: Store) => Promise<T>): Promise<T> {
    if (this.#root !== undefined) return this.transaction(work);
    // One name for every savepoint: SQLite and PostgreSQL both release or roll back to the most recent savepoint of a
    // name, which is the innermost one since units nest strictly. One text, so the statement is prepared once (a name
    // per unit made two new SQL texts per group-committed registration, each parsed anew and filling the statement
    // cache of dialects/sqlite.ts).
    // SQLite: on the connection directly (this transaction holds it), as the hot statements run: through Kysely each
    // savepoint and release was a query compiled and executed through its executor, twice per group-committed
    // registration (bench/README.md "session 22, H1"). Not seen by the store plugins (the metrics' statement timer).
    const connection = this.#sqlite ? directSqlite(this.#db) : undefined;
    if (connection !== undefined) return inSqliteSavepoint(connection, () => work(this));
    const name = SAVEPOINT;
    await sql`savepoint ${name}`.execute(this.#db);
    let result: T;
    try {
      result = await work(this);
    } catch (error) {
      await sql`rollback to savepoint ${name}`.execute(this.#db);
      await sql`release savepoint ${name}`.execute(this.#db);
      throw error;
    }
    await sql`release savepoint ${name}`.execute(this.#db);
    return result;
  }

  async close(): Promise<void> {
    if (this.#root === undefined) return;
    await this.#options.close?.();
    await this.#root.destroy();
  }

  // ---- instances

  async insertInstance(instance: InstanceRecord): Promise<void> {
    await this.#unique(instance, async (store) => {
      await store.#db
        .insertInto('instances')
        .values({ id: instance.id, id_scope_key: lower(instance.idScope), name_key: lower(instance.name), doc: JSON.stringify(instance) })
        .execute();
      await store.#writeHostNames(instance);
      await store.#configChanged();
    });
  }

  async updateInstance(instance: InstanceRecord): Promise<void> {
    await this.#unique(instance, async (store) => {
      await store.#db
        .updateTable('instances')
        .set({ id_scope_key: lower(instance.idScope), name_key: lower(instance.name), doc: JSON.stringify(instance) })
        .where('id', '=', instance.id)
        .execute();
      await store.#db.deleteFrom('instance_host_names').where('instance_id', '=', instance.id).execute();
      await store.#writeHostNames(instance);
      await store.#configChanged();
    });
  }

  /**
   * Instance names, ID scopes and host names are unique in the schema, so two nodes creating the same one at once
   * cannot both succeed; the loser gets the same 409 the service's own check gives. Atomic, so a refused update
   * leaves the old host names in place.
   */
  async #unique(instance: InstanceRecord, write: (store: KyselyStore) => Promise<void>): Promise<void> {
    try {
      await this.transaction((store) => write(store as KyselyStore));
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      throw new ProvisioningError('Conflict', `The instance name '${instance.name}', its ID scope or one of its host names already belongs to another instance.`);
    }
  }

  async #writeHostNames(instance: InstanceRecord): Promise<void> {
    if (instance.serviceHostNames.length === 0) return;
    await this.#db
      .insertInto('instance_host_names')
      .values(instance.serviceHostNames.map((name) => ({ host_name_key: lower(name), instance_id: instance.id })))
      .execute();
  }

  async getInstance(id: string): Promise<InstanceRecord | undefined> {
    const read = () => hotDoc<InstanceRecord>(this.#db, this.#hot.instanceById, [id]);
    // Without a device request's version there is nothing to validate a cached copy against on PostgreSQL.
    return this.#cache.singleWriter ? this.#cachedDoc(`id/${id}`, read) : read();
  }

  async findInstanceByIdScope(idScope: string): Promise<InstanceRecord | undefined> {
    const key = lower(idScope);
    if (this.#cache.singleWriter) return this.#cachedDoc(`scope/${key}`, () => hotDoc<InstanceRecord>(this.#db, this.#hot.instanceByIdScope, [key]));
    // One statement: the instance and the shared config version, from one snapshot.
    const generation = this.#cache.generation;
    const { version, doc } = await this.#versioned(this.#hot.instanceByIdScopeVersioned, [key]);
    const text = doc[0];
    return text === undefined ? undefined : this.#versionedInstance(text, generation, version);
  }

  async currentInstance(instance: InstanceRecord): Promise<InstanceRecord | undefined> {
    if (this.#cache.singleWriter) return this.getInstance(instance.id);
    const cached = this.#cached?.get<string>(`id/${instance.id}`, this.#cache.stampOf(instance));
    if (cached !== undefined) return parse<InstanceRecord>(cached.value);
    const generation = this.#cache.generation;
    const { version, doc } = await this.#versioned(this.#hot.instanceByIdVersioned, [instance.id]);
    const text = doc[0];
    return text === undefined ? undefined : this.#versionedInstance(text, generation, version);
  }

  /**
   * An instance read with the shared config version (PostgreSQL): kept for this version's later reads (outside a
   * transaction) and stamped with it (store/config-cache.ts).
   */
  #versionedInstance(text: string, generation: number, version: number): InstanceRecord {
    const instance = parse<InstanceRecord>(text);
    if (this.#root !== undefined) this.#cache.set(`id/${instance.id}`, text, generation, version);
    return this.#cache.stamp(instance, version);
  }

  /** A versioned read (PostgreSQL): the config counter's value and the documents, in one statement. */
  async #versioned(statement: HotStatement, args: readonly unknown[]): Promise<{ version: number; doc: string[] }> {
    const { rows } = await runHot<{ version: number | string; doc: string | null }>(this.#db, statement, args);
    return { version: Number(rows[0]?.version ?? 0), doc: rows.flatMap((row) => (row.doc === null ? [] : [row.doc])) };
  }

  async findInstanceByHostName(hostName: string): Promise<InstanceRecord | undefined> {
    const key = lower(hostName);
    const read = () => hotDoc<InstanceRecord>(this.#db, this.#hot.instanceByHostName, [key]);
    // One process writes the embedded store: its own config writes invalidate the cache (as for the ID scope).
    // Several nodes share PostgreSQL: read every time (the compiled statement), as this read carries no version.
    return this.#cache.singleWriter ? this.#cachedDoc(`host/${key}`, read) : read();
  }

  async listInstances(): Promise<InstanceRecord[]> {
    const rows = await this.#db.selectFrom('instances').select('doc').execute();
    // Oldest first: the operator instance (the first one created) leads.
    return rows
      .map((row) => parse<InstanceRecord>(row.doc))
      .sort((a, b) => a.createdDateTimeUtc.localeCompare(b.createdDateTimeUtc) || a.id.localeCompare(b.id));
  }

  async deleteInstance(id: string): Promise<boolean> {
    return this.#changingOperations(() => this.#deleteInstance(id));
  }

  async #deleteInstance(id: string): Promise<boolean> {
    for (const table of [
      'instance_host_names',
      'access_policies',
      'linked_hubs',
      'enrollments',
      'enrollment_groups',
      'enrollment_certificates',
      'ca_certificates',
      'registrations',
      'operations',
      'audit_events',
      'data_requests',
      'event_outbox',
      'hub_device_links',
      'registration_intents',
      'erase_fences',
      'issuing_cas',
      'credential_policies',
      'issued_certificates',
    ] as const) {
      await this.#db.deleteFrom(table).where('instance_id', '=', id).execute();
    }
    await this.#db.deleteFrom('change_counters').where('name', '=', groupsCounterOf(id)).execute();
    const result = await this.#db.deleteFrom('instances').where('id', '=', id).executeTakeFirst();
    await this.#configChanged();
    return result.numDeletedRows > 0n;
  }

  // ---- access policies and linked hubs share one shape: (instance, lower-cased name) -> document

  async listAccessPolicies(instanceId: string): Promise<AccessPolicyRecord[]> {
    return this.#listNamed<AccessPolicyRecord>('access_policies', instanceId);
  }
  async getAccessPolicy(instanceId: string, keyName: string): Promise<AccessPolicyRecord | undefined> {
    // Read by every authenticated service-API request. One process writes the embedded store, and its policy writes
    // invalidate the cache (below), as for the instance by host name; several nodes share PostgreSQL: read every time
    // (the compiled statement), as this read carries no version.
    const args = [instanceId, lower(keyName)];
    const read = () => hotDoc<AccessPolicyRecord>(this.#db, this.#hot.accessPolicy, args);
    return this.#cache.singleWriter ? this.#cachedDoc(`policy/${instanceId}/${args[1]}`, read) : read();
  }
  async putAccessPolicy(instanceId: string, policy: AccessPolicyRecord): Promise<void> {
    await this.#putConfigNamed('access_policies', instanceId, policy.keyName, policy);
  }
  async deleteAccessPolicy(instanceId: string, keyName: string): Promise<boolean> {
    return this.#deleteConfigNamed('access_policies', instanceId, keyName);
  }
  async listLinkedHubs(instanceId: string): Promise<LinkedHubRecord[]> {
    const read = async () => (await runHot<{ doc: string }>(this.#db, this.#hot.linkedHubs, [instanceId])).rows.map((row) => parse<LinkedHubRecord>(row.doc));
    // A list of its own for each caller (it may sort it); the hubs in it are the cache's, frozen.
    return this.#cache.singleWriter ? [...((await this.#cachedDoc(`hubs/${instanceId}`, read)) ?? [])] : read();
  }
  async linkedHubsOf(instance: InstanceRecord): Promise<LinkedHubRecord[]> {
    if (this.#cache.singleWriter) return this.listLinkedHubs(instance.id);
    const key = `hubs/${instance.id}`;
    const cached = this.#cached?.get<string[]>(key, this.#cache.stampOf(instance));
    let docs = cached?.value;
    if (docs === undefined) {
      const generation = this.#cache.generation;
      const read = await this.#versioned(this.#hot.linkedHubsVersioned, [instance.id]);
      docs = read.doc;
      if (this.#root !== undefined) this.#cache.set(key, docs, generation, read.version);
    }
    return docs.map((doc) => parse<LinkedHubRecord>(doc));
  }
  async getLinkedHub(instanceId: string, name: string): Promise<LinkedHubRecord | undefined> {
    return this.#getNamed<LinkedHubRecord>('linked_hubs', instanceId, name);
  }
  async putLinkedHub(instanceId: string, hub: LinkedHubRecord): Promise<void> {
    await this.#putConfigNamed('linked_hubs', instanceId, hub.name, hub);
  }
  async deleteLinkedHub(instanceId: string, name: string): Promise<boolean> {
    return this.#deleteConfigNamed('linked_hubs', instanceId, name);
  }

  /** A config row (an access policy, a linked hub) written together with the config change it is (#configChanged). */
  async #putConfigNamed(table: 'access_policies' | 'linked_hubs', instanceId: string, name: string, doc: object): Promise<void> {
    await this.transaction(async (store) => {
      await (store as KyselyStore).#putNamed(table, instanceId, name, doc);
      await (store as KyselyStore).#configChanged();
    });
  }
  async #deleteConfigNamed(table: 'access_policies' | 'linked_hubs', instanceId: string, name: string): Promise<boolean> {
    return this.transaction(async (store) => {
      const deleted = await (store as KyselyStore).#deleteNamed(table, instanceId, name);
      if (deleted) await (store as KyselyStore).#configChanged();
      return deleted;
    });
  }

  // ---- CA certificates: (instance, lower-cased name) -> document, with the thumbprint pulled out

  async listCaCertificates(instanceId: string): Promise<CaCertificateRecord[]> {
    return this.#listNamed<CaCertificateRecord>('ca_certificates', instanceId);
  }
  async getCaCertificate(instanceId: string, name: string): Promise<CaCertificateRecord | undefined> {
    return this.#getNamed<CaCertificateRecord>('ca_certificates', instanceId, name);
  }
  async findCaCertificateByThumbprint(instanceId: string, sha256Thumbprint: string): Promise<CaCertificateRecord | undefined> {
    const row = await this.#db
      .selectFrom('ca_certificates')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('sha256_thumbprint', '=', sha256Thumbprint.toUpperCase())
      .orderBy('name_key')
      .executeTakeFirst();
    return row === undefined ? undefined : parse<CaCertificateRecord>(row.doc);
  }
  async putCaCertificate(instanceId: string, certificate: CaCertificateRecord, expectedEtag?: string): Promise<boolean> {
    const columns = { sha256_thumbprint: certificate.info.sha256Thumbprint.toUpperCase(), etag: certificate.etag, doc: JSON.stringify(certificate) };
    if (expectedEtag !== undefined) {
      const result = await this.#db
        .updateTable('ca_certificates')
        .set(columns)
        .where('instance_id', '=', instanceId)
        .where('name_key', '=', lower(certificate.name))
        .where('etag', '=', expectedEtag)
        .executeTakeFirst();
      return changed(result);
    }
    await this.#db
      .insertInto('ca_certificates')
      .values({ instance_id: instanceId, name_key: lower(certificate.name), ...columns })
      .onConflict((oc) => oc.columns(['instance_id', 'name_key']).doUpdateSet(columns))
      .execute();
    return true;
  }
  async deleteCaCertificate(instanceId: string, name: string, expectedEtag?: string): Promise<boolean> {
    let query = this.#db.deleteFrom('ca_certificates').where('instance_id', '=', instanceId).where('name_key', '=', lower(name));
    if (expectedEtag !== undefined) query = query.where('etag', '=', expectedEtag);
    return changed(await query.executeTakeFirst());
  }

  // ---- certificate issuance: the issuing CA, credential policies, issued certificates

  async getIssuingCa(instanceId: string): Promise<IssuingCaRecord | undefined> {
    const row = await this.#db.selectFrom('issuing_cas').select('doc').where('instance_id', '=', instanceId).executeTakeFirst();
    return row === undefined ? undefined : parse<IssuingCaRecord>(row.doc);
  }
  async putIssuingCa(instanceId: string, ca: IssuingCaRecord, replace: boolean): Promise<boolean> {
    const doc = JSON.stringify(ca);
    const result = await this.#db
      .insertInto('issuing_cas')
      .values({ instance_id: instanceId, doc })
      .onConflict((oc) => (replace ? oc.column('instance_id').doUpdateSet({ doc }) : oc.column('instance_id').doNothing()))
      .executeTakeFirst();
    return changed(result);
  }
  async listCredentialPolicies(instanceId: string): Promise<CredentialPolicyRecord[]> {
    return this.#listNamed<CredentialPolicyRecord>('credential_policies', instanceId);
  }
  async getCredentialPolicy(instanceId: string, name: string): Promise<CredentialPolicyRecord | undefined> {
    return this.#getNamed<CredentialPolicyRecord>('credential_policies', instanceId, name);
  }
  async putCredentialPolicy(instanceId: string, policy: CredentialPolicyRecord): Promise<void> {
    await this.#putNamed('credential_policies', instanceId, policy.name, policy);
  }
  async deleteCredentialPolicy(instanceId: string, name: string): Promise<boolean> {
    return this.#deleteNamed('credential_policies', instanceId, name);
  }
  async putIssuedCertificate(instanceId: string, certificate: IssuedCertificateRecord): Promise<void> {
    await this.#db
      .insertInto('issued_certificates')
      .values({
        instance_id: instanceId,
        serial: certificate.serialNumber.toUpperCase(),
        registration_id_key: certificate.registrationId === undefined ? '' : lower(certificate.registrationId),
        sha256_thumbprint: certificate.sha256Thumbprint.toUpperCase(),
        revoked: certificate.revokedDateTimeUtc ?? '',
        doc: JSON.stringify(certificate),
      })
      .execute();
  }
  async findIssuedCertificate(instanceId: string, sha256Thumbprint: string): Promise<IssuedCertificateRecord | undefined> {
    const row = await this.#db
      .selectFrom('issued_certificates')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('sha256_thumbprint', '=', sha256Thumbprint.toUpperCase())
      .executeTakeFirst();
    return row === undefined ? undefined : parse<IssuedCertificateRecord>(row.doc);
  }
  async listIssuedCertificates(instanceId: string, registrationId: string): Promise<IssuedCertificateRecord[]> {
    const rows = await this.#db
      .selectFrom('issued_certificates')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('registration_id_key', '=', lower(registrationId))
      .execute();
    return rows.map((row) => parse<IssuedCertificateRecord>(row.doc)).sort((a, b) => a.issuedDateTimeUtc.localeCompare(b.issuedDateTimeUtc));
  }
  async revokeIssuedCertificates(instanceId: string, registrationId: string, revokedUtc: string): Promise<number> {
    const issued = await this.listIssuedCertificates(instanceId, registrationId);
    for (const certificate of issued) {
      // Only what the CRL needs stays: the serial number, the thumbprint (so the certificate is refused at sign-in)
      // and the times. Nothing names the device any more.
      const kept: IssuedCertificateRecord = {
        serialNumber: certificate.serialNumber,
        sha256Thumbprint: certificate.sha256Thumbprint,
        notBeforeUtc: certificate.notBeforeUtc,
        notAfterUtc: certificate.notAfterUtc,
        issuedDateTimeUtc: certificate.issuedDateTimeUtc,
        revokedDateTimeUtc: certificate.revokedDateTimeUtc ?? revokedUtc,
      };
      await this.#db
        .updateTable('issued_certificates')
        .set({ registration_id_key: '', revoked: kept.revokedDateTimeUtc ?? revokedUtc, doc: JSON.stringify(kept) })
        .where('instance_id', '=', instanceId)
        .where('serial', '=', certificate.serialNumber.toUpperCase())
        .execute();
    }
    return issued.length;
  }
  async listRevokedCertificates(instanceId: string): Promise<Array<{ serialNumber: string; revokedDateTimeUtc: string }>> {
    const rows = await this.#db
      .selectFrom('issued_certificates')
      .select(['serial', 'revoked'])
      .where('instance_id', '=', instanceId)
      .where('revoked', '!=', '')
      .orderBy('serial')
      .execute();
    return rows.map((row) => ({ serialNumber: row.serial, revokedDateTimeUtc: row.revoked }));
  }

  async #listNamed<T>(table: NamedTable, instanceId: string): Promise<T[]> {
    const rows = await this.#db.selectFrom(table).select('doc').where('instance_id', '=', instanceId).orderBy('name_key').execute();
    return rows.map((row) => parse<T>(row.doc));
  }
  async #getNamed<T>(table: NamedTable, instanceId: string, name: string): Promise<T | undefined> {
    const row = await this.#db
      .selectFrom(table)
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('name_key', '=', lower(name))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<T>(row.doc);
  }
  async #putNamed(table: 'access_policies' | 'linked_hubs' | 'credential_policies', instanceId: string, name: string, doc: object): Promise<void> {
    const text = JSON.stringify(doc);
    await this.#db
      .insertInto(table)
      .values({ instance_id: instanceId, name_key: lower(name), doc: text })
      .onConflict((oc) => oc.columns(['instance_id', 'name_key']).doUpdateSet({ doc: text }))
      .execute();
  }
  async #deleteNamed(table: NamedTable, instanceId: string, name: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom(table)
      .where('instance_id', '=', instanceId)
      .where('name_key', '=', lower(name))
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  // ---- enrollments

  async getEnrollment(instanceId: string, registrationId: string): Promise<StoredEnrollment | undefined> {
    return hotDoc<StoredEnrollment>(this.#db, this.#hot.enrollment, [instanceId, lower(registrationId)]);
  }

  async putEnrollment(instanceId: string, enrollment: StoredEnrollment, expectedEtag?: string | null): Promise<boolean> {
    const key = lower(enrollment.registrationId);
    const columns = enrollmentColumns(enrollment);
    return this.#inTransaction(async (db) => {
      if (expectedEtag === null) {
        const result = await db
          .insertInto('enrollments')
          .values({ instance_id: instanceId, registration_id_key: key, ...columns })
          .onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doNothing())
          .executeTakeFirst();
        if (!changed(result)) return false;
      } else if (expectedEtag !== undefined) {
        const result = await db
          .updateTable('enrollments')
          .set(columns)
          .where('instance_id', '=', instanceId)
          .where('registration_id_key', '=', key)
          .where('etag', '=', expectedEtag)
          .executeTakeFirst();
        if (!changed(result)) return false;
      } else {
        await db
          .insertInto('enrollments')
          .values({ instance_id: instanceId, registration_id_key: key, ...columns })
          .onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doUpdateSet(columns))
          .execute();
      }
      await this.#writeCertificates(db, instanceId, 'individual', key, certificateThumbprints(enrollment.attestation));
      return true;
    });
  }

  async deleteEnrollment(instanceId: string, registrationId: string, expectedEtag?: string): Promise<boolean> {
    const key = lower(registrationId);
    return this.#inTransaction(async (db) => {
      let query = db.deleteFrom('enrollments').where('instance_id', '=', instanceId).where('registration_id_key', '=', key);
      if (expectedEtag !== undefined) query = query.where('etag', '=', expectedEtag);
      if (!changed(await query.executeTakeFirst())) return false;
      await this.#writeCertificates(db, instanceId, 'individual', key, []);
      return true;
    });
  }

  /** A write of several statements is atomic on its own; inside a caller's transaction it joins that one. */
  async #inTransaction<T>(work: (db: Db) => Promise<T>): Promise<T> {
    if (this.#root === undefined) return work(this.#db);
    const root = this.#root;
    return this.#rootTransaction(() => root.transaction().execute((trx) => work(trx)));
  }

  async queryEnrollments(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollment>> {
    return this.#page<StoredEnrollment>('enrollments', instanceId, query);
  }

  async getEnrollments(instanceId: string, registrationIds: readonly string[]): Promise<StoredEnrollment[]> {
    const keys = [...new Set(registrationIds.map(lower))];
    const found: StoredEnrollment[] = [];
    const bulk = bulkStatementsOf(this.#rootDb);
    for (let i = 0; i < keys.length; i += BATCH_ROWS) {
      const chunk = keys.slice(i, i + BATCH_ROWS);
      const { rows } = await runHot<{ doc: string }>(this.#db, bulk.enrollmentsByKey(chunk.length), [instanceId, ...chunk]);
      for (const row of rows) found.push(parse<StoredEnrollment>(row.doc));
    }
    return found;
  }

  async writeEnrollments(instanceId: string, enrollments: readonly StoredEnrollment[], mode: 'create' | 'replace'): Promise<string[]> {
    // In key order: two writers whose batches overlap take the rows' locks in the same order (no deadlock on
    // PostgreSQL), and the B-tree is filled left to right.
    const rows = enrollments
      .map((enrollment) => ({ instance_id: instanceId, registration_id_key: lower(enrollment.registrationId), ...enrollmentColumns(enrollment) }))
      .sort((a, b) => (a.registration_id_key < b.registration_id_key ? -1 : a.registration_id_key > b.registration_id_key ? 1 : 0));
    const bulk = bulkStatementsOf(this.#rootDb);
    return this.#inTransaction(async (db) => {
      const written: string[] = [];
      for (let i = 0; i < rows.length; i += BATCH_ROWS) {
        const to = Math.min(i + BATCH_ROWS, rows.length);
        // `create` never overwrites (bulk-statements.ts): RETURNING names only the rows that went in.
        const args = rowArguments(rows, ENROLLMENT_ROW_COLUMNS, i, to);
        const { rows: returned } = await runHot<{ registration_id_key: string }>(db, bulk.insertEnrollments(to - i, mode), args);
        for (const row of returned) written.push(row.registration_id_key);
      }
      const writtenKeys = new Set(written);
      if (mode === 'replace') {
        // A replaced enrollment's certificates go with its old version.
        for (let i = 0; i < written.length; i += BATCH_ROWS) {
          await db
            .deleteFrom('enrollment_certificates')
            .where('instance_id', '=', instanceId)
            .where('owner_kind', '=', 'individual')
            .where('owner_key', 'in', written.slice(i, i + BATCH_ROWS))
            .execute();
        }
      }
      for (const enrollment of enrollments) {
        const key = lower(enrollment.registrationId);
        const thumbprints = certificateThumbprints(enrollment.attestation);
        if (thumbprints.length > 0 && writtenKeys.has(key)) await this.#insertCertificates(db, instanceId, 'individual', key, thumbprints);
      }
      return written;
    });
  }

  // ---- enrollment groups

  async getEnrollmentGroup(instanceId: string, groupId: string): Promise<StoredEnrollmentGroup | undefined> {
    return hotDoc<StoredEnrollmentGroup>(this.#db, this.#hot.enrollmentGroup, [instanceId, lower(groupId)]);
  }

  async putEnrollmentGroup(instanceId: string, group: StoredEnrollmentGroup, expectedEtag?: string | null): Promise<boolean> {
    const key = lower(group.enrollmentGroupId);
    const columns = {
      provisioning_status: group.provisioningStatus,
      attestation_type: group.attestation.type.toLowerCase(),
      etag: group.etag,
      doc: JSON.stringify(group),
    };
    return this.#inTransaction(async (db) => {
      if (expectedEtag === null) {
        const result = await db
          .insertInto('enrollment_groups')
          .values({ instance_id: instanceId, group_id_key: key, ...columns })
          .onConflict((oc) => oc.columns(['instance_id', 'group_id_key']).doNothing())
          .executeTakeFirst();
        if (!changed(result)) return false;
      } else if (expectedEtag !== undefined) {
        const result = await db
          .updateTable('enrollment_groups')
          .set(columns)
          .where('instance_id', '=', instanceId)
          .where('group_id_key', '=', key)
          .where('etag', '=', expectedEtag)
          .executeTakeFirst();
        if (!changed(result)) return false;
      } else {
        await db
          .insertInto('enrollment_groups')
          .values({ instance_id: instanceId, group_id_key: key, ...columns })
          .onConflict((oc) => oc.columns(['instance_id', 'group_id_key']).doUpdateSet(columns))
          .execute();
      }
      await this.#writeCertificates(db, instanceId, 'group', key, certificateThumbprints(group.attestation));
      await bumpCounter(db, groupsCounterOf(instanceId));
      return true;
    });
  }

  async deleteEnrollmentGroup(instanceId: string, groupId: string, expectedEtag?: string): Promise<boolean> {
    const key = lower(groupId);
    return this.#inTransaction(async (db) => {
      let query = db.deleteFrom('enrollment_groups').where('instance_id', '=', instanceId).where('group_id_key', '=', key);
      if (expectedEtag !== undefined) query = query.where('etag', '=', expectedEtag);
      if (!changed(await query.executeTakeFirst())) return false;
      await this.#writeCertificates(db, instanceId, 'group', key, []);
      await bumpCounter(db, groupsCounterOf(instanceId));
      return true;
    });
  }

  async queryEnrollmentGroups(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollmentGroup>> {
    return this.#page<StoredEnrollmentGroup>('enrollment_groups', instanceId, query);
  }

  async #writeCertificates(db: Db, instanceId: string, kind: 'individual' | 'group', key: string, thumbprints: string[]): Promise<void> {
    await db
      .deleteFrom('enrollment_certificates')
      .where('instance_id', '=', instanceId)
      .where('owner_kind', '=', kind)
      .where('owner_key', '=', key)
      .execute();
    if (thumbprints.length === 0) return;
    await this.#insertCertificates(db, instanceId, kind, key, thumbprints);
  }

  async #insertCertificates(db: Db, instanceId: string, kind: 'individual' | 'group', key: string, thumbprints: string[]): Promise<void> {
    // Stored upper-case like findCertificateOwner looks them up, so the index never depends on the writer's casing.
    // The primary key (instance, thumbprint) is what makes "one certificate, one enrollment entry" hold when two
    // nodes write at once: the second insert fails, and the whole write with it.
    try {
      await db
        .insertInto('enrollment_certificates')
        .values([...new Set(thumbprints.map((thumbprint) => thumbprint.toUpperCase()))].map((sha256_thumbprint) => ({ instance_id: instanceId, sha256_thumbprint, owner_kind: kind, owner_key: key })))
        .execute();
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      throw new ProvisioningError('CertificateInUse', 'A certificate of this entry is already used by another enrollment entry; a certificate can be specified in only one enrollment entry.');
    }
  }

  async findCertificateOwner(instanceId: string, sha256Thumbprint: string): Promise<{ kind: 'individual' | 'group'; id: string } | undefined> {
    const row = await this.#db
      .selectFrom('enrollment_certificates')
      .select(['owner_kind', 'owner_key'])
      .where('instance_id', '=', instanceId)
      .where('sha256_thumbprint', '=', sha256Thumbprint.toUpperCase())
      .executeTakeFirst();
    return row === undefined ? undefined : { kind: row.owner_kind === 'group' ? 'group' : 'individual', id: row.owner_key };
  }

  // ---- registration records

  async getRegistration(instanceId: string, registrationId: string): Promise<StoredRegistration | undefined> {
    return hotDoc<StoredRegistration>(this.#db, this.#hot.registration, [instanceId, lower(registrationId)]);
  }

  async putRegistration(instanceId: string, registration: StoredRegistration): Promise<void> {
    const args = [
      instanceId,
      lower(registration.registrationId),
      lower(registration.deviceId),
      lower(registration.enrollmentGroupId),
      registration.status,
      lower(registration.assignedHub),
      registration.etag,
      JSON.stringify(registration),
    ];
    // SQLite: first the upsert that leaves the indexed keys alone (fewer pages written); it changes nothing when they
    // differ. PostgreSQL skips an unchanged index by itself (a HOT update), and its write travels with the COMMIT.
    if (this.#sqlite && (await hotWrite(this.#db, this.#hot.putRegistrationSameKeys, args)) > 0) return;
    await deferredWrite(this.#db, this.#hot.putRegistration, args);
  }

  async deleteRegistration(instanceId: string, registrationId: string, expectedEtag?: string): Promise<boolean> {
    let query = this.#db.deleteFrom('registrations').where('instance_id', '=', instanceId).where('registration_id_key', '=', lower(registrationId));
    if (expectedEtag !== undefined) query = query.where('etag', '=', expectedEtag);
    return changed(await query.executeTakeFirst());
  }

  async queryRegistrations(instanceId: string, query: ListQuery): Promise<Page<StoredRegistration>> {
    return this.#page<StoredRegistration>('registrations', instanceId, query);
  }

  async deleteRegistrationsOfGroup(instanceId: string, groupId: string): Promise<number> {
    const result = await this.#db
      .deleteFrom('registrations')
      .where('instance_id', '=', instanceId)
      .where('group_id_key', '=', lower(groupId))
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  // ---- operations

  async putOperation(instanceId: string, operation: StoredOperation): Promise<void> {
    await deferredWrite(this.#db, this.#hot.putOperation, [
      instanceId,
      operation.operationId,
      lower(operation.registrationId),
      operation.lastUpdatedDateTimeUtc,
      JSON.stringify(operation),
    ]);
  }

  async getOperation(instanceId: string, operationId: string): Promise<StoredOperation | undefined> {
    return hotDoc<StoredOperation>(this.#db, this.#hot.operation, [instanceId, operationId]);
  }

  async deleteOperationsBefore(cutoffUtc: string, limit?: number): Promise<number> {
    return this.#changingOperations(() => this.#deleteOperationsBefore(cutoffUtc, limit));
  }

  async #deleteOperationsBefore(cutoffUtc: string, limit?: number): Promise<number> {
    if (limit === undefined) {
      const result = await this.#db.deleteFrom('operations').where('updated_at', '<', cutoffUtc).executeTakeFirst();
      return Number(result.numDeletedRows);
    }
    // The oldest `limit` by the updated_at index (migration 0013), deleted by primary key: a batch costs its size.
    const result = await sql`delete from operations where (instance_id, operation_id) in (
      select instance_id, operation_id from operations where updated_at < ${cutoffUtc} order by updated_at limit ${limit})`.execute(this.#db);
    return Number(result.numAffectedRows ?? 0n);
  }

  async listOperationsOfRegistration(instanceId: string, registrationId: string): Promise<StoredOperation[]> {
    const { rows } = await runHot<{ doc: string }>(this.#db, this.#subject.operationsOfRegistration, [instanceId, lower(registrationId)]);
    return rows.map((row) => parse<StoredOperation>(row.doc));
  }

  // ---- erase fences

  async putEraseFences(instanceId: string, fences: readonly EraseFence[]): Promise<void> {
    return this.#changingOperations(() => this.#putEraseFences(instanceId, fences));
  }

  async #putEraseFences(instanceId: string, fences: readonly EraseFence[]): Promise<void> {
    for (const fence of fences) {
      const doc = JSON.stringify({ requestId: fence.requestId, subjectHash: fence.subjectHash });
      await hotWrite(this.#db, this.#subject.putEraseFence, [instanceId, fence.kind, lower(fence.id), lower(fence.requestId), doc]);
    }
  }

  async getOperationUnlessFenced(instanceId: string, operationId: string, probe: FenceProbe): Promise<Unfenced<'operation', StoredOperation>> {
    const { fence, doc } = await this.#readUnlessFenced(this.#hot.fencedReads.operation, instanceId, operationId, probe, () => this.getOperation(instanceId, operationId));
    return fence !== undefined ? { fence } : doc === undefined ? {} : { operation: doc };
  }

  async takeRateTokenAndGetOperationUnlessFenced(
    token: RateToken,
    instanceId: string,
    operationId: string,
    probe: FenceProbe,
  ): Promise<{ taken: boolean } & Unfenced<'operation', StoredOperation>> {
    const keys = deviceProbeKeys(probe);
    // One statement on PostgreSQL for a device's own probe; SQLite writes no rows in a CTE (and keeps its buckets in
    // memory: nothing calls this there but the contract), so there, and for a wider probe, the take and then the read.
    if (keys === undefined || this.#sqlite) {
      if (!(await this.takeRateToken(token.bucketKey, token.ratePerSecond, token.burst, token.nowMs))) return { taken: false };
      return { taken: true, ...(await this.getOperationUnlessFenced(instanceId, operationId, probe)) };
    }
    const [registrationKey, deviceKey, groupKey] = keys;
    const { rows } = await runHot<{ fence: string | null; doc: string | null; taken: boolean }>(this.#db, this.#hot.fencedReads.operationAfterRateToken, [
      instanceId,
      operationId,
      registrationKey,
      deviceKey,
      groupKey,
      token.bucketKey,
      token.ratePerSecond,
      token.burst,
      token.nowMs,
    ]);
    const row = rows[0];
    // A refused take answers nothing else: the caller throttles, as it would have before reading.
    if (row?.taken !== true) return { taken: false };
    if (row.fence != null) return { taken: true, fence: fenceOf(parseProbeFence(row.fence)) };
    return row.doc == null ? { taken: true } : { taken: true, operation: parse<StoredOperation>(row.doc) };
  }

  async getEnrollmentUnlessFenced(instanceId: string, registrationId: string, probe: FenceProbe): Promise<Unfenced<'enrollment', StoredEnrollment>> {
    const { fence, doc } = await this.#readUnlessFenced(this.#hot.fencedReads.enrollment, instanceId, lower(registrationId), probe, () =>
      this.getEnrollment(instanceId, registrationId),
    );
    return fence !== undefined ? { fence } : doc === undefined ? {} : { enrollment: doc };
  }

  async getEnrollmentGroupUnlessFenced(instanceId: string, groupId: string, probe: FenceProbe): Promise<Unfenced<'group', StoredEnrollmentGroup>> {
    const { fence, doc } = await this.#readUnlessFenced(this.#hot.fencedReads.enrollmentGroup, instanceId, lower(groupId), probe, () =>
      this.getEnrollmentGroup(instanceId, groupId),
    );
    return fence !== undefined ? { fence } : doc === undefined ? {} : { group: doc };
  }

  /** A fence check and the read it guards: one statement for a probe of one ID per kind, else the two reads. */
  async #readUnlessFenced<T>(
    statement: HotStatement,
    instanceId: string,
    key: string,
    probe: FenceProbe,
    read: () => Promise<T | undefined>,
  ): Promise<{ fence?: Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'>; doc?: T }> {
    const keys = deviceProbeKeys(probe);
    if (keys === undefined) {
      const fence = await this.findEraseFence(instanceId, probe);
      if (fence !== undefined) return { fence };
      const doc = await read();
      return doc === undefined ? {} : { doc };
    }
    const [registrationKey, deviceKey, groupKey] = keys;
    const { rows } = await runHot<{ fence: string | null; doc: string | null }>(this.#db, statement, [instanceId, key, registrationKey, deviceKey, groupKey]);
    const row = rows[0];
    if (row?.fence != null) return { fence: fenceOf(parseProbeFence(row.fence)) };
    return row?.doc == null ? {} : { doc: parse<T>(row.doc) };
  }

  async getEnrollmentAndRegistration(instanceId: string, registrationId: string): Promise<DeviceReads> {
    const { rows } = await runHot<DeviceReadRow>(this.#db, this.#hot.enrollmentAndRegistration, [instanceId, lower(registrationId)]);
    return deviceReadsOf(rows[0]);
  }

  async findDeviceByIdScope(idScope: string, registrationId: string): Promise<{ instance: InstanceRecord; reads: DeviceReads } | undefined> {
    if (this.#cache.singleWriter) {
      // The instance from memory (no statement), then the device's reads: one statement in all, as on PostgreSQL.
      const instance = await this.findInstanceByIdScope(idScope);
      return instance === undefined ? undefined : { instance, reads: await this.getEnrollmentAndRegistration(instance.id, registrationId) };
    }
    // One statement: the config version, the instance and the device's reads, from one snapshot (findInstanceByIdScope
    // and getEnrollmentAndRegistration in one round trip).
    const generation = this.#cache.generation;
    const { rows } = await runHot<DeviceReadRow & { version: number | string; doc: string | null; groups_version: number | string | null }>(
      this.#db,
      this.#hot.instanceAndDeviceByIdScopeVersioned,
      [lower(idScope), lower(registrationId)],
    );
    const row = rows[0];
    if (row?.doc == null) return undefined;
    const reads = deviceReadsOf(row);
    reads.groupsVersion = Number(row.groups_version ?? 0);
    return { instance: this.#versionedInstance(row.doc, generation, Number(row.version ?? 0)), reads };
  }

  async findEraseFence(instanceId: string, probe: FenceProbe): Promise<Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'> | undefined> {
    // A bulk call probes thousands of IDs at once. Fences stand only while an erase runs: when the instance has none,
    // one point read says so, before any ID is looked at (issue 12 P4: the IN lists below, built for every call, were
    // ~8 % of an imported item's CPU, and the IDs' lower-casing ~1 %). Read in the same transaction as the lists would
    // be, it answers what they would have answered.
    const many = (probe.registrationIds?.length ?? 0) > 1 || (probe.deviceIds?.length ?? 0) > 1 || (probe.groupIds?.length ?? 0) > 1;
    if (many && (await runHot(this.#db, bulkStatementsOf(this.#rootDb).anyEraseFence(), [instanceId])).rows.length === 0) return undefined;
    const wanted = probeKeys(probe);
    if (wanted.every(([, keys]) => keys.length === 0)) return undefined;
    // A device's own probe (one ID per kind: every registration, poll and log entry) is one compiled statement.
    if (wanted.every(([, keys]) => keys.length <= 1)) {
      const [registrationKey, deviceKey, groupKey] = wanted.map(([, keys]) => keys[0] ?? NO_KEY);
      const { rows } = await runHot<{ fence: string | null }>(this.#db, this.#hot.eraseFence, [instanceId, registrationKey, deviceKey, groupKey]);
      const fence = rows[0]?.fence;
      return fence == null ? undefined : fenceOf(parseProbeFence(fence));
    }
    // Else one statement per chunk of BATCH_ROWS IDs, all kinds together, as one IN list per kind (an OR per ID would
    // exceed SQLite's expression depth of 1,000).
    const all = wanted.flatMap(([kind, keys]) => keys.map((key) => [kind, key] as const));
    for (let i = 0; i < all.length; i += BATCH_ROWS) {
      const chunk = all.slice(i, i + BATCH_ROWS);
      const byKind = wanted
        .map(([kind]) => [kind, chunk.filter(([chunkKind]) => chunkKind === kind).map(([, key]) => key)] as const)
        .filter(([, keys]) => keys.length > 0);
      const row = await this.#db
        .selectFrom('erase_fences')
        .select(['subject_kind', 'doc'])
        .where('instance_id', '=', instanceId)
        .where((eb) => eb.or(byKind.map(([kind, keys]) => eb.and([eb('subject_kind', '=', kind), eb('id_key', 'in', keys)]))))
        .executeTakeFirst();
      if (row !== undefined) return fenceOf(row);
    }
    return undefined;
  }

  async deleteEraseFences(instanceId: string, requestId: string): Promise<number> {
    return this.#changingOperations(() => hotWrite(this.#db, this.#subject.deleteEraseFences, [instanceId, lower(requestId)]));
  }

  async reclaimErasedSpace(): Promise<void> {
    // Inside a transaction a checkpoint cannot run; the caller asks at the root.
    if (this.#root === undefined) return;
    // PostgreSQL: nothing to do here — dead tuples are reclaimed by VACUUM (docs/customer-data.md says what remains).
    if (this.#options.capabilities.name !== 'sqlite') return;
    // The WAL holds old page images that still contain erased rows; copy it back and cut it to zero bytes.
    await sql`PRAGMA wal_checkpoint(TRUNCATE)`.execute(this.#root);
  }

  async deleteOperationsOfRegistration(instanceId: string, registrationId: string): Promise<number> {
    return this.#changingOperations(() => hotWrite(this.#db, this.#subject.deleteOperationsOfRegistration, [instanceId, lower(registrationId)]));
  }

  async countOperationsOfRegistration(instanceId: string, registrationId: string): Promise<number> {
    const { rows } = await runHot<{ n: number | string }>(this.#db, this.#subject.countOperationsOfRegistration, [instanceId, lower(registrationId)]);
    return Number(rows[0]?.n ?? 0);
  }

  // ---- registration intents

  async putRegistrationIntent(instanceId: string, intent: RegistrationIntent): Promise<void> {
    await deferredWrite(this.#db, this.#hot.putRegistrationIntent, [instanceId, intent.operationId, intent.createdDateTimeUtc, JSON.stringify(intent)]);
  }

  async deleteRegistrationIntent(instanceId: string, operationId: string): Promise<void> {
    await deferredWrite(this.#db, this.#hot.deleteRegistrationIntent, [instanceId, operationId]);
  }

  async listRegistrationIntentsOf(instanceId: string): Promise<RegistrationIntent[]> {
    const { rows } = await runHot<{ doc: string }>(this.#db, this.#subject.registrationIntentsOf, [instanceId]);
    return rows.map((row) => parse<RegistrationIntent>(row.doc));
  }

  async listRegistrationIntents(createdBeforeUtc: string, limit: number): Promise<Array<RegistrationIntent & { instanceId: string }>> {
    const rows = await this.#db
      .selectFrom('registration_intents')
      .select(['instance_id', 'doc'])
      .where('created_at', '<', createdBeforeUtc)
      .orderBy('created_at')
      .limit(limit)
      .execute();
    return rows.map((row) => ({ ...parse<RegistrationIntent>(row.doc), instanceId: row.instance_id }));
  }

  // ---- the system log

  async appendAuditEvent(instanceId: string, event: AuditEvent): Promise<void> {
    const row = auditRow(instanceId, event);
    await deferredWrite(this.#db, this.#hot.appendAuditEvent, [
      row.instance_id,
      row.event_id,
      row.time_utc,
      row.kind,
      row.actor,
      row.outcome,
      row.event_class,
      row.registration_id_key,
      row.device_id_key,
      row.group_id_key,
      row.doc,
    ]);
  }

  async appendAuditEvents(instanceId: string, events: readonly AuditEvent[]): Promise<void> {
    const bulk = bulkStatementsOf(this.#rootDb);
    for (let i = 0; i < events.length; i += BATCH_ROWS) {
      const rows = events.slice(i, i + BATCH_ROWS).map((event) => auditRow(instanceId, event));
      await runHot(this.#db, bulk.appendAuditEvents(rows.length), rowArguments(rows, AUDIT_ROW_COLUMNS, 0, rows.length));
    }
  }

  async queryAuditEvents(instanceId: string, query: AuditQuery): Promise<Page<AuditEvent>> {
    // A time range is also a range of event IDs, which are made from the event's time (services/audit-log.ts): the
    // search walks the primary key between the two instead of sorting every event of the range by ID.
    const idFrom = query.from === undefined ? undefined : eventIdAt(Date.parse(query.from));
    const idTo = query.to === undefined || eventIdAt(Date.parse(query.to)) === '' ? undefined : eventIdAt(Date.parse(query.to) + 1);
    // Each filter present adds its bit and its value (in AUDIT_PAGE_FILTERS order): the statement of that combination
    // is compiled once (subject-statements.ts), not built through Kysely for every page.
    const filters: Record<AuditPageFilter, string | undefined> = {
      before: query.beforeKey,
      idFrom,
      idTo,
      windowEnd: undefined,
      subject: query.subject === undefined ? undefined : lower(query.subject),
      from: query.from,
      to: query.to,
      actor: query.actor,
      outcome: query.outcome,
      kind: query.kind,
      eventClass: query.eventClass,
    };
    const shape = (only?: readonly AuditPageFilter[]): { present: number; args: unknown[] } => {
      let present = 0;
      const args: unknown[] = [instanceId];
      for (const [bit, filter] of AUDIT_PAGE_FILTERS.entries()) {
        const value = filters[filter];
        if (value === undefined || (only !== undefined && !only.includes(filter))) continue;
        present |= 1 << bit;
        args.push(value);
      }
      return { present, args };
    };
    // Filters without an index of their own (outcome, kind, actor, time) look at no more than `scanLimit` events per
    // page (of the class asked for, which has its index): the page ends where that window ends, possibly short or
    // empty, with a continuation from there — a query for something rare pages through the log instead of stalling
    // the server while it reads all of it. A subject's events are few, and found by their indexes.
    let windowEnd: string | undefined;
    if (query.scanLimit !== undefined && query.subject === undefined && hasUnindexedAuditFilter(query)) {
      const edge = shape(['before', 'idFrom', 'idTo', 'eventClass']);
      const { rows } = await runHot<{ event_id: string }>(this.#db, this.#subject.auditWindowEdge(edge.present), [...edge.args, query.scanLimit - 1]);
      windowEnd = rows[0]?.event_id;
      filters.windowEnd = windowEnd;
    }
    const page = shape();
    const { rows } = await runHot<AuditEventRow>(this.#db, this.#subject.auditPage(page.present), [
      ...page.args,
      query.limit + 1,
    ]);
    const more = rows.length > query.limit;
    const items = more ? rows.slice(0, query.limit) : rows;
    return { items: items.map(auditEventOf), nextKey: more ? items.at(-1)?.event_id : windowEnd };
  }

  async getAuditEvent(instanceId: string, eventId: string): Promise<AuditEvent | undefined> {
    const { rows } = await runHot<AuditEventRow>(this.#db, this.#subject.auditEvent, [instanceId, eventId]);
    const row = rows[0];
    return row === undefined ? undefined : auditEventOf(row);
  }

  async findAuditEventsAbout(
    instanceId: string,
    subject: { registrationIds: string[]; deviceIds: string[]; groupIds: string[] },
  ): Promise<AuditEvent[]> {
    const keys = (ids: string[]) => [...new Set(ids.map(lower))].filter((key) => key !== '');
    const registrationIds = keys(subject.registrationIds);
    const deviceIds = keys(subject.deviceIds);
    const groupIds = keys(subject.groupIds);
    if (registrationIds.length + deviceIds.length + groupIds.length === 0) return [];
    const found = new Map<string, AuditEvent>();
    // In chunks, so a group of thousands of devices stays under every dialect's parameter limit.
    for (const [column, values] of [
      ['registration_id_key', registrationIds],
      ['device_id_key', deviceIds],
      ['group_id_key', groupIds],
    ] as const) {
      for (let i = 0; i < values.length; i += 500) {
        const chunk = values.slice(i, i + 500);
        // Names the partial index's condition (migration 0016), so the planner may use it.
        const { rows } = await runHot<AuditEventRow>(
          this.#db,
          this.#subject.auditEventsAbout(column, chunk.length),
          [instanceId, ...paddedKeys(chunk)],
        );
        for (const row of rows) found.set(row.event_id, auditEventOf(row));
      }
    }
    return [...found.values()].sort((a, b) => a.eventId.localeCompare(b.eventId));
  }

  async replaceAuditEvents(instanceId: string, events: AuditEvent[]): Promise<void> {
    for (const event of events) {
      const row = auditRow(instanceId, event);
      // SQLite: first the rewrite that leaves the class and failure indexes alone; it changes nothing when the actor,
      // outcome or class changed. (PostgreSQL rewrites the entries of every index of a row it cannot update HOT anyway.)
      const sameFilters = [row.registration_id_key, row.device_id_key, row.group_id_key, row.doc, instanceId, event.eventId, row.actor, row.outcome, row.event_class];
      if (this.#sqlite && (await hotWrite(this.#db, this.#subject.replaceAuditEventSameFilters, sameFilters)) > 0) continue;
      await hotWrite(this.#db, this.#subject.replaceAuditEvent, [
        row.registration_id_key,
        row.device_id_key,
        row.group_id_key,
        row.actor,
        row.outcome,
        row.event_class,
        row.doc,
        instanceId,
        event.eventId,
      ]);
    }
  }

  async deleteAuditEvents(instanceId: string, eventIds: string[]): Promise<number> {
    let deleted = 0;
    for (let i = 0; i < eventIds.length; i += 500) {
      const result = await this.#db
        .deleteFrom('audit_events')
        .where('instance_id', '=', instanceId)
        .where('event_id', 'in', eventIds.slice(i, i + 500))
        .executeTakeFirst();
      deleted += Number(result.numDeletedRows);
    }
    return deleted;
  }

  async deleteAuditEventsBefore(instanceId: string, cutoffUtc: string, limit?: number): Promise<number> {
    // Older than the cutoff is a range of event IDs (each begins with its event's millisecond, never earlier than
    // its time): the oldest first along the primary key, each checked against its time as well.
    // A cutoff that does not parse bounds nothing by ID (the highest ID sorts below this).
    const before = eventIdAt(Date.parse(cutoffUtc)) || '\uffff';
    if (limit !== undefined) {
      const result = await sql`delete from audit_events where instance_id = ${instanceId} and event_id in (
        select event_id from audit_events where instance_id = ${instanceId} and event_id < ${before} and time_utc < ${cutoffUtc}
        order by event_id limit ${limit})`.execute(this.#db);
      return Number(result.numAffectedRows ?? 0n);
    }
    const result = await this.#db
      .deleteFrom('audit_events')
      .where('instance_id', '=', instanceId)
      .where('event_id', '<', before)
      .where('time_utc', '<', cutoffUtc)
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  // ---- data requests

  async putDataRequest(instanceId: string, request: DataRequestRecord): Promise<void> {
    const doc = JSON.stringify(request.doc);
    const keys = [instanceId, lower(request.requestId), request.sortKey, request.status, request.type, lower(request.subjectId)];
    // SQLite: most saves (an erase's progress) change only the document; they write its row and no index entry. (On
    // PostgreSQL an update that changes no indexed column is a HOT update already, and a second statement a round trip.)
    if (this.#sqlite && (await hotWrite(this.#db, this.#subject.putDataRequestDoc, [doc, ...keys])) > 0) return;
    await hotWrite(this.#db, this.#subject.putDataRequest, [...keys, doc]);
  }

  async getDataRequest(instanceId: string, requestId: string): Promise<DataRequestRecord | undefined> {
    const row = (await runHot<Database['data_requests']>(this.#db, this.#subject.dataRequest, [instanceId, lower(requestId)])).rows[0];
    return row === undefined ? undefined : dataRequestOf(row);
  }

  async queryDataRequests(instanceId: string, query: ListQuery): Promise<Page<DataRequestRecord>> {
    const page = await this.#page<Record<string, unknown>>('data_requests', instanceId, query);
    // The page's documents are the requests; their columns are derived from them.
    const items = page.items.map((doc) => ({
      requestId: String(doc.requestId),
      sortKey: String(doc.sortKey),
      status: String(doc.status),
      type: String(doc.type),
      doc,
    }));
    return { items, nextKey: page.nextKey };
  }

  async findDataRequestsAbout(instanceId: string, ids: readonly string[]): Promise<DataRequestRecord[]> {
    const keys = [...new Set(ids.map(lower))].filter((key) => key !== '');
    const found: DataRequestRecord[] = [];
    for (let i = 0; i < keys.length; i += 500) {
      const chunk = keys.slice(i, i + 500);
      const { rows } = await runHot<Database['data_requests']>(this.#db, this.#subject.dataRequestsAbout(chunk.length), [instanceId, ...paddedKeys(chunk)]);
      found.push(...rows.map(dataRequestOf));
    }
    // Sorted here, not by the statement: an ORDER BY the request list's index made the planner (no statistics) walk
    // every request of the instance in that order to find a subject's few.
    return found.sort((a, b) => (a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0));
  }

  // ---- subject→hub-device links

  async putHubDeviceLink(instanceId: string, link: HubDeviceLink): Promise<void> {
    const args = [instanceId, lower(link.registrationId), lower(link.hub), lower(link.deviceId), lower(link.enrollmentGroupId), JSON.stringify(link)];
    // One statement: it writes nothing when the link is there and says the same (a re-registration's).
    await deferredWrite(this.#db, this.#hot.putHubDeviceLink, args);
  }

  async findHubDeviceLinks(instanceId: string, ids: SubjectIds): Promise<HubDeviceLink[]> {
    const found = new Map<string, HubDeviceLink>();
    await bySubject(ids, async (column, keys) => {
      const { rows } = await runHot<{ registration_id_key: string; hub_key: string; device_id_key: string; doc: string }>(
        this.#db,
        this.#subject.hubDeviceLinks(column, keys.length),
        [instanceId, ...paddedKeys(keys)],
      );
      for (const row of rows) found.set(`${row.registration_id_key}/${row.hub_key}/${row.device_id_key}`, linkOf(row.doc));
    });
    return [...found.values()];
  }

  async deleteHubDeviceLinks(instanceId: string, ids: SubjectIds): Promise<number> {
    let deleted = 0;
    await bySubject(ids, async (column, keys) => {
      deleted += await hotWrite(this.#db, this.#subject.deleteHubDeviceLinks(column, keys.length), [instanceId, ...paddedKeys(keys)]);
    });
    return deleted;
  }

  async listDataRequestsByStatus(statuses: string[]): Promise<Array<DataRequestRecord & { instanceId: string }>> {
    if (statuses.length === 0) return [];
    const rows = await this.#db.selectFrom('data_requests').selectAll().where('status', 'in', statuses).orderBy('sort_key', 'desc').execute();
    return rows.map((row) => ({ ...dataRequestOf(row), instanceId: row.instance_id }));
  }

  // ---- lifecycle-event outbox

  async appendOutboxEvent(instanceId: string, event: OutboxEvent): Promise<void> {
    const data = (event.doc.data ?? {}) as Record<string, unknown>;
    const key = (field: string): string => (typeof data[field] === 'string' ? lower(data[field]) : '');
    await this.#db
      .insertInto('event_outbox')
      .values({
        instance_id: instanceId,
        event_id: event.eventId,
        registration_id_key: key('registrationId'),
        device_id_key: key('deviceId'),
        group_id_key: key('enrollmentGroupId'),
        doc: JSON.stringify(event.doc),
      })
      .execute();
  }

  async findOutboxEventsAbout(instanceId: string, ids: SubjectIds): Promise<OutboxEvent[]> {
    const found = new Map<string, OutboxEvent>();
    await bySubject(ids, async (column, keys) => {
      const { rows } = await runHot<{ event_id: string; doc: string }>(this.#db, this.#subject.outboxEventsAbout(column, keys.length), [instanceId, ...paddedKeys(keys)]);
      for (const row of rows) found.set(row.event_id, { eventId: row.event_id, doc: parse(row.doc) });
    });
    return [...found.values()].sort((a, b) => a.eventId.localeCompare(b.eventId));
  }

  async listOutboxEvents(instanceId: string, limit: number): Promise<OutboxEvent[]> {
    const rows = await this.#db
      .selectFrom('event_outbox')
      .select(['event_id', 'doc'])
      .where('instance_id', '=', instanceId)
      .orderBy('event_id')
      .limit(limit)
      .execute();
    return rows.map((row) => ({ eventId: row.event_id, doc: parse(row.doc) }));
  }

  async deleteOutboxEvent(instanceId: string, eventId: string): Promise<void> {
    await this.#db.deleteFrom('event_outbox').where('instance_id', '=', instanceId).where('event_id', '=', eventId).execute();
  }

  async listInstancesWithOutboxEvents(): Promise<string[]> {
    const rows = await this.#db.selectFrom('event_outbox').select('instance_id').distinct().execute();
    return rows.map((row) => row.instance_id);
  }

  // ---- state shared by every node

  async takeRateToken(bucketKey: string, ratePerSecond: number, burst: number, nowMs: number, count = 1): Promise<boolean> {
    // One statement, compiled once (it runs on every registration and poll of a cluster): hot-statements.ts rateTokenTake.
    return (await hotWrite(this.#db, this.#hot.takeRateToken, [bucketKey, ratePerSecond, burst, nowMs, count])) > 0;
  }

  async deleteRateBuckets(bucketKeys: readonly string[]): Promise<number> {
    // A group's erase names every device of the group: BATCH_ROWS keys a statement (the bound-parameter limits).
    let deleted = 0;
    for (let i = 0; i < bucketKeys.length; i += BATCH_ROWS) {
      const result = await this.#db.deleteFrom('rate_limits').where('bucket_key', 'in', bucketKeys.slice(i, i + BATCH_ROWS)).executeTakeFirst();
      deleted += Number(result.numDeletedRows);
    }
    return deleted;
  }

  async deleteRateBucketsIdleSince(beforeMs: number, limit: number, afterKey = ''): Promise<{ deleted: number; lastKey: string | undefined }> {
    // In batches along the primary key, each going on after the last (a batch that started from the first key again
    // would walk every bucket still in use before it, batch after batch). A bucket taken from between the look and
    // the delete is not idle any more: the delete checks again.
    const idle = await this.#db
      .selectFrom('rate_limits')
      .select('bucket_key')
      .where('bucket_key', '>', afterKey)
      .where('at_ms', '<', beforeMs)
      .orderBy('bucket_key')
      .limit(limit)
      .execute();
    if (idle.length === 0) return { deleted: 0, lastKey: undefined };
    const keys = idle.map((row) => row.bucket_key);
    const result = await this.#db.deleteFrom('rate_limits').where('bucket_key', 'in', keys).where('at_ms', '<', beforeMs).executeTakeFirst();
    return { deleted: Number(result.numDeletedRows), lastKey: keys.length < limit ? undefined : keys.at(-1) };
  }

  async claimLease(name: string, owner: string, ttlMs: number, nowMs: number): Promise<boolean> {
    const result = await this.#db
      .insertInto('leases')
      .values({ name, owner, until_ms: nowMs + ttlMs })
      .onConflict((oc) =>
        oc
          .column('name')
          .doUpdateSet({ owner, until_ms: nowMs + ttlMs })
          .where((eb) => eb.or([eb('leases.until_ms', '<', nowMs), eb('leases.owner', '=', owner)])),
      )
      .executeTakeFirst();
    return changed(result);
  }

  async renewLease(name: string, owner: string, ttlMs: number, nowMs: number): Promise<boolean> {
    const result = await this.#db.updateTable('leases').set({ until_ms: nowMs + ttlMs }).where('name', '=', name).where('owner', '=', owner).executeTakeFirst();
    return changed(result);
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    await this.#db.deleteFrom('leases').where('name', '=', name).where('owner', '=', owner).execute();
  }

  async changeCounter(name: string): Promise<number> {
    const { rows } = await runHot<{ version: number | string }>(this.#db, this.#hot.changeCounter, [name]);
    return Number(rows[0]?.version ?? 0);
  }

  async enrollmentGroupAndCounter(instanceId: string, groupId: string, counter: string): Promise<{ group: StoredEnrollmentGroup | undefined; version: number }> {
    const { rows } = await runHot<{ doc: string | null; version: number | string | null }>(this.#db, this.#hot.enrollmentGroupAndCounter, [instanceId, lower(groupId), counter]);
    const row = rows[0];
    return { group: row?.doc == null ? undefined : parse<StoredEnrollmentGroup>(row.doc), version: Number(row?.version ?? 0) };
  }

  async withLock<T>(name: string, work: () => Promise<T>): Promise<T> {
    return this.#options.withLock === undefined ? work() : this.#options.withLock(name, () => work());
  }

  async withRegistrationLock<T>(
    name: string,
    instanceId: string,
    registrationId: string,
    work: (reads: LockedReads) => Promise<T>,
    hubDevice?: { hubName: string; deviceId: string },
  ): Promise<T> {
    // SQLite: one writer, and a statement costs no round trip; the hub write reads its row itself, in its transaction.
    if (this.#options.withLock === undefined) return work({ record: await hotDoc<StoredRegistration>(this.#db, this.#hot.registration, [instanceId, lower(registrationId)]) });
    // The reads travel with the lock (one round trip): not through the executor, so the plugins (the metrics'
    // statement timer) do not see them, as they do not see the lock itself.
    const statement = hubDevice === undefined ? this.#hot.registration : this.#hot.registrationAndHubDevice;
    const args = hubDevice === undefined ? [instanceId, lower(registrationId)] : [instanceId, lower(registrationId), lower(hubDevice.hubName), lower(hubDevice.deviceId)];
    return this.#options.withLock(
      name,
      (rows) => {
        const row = rows?.[0];
        const doc = row?.doc;
        const reads: LockedReads = { record: typeof doc === 'string' ? parse<StoredRegistration>(doc) : undefined };
        if (hubDevice !== undefined && row !== undefined) {
          const device = row.device_doc;
          const revision = row.device_revision;
          reads.hubDevice = {
            hubName: hubDevice.hubName,
            deviceId: hubDevice.deviceId,
            row: typeof device === 'string' && typeof revision === 'string' ? { device: parse<StoredHubDevice>(device), revision } : undefined,
          };
        }
        return work(reads);
      },
      { text: statement.sql, values: bindHot(statement, args) },
    );
  }

  async reclaimDeleted(tables: readonly StoreTable[]): Promise<void> {
    if (!this.#options.capabilities.vacuumAfterErase || tables.length === 0) return;
    // VACUUM cannot run inside a transaction block: always on the root connection pool. The names come from the
    // StoreTable type, never from input.
    const root = this.#root ?? this.#db;
    // INDEX_CLEANUP ON: by default (AUTO, PostgreSQL 14+) VACUUM skips the indexes when few pages hold dead rows —
    // an erase's few — and the erased rows' index entries, keyed by the erased IDs, would stay live in the indexes.
    await sql`vacuum (index_cleanup on) ${sql.join([...new Set(tables)].map((table) => sql.table(table)))}`.execute(root);
  }

  async getRegistrations(instanceId: string, registrationIds: readonly string[]): Promise<StoredRegistration[]> {
    const keys = [...new Set(registrationIds.map(lower))];
    const found: StoredRegistration[] = [];
    for (let i = 0; i < keys.length; i += BATCH_ROWS) {
      const rows = await this.#db
        .selectFrom('registrations')
        .select('doc')
        .where('instance_id', '=', instanceId)
        .where('registration_id_key', 'in', keys.slice(i, i + BATCH_ROWS))
        .execute();
      for (const row of rows) found.push(parse<StoredRegistration>(row.doc));
    }
    return found;
  }

  // ---- keyset paging with filters

  async #page<T>(table: QueriedTable, instanceId: string, query: ListQuery): Promise<Page<T>> {
    const spec = COLUMNS[table];
    const keyColumn = spec.key;
    // The dynamic column names come only from COLUMNS, never from input.
    let builder = this.#db.selectFrom(table).select(['doc', `${keyColumn} as k`]).where('instance_id', '=', instanceId) as unknown as SelectQueryBuilder<
      Database,
      QueriedTable,
      { doc: string; k: string }
    >;
    for (const filter of query.filters) builder = applyFilter(builder, spec.fields as Record<string, { column: string; lower: boolean }>, filter);
    if (query.afterKey !== undefined) builder = builder.where(keyColumn as never, '>', query.afterKey as never);
    // Filters no index serves (status, attestation type, hub, a `<>`) look at no more than `scanLimit` rows per page —
    // the rows the indexed filters (if any) leave: the page ends where that window ends, possibly short or empty, with
    // a continuation from there, so a filter that matches little pages through the table instead of reading a million
    // rows in one request.
    let windowEnd: string | undefined;
    const fields = spec.fields as Record<string, { column: string; lower: boolean }>;
    const indexed = query.filters.filter((filter) => servedByIndex(table, fields, filter));
    if (query.scanLimit !== undefined && indexed.length < query.filters.length) {
      let edge = this.#db.selectFrom(table).select(['doc', `${keyColumn} as k`]).where('instance_id', '=', instanceId) as unknown as SelectQueryBuilder<
        Database,
        QueriedTable,
        { doc: string; k: string }
      >;
      for (const filter of indexed) edge = applyFilter(edge, fields, filter);
      if (query.afterKey !== undefined) edge = edge.where(keyColumn as never, '>', query.afterKey as never);
      windowEnd = (await edge.clearSelect().select(`${keyColumn} as k` as never).orderBy(keyColumn as never).limit(1).offset(query.scanLimit - 1).executeTakeFirst())?.k;
      if (windowEnd !== undefined) builder = builder.where(keyColumn as never, '<=', windowEnd as never);
    }
    const rows = await builder
      .orderBy(keyColumn as never)
      .limit(query.limit + 1)
      .execute();
    const more = rows.length > query.limit;
    const pageRows = more ? rows.slice(0, query.limit) : rows;
    return {
      items: pageRows.map((row) => parse<T>(row.doc)),
      nextKey: more ? pageRows[pageRows.length - 1]?.k : windowEnd,
    };
  }

  // ---- one transaction per registration (issue 12)

  async insertOperationIfAbsent(instanceId: string, operation: StoredOperation): Promise<boolean> {
    const result = await this.#db
      .insertInto('operations')
      .values({
        instance_id: instanceId,
        operation_id: operation.operationId,
        registration_id_key: lower(operation.registrationId),
        updated_at: operation.lastUpdatedDateTimeUtc,
        doc: JSON.stringify(operation),
      })
      .onConflict((oc) => oc.columns(['instance_id', 'operation_id']).doNothing())
      .executeTakeFirst();
    return (result.numInsertedOrUpdatedRows ?? 0n) > 0n;
  }

  builtInHubsInTransaction(): BuiltInHubStore | undefined {
    // The built-in hubs live in this database (open-store.ts opens both stores on one connection): inside a
    // transaction their writes can join it. Outside one they have their own store.
    return this.#root === undefined ? new KyselyHubStore(this.#db, this.#options.capabilities.singleWriter, this.#rootDb) : undefined;
  }
}

function applyFilter<QB extends SelectQueryBuilder<Database, QueriedTable, { doc: string; k: string }>>(
  builder: QB,
  fields: Record<string, { column: string; lower: boolean }>,
  filter: Filter,
): QB {
  const field = fields[filter.field];
  if (field === undefined) throw new Error(`no column for query field ${filter.field}`);
  const values = filter.values.map((value) => (field.lower ? value.toLowerCase() : value));
  const column = field.column as never;
  switch (filter.op) {
    case 'eq':
      return builder.where(column, '=', values[0] as never) as QB;
    case 'ne':
      return builder.where(column, '<>', values[0] as never) as QB;
    case 'in':
      return builder.where(column, 'in', values as never) as QB;
    case 'prefix': {
      // A range instead of LIKE: no escaping issues and it uses the index on both dialects.
      const prefix = values[0] ?? '';
      return builder.where(column, '>=', prefix as never).where(column, '<', `${prefix}\uffff` as never) as QB;
    }
  }
}

/** Columns with an index that leads with (instance, column): an equality, list or prefix filter on them is a range. */
const INDEXED_FILTER_COLUMNS: Record<QueriedTable, readonly string[]> = {
  enrollments: ['registration_id_key', 'device_id_key'],
  enrollment_groups: ['group_id_key'],
  data_requests: ['sort_key'],
  registrations: ['registration_id_key', 'device_id_key', 'group_id_key'],
};

function servedByIndex(table: QueriedTable, fields: Record<string, { column: string }>, filter: Filter): boolean {
  const column = fields[filter.field]?.column;
  return filter.op !== 'ne' && column !== undefined && INDEXED_FILTER_COLUMNS[table].includes(column);
}


async function bumpCounter(db: Db, name: string): Promise<void> {
  await db
    .insertInto('change_counters')
    .values({ name, version: 1 })
    .onConflict((oc) => oc.column('name').doUpdateSet({ version: sql<number>`change_counters.version + 1` }))
    .execute();
}

/**
 * The smallest event ID made at this millisecond (services/audit-log.ts: 12 hex digits of milliseconds first). A time
 * that does not parse bounds nothing: the ID range is then all IDs, and the time column alone decides.
 */
function eventIdAt(ms: number): string {
  if (Number.isNaN(ms)) return '';
  return Math.max(0, Math.min(ms, 0xffff_ffff_ffff)).toString(16).padStart(12, '0');
}

function hasUnindexedAuditFilter(query: AuditQuery): boolean {
  return query.from !== undefined || query.to !== undefined || query.actor !== undefined || query.outcome !== undefined || query.kind !== undefined;
}

/**
 * A log event's row. Its ID, time, kind, actor, outcome and class are columns (the page filters and indexes use them)
 * and are not repeated in the document: a bulk import writes one event per item, and the six fields were ~170 of the
 * document's ~400 bytes (issue 12 P4). {@link auditEventOf} puts them back. Rows written before this kept them in the
 * document as well; the columns win there too.
 */
function auditRow(instanceId: string, event: AuditEvent): Database['audit_events'] {
  const { eventId: _eventId, timeUtc: _timeUtc, kind: _kind, actor: _actor, outcome: _outcome, class: _class, ...rest } = event;
  const eventClass = event.class ?? auditClassOf(event);
  return {
    instance_id: instanceId,
    event_id: event.eventId,
    time_utc: event.timeUtc,
    kind: event.kind,
    actor: event.actor,
    outcome: event.outcome,
    event_class: eventClass,
    registration_id_key: lower(event.subject.registrationId),
    device_id_key: lower(event.subject.deviceId),
    group_id_key: lower(event.subject.enrollmentGroupId),
    doc: JSON.stringify(rest),
  };
}

/**
 * The stored event: its document with the fields kept as columns put back from them. (The class and outcome came
 * from their columns before that too: migration 0015 classified the events written before classes existed, and made
 * their not-found reads neutral, in the columns only.)
 */
function auditEventOf(row: AuditEventRow): AuditEvent {
  // The parsed document is a fresh object: the columns are set on it, in the order a spread into a new object would
  // give (the document's keys first; an older row's own copies keep their place and take the column's value). A
  // spread cost ~8–9 µs an event on a page of mixed kinds (each document shape a new copy's hidden class), this ~2
  // (bench/README.md, "session 28"): a page of 100 events, ~0.7 ms less.
  const event = parse<AuditEvent>(row.doc);
  event.eventId = row.event_id;
  event.timeUtc = row.time_utc;
  event.kind = row.kind as AuditEvent['kind'];
  event.actor = row.actor;
  event.outcome = row.outcome as AuditOutcome;
  event.class = row.event_class as AuditClass;
  return event;
}

/**
 * Runs `work` once per chunk of keys per ID column (registration, device, group), so thousands of IDs stay under every
 * dialect's parameter limit.
 */
async function bySubject(ids: SubjectIds, work: (column: 'registration_id_key' | 'device_id_key' | 'group_id_key', keys: string[]) => Promise<void>): Promise<void> {
  const keysOf = (values: readonly string[]) => [...new Set(values.map(lower))].filter((key) => key !== '');
  for (const [column, values] of [
    ['registration_id_key', keysOf(ids.registrationIds)],
    ['device_id_key', keysOf(ids.deviceIds)],
    ['group_id_key', keysOf(ids.groupIds)],
  ] as const) {
    for (let i = 0; i < values.length; i += 500) await work(column, values.slice(i, i + 500));
  }
}

function linkOf(doc: string): HubDeviceLink {
  // Links backfilled by the migration carry `null` for a registration without a group.
  const { enrollmentGroupId, ...link } = parse<HubDeviceLink & { enrollmentGroupId?: string | null }>(doc);
  return typeof enrollmentGroupId === 'string' ? { ...link, enrollmentGroupId } : link;
}

function dataRequestOf(row: Database['data_requests']): DataRequestRecord {
  const doc = parse<Record<string, unknown>>(row.doc);
  return { requestId: String(doc.requestId), sortKey: row.sort_key, status: row.status, type: row.type, doc };
}
