/**
 * Human-readable output of the admin commands: a titled list of labelled values, and aligned tables. `--json` prints
 * the server's response instead, so nothing here needs to be parseable.
 */
export type Row = readonly [label: string, value: string | undefined];

/** `title` then one indented `label: value` line per row; rows without a value are left out. */
export function formatFields(title: string, rows: readonly Row[]): string {
  const shown = rows.filter((row): row is readonly [string, string] => row[1] !== undefined && row[1] !== '');
  const width = Math.max(0, ...shown.map(([label]) => label.length + 1));
  const lines = shown.map(([label, value]) => {
    const [first = '', ...rest] = value.split('\n');
    const pad = ' '.repeat(width + 4);
    return [`  ${`${label}:`.padEnd(width)}  ${first}`, ...rest.map((line) => `${pad}${line}`)].join('\n');
  });
  return [title, ...lines].join('\n');
}

/** Columns padded to their widest cell; an empty list prints `empty` instead. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[], empty: string): string {
  if (rows.length === 0) return empty;
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function yesNo(value: unknown): string {
  return value === true ? 'yes' : 'no';
}

/** A value read from a JSON document, as display text (undefined when absent). */
export function text(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return JSON.stringify(value);
}
