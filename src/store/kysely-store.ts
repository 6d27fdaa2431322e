import { Kysely, Migrator, type SelectQueryBuilder, type Transaction } from 'kysely';
import type { StoredEnrollment, StoredEnrollmentGroup } from '../domain/enrollment.js';
import { certificateThumbprints } from '../domain/enrollment.js';
import type { Filter } from '../domain/query.js';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';
import type {
  AccessPolicyRecord,
  InstanceRecord,
  LinkedHubRecord,
  ListQuery,
  Page,
  Store,
  StoredOperation,
  StoredRegistration,
} from './store.js';

type Db = Kysely<Database> | Transaction<Database>;

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
const lower = (value: string | undefined): string => (value ?? '').toLowerCase();

export class KyselyStore implements Store {
  readonly #db: Db;
  readonly #root: Kysely<Database> | undefined;

  constructor(db: Kysely<Database>, transaction?: Transaction<Database>) {
    this.#db = transaction ?? db;
    this.#root = transaction === undefined ? db : undefined;
  }

  /** Applies every pending migration; throws with the failing migration's name. */
  static async migrate(db: Kysely<Database>): Promise<void> {
    const migrator = new Migrator({ db, provider: migrationProvider });
    const { error, results } = await migrator.migrateToLatest();
    if (error !== undefined) {
      const failed = results?.find((result) => result.status === 'Error')?.migrationName ?? 'unknown';
      throw new Error(`database migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  async transaction<T>(work: (store: Store) => Promise<T>): Promise<T> {
    // Already inside a transaction: the caller's work joins it.
    if (this.#root === undefined) return work(this);
    return this.#root.transaction().execute((trx) => work(new KyselyStore(this.#root as Kysely<Database>, trx)));
  }

  async close(): Promise<void> {
    await this.#root?.destroy();
  }

  // ---- instances

  async insertInstance(instance: InstanceRecord): Promise<void> {
    await this.#db
      .insertInto('instances')
      .values({ id: instance.id, id_scope_key: lower(instance.idScope), doc: JSON.stringify(instance) })
      .execute();
    await this.#writeHostNames(instance);
  }

  async updateInstance(instance: InstanceRecord): Promise<void> {
    await this.#db
      .updateTable('instances')
      .set({ id_scope_key: lower(instance.idScope), doc: JSON.stringify(instance) })
      .where('id', '=', instance.id)
      .execute();
    await this.#db.deleteFrom('instance_host_names').where('instance_id', '=', instance.id).execute();
    await this.#writeHostNames(instance);
  }

  async #writeHostNames(instance: InstanceRecord): Promise<void> {
    if (instance.serviceHostNames.length === 0) return;
    await this.#db
      .insertInto('instance_host_names')
      .values(instance.serviceHostNames.map((name) => ({ host_name_key: lower(name), instance_id: instance.id })))
      .execute();
  }

  async getInstance(id: string): Promise<InstanceRecord | undefined> {
    const row = await this.#db.selectFrom('instances').select('doc').where('id', '=', id).executeTakeFirst();
    return row === undefined ? undefined : parse<InstanceRecord>(row.doc);
  }

  async findInstanceByIdScope(idScope: string): Promise<InstanceRecord | undefined> {
    const row = await this.#db.selectFrom('instances').select('doc').where('id_scope_key', '=', lower(idScope)).executeTakeFirst();
    return row === undefined ? undefined : parse<InstanceRecord>(row.doc);
  }

  async findInstanceByHostName(hostName: string): Promise<InstanceRecord | undefined> {
    const row = await this.#db
      .selectFrom('instance_host_names')
      .innerJoin('instances', 'instances.id', 'instance_host_names.instance_id')
      .select('instances.doc')
      .where('instance_host_names.host_name_key', '=', lower(hostName))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<InstanceRecord>(row.doc);
  }

  async listInstances(): Promise<InstanceRecord[]> {
    const rows = await this.#db.selectFrom('instances').select('doc').orderBy('id').execute();
    return rows.map((row) => parse<InstanceRecord>(row.doc));
  }

  async deleteInstance(id: string): Promise<boolean> {
    for (const table of [
      'instance_host_names',
      'access_policies',
      'linked_hubs',
      'enrollments',
      'enrollment_groups',
      'enrollment_certificates',
      'registrations',
      'operations',
    ] as const) {
      await this.#db.deleteFrom(table).where('instance_id', '=', id).execute();
    }
    const result = await this.#db.deleteFrom('instances').where('id', '=', id).executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  // ---- access policies and linked hubs share one shape: (instance, lower-cased name) -> document

  async listAccessPolicies(instanceId: string): Promise<AccessPolicyRecord[]> {
    return this.#listNamed<AccessPolicyRecord>('access_policies', instanceId);
  }
  async getAccessPolicy(instanceId: string, keyName: string): Promise<AccessPolicyRecord | undefined> {
    return this.#getNamed<AccessPolicyRecord>('access_policies', instanceId, keyName);
  }
  async putAccessPolicy(instanceId: string, policy: AccessPolicyRecord): Promise<void> {
    await this.#putNamed('access_policies', instanceId, policy.keyName, policy);
  }
  async deleteAccessPolicy(instanceId: string, keyName: string): Promise<boolean> {
    return this.#deleteNamed('access_policies', instanceId, keyName);
  }
  async listLinkedHubs(instanceId: string): Promise<LinkedHubRecord[]> {
    return this.#listNamed<LinkedHubRecord>('linked_hubs', instanceId);
  }
  async getLinkedHub(instanceId: string, name: string): Promise<LinkedHubRecord | undefined> {
    return this.#getNamed<LinkedHubRecord>('linked_hubs', instanceId, name);
  }
  async putLinkedHub(instanceId: string, hub: LinkedHubRecord): Promise<void> {
    await this.#putNamed('linked_hubs', instanceId, hub.name, hub);
  }
  async deleteLinkedHub(instanceId: string, name: string): Promise<boolean> {
    return this.#deleteNamed('linked_hubs', instanceId, name);
  }

  async #listNamed<T>(table: 'access_policies' | 'linked_hubs', instanceId: string): Promise<T[]> {
    const rows = await this.#db.selectFrom(table).select('doc').where('instance_id', '=', instanceId).orderBy('name_key').execute();
    return rows.map((row) => parse<T>(row.doc));
  }
  async #getNamed<T>(table: 'access_policies' | 'linked_hubs', instanceId: string, name: string): Promise<T | undefined> {
    const row = await this.#db
      .selectFrom(table)
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('name_key', '=', lower(name))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<T>(row.doc);
  }
  async #putNamed(table: 'access_policies' | 'linked_hubs', instanceId: string, name: string, doc: object): Promise<void> {
    const text = JSON.stringify(doc);
    await this.#db
      .insertInto(table)
      .values({ instance_id: instanceId, name_key: lower(name), doc: text })
      .onConflict((oc) => oc.columns(['instance_id', 'name_key']).doUpdateSet({ doc: text }))
      .execute();
  }
  async #deleteNamed(table: 'access_policies' | 'linked_hubs', instanceId: string, name: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom(table)
      .where('instance_id', '=', instanceId)
      .where('name_key', '=', lower(name))
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  // ---- enrollments

  async getEnrollment(instanceId: string, registrationId: string): Promise<StoredEnrollment | undefined> {
    const row = await this.#db
      .selectFrom('enrollments')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('registration_id_key', '=', lower(registrationId))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<StoredEnrollment>(row.doc);
  }

  async putEnrollment(instanceId: string, enrollment: StoredEnrollment): Promise<void> {
    const key = lower(enrollment.registrationId);
    const columns = {
      device_id_key: lower(enrollment.deviceId ?? enrollment.registrationId),
      provisioning_status: enrollment.provisioningStatus,
      attestation_type: enrollment.attestation.type.toLowerCase(),
      doc: JSON.stringify(enrollment),
    };
    await this.#db
      .insertInto('enrollments')
      .values({ instance_id: instanceId, registration_id_key: key, ...columns })
      .onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doUpdateSet(columns))
      .execute();
    await this.#writeCertificates(instanceId, 'individual', key, certificateThumbprints(enrollment.attestation));
  }

  async deleteEnrollment(instanceId: string, registrationId: string): Promise<boolean> {
    const key = lower(registrationId);
    await this.#writeCertificates(instanceId, 'individual', key, []);
    const result = await this.#db
      .deleteFrom('enrollments')
      .where('instance_id', '=', instanceId)
      .where('registration_id_key', '=', key)
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  async queryEnrollments(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollment>> {
    return this.#page<StoredEnrollment>('enrollments', instanceId, query);
  }

  // ---- enrollment groups

  async getEnrollmentGroup(instanceId: string, groupId: string): Promise<StoredEnrollmentGroup | undefined> {
    const row = await this.#db
      .selectFrom('enrollment_groups')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('group_id_key', '=', lower(groupId))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<StoredEnrollmentGroup>(row.doc);
  }

  async putEnrollmentGroup(instanceId: string, group: StoredEnrollmentGroup): Promise<void> {
    const key = lower(group.enrollmentGroupId);
    const columns = {
      provisioning_status: group.provisioningStatus,
      attestation_type: group.attestation.type.toLowerCase(),
      doc: JSON.stringify(group),
    };
    await this.#db
      .insertInto('enrollment_groups')
      .values({ instance_id: instanceId, group_id_key: key, ...columns })
      .onConflict((oc) => oc.columns(['instance_id', 'group_id_key']).doUpdateSet(columns))
      .execute();
    await this.#writeCertificates(instanceId, 'group', key, certificateThumbprints(group.attestation));
  }

  async deleteEnrollmentGroup(instanceId: string, groupId: string): Promise<boolean> {
    const key = lower(groupId);
    await this.#writeCertificates(instanceId, 'group', key, []);
    const result = await this.#db
      .deleteFrom('enrollment_groups')
      .where('instance_id', '=', instanceId)
      .where('group_id_key', '=', key)
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
  }

  async queryEnrollmentGroups(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollmentGroup>> {
    return this.#page<StoredEnrollmentGroup>('enrollment_groups', instanceId, query);
  }

  async #writeCertificates(instanceId: string, kind: 'individual' | 'group', key: string, thumbprints: string[]): Promise<void> {
    await this.#db
      .deleteFrom('enrollment_certificates')
      .where('instance_id', '=', instanceId)
      .where('owner_kind', '=', kind)
      .where('owner_key', '=', key)
      .execute();
    if (thumbprints.length === 0) return;
    // Stored upper-case like findCertificateOwner looks them up, so the index never depends on the writer's casing.
    await this.#db
      .insertInto('enrollment_certificates')
      .values([...new Set(thumbprints.map((thumbprint) => thumbprint.toUpperCase()))].map((sha256_thumbprint) => ({ instance_id: instanceId, sha256_thumbprint, owner_kind: kind, owner_key: key })))
      .execute();
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
    const row = await this.#db
      .selectFrom('registrations')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('registration_id_key', '=', lower(registrationId))
      .executeTakeFirst();
    return row === undefined ? undefined : parse<StoredRegistration>(row.doc);
  }

  async putRegistration(instanceId: string, registration: StoredRegistration): Promise<void> {
    const columns = {
      device_id_key: lower(registration.deviceId),
      group_id_key: lower(registration.enrollmentGroupId),
      status: registration.status,
      assigned_hub_key: lower(registration.assignedHub),
      doc: JSON.stringify(registration),
    };
    await this.#db
      .insertInto('registrations')
      .values({ instance_id: instanceId, registration_id_key: lower(registration.registrationId), ...columns })
      .onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doUpdateSet(columns))
      .execute();
  }

  async deleteRegistration(instanceId: string, registrationId: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom('registrations')
      .where('instance_id', '=', instanceId)
      .where('registration_id_key', '=', lower(registrationId))
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
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
    const columns = { updated_at: operation.lastUpdatedDateTimeUtc, doc: JSON.stringify(operation) };
    await this.#db
      .insertInto('operations')
      .values({ instance_id: instanceId, operation_id: operation.operationId, registration_id_key: lower(operation.registrationId), ...columns })
      .onConflict((oc) => oc.columns(['instance_id', 'operation_id']).doUpdateSet(columns))
      .execute();
  }

  async getOperation(instanceId: string, operationId: string): Promise<StoredOperation | undefined> {
    const row = await this.#db
      .selectFrom('operations')
      .select('doc')
      .where('instance_id', '=', instanceId)
      .where('operation_id', '=', operationId)
      .executeTakeFirst();
    return row === undefined ? undefined : parse<StoredOperation>(row.doc);
  }

  async deleteOperationsBefore(cutoffUtc: string): Promise<number> {
    const result = await this.#db.deleteFrom('operations').where('updated_at', '<', cutoffUtc).executeTakeFirst();
    return Number(result.numDeletedRows);
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
    const rows = await builder
      .orderBy(keyColumn as never)
      .limit(query.limit + 1)
      .execute();
    const more = rows.length > query.limit;
    const pageRows = more ? rows.slice(0, query.limit) : rows;
    return {
      items: pageRows.map((row) => parse<T>(row.doc)),
      nextKey: more ? pageRows[pageRows.length - 1]?.k : undefined,
    };
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
