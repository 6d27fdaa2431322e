import { createRequire } from 'node:module';
import pg from 'pg';

/**
 * Fewer round trips to PostgreSQL inside a transaction (issue 11: each query is one socket write and one wait, ~0.18 ms
 * of node CPU, and a registration sent ~24 of them). Two things travel with the next query instead of alone:
 *
 * - **BEGIN.** It is held until the transaction's first statement and sent in front of it.
 * - **Deferred writes**: the hot writes whose outcome nobody reads (hot-statements.ts marks them `deferred`: record,
 *   link, operation, log row and intent upserts). Inside a transaction they are queued and sent in front of the
 *   transaction's next statement — a read (which then sees them, as it would have), a write whose row count matters,
 *   a SAVEPOINT, or the COMMIT. A registration's five closing writes and its COMMIT are one round trip.
 *
 * What travels together goes as one {@link StatementBatch}: each statement an extended-protocol Bind and Execute (its
 * Parse too, the first time a connection sees a hot statement's name), all of them before ONE Sync. PostgreSQL runs
 * them in order, each seeing the ones before it, and the first failure skips the rest up to the Sync — so a failing
 * deferred write fails the statement it travelled with (the COMMIT, or a read) with its own PostgreSQL error
 * (SQLSTATE, constraint): the transaction rolls back and its caller gets the error it would have got from the write
 * itself, only later. The hot statements stay named prepared statements there too, parsed and planned once per
 * connection. (Session 21 sent them as one simple-protocol text with the values written in as literals: PostgreSQL
 * parsed and planned ~5 kB of text per registration, and the node built it; bench/README.md "session 22, H2".)
 *
 * A ROLLBACK (or ROLLBACK TO SAVEPOINT) drops the queued writes: every one of them was queued after the last
 * statement sent, so inside what is being rolled back. An empty transaction (BEGIN then COMMIT or ROLLBACK, nothing
 * between) sends nothing at all.
 */
export interface RoundTripOptions {
  /** True for a hot write whose outcome nobody reads (hot-statements.ts). */
  isDeferred: (sql: string) => boolean;
  /** The prepared-statement name of a hot statement (undefined: the text runs as the unnamed statement). */
  preparedName: (sql: string) => string | undefined;
}

/** One statement of a {@link StatementBatch}. */
export interface BatchedStatement {
  /** Its prepared-statement name on the connection; undefined for the unnamed statement (parsed each time). */
  readonly name: string | undefined;
  readonly text: string;
  readonly values: readonly unknown[];
}

type Query = (config: unknown, values?: unknown) => Promise<pg.QueryResult>;

interface TransactionState {
  /** The BEGIN (or START TRANSACTION …) not yet sent, when the server has not seen the transaction start. */
  begin: BatchedStatement | undefined;
  /** Deferred writes, in the order they were run. */
  writes: BatchedStatement[];
  inTransaction: boolean;
}

const wrapped = new WeakSet<pg.PoolClient>();
const NO_VALUES: readonly unknown[] = [];

export function savingRoundTrips(client: pg.PoolClient, options: RoundTripOptions): pg.PoolClient {
  if (wrapped.has(client)) return client;
  wrapped.add(client);
  const send = client.query.bind(client) as unknown as Query;
  const state: TransactionState = { begin: undefined, writes: [], inTransaction: false };

  const statementOf = (text: string, values: unknown): BatchedStatement => ({
    name: options.preparedName(text),
    text,
    values: Array.isArray(values) ? (values as unknown[]) : NO_VALUES,
  });
  const batch = (statements: BatchedStatement[]): Promise<pg.QueryResult> => {
    const submitted = new StatementBatch(statements);
    void send(submitted);
    return submitted.result;
  };
  const ordinary = (text: string, values: unknown): Promise<pg.QueryResult> => {
    const name = options.preparedName(text);
    return name === undefined ? send(text, values) : send({ name, text, values });
  };
  /** The held BEGIN and queued writes, taken out of the state (they are about to travel). */
  const takeHeld = (): BatchedStatement[] => {
    const held = state.begin === undefined ? state.writes : [state.begin, ...state.writes];
    state.begin = undefined;
    state.writes = [];
    return held;
  };

  const query = async (text: string, values: unknown): Promise<pg.QueryResult> => {
    const control = transactionControl(text);
    if (control === 'begin') {
      state.inTransaction = true;
      state.begin = { name: undefined, text, values: NO_VALUES };
      state.writes = [];
      return emptyResult('BEGIN');
    }
    if (control === 'rollback' || control === 'commit') {
      state.inTransaction = false;
      // What waits for a ROLLBACK is rolled back anyway.
      if (control === 'rollback') state.writes = [];
      if (state.begin !== undefined && state.writes.length === 0) {
        // Nothing reached the server: there is no transaction there to end.
        state.begin = undefined;
        return emptyResult(control === 'commit' ? 'COMMIT' : 'ROLLBACK');
      }
    }
    // Every queued write came after the last statement sent, so after the savepoint: it is rolled back anyway.
    if (control === 'rollbackToSavepoint') state.writes = [];
    if (state.inTransaction && options.isDeferred(text)) {
      state.writes.push(statementOf(text, values));
      return emptyResult('DEFERRED');
    }
    const held = takeHeld();
    if (held.length === 0) return ordinary(text, values);
    held.push(statementOf(text, values));
    return batch(held);
  };

  client.query = ((config: unknown, values?: unknown) => {
    if (typeof config === 'string') return query(config, values);
    // Kysely always passes (text, parameters); any other call goes as it came, after what is held.
    const held = takeHeld();
    return held.length === 0 ? send(config, values) : batch(held).then(() => send(config, values));
  }) as typeof client.query;
  return client;
}

/** Runs `statements` as one {@link StatementBatch} on `client`: the last statement's result, or the first failure. */
export function runBatch(client: pg.ClientBase, statements: readonly BatchedStatement[]): Promise<pg.QueryResult> {
  const batch = new StatementBatch(statements);
  client.query(batch);
  return batch.result;
}

/** What node-postgres makes of a parameter (Dates, arrays, objects, buffers), exactly as for its own queries. */
const { prepareValue } = createRequire(import.meta.url)('pg/lib/utils.js') as { prepareValue: (value: unknown) => unknown };

/** node-postgres's connection, with its per-connection record of the named statements PostgreSQL has parsed. */
interface ProtocolConnection extends pg.Connection {
  parsedStatements: Record<string, string | undefined>;
}

interface DataRowMessage {
  fields: Array<string | null>;
}
interface CommandCompleteMessage {
  text: string;
}

/**
 * Several statements in one round trip, for node-postgres's client queue (a `Submittable`): per statement a Parse
 * (unnamed statements every time; a named one only the first time this connection sees its name), a Bind and an
 * Execute; a Describe of the last one's portal, for its rows' columns; then one Sync. The answer is the last
 * statement's result; the first error fails the whole batch (PostgreSQL skips everything after it up to the Sync).
 * node-postgres itself writes a Sync after every extended-protocol query, so it cannot send two in one round trip.
 */
export class StatementBatch {
  readonly result: Promise<pg.QueryResult>;
  readonly #statements: readonly BatchedStatement[];
  #resolve!: (result: pg.QueryResult) => void;
  #reject!: (error: Error) => void;
  /** CommandComplete messages still to come before the last statement's. */
  #before: number;
  #command = '';
  #rowCount: number | null = null;
  #fields: pg.FieldDef[] = [];
  #parsers: Array<(value: string) => unknown> = [];
  #rows: Record<string, unknown>[] = [];
  /** A row that could not be parsed (a type parser threw): the batch fails with it once the server is done. */
  #rowError: Error | undefined;
  /** The statement names this batch sends a Parse for ('' for the unnamed statement), in order, and how many completed. */
  #parsing: string[] = [];
  #parsed = 0;
  #connection: ProtocolConnection | undefined;
  readonly #onParseComplete = (): void => {
    const name = this.#parsing[this.#parsed];
    this.#parsed += 1;
    const text = name === undefined || name === '' ? undefined : this.#statements.find((statement) => statement.name === name)?.text;
    if (text !== undefined && this.#connection !== undefined) this.#connection.parsedStatements[name as string] = text;
  };

  constructor(statements: readonly BatchedStatement[]) {
    this.#statements = statements;
    this.#before = statements.length - 1;
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** The statements' texts (what query counters and logs see; not sent as such). */
  get text(): string {
    return this.#statements.map((statement) => statement.text).join(';\n');
  }

  submit(connection: pg.Connection): Error | undefined {
    const protocol = connection as ProtocolConnection;
    // Every parameter mapped before anything is written: a value node-postgres cannot send (a circular object) fails
    // the batch with nothing on the wire, as it fails one of its own queries.
    let values: unknown[][];
    try {
      values = this.#statements.map((statement) => statement.values.map(prepareValue));
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
    const stream = protocol.stream as unknown as { cork?: () => void; uncork?: () => void };
    stream.cork?.();
    try {
      const last = this.#statements.length - 1;
      this.#statements.forEach((statement, index) => {
        const name = statement.name ?? '';
        // PostgreSQL refuses a second Parse of a name it has: a name parsed earlier in this batch is not parsed again.
        if (name === '' || (protocol.parsedStatements[name] === undefined && !this.#parsing.includes(name))) {
          protocol.parse({ name, text: statement.text, types: [] }, true);
          this.#parsing.push(name);
        }
        protocol.bind({ statement: name, values: values[index] } as pg.BindConfig, true);
        if (index === last) protocol.describe({ type: 'P', name: '' }, true);
        protocol.execute({}, true);
      });
      protocol.sync();
    } finally {
      stream.uncork?.();
    }
    // A named statement's ParseComplete is what tells that the connection now has it: counted only while one is awaited.
    if (this.#parsing.some((name) => name !== '')) {
      this.#connection = protocol;
      protocol.on('parseComplete', this.#onParseComplete);
    }
    return undefined;
  }

  handleRowDescription(message: { fields: pg.FieldDef[] }): void {
    this.#fields = message.fields;
    this.#parsers = message.fields.map((field) => pg.types.getTypeParser(field.dataTypeID, field.format === 'binary' ? 'binary' : 'text') as (value: string) => unknown);
  }

  handleDataRow(message: DataRowMessage): void {
    // Rows of the statements before the last (a select among them, e.g. the unlock before a lock) are not the answer.
    if (this.#before > 0 || this.#rowError !== undefined) return;
    const row: Record<string, unknown> = {};
    try {
      for (let i = 0; i < this.#fields.length; i += 1) {
        const value = message.fields[i] ?? null;
        row[(this.#fields[i] as pg.FieldDef).name] = value === null ? null : (this.#parsers[i] as (value: string) => unknown)(value);
      }
    } catch (error) {
      this.#rowError = error instanceof Error ? error : new Error(String(error));
      return;
    }
    this.#rows.push(row);
  }

  handleCommandComplete(message: CommandCompleteMessage): void {
    if (this.#before > 0) {
      this.#before -= 1;
      return;
    }
    const match = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/.exec(message.text);
    this.#command = match?.[1] ?? '';
    const count = match?.[3] ?? match?.[2];
    this.#rowCount = count === undefined ? null : Number(count);
  }

  handleEmptyQuery(): void {
    this.handleCommandComplete({ text: '' });
  }

  handlePortalSuspended(): void {
    // Never: every Execute asks for all rows.
  }

  handleError(error: Error): void {
    this.#done();
    this.#reject(error);
  }

  handleReadyForQuery(): void {
    this.#done();
    if (this.#rowError !== undefined) this.#reject(this.#rowError);
    else this.#resolve({ command: this.#command, rowCount: this.#rowCount, oid: 0, rows: this.#rows, fields: this.#fields });
  }

  handleCopyInResponse(): void {
    this.handleError(new Error('COPY is not supported in a statement batch'));
  }

  handleCopyData(): void {
    // Never: see handleCopyInResponse.
  }

  #done(): void {
    if (this.#connection === undefined) return;
    this.#connection.removeListener('parseComplete', this.#onParseComplete);
    this.#connection = undefined;
  }
}

type Control = 'begin' | 'commit' | 'rollback' | 'rollbackToSavepoint' | undefined;

function transactionControl(text: string): Control {
  // Kysely's PostgreSQL driver sends exactly these texts (postgres-driver.js, savepoint helpers).
  if (text === 'begin' || text.startsWith('start transaction')) return 'begin';
  if (text === 'commit') return 'commit';
  if (text === 'rollback') return 'rollback';
  if (/^rollback to (savepoint )?/i.test(text)) return 'rollbackToSavepoint';
  return undefined;
}

function emptyResult(command: string): pg.QueryResult {
  return { command, rowCount: null, oid: 0, rows: [], fields: [] };
}
