import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { STATUS_CODES } from 'node:http';
import { join } from 'node:path';
import { test } from 'node:test';
import { errorBody, errorCatalog, ProvisioningError, type ErrorName } from '../src/domain/errors.js';

/**
 * The error catalog and its documentation (as Fastify's test/internals/errors.test.js does it): every entry of
 * src/domain/errors.ts has a row in docs/errors.md that agrees with it, no row documents an entry that is gone, codes
 * are unique and start with the HTTP status they are sent with.
 */
interface DocRow {
  errorCode: number;
  status: number;
  message: string;
  when: string;
}

function documentedRows(): Map<string, DocRow> {
  const text = readFileSync(join(process.cwd(), 'docs', 'errors.md'), 'utf8');
  const rows = new Map<string, DocRow>();
  for (const line of text.split('\n')) {
    const match = /^\|\s*`(\w+)`\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|$/.exec(line);
    if (match === null) continue;
    const [, name, errorCode, status, message, when] = match as unknown as [string, string, string, string, string, string];
    assert.ok(!rows.has(name), `docs/errors.md documents ${name} once`);
    rows.set(name, { errorCode: Number(errorCode), status: Number(status), message, when });
  }
  return rows;
}

const entries = Object.entries(errorCatalog) as [ErrorName, { errorCode: number; message: string }][];

test('the catalog is frozen and not empty', () => {
  assert.ok(Object.isFrozen(errorCatalog));
  assert.ok(entries.length > 0);
});

test('every catalog entry is documented in docs/errors.md, with its code, status and default message', () => {
  const rows = documentedRows();
  for (const [name, entry] of entries) {
    const row = rows.get(name);
    assert.ok(row !== undefined, `${name} is missing from docs/errors.md`);
    assert.equal(row.errorCode, entry.errorCode, `${name}: errorCode in docs/errors.md`);
    assert.equal(row.status, Math.floor(entry.errorCode / 1000), `${name}: HTTP status in docs/errors.md`);
    assert.equal(row.message, entry.message, `${name}: default message in docs/errors.md`);
    assert.ok(row.when.length > 0, `${name}: docs/errors.md says when it happens`);
  }
});

test('docs/errors.md documents no error that the catalog does not have', () => {
  const rows = documentedRows();
  assert.ok(rows.size > 0, 'the table in docs/errors.md was found');
  for (const name of rows.keys()) assert.ok(name in errorCatalog, `docs/errors.md documents ${name}, which is not in the catalog`);
});

test('every errorCode is six digits, starts with a valid HTTP error status and is unique', () => {
  const seen = new Map<number, string>();
  for (const [name, entry] of entries) {
    assert.ok(Number.isInteger(entry.errorCode) && entry.errorCode >= 100000 && entry.errorCode <= 999999, `${name}: six digits`);
    const status = Math.floor(entry.errorCode / 1000);
    assert.ok(status >= 400 && status <= 599 && STATUS_CODES[status] !== undefined, `${name}: ${status} is an HTTP error status`);
    assert.equal(seen.get(entry.errorCode), undefined, `${name} reuses the code of ${seen.get(entry.errorCode) ?? ''}`);
    seen.set(entry.errorCode, name);
    assert.ok(entry.message.length > 0, `${name}: has a default message`);
  }
});

test('a ProvisioningError carries its entry and renders the DPS envelope', () => {
  for (const [name, entry] of entries) {
    const error = new ProvisioningError(name);
    assert.equal(error.errorName, name);
    assert.equal(error.errorCode, entry.errorCode);
    assert.equal(error.message, entry.message);
    assert.equal(error.httpStatus, Math.floor(entry.errorCode / 1000));
    assert.deepEqual(errorBody(error, 'tracking', '2024-01-01T00:00:00.0000000Z'), {
      errorCode: entry.errorCode,
      trackingId: 'tracking',
      message: entry.message,
      timestampUtc: '2024-01-01T00:00:00.0000000Z',
    });
  }
  const withInfo = new ProvisioningError('Throttled', 'slow down', { 'Retry-After': '3' });
  assert.deepEqual(errorBody(withInfo, 't', 'ts'), { errorCode: 429001, trackingId: 't', message: 'slow down', timestampUtc: 'ts', info: { 'Retry-After': '3' } });
});
