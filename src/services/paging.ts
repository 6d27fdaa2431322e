import { ProvisioningError } from '../domain/errors.js';
import type { Filter } from '../domain/query.js';
import { parseQuery } from '../domain/query.js';
import type { Config } from '../config/config.js';

/** Query paging shared by every query route: page size header, opaque continuation token, parsed WHERE clause. */
export interface PageRequest {
  query: string | undefined;
  maxItemCount: string | undefined;
  continuation: string | undefined;
}
export interface PageSpec {
  filters: Filter[];
  limit: number;
  afterKey: string | undefined;
  scanLimit: number;
}

/**
 * How many rows one page of a query looks at, at most, for filters no index serves (store.ts ListQuery.scanLimit):
 * a page then costs a few milliseconds at any table size, and comes back short (or empty) with a continuation when
 * the filter matches less than a page in that many rows. Azure DPS queries return such pages too (fewer items than
 * x-ms-max-item-count, with x-ms-continuation), so clients already follow the continuation until it is absent.
 */
export const QUERY_SCAN_ROWS = 5000;

export function readPageRequest(request: PageRequest, fields: readonly string[], config: Config): PageSpec {
  const filters = request.query === undefined ? [] : parseQuery(request.query, fields);
  let limit = config.queryDefaultItemCount;
  if (request.maxItemCount !== undefined && request.maxItemCount !== '') {
    if (!/^\d{1,9}$/.test(request.maxItemCount) || Number(request.maxItemCount) < 1) {
      throw new ProvisioningError('InvalidHeader', 'x-ms-max-item-count must be a positive integer.');
    }
    limit = Math.min(Number(request.maxItemCount), config.queryMaxItemCount);
  }
  return { filters, limit, afterKey: decodeContinuation(request.continuation, request.query ?? ''), scanLimit: QUERY_SCAN_ROWS };
}

/** The token carries the last key and a fingerprint of the query, so a token is not replayed against another query. */
export function encodeContinuation(key: string, query: string): string {
  return Buffer.from(JSON.stringify({ k: key, q: fingerprint(query) })).toString('base64url');
}

function decodeContinuation(token: string | undefined, query: string): string | undefined {
  if (token === undefined || token === '') return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
    if (typeof parsed === 'object' && parsed !== null && 'k' in parsed && 'q' in parsed) {
      const { k, q } = parsed as { k: unknown; q: unknown };
      if (typeof k === 'string' && q === fingerprint(query)) return k;
    }
  } catch {
    // fall through to the error below
  }
  throw new ProvisioningError('InvalidContinuationToken', 'x-ms-continuation is not a token this query returned.');
}

function fingerprint(query: string): string {
  let hash = 0;
  for (const ch of query.replace(/\s+/g, ' ').trim().toLowerCase()) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
  return (hash >>> 0).toString(36);
}
