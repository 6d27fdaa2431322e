import { ProvisioningError } from './errors.js';

/**
 * The query language of the service API. DPS documents only `SELECT *` (dps-wire.md §2.4, §13); provisiond also
 * accepts a WHERE clause of AND-joined conditions over the fields users filter on:
 *
 *   SELECT * [FROM name] [WHERE field = 'v' AND field != 'v' AND field LIKE 'prefix%' AND field IN ('a','b')]
 *
 * Field names depend on the item type (see QueryFields); anything else is a 400 naming what is supported.
 */
export type FilterOp = 'eq' | 'ne' | 'prefix' | 'in';
export interface Filter {
  readonly field: string;
  readonly op: FilterOp;
  readonly values: readonly string[];
}

type Token = { kind: 'word' | 'string' | 'symbol'; text: string };

function tokenize(query: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < query.length) {
    const ch = query[i] as string;
    if (/\s/.test(ch)) {
      i += 1;
    } else if (ch === "'" || ch === '"') {
      let value = '';
      i += 1;
      for (;;) {
        if (i >= query.length) throw invalid('a string literal is not closed');
        const c = query[i] as string;
        if (c === ch) {
          if (query[i + 1] === ch) {
            value += ch;
            i += 2;
            continue;
          }
          i += 1;
          break;
        }
        value += c;
        i += 1;
      }
      tokens.push({ kind: 'string', text: value });
    } else if (/[A-Za-z_]/.test(ch)) {
      const match = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(query.slice(i));
      const word = match?.[0] ?? ch;
      tokens.push({ kind: 'word', text: word });
      i += word.length;
    } else {
      const two = query.slice(i, i + 2);
      if (two === '!=' || two === '<>') {
        tokens.push({ kind: 'symbol', text: '!=' });
        i += 2;
      } else if ('=*(),'.includes(ch)) {
        tokens.push({ kind: 'symbol', text: ch });
        i += 1;
      } else {
        throw invalid(`unexpected character '${ch}'`);
      }
    }
  }
  return tokens;
}

function invalid(reason: string, fields?: readonly string[]): ProvisioningError {
  const supported = fields === undefined ? '' : ` Fields you can filter on: ${fields.join(', ')}.`;
  return new ProvisioningError(
    'InvalidQuery',
    `The query is not supported: ${reason}. Use SELECT * [FROM name] [WHERE field = 'value' AND field LIKE 'prefix%' AND field IN ('a','b') AND field != 'value'].${supported}`,
  );
}

/** Parses a query; `fields` maps the accepted field names (case-insensitive) to canonical names. */
export function parseQuery(query: string, fields: readonly string[]): Filter[] {
  const tokens = tokenize(query);
  let pos = 0;
  const peek = (): Token | undefined => tokens[pos];
  const next = (): Token => {
    const token = tokens[pos];
    if (token === undefined) throw invalid('the query ends too early', fields);
    pos += 1;
    return token;
  };
  const isWord = (token: Token | undefined, word: string): boolean =>
    token?.kind === 'word' && token.text.toUpperCase() === word;

  // A bare `*` is what the Node SDK sends for "everything".
  if (tokens.length === 1 && tokens[0]?.text === '*') return [];
  if (!isWord(next(), 'SELECT')) throw invalid('it must start with SELECT *', fields);
  if (next().text !== '*') throw invalid('only SELECT * is supported', fields);
  if (isWord(peek(), 'FROM')) {
    pos += 1;
    if (next().kind !== 'word') throw invalid('FROM needs a collection name', fields);
  }
  const filters: Filter[] = [];
  if (peek() === undefined) return filters;
  if (!isWord(next(), 'WHERE')) throw invalid(`unexpected '${tokens[pos - 1]?.text ?? ''}'`, fields);
  for (;;) {
    const fieldToken = next();
    if (fieldToken.kind !== 'word') throw invalid(`expected a field name, found '${fieldToken.text}'`, fields);
    const field = fields.find((name) => name.toLowerCase() === fieldToken.text.toLowerCase());
    if (field === undefined) throw invalid(`'${fieldToken.text}' is not a field you can filter on`, fields);
    const opToken = next();
    if (opToken.text === '=' || opToken.text === '!=') {
      filters.push({ field, op: opToken.text === '=' ? 'eq' : 'ne', values: [literal(next(), fields)] });
    } else if (isWord(opToken, 'LIKE')) {
      const pattern = literal(next(), fields);
      // Only a trailing % is a wildcard; `_` is a legal ID character and is matched literally.
      if (!/^[^%]*%$/.test(pattern)) throw invalid("LIKE supports only a prefix pattern such as 'abc%'", fields);
      filters.push({ field, op: 'prefix', values: [pattern.slice(0, -1)] });
    } else if (isWord(opToken, 'IN')) {
      if (next().text !== '(') throw invalid('IN needs a parenthesised list', fields);
      const values: string[] = [];
      for (;;) {
        values.push(literal(next(), fields));
        const sep = next();
        if (sep.text === ')') break;
        if (sep.text !== ',') throw invalid('IN values are separated by commas', fields);
      }
      if (values.length > 100) throw invalid('IN takes at most 100 values', fields);
      filters.push({ field, op: 'in', values });
    } else {
      throw invalid(`unsupported operator '${opToken.text}'`, fields);
    }
    const after = peek();
    if (after === undefined) break;
    if (!isWord(after, 'AND')) throw invalid(`only AND joins conditions, found '${after.text}'`, fields);
    pos += 1;
  }
  return filters;
}

function literal(token: Token, fields: readonly string[]): string {
  if (token.kind === 'string') return token.text;
  if (token.kind === 'word' && /^(true|false)$/i.test(token.text)) return token.text.toLowerCase();
  throw invalid(`expected a quoted value, found '${token.text}'`, fields);
}
