import type { Kysely } from 'kysely';
import { compileHot, type HotStatement, StatementsCompiledOnce } from './hot-statements.js';
import type { Database } from './schema.js';

/**
 * The statements of the customer-data paths (an export or an erase of one subject, issue 12 P5): compiled once, like
 * the hot and bulk statements, instead of built through Kysely for every lookup. An export made ~40 statements and an
 * erase ~90, each a small indexed read or write, and a profile of 100 exports at 1M put 44 % of the server's time in
 * Kysely's frames: building every statement anew (visiting, compiling, freezing its tree) and its executor (which
 * includes SQLite's own work on the statement).
 *
 * A lookup of N keys (`column IN (…)`) is compiled for N rounded up to a power of two, the list padded by repeating its
 * last key (a repeated value in an IN list matches nothing more): at most ten texts per lookup up to the 500 keys of a
 * chunk, so every dialect keeps each one prepared.
 */
export type SubjectColumn = 'registration_id_key' | 'device_id_key' | 'group_id_key';

/** The keys of a chunk, padded to the compiled statement's size (see above). */
export function paddedKeys(keys: readonly string[]): string[] {
  const size = slotsFor(keys.length);
  const last = keys.at(-1) ?? '';
  return Array.from({ length: size }, (_, index) => keys[index] ?? last);
}

function slotsFor(count: number): number {
  let size = 1;
  while (size < count) size *= 2;
  return size;
}

/** `count` argument markers starting at argument `from`. */
function markers(p: (index: number) => string, from: number, count: number): string[] {
  return Array.from({ length: count }, (_, index) => p(from + index));
}

/** The filters of a page of the log, in the order of their bits and arguments (see {@link SubjectStatements.auditPage}). */
/**
 * What a read of the log selects: the document and the columns it leaves out (see `auditRow` in kysely-store.ts: a
 * row stores its ID, time, kind, actor, outcome and class only as columns).
 */
export const AUDIT_EVENT_COLUMNS = ['event_id', 'time_utc', 'kind', 'actor', 'outcome', 'event_class', 'doc'] as const;
/** A row of {@link AUDIT_EVENT_COLUMNS}. */
export type AuditEventRow = Pick<Database['audit_events'], (typeof AUDIT_EVENT_COLUMNS)[number]>;

export const AUDIT_PAGE_FILTERS = ['before', 'idFrom', 'idTo', 'windowEnd', 'subject', 'from', 'to', 'actor', 'outcome', 'kind', 'eventClass'] as const;
export type AuditPageFilter = (typeof AUDIT_PAGE_FILTERS)[number];

/** Each filter's condition but the subject's (three indexes): its column and comparison. */
const AUDIT_PAGE_CONDITIONS: Record<Exclude<AuditPageFilter, 'subject'>, readonly ['event_id' | 'time_utc' | 'actor' | 'outcome' | 'kind' | 'event_class', '<' | '>=' | '<=' | '=']> = {
  before: ['event_id', '<'],
  idFrom: ['event_id', '>='],
  idTo: ['event_id', '<'],
  windowEnd: ['event_id', '>='],
  from: ['time_utc', '>='],
  to: ['time_utc', '<='],
  actor: ['actor', '='],
  outcome: ['outcome', '='],
  kind: ['kind', '='],
  eventClass: ['event_class', '='],
};

export class SubjectStatements extends StatementsCompiledOnce {
  // ---- data requests

  /** Arguments: instance, request ID key. */
  get dataRequest(): HotStatement {
    return this.once('dataRequest', () =>
      compileHot((p) => this.db.selectFrom('data_requests').selectAll().where('instance_id', '=', p(0)).where('request_id_key', '=', p(1))),
    );
  }

  /** Arguments: instance, request ID key, sort key, status, type, subject key, doc. */
  get putDataRequest(): HotStatement {
    return this.once('putDataRequest', () =>
      compileHot((p) =>
        this.db
          .insertInto('data_requests')
          .values({ instance_id: p(0), request_id_key: p(1), sort_key: p(2), status: p(3), type: p(4), subject_key: p(5), doc: p(6) })
          .onConflict((oc) =>
            oc.columns(['instance_id', 'request_id_key']).doUpdateSet((eb) => ({
              sort_key: eb.ref('excluded.sort_key'),
              status: eb.ref('excluded.status'),
              type: eb.ref('excluded.type'),
              subject_key: eb.ref('excluded.subject_key'),
              doc: eb.ref('excluded.doc'),
            })),
          ),
      ),
    );
  }

  /**
   * The request's document alone, where its indexed columns stay as they are (arguments: doc, instance, request ID key,
   * sort key, status, type, subject key). An upsert rewrites the row's three index entries even when their values do
   * not change: four pages per save instead of one, and an erase saves its request eight times.
   */
  get putDataRequestDoc(): HotStatement {
    return this.once('putDataRequestDoc', () =>
      compileHot((p) =>
        this.db
          .updateTable('data_requests')
          .set({ doc: p(0) })
          .where('instance_id', '=', p(1))
          .where('request_id_key', '=', p(2))
          .where('sort_key', '=', p(3))
          .where('status', '=', p(4))
          .where('type', '=', p(5))
          .where('subject_key', '=', p(6)),
      ),
    );
  }

  /** Arguments: instance, then the padded subject keys. */
  dataRequestsAbout(keys: number): HotStatement {
    const size = slotsFor(keys);
    return this.once(`dataRequestsAbout/${size}`, () =>
      compileHot((p) => this.db.selectFrom('data_requests').selectAll().where('instance_id', '=', p(0)).where('subject_key', 'in', markers(p, 1, size))),
    );
  }

  // ---- the system log

  /** Arguments: instance, then the padded keys of `column` (the partial index's condition named, migration 0016). */
  auditEventsAbout(column: SubjectColumn, keys: number): HotStatement {
    const size = slotsFor(keys);
    return this.once(`auditEventsAbout/${column}/${size}`, () =>
      compileHot((p) =>
        this.db
          .selectFrom('audit_events')
          .select(AUDIT_EVENT_COLUMNS)
          .where('instance_id', '=', p(0))
          .where(column, 'in', markers(p, 1, size))
          .where(column, '<>', ''),
      ),
    );
  }

  /**
   * A page of the log (`queryAuditEvents`), compiled once per combination of the filters present — a read of the log,
   * and the access-log write after every read (the fold's lookup), had built it through Kysely each time. `present` is
   * a bitmask over {@link AUDIT_PAGE_FILTERS}; the arguments are the instance, then the value of each filter present in
   * that order, then the page's limit.
   */
  auditPage(present: number): HotStatement {
    return this.once(`auditPage/${present}`, () =>
      compileHot((p) => {
        let next = 0;
        const arg = () => p(next++);
        const instance = arg();
        let page = this.db.selectFrom('audit_events').select(AUDIT_EVENT_COLUMNS).where('instance_id', '=', instance);
        for (const [bit, filter] of AUDIT_PAGE_FILTERS.entries()) {
          if ((present & (1 << bit)) === 0) continue;
          const value = arg();
          if (filter === 'subject') {
            // The subject's events by its three indexes, then in ID order: written as an OR, the planner (SQLite
            // without statistics) walks the whole log in ID order instead, testing each event (4M events: seconds).
            const about = (column: SubjectColumn) =>
              this.db.selectFrom('audit_events').select('event_id').where('instance_id', '=', instance).where(column, '=', value).where(column, '<>', '');
            page = page.where('event_id', 'in', about('registration_id_key').unionAll(about('device_id_key')).unionAll(about('group_id_key')));
          } else {
            const [column, operator] = AUDIT_PAGE_CONDITIONS[filter];
            page = page.where(column, operator, value);
          }
        }
        return page.orderBy('event_id', 'desc').limit(arg() as unknown as number);
      }),
    );
  }

  /**
   * Where the window of a page with an unindexed filter ends (see `queryAuditEvents`): the ID `offset` events down
   * (arguments: the instance, the values of the filters present of before/idFrom/idTo/eventClass, then the offset).
   */
  auditWindowEdge(present: number): HotStatement {
    return this.once(`auditWindowEdge/${present}`, () =>
      compileHot((p) => {
        let next = 0;
        const arg = () => p(next++);
        let edge = this.db.selectFrom('audit_events').select('event_id').where('instance_id', '=', arg());
        for (const [bit, filter] of AUDIT_PAGE_FILTERS.entries()) {
          if ((present & (1 << bit)) === 0) continue;
          if (filter !== 'before' && filter !== 'idFrom' && filter !== 'idTo' && filter !== 'eventClass') throw new Error(`a window's edge has no ${filter} filter`);
          const [column, operator] = AUDIT_PAGE_CONDITIONS[filter];
          edge = edge.where(column, operator, arg());
        }
        return edge.orderBy('event_id', 'desc').limit(1).offset(arg() as unknown as number);
      }),
    );
  }

  /** One event by its ID (`getAuditEvent`: a fold's remembered target, read again in the folding transaction). */
  get auditEvent(): HotStatement {
    return this.once('auditEvent', () =>
      compileHot((p) => this.db.selectFrom('audit_events').select(AUDIT_EVENT_COLUMNS).where('instance_id', '=', p(0)).where('event_id', '=', p(1))),
    );
  }

  /**
   * A rewrite that leaves the actor, the outcome and the class as they are (an erase's pseudonymization, an access
   * read folded into its event): it names only the columns that change, so SQLite leaves the class index and the
   * failures' partial index alone (an UPDATE that sets a column rewrites every index entry it is in, even with the
   * same value: one more page per event in the WAL the erase's checkpoint copies back). It changes nothing when any of
   * the three differ. Arguments: registration, device and group keys, doc, instance, event ID, actor, outcome, class.
   */
  get replaceAuditEventSameFilters(): HotStatement {
    return this.once('replaceAuditEventSameFilters', () =>
      compileHot((p) =>
        this.db
          .updateTable('audit_events')
          .set({ registration_id_key: p(0), device_id_key: p(1), group_id_key: p(2), doc: p(3) })
          .where('instance_id', '=', p(4))
          .where('event_id', '=', p(5))
          .where('actor', '=', p(6))
          .where('outcome', '=', p(7))
          .where('event_class', '=', p(8)),
      ),
    );
  }

  /** Arguments: registration, device and group keys, actor, outcome, class, doc, then instance and event ID. */
  get replaceAuditEvent(): HotStatement {
    return this.once('replaceAuditEvent', () =>
      compileHot((p) =>
        this.db
          .updateTable('audit_events')
          .set({ registration_id_key: p(0), device_id_key: p(1), group_id_key: p(2), actor: p(3), outcome: p(4), event_class: p(5), doc: p(6) })
          .where('instance_id', '=', p(7))
          .where('event_id', '=', p(8)),
      ),
    );
  }

  // ---- operations of a registration

  /** Arguments: instance, registration ID key. */
  get operationsOfRegistration(): HotStatement {
    return this.once('operationsOfRegistration', () =>
      compileHot((p) =>
        this.db.selectFrom('operations').select('doc').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1)).orderBy('operation_id'),
      ),
    );
  }

  /** Arguments: instance, registration ID key. */
  get countOperationsOfRegistration(): HotStatement {
    return this.once('countOperationsOfRegistration', () =>
      compileHot((p) =>
        this.db
          .selectFrom('operations')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .where('instance_id', '=', p(0))
          .where('registration_id_key', '=', p(1)),
      ),
    );
  }

  /** Arguments: instance, registration ID key. */
  get deleteOperationsOfRegistration(): HotStatement {
    return this.once('deleteOperationsOfRegistration', () =>
      compileHot((p) => this.db.deleteFrom('operations').where('instance_id', '=', p(0)).where('registration_id_key', '=', p(1))),
    );
  }

  // ---- registration intents, hub-device links, the outbox, erase fences

  /** Arguments: instance. */
  get registrationIntentsOf(): HotStatement {
    return this.once('registrationIntentsOf', () =>
      compileHot((p) => this.db.selectFrom('registration_intents').select('doc').where('instance_id', '=', p(0)).orderBy('created_at')),
    );
  }

  /** Arguments: instance, then the padded keys of `column`. */
  hubDeviceLinks(column: SubjectColumn, keys: number): HotStatement {
    const size = slotsFor(keys);
    return this.once(`hubDeviceLinks/${column}/${size}`, () =>
      compileHot((p) =>
        this.db
          .selectFrom('hub_device_links')
          .select(['registration_id_key', 'hub_key', 'device_id_key', 'doc'])
          .where('instance_id', '=', p(0))
          .where(column, 'in', markers(p, 1, size)),
      ),
    );
  }

  /** Arguments: instance, then the padded keys of `column`. */
  deleteHubDeviceLinks(column: SubjectColumn, keys: number): HotStatement {
    const size = slotsFor(keys);
    return this.once(`deleteHubDeviceLinks/${column}/${size}`, () =>
      compileHot((p) => this.db.deleteFrom('hub_device_links').where('instance_id', '=', p(0)).where(column, 'in', markers(p, 1, size))),
    );
  }

  /** Arguments: instance, then the padded keys of `column`. */
  outboxEventsAbout(column: SubjectColumn, keys: number): HotStatement {
    const size = slotsFor(keys);
    return this.once(`outboxEventsAbout/${column}/${size}`, () =>
      compileHot((p) => this.db.selectFrom('event_outbox').select(['event_id', 'doc']).where('instance_id', '=', p(0)).where(column, 'in', markers(p, 1, size))),
    );
  }

  /** Arguments: instance, subject kind, ID key, request ID key, doc. */
  get putEraseFence(): HotStatement {
    return this.once('putEraseFence', () =>
      compileHot((p) =>
        this.db
          .insertInto('erase_fences')
          .values({ instance_id: p(0), subject_kind: p(1), id_key: p(2), request_id_key: p(3), doc: p(4) })
          .onConflict((oc) => oc.columns(['instance_id', 'subject_kind', 'id_key', 'request_id_key']).doNothing()),
      ),
    );
  }

  /** Arguments: instance, request ID key. */
  get deleteEraseFences(): HotStatement {
    return this.once('deleteEraseFences', () =>
      compileHot((p) => this.db.deleteFrom('erase_fences').where('instance_id', '=', p(0)).where('request_id_key', '=', p(1))),
    );
  }
}

const perDatabase = new WeakMap<Kysely<Database>, SubjectStatements>();

/** The customer-data statements of a root Kysely instance (its dialect and plugins); its transactions share them. */
export function subjectStatementsOf(db: Kysely<Database>): SubjectStatements {
  let statements = perDatabase.get(db);
  if (statements === undefined) perDatabase.set(db, (statements = new SubjectStatements(db)));
  return statements;
}
