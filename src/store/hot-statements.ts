import type BetterSqlite3 from 'better-sqlite3';
import { sql, type Compilable, type RawBuilder, type Kysely, type QueryResult, type RootOperationNode, type SelectQueryBuilder, type UnknownRow } from 'kysely';
import { CONFIG_COUNTER } from './config-cache.js';
import { sqliteConnectionOf } from './dialects/sqlite-direct.js';
import { inOwnTransaction } from './dialects/sqlite-shared-reads.js';
import type { Database } from './schema.js';
import { GROUPS_COUNTER_PREFIX } from './store.js';

/**
 * The statements a registration and a poll run, each built once through Kysely — still the one typed query path, and
 * the dialect's own compiler writes the SQL — and then executed as compiled SQL with fresh parameters. Building a
 * query through Kysely cost more than running it (issue 12: a point read 42.7 µs built vs 9.1 µs raw); everything
 * else in the store stays with the builder.
 *
 * On PostgreSQL execution goes through the Kysely executor of the store that runs it, so a statement inside a
 * transaction runs on that transaction's pool client. On SQLite it runs on the one connection directly when that is
 * safe without Kysely's mutex (see {@link runHot}: a statement outside a transaction never lands inside another
 * caller's open one), and through the executor otherwise. Either way the plugins (the metrics' statement timer) see
 * every execution. What is prepared once is the database's side:
 * better-sqlite3 keeps one prepared statement per SQL text (dialects/sqlite.ts), and on PostgreSQL each hot text
 * runs as a named prepared statement (dialects/postgres.ts asks {@link preparedStatementName}), parsed and planned
 * once per connection.
 */
export interface HotStatement {
  readonly sql: string;
  readonly query: RootOperationNode;
  /** Per bound parameter: the index of the argument it takes, or a constant the statement was built with. */
  readonly slots: ReadonlyArray<number | { readonly value: unknown }>;
  /**
   * A write whose outcome nobody reads: on PostgreSQL, inside a transaction, it may wait and travel with the
   * transaction's next statement (pg-round-trips.ts). Run it with {@link deferredWrite}, never for a row count.
   */
  readonly deferred: boolean;
}

/** Marks an argument's position while building; never sent (a marker left in a compiled statement is an error). */
const MARK = '\u0001provisiond-parameter:';
const parameter = (index: number): string => `${MARK}${index}`;

/** SQL text → the name of its prepared statement (PostgreSQL). Names are per connection; one text, one name. */
const names = new Map<string, string>();

/** The prepared-statement name of a hot statement's SQL text, or undefined for any other text. */
export function preparedStatementName(sql: string): string | undefined {
  return names.get(sql);
}

/** SQL texts of the deferred writes. */
const deferredTexts = new Set<string>();

/** True for the SQL text of a deferred write (see {@link HotStatement.deferred}). */
export function isDeferredWrite(sql: string): boolean {
  return deferredTexts.has(sql);
}

/**
 * Compiles `build` once. `build` receives `p`: `p(i)` stands for the i-th argument of {@link runHot}; every other
 * value in the query is a constant of the statement.
 */
export function compileHot(build: (p: (index: number) => string) => Compilable, options: { deferred?: boolean } = {}): HotStatement {
  const compiled = build(parameter).compile();
  const slots = compiled.parameters.map((value) => (typeof value === 'string' && value.startsWith(MARK) ? Number(value.slice(MARK.length)) : { value }));
  if (!names.has(compiled.sql)) names.set(compiled.sql, `provisiond_hot_${names.size + 1}`);
  const deferred = options.deferred === true;
  if (deferred) deferredTexts.add(compiled.sql);
  return { sql: compiled.sql, query: compiled.query, slots, deferred };
}

/**
 * PostgreSQL: the erase fence standing for device `p(1)` in the instance that links hub `p(0)` — the `fence` part of
 * the built-in hub's writes that check it in the same statement (`insertDeviceUnlessFenced`, `replaceDeviceUnlessFenced`).
 */
function hubDeviceFence(p: (index: number) => string) {
  return sql`select "erase_fences"."doc" from "linked_hubs" cross join "erase_fences"
    where "linked_hubs"."name_key" = ${p(0)} and "erase_fences"."instance_id" = "linked_hubs"."instance_id"
      and "erase_fences"."subject_kind" = 'deviceId' and "erase_fences"."id_key" = ${p(1)}
    limit 1`;
}

/**
 * Statements made on first use and kept, one per key (e.g. per row count: bulk-statements.ts, subject-statements.ts):
 * statements whose shape varies with their input are still compiled once per shape, not per call.
 */
export abstract class StatementsCompiledOnce {
  protected readonly db: Kysely<Database>;
  readonly #compiled = new Map<string, HotStatement>();

  constructor(db: Kysely<Database>) {
    this.db = db;
  }

  protected once(key: string, build: () => HotStatement): HotStatement {
    let statement = this.#compiled.get(key);
    if (statement === undefined) this.#compiled.set(key, (statement = build()));
    return statement;
  }
}

/** Runs a compiled statement on `db` (the store's root or its transaction) with `args` in the marked positions. */
export function runHot<Row>(db: Kysely<Database>, statement: HotStatement, args: readonly unknown[]): Promise<QueryResult<Row>> {
  const parameters = bindHot(statement, args);
  const executor = db.getExecutor();
  const connection = directSqlite(db);
  // SQLite, directly on its one connection when that is safe without Kysely's connection mutex: inside a transaction,
  // for that transaction's own statements; outside one, when no transaction is open on the connection (the statement
  // runs whole before anything else can, as its own transaction or a read in the turn's shared one, exactly as it
  // would after waiting for the mutex).
  // While another caller's transaction is open, a statement outside it waits for the mutex on Kysely's path.
  if (connection !== undefined) {
    // No plugin (the metrics' statement timer is off by default): the result as it is, without a query ID and an async
    // turn per statement (a hot statement is a dozen per registration: bench/README.md "session 22, H1").
    if (executor.plugins.length === 0) {
      try {
        return Promise.resolve(runOnSqlite<Row>(connection, statement.sql, parameters));
      } catch (error) {
        return Promise.reject(error as Error);
      }
    }
    return runWithPlugins(executor, statement, () => runOnSqlite<Row>(connection, statement.sql, parameters));
  }
  const queryId = { queryId: '' };
  // The plugins' per-execution hook (Kysely calls it when it compiles a query; this one was compiled once).
  executor.transformQuery(statement.query, queryId);
  return executor.executeQuery<Row>({ sql: statement.sql, parameters, query: statement.query, queryId });
}

/** A compiled statement's parameters: `args` in the marked positions, the statement's constants elsewhere. */
export function bindHot(statement: HotStatement, args: readonly unknown[]): unknown[] {
  const parameters = new Array<unknown>(statement.slots.length);
  for (let i = 0; i < parameters.length; i += 1) {
    const slot = statement.slots[i];
    parameters[i] = typeof slot === 'number' ? args[slot] : slot?.value;
  }
  return parameters;
}

/** A direct statement seen by the plugins as Kysely would show it: transformQuery before, transformResult after. */
async function runWithPlugins<Row>(executor: ReturnType<Kysely<Database>['getExecutor']>, statement: HotStatement, run: () => QueryResult<Row>): Promise<QueryResult<Row>> {
  const queryId = { queryId: '' };
  // The plugins' per-execution hook (the metrics plugin starts its statement timer here); the text is already fixed.
  executor.transformQuery(statement.query, queryId);
  let result = run();
  for (const plugin of executor.plugins) result = (await plugin.transformResult({ queryId, result: result as QueryResult<UnknownRow> })) as QueryResult<Row>;
  return result;
}

/**
 * The SQLite connection under `db` when a statement may run on it directly (see {@link runHot}): `db` is a
 * transaction and the connection's transaction is open (its own: Kysely's mutex is held for it), or `db` is the root
 * and no transaction is open (the turn's shared read transaction counts as none: dialects/sqlite-shared-reads.ts).
 * Undefined on PostgreSQL and while another caller's transaction is open.
 */
export function directSqlite(db: Kysely<Database>): BetterSqlite3.Database | undefined {
  const connection = sqliteConnectionOf(db.getExecutor().adapter);
  return connection !== undefined && inOwnTransaction(connection) === db.isTransaction ? connection : undefined;
}

/** What Kysely's SQLite connection returns for a statement (a reader's rows; a writer's change count). */
function runOnSqlite<Row>(connection: BetterSqlite3.Database, text: string, parameters: unknown[]): QueryResult<Row> {
  // The dialect's prepare keeps one prepared statement per text (dialects/sqlite.ts).
  const prepared = connection.prepare(text);
  if (prepared.reader) return { rows: prepared.all(parameters) as Row[] };
  // No insert ID: no hot statement's caller reads one (the rows are keyed by their documents' IDs).
  return { numAffectedRows: BigInt(prepared.run(parameters).changes), rows: [] };
}

/** The first row's `doc`, parsed, or undefined. */
export async function hotDoc<T>(db: Kysely<Database>, statement: HotStatement, args: readonly unknown[]): Promise<T | undefined> {
  const row = (await runHot<{ doc: string }>(db, statement, args)).rows[0];
  return row === undefined ? undefined : (JSON.parse(row.doc) as T);
}

/** How many rows a write changed (an upsert's conflict branch and a guarded update count when they wrote). */
export async function hotWrite(db: Kysely<Database>, statement: HotStatement, args: readonly unknown[]): Promise<number> {
  // A deferred write inside a PostgreSQL transaction has not run yet when this returns: it has no count to give.
  if (statement.deferred) throw new Error('a deferred write has no row count: run it with deferredWrite');
  return Number((await runHot(db, statement, args)).numAffectedRows ?? 0n);
}

/**
 * Runs a deferred write. Inside a PostgreSQL transaction it may only be queued (pg-round-trips.ts): its failure then
 * fails the transaction's next statement or its COMMIT, and the transaction with it.
 */
export async function deferredWrite(db: Kysely<Database>, statement: HotStatement, args: readonly unknown[]): Promise<void> {
  await runHot(db, statement, args);
}

/**
 * A value no key column ever holds: keys are stored lower-cased, so an upper-case value matches nothing. Bound for
 * the subject kinds a fence probe does not name, so one compiled statement serves every probe of one ID per kind.
 */
export const NO_KEY = 'NO-KEY';

/** The registration's closing writes: nothing reads their row counts, so on PostgreSQL they travel with the COMMIT. */
const DEFERRED = { deferred: true } as const;

/** The store's hot statements, compiled with the store's Kysely instance (its dialect and plugins). */
export function storeStatements(db: Kysely<Database>) {
  return {
    /** A fence check and the read it guards, one statement each (below). */
    fencedReads: fencedReadStatements(db),
    /** Arguments: bucket key, rate per second, burst, now (ms), how many tokens. */
    takeRateToken: compileHot((p) => rateTokenTake(db, p(0), p(1), p(2), p(3), p(4))),
    instanceById: compileHot((p) => db.selectFrom('instances').select('doc').where('id', '=', p(0))),
    instanceByIdScope: compileHot((p) => db.selectFrom('instances').select('doc').where('id_scope_key', '=', p(0))),
    /** Every service-API request's instance, by the host name its token names (and by its Host header). */
    instanceByHostName: compileHot((p) =>
      db.selectFrom('instance_host_names').innerJoin('instances', 'instances.id', 'instance_host_names.instance_id').select('instances.doc').where('instance_host_names.host_name_key', '=', p(0)),
    ),
    /** Every authenticated service-API request's policy (instance, lower-cased key name). */
    accessPolicy: compileHot((p) => db.selectFrom('access_policies').select('doc').where('instance_id', '=', p(0)).where('name_key', '=', p(1))),
    enrollment: compileHot((p) => db.selectFrom('enrollments').select('doc').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1))),
    enrollmentGroup: compileHot((p) => db.selectFrom('enrollment_groups').select('doc').where('instance_id', '=', p(0)).where('group_id_key', '=', p(1))),
    registration: compileHot((p) => db.selectFrom('registrations').select('doc').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1))),
    /**
     * PostgreSQL, in a device lock's round trip: the record, and a built-in hub's device row (hub key `p(2)`, device
     * key `p(3)`) that the registration's hub write will compare-and-swap on (issue 11).
     */
    registrationAndHubDevice: compileHot((p) =>
      db.selectNoFrom([
        db.selectFrom('registrations').select('doc').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1)).as('doc'),
        db.selectFrom('hub_devices').select('doc').where('hub_key', '=', p(2)).where('device_id_key', '=', p(3)).as('device_doc'),
        db.selectFrom('hub_devices').select('revision').where('hub_key', '=', p(2)).where('device_id_key', '=', p(3)).as('device_revision'),
      ]),
    ),
    putRegistration: compileHot((p) => {
      const columns = { device_id_key: p(2), group_id_key: p(3), status: p(4), assigned_hub_key: p(5), etag: p(6), doc: p(7) };
      return db
        .insertInto('registrations')
        .values({ instance_id: p(0), registration_id_key: p(1), ...columns })
        .onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doUpdateSet(columns));
    }, DEFERRED),
    operation: compileHot((p) => db.selectFrom('operations').select('doc').where('instance_id', '=', p(0)).where('operation_id', '=', p(1))),
    /**
     * SQLite: {@link putRegistration} when the record's device and group keys stay what they were (a re-registration):
     * the conflict's update leaves the key columns alone, so the two indexes on them are not rewritten (SQLite rewrites
     * the index entries of every column an UPDATE sets, equal or not: one WAL frame per registration fewer at a commit
     * of eight, bench/README.md "session 21, H1"). Changes no row when the keys differ: then run the full upsert.
     */
    putRegistrationSameKeys: compileHot((p) =>
      db
        .insertInto('registrations')
        .values({ instance_id: p(0), registration_id_key: p(1), device_id_key: p(2), group_id_key: p(3), status: p(4), assigned_hub_key: p(5), etag: p(6), doc: p(7) })
        .onConflict((oc) =>
          oc
            .columns(['instance_id', 'registration_id_key'])
            .doUpdateSet({ status: p(4), assigned_hub_key: p(5), etag: p(6), doc: p(7) })
            .where('registrations.device_id_key', '=', p(2))
            .where('registrations.group_id_key', '=', p(3)),
        ),
    ),
    putOperation: compileHot((p) => {
      const columns = { updated_at: p(3), doc: p(4) };
      return db
        .insertInto('operations')
        .values({ instance_id: p(0), operation_id: p(1), registration_id_key: p(2), ...columns })
        .onConflict((oc) => oc.columns(['instance_id', 'operation_id']).doUpdateSet(columns));
    }, DEFERRED),
    /**
     * A link is written only when it is new or says something new. A re-registration to the same hub device (the
     * steady state) finds its link as it was but for the time in it, and writes nothing: on SQLite one page fewer in
     * its commit (one WAL frame of ~16 for a registration alone in its commit, bench/README.md "session 30"), on
     * PostgreSQL no new row version. So `linkedDateTimeUtc` is when the link was made, or last changed (its group,
     * an ID's case); a changed group rewrites the group's index entry in the same statement.
     */
    putHubDeviceLink: compileHot(
      (p) =>
        db
          .insertInto('hub_device_links')
          .values({ instance_id: p(0), registration_id_key: p(1), hub_key: p(2), device_id_key: p(3), group_id_key: p(4), doc: p(5) })
          .onConflict((oc) =>
            oc
              .columns(['instance_id', 'registration_id_key', 'hub_key', 'device_id_key'])
              .doUpdateSet((eb) => ({ group_id_key: eb.ref('excluded.group_id_key'), doc: eb.ref('excluded.doc') }))
              .where((eb) => eb.or([eb('hub_device_links.group_id_key', '<>', eb.ref('excluded.group_id_key')), linkSaysSomethingNew(db)])),
          ),
      DEFERRED,
    ),
    appendAuditEvent: compileHot((p) =>
      db.insertInto('audit_events').values({
        instance_id: p(0),
        event_id: p(1),
        time_utc: p(2),
        kind: p(3),
        actor: p(4),
        outcome: p(5),
        event_class: p(6),
        registration_id_key: p(7),
        device_id_key: p(8),
        group_id_key: p(9),
        doc: p(10),
      }),
      DEFERRED,
    ),
    /**
     * One statement for every subject kind of a probe naming at most one ID per kind ({@link NO_KEY} for none): one
     * row, its `fence` the first fence found ({@link parseProbeFence}) or null.
     */
    eraseFence: compileHot((p) => db.selectNoFrom(fenceOfProbe(db, p(0), [p(1), p(2), p(3)]).as('fence'))),
    /**
     * A device's individual enrollment, registration record and the enrollment group that record names (a registered
     * group device's group, confirmed without a read of its own), as scalar subqueries of one statement.
     */
    enrollmentAndRegistration: compileHot((p) => db.selectNoFrom(deviceReads(db, p(0), p(1)))),
    linkedHubs: compileHot((p) => db.selectFrom('linked_hubs').select('doc').where('instance_id', '=', p(0)).orderBy('name_key')),
    // PostgreSQL (store/config-cache.ts): the shared config version and the documents from one snapshot. The version
    // is a one-row subquery, so it comes back even when no document matches.
    instanceByIdScopeVersioned: compileHot((p) =>
      db
        .selectFrom(configVersion(db).as('v'))
        .leftJoin('instances', (join) => join.on('instances.id_scope_key', '=', p(0)))
        .select(['v.version', 'instances.doc']),
    ),
    /**
     * PostgreSQL: a device request's first read whole (issue 11) — the config version, the instance by ID scope, and
     * the device's reads of {@link enrollmentAndRegistration} (registration ID key `p(1)`) in that instance, from one
     * snapshot: one round trip where the instance and the device's reads were two.
     */
    instanceAndDeviceByIdScopeVersioned: compileHot((p) => instanceAndDevice(db, p)),
    instanceByIdVersioned: compileHot((p) =>
      db
        .selectFrom(configVersion(db).as('v'))
        .leftJoin('instances', (join) => join.on('instances.id', '=', p(0)))
        .select(['v.version', 'instances.doc']),
    ),
    linkedHubsVersioned: compileHot((p) =>
      db
        .selectFrom(configVersion(db).as('v'))
        .leftJoin('linked_hubs', (join) => join.on('linked_hubs.instance_id', '=', p(0)))
        .select(['v.version', 'linked_hubs.doc'])
        .orderBy('linked_hubs.name_key'),
    ),
    changeCounter: compileHot((p) => db.selectFrom('change_counters').select('version').where('name', '=', p(0))),
    /** A group's document and a change counter's version as scalar subqueries: one row, either null when absent. */
    enrollmentGroupAndCounter: compileHot((p) =>
      db.selectNoFrom([
        db.selectFrom('enrollment_groups').select('doc').where('instance_id', '=', p(0)).where('group_id_key', '=', p(1)).as('doc'),
        db.selectFrom('change_counters').select('version').where('name', '=', p(2)).as('version'),
      ]),
    ),
    putRegistrationIntent: compileHot((p) =>
      db
        .insertInto('registration_intents')
        .values({ instance_id: p(0), operation_id: p(1), created_at: p(2), doc: p(3) })
        .onConflict((oc) => oc.columns(['instance_id', 'operation_id']).doUpdateSet({ created_at: p(2), doc: p(3) })),
      DEFERRED,
    ),
    deleteRegistrationIntent: compileHot((p) => db.deleteFrom('registration_intents').where('instance_id', '=', p(0)).where('operation_id', '=', p(1)), DEFERRED),
  };
}

/**
 * The first fence standing on a device's probe (one key per subject kind: registration, device, group; {@link NO_KEY}
 * for none), as one scalar: `kind` + {@link FENCE_SEPARATOR} + its document, or null. Each kind is its own seek of the
 * primary key (instance, kind, ID), the next tried only when the one before found nothing: an OR of the three pairs
 * made SQLite read every fence of the instance through `erase_fences_request` (a group erase fences each member) and
 * cost 3–4 times as much on an empty table (bench/README.md, "session 21, H1").
 */
function fenceOfProbe(db: Kysely<Database>, instanceId: string, [registrationKey, deviceKey, groupKey]: readonly [string, string, string]) {
  const seek = (kind: EraseFenceKind, idKey: string) =>
    db
      .selectFrom('erase_fences')
      // The separator is bound as a parameter (session 21's held statements travelled as literal texts, which refused a
      // quoted literal; since session 22 they travel prepared, and either form would do).
      .select(sql<string>`${sql.ref('subject_kind')} || ${FENCE_SEPARATOR} || ${sql.ref('doc')}`.as('fence'))
      .where('instance_id', '=', instanceId)
      .where('subject_kind', '=', kind)
      .where('id_key', '=', idKey)
      .limit(LIMIT_ONE);
  return sql<string | null>`coalesce(${seek('registrationId', registrationKey)}, ${seek('deviceId', deviceKey)}, ${seek('enrollmentGroupId', groupKey)})`;
}

/**
 * `limit 1` written into the SQL text, not bound as a parameter (Kysely's `.limit(1)` binds it). Measured on SQLite
 * (bench/README.md "session 22, H1"): the hub write's fence check took 13–17 µs with a bound limit and 1.0–1.3 µs with
 * the literal, the same plan either way; in a registration's transaction it had been its most expensive read.
 */
const LIMIT_ONE = sql.lit(1);

type EraseFenceKind = 'registrationId' | 'deviceId' | 'enrollmentGroupId';
/** Between a fence's kind and its document in {@link fenceOfProbe}'s scalar (no kind holds a newline). */
const FENCE_SEPARATOR = '\n';

/** A probe fence's scalar, split: its kind and its document (JSON text). */
export function parseProbeFence(fence: string): { subject_kind: string; doc: string } {
  const at = fence.indexOf(FENCE_SEPARATOR);
  return { subject_kind: fence.slice(0, at), doc: fence.slice(at + FENCE_SEPARATOR.length) };
}

/**
 * Takes `count` tokens from a rate-limit bucket in one statement, all or none (services/throttle.ts
 * `StoreRateLimiter`): a new bucket starts full; an existing one is refilled for the time since its last take (never
 * negative, should node clocks disagree), capped at the burst, and loses the tokens only if it holds them all. A row is
 * written (inserted or updated) only when they were taken.
 */
function rateTokenTake(db: Kysely<Database>, bucketKey: string, ratePerSecond: string, burst: string, nowMs: string, count: string | RawBuilder<number>) {
  const rate = sql<number>`cast(${ratePerSecond} as double precision)`;
  const full = sql<number>`cast(${burst} as double precision)`;
  const now = sql<number>`cast(${nowMs} as bigint)`;
  const taken = typeof count === 'string' ? sql<number>`cast(${count} as double precision)` : count;
  const elapsed = sql<number>`(case when ${now} > rate_limits.at_ms then ${now} - rate_limits.at_ms else 0 end)`;
  const refilled = sql<number>`(case when rate_limits.tokens + ${elapsed} * ${rate} / 1000.0 > ${full} then ${full} else rate_limits.tokens + ${elapsed} * ${rate} / 1000.0 end)`;
  return db
    .insertInto('rate_limits')
    .values({ bucket_key: bucketKey, tokens: sql<number>`${full} - ${taken}`, at_ms: now })
    .onConflict((oc) =>
      oc
        .column('bucket_key')
        .doUpdateSet({ tokens: sql<number>`${refilled} - ${taken}`, at_ms: sql<number>`(case when ${now} > rate_limits.at_ms then ${now} else rate_limits.at_ms end)` })
        .where(sql<boolean>`${refilled} >= ${taken}`),
    );
}

/** One token, written into the statement (a poll takes one). */
const ONE_TOKEN = sql<number>`1`;

/**
 * PostgreSQL: a device request's first read whole (issue 11) — the config version, the instance by ID scope (`p(0)`),
 * the device's reads of `enrollmentAndRegistration` (registration ID key `p(1)`) in that instance, and the instance's
 * symmetric-key groups counter (`groups/<instance ID>`, against which a node's cached group list is checked), from one
 * snapshot: one round trip where the instance, the device's reads and a group's confirmation were three.
 */
function instanceAndDevice(db: Kysely<Database>, p: (index: number) => string) {
  return db
    .selectFrom(configVersion(db).as('v'))
    .leftJoin('instances', (join) => join.on('instances.id_scope_key', '=', p(0)))
    .select([
      'v.version',
      'instances.doc',
      ...deviceReads(db, sql<string>`${sql.ref('instances.id')}`, p(1)),
      db
        .selectFrom('change_counters')
        .select('change_counters.version')
        .where('change_counters.name', '=', sql<string>`${GROUPS_COUNTER_PREFIX} || ${sql.ref('instances.id')}`)
        .as('groups_version'),
    ]);
}

/**
 * A device's reads as scalar subqueries (`enrollment_doc`, `registration_doc`, `group_doc`): its individual enrollment,
 * its registration record and the enrollment group that record names, in the instance `instanceId` (a parameter, or
 * the instance row of the statement they are part of).
 */
function deviceReads(db: Kysely<Database>, instanceId: string | RawBuilder<string>, registrationKey: string) {
  const record = () => db.selectFrom('registrations').where('registrations.instance_id', '=', instanceId).where('registrations.registration_id_key', '=', registrationKey);
  return [
    db
      .selectFrom('enrollments')
      .select('enrollments.doc')
      .where('enrollments.instance_id', '=', instanceId)
      .where('enrollments.registration_id_key', '=', registrationKey)
      .as('enrollment_doc'),
    record().select('registrations.doc').as('registration_doc'),
    db
      .selectFrom('enrollment_groups')
      .select('enrollment_groups.doc')
      .where('enrollment_groups.instance_id', '=', instanceId)
      .where('enrollment_groups.group_id_key', '=', record().select('registrations.group_id_key'))
      .as('group_doc'),
  ] as const;
}

/**
 * The conflicting link's document differs from the one written in more than its time (`linkedDateTimeUtc`). Both are
 * JSON.stringify's, in one key order, so SQLite compares them as text with the time taken out; PostgreSQL as jsonb.
 */
function linkSaysSomethingNew(db: Kysely<Database>): RawBuilder<boolean> {
  return sqliteConnectionOf(db.getExecutor().adapter) === undefined
    ? sql<boolean>`("hub_device_links"."doc"::jsonb - 'linkedDateTimeUtc') <> ("excluded"."doc"::jsonb - 'linkedDateTimeUtc')`
    : sql<boolean>`json_remove("hub_device_links"."doc", '$.linkedDateTimeUtc') <> json_remove("excluded"."doc", '$.linkedDateTimeUtc')`;
}

/** The shared config counter's value, 0 before the first config write. */
function configVersion(db: Kysely<Database>) {
  return db
    .selectFrom('change_counters')
    .select((eb) => eb.fn.coalesce(eb.fn.max('version'), eb.lit(0)).as('version'))
    .where('name', '=', CONFIG_COUNTER);
}

/** The built-in hub store's hot statements. */
export function hubStatements(db: Kysely<Database>) {
  return {
    hub: compileHot((p) => db.selectFrom('built_in_hubs').select('doc').where('name_key', '=', p(0))),
    /** PostgreSQL, in a registration's transaction: the hub row and the shared config version from one snapshot. */
    hubVersioned: compileHot((p) =>
      db
        .selectFrom(configVersion(db).as('v'))
        .leftJoin('built_in_hubs', (join) => join.on('built_in_hubs.name_key', '=', p(0)))
        .select(['v.version', 'built_in_hubs.doc']),
    ),
    device: compileHot((p) => db.selectFrom('hub_devices').select(['doc', 'revision']).where('hub_key', '=', p(0)).where('device_id_key', '=', p(1))),
    insertDevice: compileHot((p) =>
      db
        .insertInto('hub_devices')
        .values({ hub_key: p(0), device_id_key: p(1), status: p(2), revision: p(3), doc: p(4) })
        .onConflict((oc) => oc.columns(['hub_key', 'device_id_key']).doNothing()),
    ),
    /**
     * PostgreSQL: {@link deviceFence} and {@link insertDevice} as one statement (one round trip instead of two; both
     * read one snapshot): the insert runs only when no fence stands. One row: `fence`, the fence's document or null,
     * and `written`, the rows inserted (0 on a fence or an existing device). SQLite has no writes inside WITH, and no
     * round trips to save: it runs the two statements.
     */
    insertDeviceUnlessFenced: compileHot((p) => ({
      compile: () =>
        sql`with "fence" as (
          ${hubDeviceFence(p)}
        ), "written" as (
          insert into "hub_devices" ("hub_key", "device_id_key", "status", "revision", "doc")
          select ${p(0)}::text, ${p(1)}::text, ${p(2)}::text, ${p(3)}::text, ${p(4)}::text where not exists (select from "fence")
          on conflict ("hub_key", "device_id_key") do nothing
          returning 1
        )
        select (select "doc" from "fence") as "fence", (select count(*) from "written") as "written"`.compile(db),
    })),
    /** PostgreSQL: {@link deviceFence} and {@link replaceDevice} as one statement, as {@link insertDeviceUnlessFenced}. */
    replaceDeviceUnlessFenced: compileHot((p) => ({
      compile: () =>
        sql`with "fence" as (
          ${hubDeviceFence(p)}
        ), "written" as (
          update "hub_devices" set "status" = ${p(2)}, "revision" = ${p(3)}, "doc" = ${p(4)}
          where "hub_key" = ${p(0)} and "device_id_key" = ${p(1)} and "revision" = ${p(5)} and not exists (select from "fence")
          returning 1
        )
        select (select "doc" from "fence") as "fence", (select count(*) from "written") as "written"`.compile(db),
    })),
    replaceDevice: compileHot((p) =>
      db
        .updateTable('hub_devices')
        .set({ status: p(2), revision: p(3), doc: p(4) })
        .where('hub_key', '=', p(0))
        .where('device_id_key', '=', p(1))
        .where('revision', '=', p(5)),
    ),
    /**
     * A running erase of an instance that links the hub fences the device ID. The linked hubs first (a cross join is
     * SQLite's way to fix the order), then a seek of the fence's primary key per instance: with `instance_id in
     * (select …)` SQLite built the list in a temporary b-tree on every call (20 µs against 1.4 µs), and an inner join
     * let it scan the fences first, every member of a group being erased.
     */
    deviceFence: compileHot((p) =>
      db
        .selectFrom('linked_hubs')
        .crossJoin('erase_fences')
        .select('erase_fences.doc')
        .where('linked_hubs.name_key', '=', p(0))
        .whereRef('erase_fences.instance_id', '=', 'linked_hubs.instance_id')
        .where('erase_fences.subject_kind', '=', 'deviceId')
        .where('erase_fences.id_key', '=', p(1))
        .limit(LIMIT_ONE),
    ),
  };
}

export type StoreStatements = ReturnType<typeof storeStatements>;
export type HubStatements = ReturnType<typeof hubStatements>;

// ---- issue 12 P1 (session 20): statements that answer two questions in one

/**
 * An erase-fence check and the read it guards as one statement (one round trip on PostgreSQL): one row of two scalar
 * subqueries, `fence` ({@link fenceOfProbe}: null unless a fence stands on an ID of the probe) and `doc` (the guarded
 * row's document, or null). The poll guards its operation read; a registration's admission, in its transaction, its
 * enrollment or group read. Arguments: instance ID, the row's key, then the probe's registration, device and group
 * keys ({@link NO_KEY} for none). (Session 20 wrote this as the fence rows `union all` the row: a compound select and
 * a co-routine, 30 µs against 6.6 µs in a transaction on SQLite.)
 */
function fencedReadStatements(db: Kysely<Database>) {
  const guarded = (p: (index: number) => string, row: SelectQueryBuilder<Database, keyof Database, { doc: string }>) =>
    db.selectNoFrom([fenceOfProbe(db, p(0), [p(2), p(3), p(4)]).as('fence'), row.as('doc')]);
  const operationRow = (p: (index: number) => string) => db.selectFrom('operations').select('doc').where('instance_id', '=', p(0)).where('operation_id', '=', p(1));
  return {
    operation: compileHot((p) => guarded(p, operationRow(p))),
    /**
     * PostgreSQL: a poll's rate-limit token ({@link rateTokenTake}, arguments 5–8) taken in the statement that reads its
     * fence and operation — one round trip for both (issue 11). The take is a data-modifying CTE, run exactly once
     * whatever the select reads; `taken` says whether it took a token. (SQLite allows no write in a CTE; its buckets
     * live in memory anyway.)
     */
    operationAfterRateToken: compileHot((p) =>
      db
        .with('take', () => rateTokenTake(db, p(5), p(6), p(7), p(8), ONE_TOKEN).returning(sql<number>`1`.as('one')))
        .selectNoFrom([
          fenceOfProbe(db, p(0), [p(2), p(3), p(4)]).as('fence'),
          operationRow(p).as('doc'),
          sql<boolean>`exists (select 1 from ${sql.table('take')})`.as('taken'),
        ]),
    ),
    enrollment: compileHot((p) =>
      guarded(p, db.selectFrom('enrollments').select('doc').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1))),
    ),
    enrollmentGroup: compileHot((p) =>
      guarded(p, db.selectFrom('enrollment_groups').select('doc').where('instance_id', '=', p(0)).where('group_id_key', '=', p(1))),
    ),
  };
}
