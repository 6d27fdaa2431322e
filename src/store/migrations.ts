import { sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { auditClassOf } from '../domain/audit-class.js';
import type { DialectCapabilities } from './dialects/dialect.js';

/**
 * Migrations, in order. Only portable DDL (SQLite and PostgreSQL): text columns, composite primary keys, indexes.
 * A migration, once released, never changes; add a new one.
 */
const migrations: Record<string, Migration> = {
  '0001_core': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('instances')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('id_scope_key', 'text', (c) => c.notNull().unique())
        .addColumn('doc', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('instance_host_names')
        .addColumn('host_name_key', 'text', (c) => c.primaryKey())
        .addColumn('instance_id', 'text', (c) => c.notNull())
        .execute();
      for (const table of ['access_policies', 'linked_hubs']) {
        await db.schema
          .createTable(table)
          .addColumn('instance_id', 'text', (c) => c.notNull())
          .addColumn('name_key', 'text', (c) => c.notNull())
          .addColumn('doc', 'text', (c) => c.notNull())
          .addPrimaryKeyConstraint(`${table}_pk`, ['instance_id', 'name_key'])
          .execute();
      }
      await db.schema
        .createTable('enrollments')
        .addColumn('instance_id', 'text', (c) => c.notNull())
        .addColumn('registration_id_key', 'text', (c) => c.notNull())
        .addColumn('device_id_key', 'text', (c) => c.notNull())
        .addColumn('provisioning_status', 'text', (c) => c.notNull())
        .addColumn('attestation_type', 'text', (c) => c.notNull())
        .addColumn('doc', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('enrollments_pk', ['instance_id', 'registration_id_key'])
        .execute();
      await db.schema.createIndex('enrollments_device').on('enrollments').columns(['instance_id', 'device_id_key']).execute();
      await db.schema
        .createTable('enrollment_groups')
        .addColumn('instance_id', 'text', (c) => c.notNull())
        .addColumn('group_id_key', 'text', (c) => c.notNull())
        .addColumn('provisioning_status', 'text', (c) => c.notNull())
        .addColumn('attestation_type', 'text', (c) => c.notNull())
        .addColumn('doc', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('enrollment_groups_pk', ['instance_id', 'group_id_key'])
        .execute();
      await db.schema
        .createIndex('enrollment_groups_attestation')
        .on('enrollment_groups')
        .columns(['instance_id', 'attestation_type'])
        .execute();
      await db.schema
        .createTable('enrollment_certificates')
        .addColumn('instance_id', 'text', (c) => c.notNull())
        .addColumn('sha256_thumbprint', 'text', (c) => c.notNull())
        .addColumn('owner_kind', 'text', (c) => c.notNull())
        .addColumn('owner_key', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('enrollment_certificates_pk', ['instance_id', 'sha256_thumbprint'])
        .execute();
      await db.schema
        .createIndex('enrollment_certificates_owner')
        .on('enrollment_certificates')
        .columns(['instance_id', 'owner_kind', 'owner_key'])
        .execute();
      await db.schema
        .createTable('registrations')
        .addColumn('instance_id', 'text', (c) => c.notNull())
        .addColumn('registration_id_key', 'text', (c) => c.notNull())
        .addColumn('device_id_key', 'text', (c) => c.notNull())
        .addColumn('group_id_key', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('assigned_hub_key', 'text', (c) => c.notNull())
        .addColumn('doc', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('registrations_pk', ['instance_id', 'registration_id_key'])
        .execute();
      await db.schema
        .createIndex('registrations_group')
        .on('registrations')
        .columns(['instance_id', 'group_id_key', 'registration_id_key'])
        .execute();
      await db.schema.createIndex('registrations_device').on('registrations').columns(['instance_id', 'device_id_key']).execute();
    },
  },
};

const operations: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('operations')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('operation_id', 'text', (c) => c.notNull())
      .addColumn('registration_id_key', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('operations_pk', ['instance_id', 'operation_id'])
      .execute();
    await db.schema.createIndex('operations_registration').on('operations').columns(['instance_id', 'registration_id_key']).execute();
  },
};
migrations['0003_operations'] = operations;

const builtInHubs: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('built_in_hubs')
      .addColumn('name_key', 'text', (c) => c.primaryKey())
      .addColumn('doc', 'text', (c) => c.notNull())
      .execute();
    // The primary key (hub, device) is also the keyset-paging order of the device query.
    await db.schema
      .createTable('hub_devices')
      .addColumn('hub_key', 'text', (c) => c.notNull())
      .addColumn('device_id_key', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('revision', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('hub_devices_pk', ['hub_key', 'device_id_key'])
      .execute();
  },
};
migrations['0002_builtin_hubs'] = builtInHubs;

const caCertificates: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('ca_certificates')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('name_key', 'text', (c) => c.notNull())
      .addColumn('sha256_thumbprint', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('ca_certificates_pk', ['instance_id', 'name_key'])
      .execute();
    await db.schema
      .createIndex('ca_certificates_thumbprint')
      .on('ca_certificates')
      .columns(['instance_id', 'sha256_thumbprint'])
      .execute();
  },
};
migrations['0004_ca_certificates'] = caCertificates;

/** Customer data: the system log, data requests (jobs + receipts) and the lifecycle-event outbox. */
const customerData: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('audit_events')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('event_id', 'text', (c) => c.notNull())
      .addColumn('time_utc', 'text', (c) => c.notNull())
      .addColumn('kind', 'text', (c) => c.notNull())
      .addColumn('actor', 'text', (c) => c.notNull())
      .addColumn('outcome', 'text', (c) => c.notNull())
      .addColumn('registration_id_key', 'text', (c) => c.notNull())
      .addColumn('device_id_key', 'text', (c) => c.notNull())
      .addColumn('group_id_key', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('audit_events_pk', ['instance_id', 'event_id'])
      .execute();
    for (const column of ['time_utc', 'registration_id_key', 'device_id_key', 'group_id_key'] as const) {
      await db.schema.createIndex(`audit_events_${column}`).on('audit_events').columns(['instance_id', column]).execute();
    }
    await db.schema
      .createTable('data_requests')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('request_id_key', 'text', (c) => c.notNull())
      .addColumn('sort_key', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('type', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('data_requests_pk', ['instance_id', 'request_id_key'])
      .execute();
    await db.schema.createIndex('data_requests_sort').on('data_requests').columns(['instance_id', 'sort_key']).execute();
    await db.schema.createIndex('data_requests_status').on('data_requests').columns(['status']).execute();
    await db.schema
      .createTable('event_outbox')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('event_id', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('event_outbox_pk', ['instance_id', 'event_id'])
      .execute();
  },
};
migrations['0005_customer_data'] = customerData;

/** What a registration is about to write to a hub, recorded durably before the write (services/registration-intents.ts). */
const registrationIntents: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('registration_intents')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('operation_id', 'text', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('registration_intents_pk', ['instance_id', 'operation_id'])
      .execute();
    await db.schema.createIndex('registration_intents_created').on('registration_intents').columns(['created_at']).execute();
  },
};
migrations['0006_registration_intents'] = registrationIntents;

/**
 * Erase fences (docs/customer-data.md "The erase fence"): while an erase runs, every write about its subject is
 * refused. The fence lives here, not in process memory, so it holds on every node that shares the store.
 */
const eraseFences: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('erase_fences')
      .addColumn('instance_id', 'text', (c) => c.notNull())
      .addColumn('subject_kind', 'text', (c) => c.notNull())
      .addColumn('id_key', 'text', (c) => c.notNull())
      .addColumn('request_id_key', 'text', (c) => c.notNull())
      .addColumn('doc', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('erase_fences_pk', ['instance_id', 'subject_kind', 'id_key', 'request_id_key'])
      .execute();
    await db.schema.createIndex('erase_fences_request').on('erase_fences').columns(['instance_id', 'request_id_key']).execute();
  },
};
migrations['0007_erase_fences'] = eraseFences;

/**
 * System-log classes (docs/customer-data.md "The system log"): each event is an access or a change, in a column so
 * the log filters on it, and a read that found nothing is `notFound`, not a failure. Events already stored are
 * classified by the same rule as new ones (src/domain/audit-class.ts, by kind and operation name), in pages, in the
 * columns only: the store reads class and outcome from the columns. The values are fixed ASCII words, so the column
 * needs no `COLLATE "C"` on PostgreSQL.
 */
const auditEventClasses: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.alterTable('audit_events').addColumn('event_class', 'text', (c) => c.notNull().defaultTo('change')).execute();
    let after: { instanceId: string; eventId: string } | undefined;
    for (;;) {
      const page = await sql<{ instance_id: string; event_id: string; kind: string; outcome: string; doc: string }>`
        select instance_id, event_id, kind, outcome, doc from audit_events
        ${after === undefined ? sql`` : sql`where instance_id > ${after.instanceId} or (instance_id = ${after.instanceId} and event_id > ${after.eventId})`}
        order by instance_id, event_id limit ${MIGRATION_PAGE}`.execute(db);
      const last = page.rows.at(-1);
      if (last === undefined) break;
      after = { instanceId: last.instance_id, eventId: last.event_id };
      const updates = new Map<string, { instanceId: string; eventClass: string; outcome: string; eventIds: string[] }>();
      for (const row of page.rows) {
        const doc = JSON.parse(row.doc) as { operation?: unknown; errorCode?: unknown };
        const eventClass = auditClassOf({ kind: row.kind, operation: typeof doc.operation === 'string' ? doc.operation : '' });
        const notFound = eventClass === 'access' && row.outcome === 'failure' && typeof doc.errorCode === 'number' && Math.floor(doc.errorCode / 1000) === 404;
        const outcome = notFound ? 'notFound' : row.outcome;
        if (eventClass === 'change' && outcome === row.outcome) continue;
        const key = `${row.instance_id}\n${eventClass}\n${outcome}`;
        const update = updates.get(key) ?? { instanceId: row.instance_id, eventClass, outcome, eventIds: [] };
        update.eventIds.push(row.event_id);
        updates.set(key, update);
      }
      for (const update of updates.values()) {
        await sql`update audit_events set event_class = ${update.eventClass}, outcome = ${update.outcome}
          where instance_id = ${update.instanceId} and event_id in (${sql.join(update.eventIds)})`.execute(db);
      }
    }
    await db.schema.createIndex('audit_events_class').on('audit_events').columns(['instance_id', 'event_class', 'event_id']).execute();
  },
};
migrations['0015_audit_event_classes'] = auditEventClasses;
/** Rows per page when a migration rewrites stored rows (bounded memory and statement size on any log length). */
const MIGRATION_PAGE = 500;

/** Tables whose etag-guarded writes compare-and-swap on an `etag` column (the document's etag, pulled out). */
const ETAG_TABLES = ['enrollments', 'enrollment_groups', 'registrations', 'ca_certificates'] as const;

/**
 * Several nodes on one database (issue 11): etag columns for compare-and-swap writes, instance names unique in the
 * schema, shared rate-limit buckets, leases (data-request jobs, lifecycle-event delivery) and change counters that
 * validate node caches. On PostgreSQL, every text column compares byte-wise (`COLLATE "C"`), as SQLite's do, so key
 * order and prefix ranges never depend on the database's locale.
 */
function storeForNodes(capabilities: DialectCapabilities): Migration {
  const postgres = capabilities.name === 'postgres';
  // The one dialect difference in DDL: reading a JSON member of a text document.
  const member = (name: string) => (postgres ? sql.raw(`(doc::jsonb ->> '${name}')`) : sql.raw(`json_extract(doc, '$.${name}')`));
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      for (const table of ETAG_TABLES) {
        await db.schema.alterTable(table).addColumn('etag', 'text', (c) => c.notNull().defaultTo('')).execute();
        await sql`update ${sql.table(table)} set etag = coalesce(${member('etag')}, '')`.execute(db);
      }
      await db.schema.alterTable('instances').addColumn('name_key', 'text', (c) => c.notNull().defaultTo('')).execute();
      await sql`update instances set name_key = lower(coalesce(${member('name')}, id))`.execute(db);
      await db.schema.createIndex('instances_name').on('instances').column('name_key').unique().execute();
      await db.schema
        .createTable('rate_limits')
        .addColumn('bucket_key', 'text', (c) => c.primaryKey())
        .addColumn('tokens', 'double precision', (c) => c.notNull())
        .addColumn('at_ms', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('leases')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('until_ms', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('change_counters')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('version', 'bigint', (c) => c.notNull())
        .execute();
      if (postgres) {
        // Last, so the columns added above are covered too.
        const columns = await sql<{ table_name: string; column_name: string }>`
          select table_name, column_name from information_schema.columns
          where table_schema = current_schema() and data_type = 'text' and table_name not like 'kysely_%'`.execute(db);
        for (const { table_name, column_name } of columns.rows) {
          await sql`alter table ${sql.table(table_name)} alter column ${sql.ref(column_name)} type text collate "C"`.execute(db);
        }
      }
    },
  };
}

/**
 * Customer data found by subject, not by scanning (issue 10; src/services/customer-data/README.md):
 * - `hub_device_links`: each hub device provisiond created or assigned for a registration (instance, registration ID,
 *   group, hub, device ID, when), kept apart from the records so an erase still finds the device after the enrollment,
 *   the record and the log are gone. Backfilled from the registration records that name a hub and a device.
 * - `data_requests.subject_key` and the outbox's registration/device/group key columns, indexed, so an erase looks up
 *   the earlier requests and undelivered events about its subject in O(subject), not by paging through the tables.
 */
function customerDataLinks(capabilities: DialectCapabilities): Migration {
  const postgres = capabilities.name === 'postgres';
  // Key columns compare byte-wise on PostgreSQL, as every text column since 0011 does.
  const text = postgres ? sql`text collate "C"` : sql`text`;
  const member = (path: string[]) =>
    postgres ? sql.raw(`(doc::jsonb #>> '{${path.join(',')}}')`) : sql.raw(`json_extract(doc, '$.${path.join('.')}')`);
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('hub_device_links')
        .addColumn('instance_id', text, (c) => c.notNull())
        .addColumn('registration_id_key', text, (c) => c.notNull())
        .addColumn('hub_key', text, (c) => c.notNull())
        .addColumn('device_id_key', text, (c) => c.notNull())
        .addColumn('group_id_key', text, (c) => c.notNull())
        .addColumn('doc', text, (c) => c.notNull())
        .addPrimaryKeyConstraint('hub_device_links_pk', ['instance_id', 'registration_id_key', 'hub_key', 'device_id_key'])
        .execute();
      await db.schema.createIndex('hub_device_links_device').on('hub_device_links').columns(['instance_id', 'device_id_key']).execute();
      await db.schema.createIndex('hub_device_links_group').on('hub_device_links').columns(['instance_id', 'group_id_key']).execute();
      const linkDoc = postgres
        ? sql`json_build_object('registrationId', ${member(['registrationId'])}, 'enrollmentGroupId', ${member(['enrollmentGroupId'])}, 'hub', ${member(['assignedHub'])}, 'deviceId', ${member(['deviceId'])}, 'linkedDateTimeUtc', ${member(['lastUpdatedDateTimeUtc'])})::text`
        : sql`json_object('registrationId', ${member(['registrationId'])}, 'enrollmentGroupId', ${member(['enrollmentGroupId'])}, 'hub', ${member(['assignedHub'])}, 'deviceId', ${member(['deviceId'])}, 'linkedDateTimeUtc', ${member(['lastUpdatedDateTimeUtc'])})`;
      await sql`insert into hub_device_links (instance_id, registration_id_key, hub_key, device_id_key, group_id_key, doc)
        select instance_id, registration_id_key, assigned_hub_key, device_id_key, group_id_key, ${linkDoc}
        from registrations where assigned_hub_key <> '' and device_id_key <> ''`.execute(db);

      await db.schema.alterTable('data_requests').addColumn('subject_key', text, (c) => c.notNull().defaultTo('')).execute();
      await sql`update data_requests set subject_key = lower(coalesce(${member(['subject', 'id'])}, ''))`.execute(db);
      await db.schema.createIndex('data_requests_subject').on('data_requests').columns(['instance_id', 'subject_key']).execute();

      for (const [column, field] of [
        ['registration_id_key', 'registrationId'],
        ['device_id_key', 'deviceId'],
        ['group_id_key', 'enrollmentGroupId'],
      ] as const) {
        await db.schema.alterTable('event_outbox').addColumn(column, text, (c) => c.notNull().defaultTo('')).execute();
        await sql`update event_outbox set ${sql.ref(column)} = lower(coalesce(${member(['data', field])}, ''))`.execute(db);
        await db.schema.createIndex(`event_outbox_${column}`).on('event_outbox').columns(['instance_id', column]).execute();
      }
    },
  };
}

/**
 * Certificate issuance from a CSR (issue 14, docs/certificate-issuance.md): the instance's issuing CA (one row per
 * instance, shared by every node), its credential policies, and every certificate it issued (serial, thumbprint,
 * validity, registration ID; revoked ones stay for the CRL without the registration ID).
 */
function certificateIssuance(capabilities: DialectCapabilities): Migration {
  // Key columns compare byte-wise on PostgreSQL, as 0011 made every other text column.
  const text = capabilities.name === 'postgres' ? sql`text collate "C"` : sql`text`;
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('issuing_cas')
        .addColumn('instance_id', text, (c) => c.primaryKey())
        .addColumn('doc', text, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('credential_policies')
        .addColumn('instance_id', text, (c) => c.notNull())
        .addColumn('name_key', text, (c) => c.notNull())
        .addColumn('doc', text, (c) => c.notNull())
        .addPrimaryKeyConstraint('credential_policies_pk', ['instance_id', 'name_key'])
        .execute();
      await db.schema
        .createTable('issued_certificates')
        .addColumn('instance_id', text, (c) => c.notNull())
        .addColumn('serial', text, (c) => c.notNull())
        .addColumn('registration_id_key', text, (c) => c.notNull())
        .addColumn('sha256_thumbprint', text, (c) => c.notNull())
        .addColumn('revoked', text, (c) => c.notNull())
        .addColumn('doc', text, (c) => c.notNull())
        .addPrimaryKeyConstraint('issued_certificates_pk', ['instance_id', 'serial'])
        .execute();
      await db.schema.createIndex('issued_certificates_registration').on('issued_certificates').columns(['instance_id', 'registration_id_key']).execute();
      await db.schema.createIndex('issued_certificates_thumbprint').on('issued_certificates').columns(['instance_id', 'sha256_thumbprint']).execute();
    },
  };
}

/**
 * Indexes for the scale paths (issue 12): the operations purge finds the oldest operations by `updated_at` instead of
 * reading the whole table.
 */
const scalePaths: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.createIndex('operations_updated').on('operations').columns(['updated_at']).execute();
  },
};
migrations['0013_scale_paths'] = scalePaths;

/**
 * Scale paths at a million rows (issue 12, P5): the indexes that find a device's enrollments and records, and a
 * registration's operations, also hold the key those lists are ordered by, so each lookup is one index range already
 * in order. With only (instance, device) or (instance, registration), the planner (SQLite without statistics, which
 * provisiond never gathers) preferred walking the primary key in that order and testing every row: 1.2 s for a query
 * by device ID and 1.7–2.7 s for an export's operations at a million rows. The wider entries cost no extra write per
 * registration (the same index entries, each longer by the key: a registration ID or an operation ID, ~20–40 bytes).
 * And the log's indexes, below.
 */
const scaleIndexesInListOrder: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    for (const [index, table, columns] of [
      ['enrollments_device', 'enrollments', ['instance_id', 'device_id_key', 'registration_id_key']],
      ['registrations_device', 'registrations', ['instance_id', 'device_id_key', 'registration_id_key']],
      ['operations_registration', 'operations', ['instance_id', 'registration_id_key', 'operation_id']],
    ] as const) {
      await db.schema.dropIndex(index).execute();
      await db.schema.createIndex(index).on(table).columns([...columns]).execute();
    }
    // The log's indexes, written for every event (a registration writes two, a bulk call one per item): time ranges
    // and the retention purge search by event ID now (event IDs begin with their time), so the time index goes; the
    // subject indexes hold only events that name such an ID (a bulk item names a registration ID only, a list query
    // none), so an event costs the table, its primary key, the class index and one or two subject entries instead
    // of six index entries.
    await db.schema.dropIndex('audit_events_time_utc').execute();
    for (const column of ['registration_id_key', 'device_id_key', 'group_id_key'] as const) {
      await db.schema.dropIndex(`audit_events_${column}`).execute();
      await db.schema.createIndex(`audit_events_${column}`).on('audit_events').columns(['instance_id', column]).where(sql.ref(column), '<>', '').execute();
    }
  },
};
migrations['0016_scale_indexes_in_list_order'] = scaleIndexesInListOrder;

/**
 * The log's failures (issue 12, P5), the system log page's most asked filter: a page of them looked at the 5,000 events
 * of its window one by one, each read from the table for its outcome (one day's failures at 4M events: 64 ms at p50
 * at load 3–8, 0.4 s from cold pages). A partial index holds the failed events only (~1 % of the log), so a failure costs
 * one more index entry and every other event none, and a page of failures reads just them.
 */
const logFailuresIndex: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema.createIndex('audit_events_failures').on('audit_events').columns(['instance_id', 'event_id']).where(sql.ref('outcome'), '=', sql.lit('failure')).execute();
  },
};
migrations['0017_log_failures_index'] = logFailuresIndex;

/**
 * Rate-limit buckets (several nodes) are keyed by their limiter's name instead of its rate (services/throttle.ts
 * `bucketKey`), so an erase finds a device's poll budget by its registration ID alone, whatever the rate was when the
 * bucket was written, and deletes it with the device's other data. The buckets of the old keys go: the next take
 * starts a full bucket, as after a restart of a single node (and nothing else holds the device IDs they named).
 */
const rateBucketsByLimiter: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await sql`delete from rate_limits`.execute(db);
  },
};
migrations['0018_rate_buckets_by_limiter'] = rateBucketsByLimiter;

/** The migrations for one dialect (the list is the same; a migration may branch on a capability). */
export function migrationProvider(capabilities: DialectCapabilities): MigrationProvider {
  return {
    getMigrations: () =>
      Promise.resolve({
        ...migrations,
        '0011_store_for_nodes': storeForNodes(capabilities),
        '0012_customer_data_links': customerDataLinks(capabilities),
        '0014_certificate_issuance': certificateIssuance(capabilities),
      }),
  };
}
