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
      const inlined = withLiterals(text, values);
      if (inlined !== undefined) {
        state.writes.push(inlined);
        return emptyResult('DEFERRED');
      }
    }
    const held = takeHeld();
    if (held.length === 0) return ordinary(text, values);
    const inlined = withLiterals(text, values);
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
 *
 * It runs for every held write (a registration's closing writes are ~5 kB of text), so it copies the text between
 * placeholders in slices and escapes with whole-string replaces: a loop that appends one character at a time (as pg's
 * own escapeLiteral does) allocated a string per character, ~0.5 MB per registration on the node's heap.
 */
export function withLiterals(text: string, values: unknown): string | undefined {
  const parameters = Array.isArray(values) ? (values as unknown[]) : [];
  let out = '';
  /** Where the text not yet copied to `out` starts. */
  let from = 0;
  let i = 0;
  while (i < text.length) {
    const code = text.charCodeAt(i);
    if (code === DOUBLE_QUOTE) {
      const end = text.indexOf('"', i + 1);
      if (end < 0) return undefined;
      i = end + 1;
      continue;
    }
    const next = text.charCodeAt(i + 1);
    if (code === SINGLE_QUOTE || code === SEMICOLON || (code === DASH && next === DASH) || (code === SLASH && next === STAR)) return undefined;
    if (code === DOLLAR) {
      let end = i + 1;
      let number = 0;
      while (end < text.length && text.charCodeAt(end) >= DIGIT_0 && text.charCodeAt(end) <= DIGIT_9) {
        number = number * 10 + (text.charCodeAt(end) - DIGIT_0);
        end += 1;
      }
      if (end === i + 1) return undefined;
      const index = number - 1;
      if (index < 0 || index >= parameters.length) return undefined;
      const literal = literalOf(parameters[index]);
      if (literal === undefined) return undefined;
      out += text.slice(from, i) + literal;
      from = end;
      i = end;
      continue;
    }
    i += 1;
  }
  return out + text.slice(from);
}

const DOUBLE_QUOTE = 0x22;
const SINGLE_QUOTE = 0x27;
const SEMICOLON = 0x3b;
const DASH = 0x2d;
const SLASH = 0x2f;
const STAR = 0x2a;
const DOLLAR = 0x24;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;

function literalOf(value: unknown): string | undefined {
  // The same text node-postgres would send as the parameter (utils.prepareValue), quoted: an untyped literal takes its
  // type from where it stands, as an untyped parameter does.
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'string') return value.includes('\u0000') ? undefined : quotedLiteral(value);
  if (typeof value === 'number') return Number.isFinite(value) ? quotedLiteral(String(value)) : undefined;
  if (typeof value === 'bigint' || typeof value === 'boolean') return quotedLiteral(String(value));
  return undefined;
}

/**
 * What pg's escapeLiteral returns, byte for byte (test/pg-round-trips.test.ts compares them): quotes doubled, and with
 * a backslash anywhere, backslashes doubled and the literal written ` E'…'` (so it means the same whatever
 * standard_conforming_strings says).
 */
export function quotedLiteral(value: string): string {
  const quoted = value.includes("'") ? value.replaceAll("'", "''") : value;
  return quoted.includes('\\') ? ` E'${quoted.replaceAll('\\', '\\\\')}'` : `'${quoted}'`;
}
