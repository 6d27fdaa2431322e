import type pg from 'pg';

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
 * What travels together goes as ONE simple-protocol query, several statements separated by `;`, with the parameters
 * written into the text as literals (pg's own escaping: values, not SQL, and only strings, numbers, booleans and
 * nulls; anything else goes the ordinary way). Each statement of it runs as it would alone — in order, each seeing the
 * ones before it, the first failure stopping the rest — so a failing deferred write fails the statement it travelled
 * with (the COMMIT, or a read), with its own PostgreSQL error (SQLSTATE, constraint): the transaction rolls back and
 * its caller gets the error it would have got from the write itself, only later. What it costs: a statement sent this
 * way is parsed and planned for that execution, not prepared once per connection (PostgreSQL's CPU, not the node's).
 *
 * A ROLLBACK (or ROLLBACK TO SAVEPOINT) drops the queued writes: every one of them was queued after the last
 * statement sent, so inside what is being rolled back. An empty transaction (BEGIN then COMMIT or ROLLBACK, nothing
 * between) sends nothing at all.
 */
export interface RoundTripOptions {
  /** True for a hot write whose outcome nobody reads (hot-statements.ts). */
  isDeferred: (sql: string) => boolean;
  /** The prepared-statement name of a hot statement, for the queries that still travel alone. */
  preparedName: (sql: string) => string | undefined;
}

type Query = (config: unknown, values?: unknown) => Promise<pg.QueryResult>;

interface TransactionState {
  /** The BEGIN (or START TRANSACTION …) text not yet sent, when the server has not seen the transaction start. */
  begin: string | undefined;
  /** Deferred writes, their parameters already written in. */
  writes: string[];
  inTransaction: boolean;
}

const wrapped = new WeakSet<pg.PoolClient>();

export function savingRoundTrips(client: pg.PoolClient, options: RoundTripOptions): pg.PoolClient {
  if (wrapped.has(client)) return client;
  wrapped.add(client);
  const send = client.query.bind(client) as unknown as Query;
  const state: TransactionState = { begin: undefined, writes: [], inTransaction: false };

  const ordinary = (text: string, values: unknown): Promise<pg.QueryResult> => {
    const name = options.preparedName(text);
    return name === undefined ? send(text, values) : send({ name, text, values });
  };
  /** The held BEGIN and queued writes, taken out of the state (they are about to travel). */
  const takeHeld = (): string[] => {
    const held = state.begin === undefined ? state.writes : [state.begin, ...state.writes];
    state.begin = undefined;
    state.writes = [];
    return held;
  };

  const query = async (text: string, values: unknown): Promise<pg.QueryResult> => {
    const control = transactionControl(text);
    if (control === 'begin') {
      state.inTransaction = true;
      state.begin = text;
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
      return together(takeHeld(), text);
    }
    // Every queued write came after the last statement sent, so after the savepoint: it is rolled back anyway.
    if (control === 'rollbackToSavepoint') state.writes = [];
    if (state.inTransaction && options.isDeferred(text)) {
      const inlined = withLiterals(client, text, values);
      if (inlined !== undefined) {
        state.writes.push(inlined);
        return emptyResult('DEFERRED');
      }
    }
    const held = takeHeld();
    if (held.length === 0) return ordinary(text, values);
    const inlined = withLiterals(client, text, values);
    if (inlined !== undefined) return together(held, inlined);
    await send(held.join(';\n'));
    return ordinary(text, values);
  };

  /** The held statements and `last` as one query; the answer is `last`'s. */
  const together = async (held: string[], last: string): Promise<pg.QueryResult> => {
    if (held.length === 0) return send(last);
    const results = (await send([...held, last].join(';\n'))) as pg.QueryResult | pg.QueryResult[];
    return Array.isArray(results) ? (results[results.length - 1] as pg.QueryResult) : results;
  };

  client.query = ((config: unknown, values?: unknown) => {
    if (typeof config === 'string') return query(config, values);
    // Kysely always passes (text, parameters); any other call goes as it came, after what is held.
    const held = takeHeld();
    return held.length === 0 ? send(config, values) : send(held.join(';\n')).then(() => send(config, values));
  }) as typeof client.query;
  return client;
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

/**
 * `text` with `$n` replaced by its value as a literal, or undefined when that cannot be done exactly: a value that is
 * not a string, finite number, bigint, boolean or null; a placeholder without a value; or a text holding anything but
 * identifiers, placeholders and SQL (a quote, a `$` not starting a placeholder, a comment) — Kysely writes every value
 * of our statements as a parameter, so their texts have none of those.
 */
export function withLiterals(client: Pick<pg.ClientBase, 'escapeLiteral'>, text: string, values: unknown): string | undefined {
  const parameters = Array.isArray(values) ? (values as unknown[]) : [];
  let out = '';
  let i = 0;
  while (i < text.length) {
    const char = text[i] as string;
    if (char === '"') {
      const end = text.indexOf('"', i + 1);
      if (end < 0) return undefined;
      out += text.slice(i, end + 1);
      i = end + 1;
      continue;
    }
    if (char === "'" || char === ';' || (char === '-' && text[i + 1] === '-') || (char === '/' && text[i + 1] === '*')) return undefined;
    if (char === '$') {
      const digits = /^\d+/.exec(text.slice(i + 1))?.[0];
      if (digits === undefined) return undefined;
      const index = Number(digits) - 1;
      if (index < 0 || index >= parameters.length) return undefined;
      const literal = literalOf(client, parameters[index]);
      if (literal === undefined) return undefined;
      out += literal;
      i += 1 + digits.length;
      continue;
    }
    out += char;
    i += 1;
  }
  return out;
}

function literalOf(client: Pick<pg.ClientBase, 'escapeLiteral'>, value: unknown): string | undefined {
  // The same text node-postgres would send as the parameter (utils.prepareValue), quoted: an untyped literal takes its
  // type from where it stands, as an untyped parameter does.
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'string') return value.includes('\u0000') ? undefined : client.escapeLiteral(value);
  if (typeof value === 'number') return Number.isFinite(value) ? client.escapeLiteral(String(value)) : undefined;
  if (typeof value === 'bigint' || typeof value === 'boolean') return client.escapeLiteral(String(value));
  return undefined;
}
