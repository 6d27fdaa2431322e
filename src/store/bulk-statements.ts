import type { Kysely } from 'kysely';
import { compileHot, type HotStatement, StatementsCompiledOnce } from './hot-statements.js';
import type { Database } from './schema.js';

/**
 * The multi-row statements of a bulk import (issue 12, P4): compiled once per row count, like the hot statements,
 * instead of built through Kysely for every chunk of every call. Building a 500-row insert through the query builder
 * (parsing the rows, visiting the tree, compiling the text) cost more CPU per item than the rest of the item's work
 * outside SQLite. A call of N items runs the full-size statement N / chunk times and one of the remainder's size, so
 * at most `chunk` texts per kind are ever compiled (and prepared by the dialect).
 */
export const ENROLLMENT_ROW_COLUMNS = ['instance_id', 'registration_id_key', 'device_id_key', 'provisioning_status', 'attestation_type', 'etag', 'doc'] as const;
export const AUDIT_ROW_COLUMNS = [
  'instance_id',
  'event_id',
  'time_utc',
  'kind',
  'actor',
  'outcome',
  'event_class',
  'registration_id_key',
  'device_id_key',
  'group_id_key',
  'doc',
] as const;

type Row<Columns extends readonly string[]> = Record<Columns[number], string>;

/**
 * The arguments of a multi-row statement: `rows[from, to)`'s values in `columns` order, one flat array. Filled in place:
 * `flatMap` with a `map` per row made two arrays per row and cost ~1.4 µs a row (issue 12 P4; ~0.2 µs filled).
 */
export function rowArguments<Columns extends readonly string[]>(rows: ReadonlyArray<Row<Columns>>, columns: Columns, from: number, to: number): string[] {
  const args = new Array<string>((to - from) * columns.length);
  let next = 0;
  for (let row = from; row < to; row += 1) {
    const values = rows[row] as Row<Columns>;
    for (const column of columns as ReadonlyArray<Columns[number]>) args[next++] = values[column];
  }
  return args;
}

/** Row objects whose every value is the marker of its argument: row r, column c is argument r × width + c. */
function markedRows<Columns extends readonly string[]>(columns: Columns, count: number, p: (index: number) => string): Array<Row<Columns>> {
  return Array.from({ length: count }, (_, row) => Object.fromEntries(columns.map((column, index) => [column, p(row * columns.length + index)])) as Row<Columns>);
}

export class BulkStatements extends StatementsCompiledOnce {
  /**
   * `rows` enrollments (arguments: ENROLLMENT_ROW_COLUMNS per row); returns the keys written. `create` never
   * overwrites: the primary key refuses an existing ID (or one a concurrent transaction is inserting, which PostgreSQL
   * waits for) and RETURNING names only the rows that went in; `replace` is an upsert.
   */
  insertEnrollments(rows: number, mode: 'create' | 'replace'): HotStatement {
    return this.once(`enrollments/${mode}/${rows}`, () =>
      compileHot((p) => {
        const insert = this.db.insertInto('enrollments').values(markedRows(ENROLLMENT_ROW_COLUMNS, rows, p));
        const statement =
          mode === 'create'
            ? insert.onConflict((oc) => oc.columns(['instance_id', 'registration_id_key']).doNothing())
            : insert.onConflict((oc) =>
                oc.columns(['instance_id', 'registration_id_key']).doUpdateSet((eb) => ({
                  device_id_key: eb.ref('excluded.device_id_key'),
                  provisioning_status: eb.ref('excluded.provisioning_status'),
                  attestation_type: eb.ref('excluded.attestation_type'),
                  etag: eb.ref('excluded.etag'),
                  doc: eb.ref('excluded.doc'),
                })),
              );
        return statement.returning('registration_id_key');
      }),
    );
  }

  /** The enrollments of `keys` registration-ID keys (arguments: the instance, then the keys). */
  enrollmentsByKey(keys: number): HotStatement {
    return this.once(`enrollments/byKey/${keys}`, () =>
      compileHot((p) =>
        this.db
          .selectFrom('enrollments')
          .select('doc')
          .where('instance_id', '=', p(0))
          .where(
            'registration_id_key',
            'in',
            Array.from({ length: keys }, (_, index) => p(index + 1)),
          ),
      ),
    );
  }

  /**
   * `rows` log events (arguments: AUDIT_ROW_COLUMNS per row). Deferred, like the single row's statement: nobody reads
   * its row count, so on PostgreSQL it travels with the transaction's next statement (a registration's log entries
   * with its COMMIT; a bulk call's with its next chunk).
   */
  appendAuditEvents(rows: number): HotStatement {
    return this.once(`auditEvents/${rows}`, () => compileHot((p) => this.db.insertInto('audit_events').values(markedRows(AUDIT_ROW_COLUMNS, rows, p)), { deferred: true }));
  }

  /**
   * Whether the instance has any erase fence at all (argument: the instance): one row or none, from the primary key's
   * first column. Fences stand only while an erase runs, so a bulk call's probe of thousands of IDs almost always
   * finds none; this answers that in one point read instead of one IN-list statement per 500 IDs.
   */
  anyEraseFence(): HotStatement {
    return this.once('eraseFences/any', () => compileHot((p) => this.db.selectFrom('erase_fences').select('subject_kind').where('instance_id', '=', p(0)).limit(1)));
  }
}

const perDatabase = new WeakMap<Kysely<Database>, BulkStatements>();

/** The bulk statements of a root Kysely instance (its dialect and plugins); its transactions share them. */
export function bulkStatementsOf(db: Kysely<Database>): BulkStatements {
  let statements = perDatabase.get(db);
  if (statements === undefined) perDatabase.set(db, (statements = new BulkStatements(db)));
  return statements;
}
