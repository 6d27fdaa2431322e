import { randomHex } from './random-pool.js';

/** Etags are opaque; a fresh random value on every write makes "changes on every write" hold without counters. */
export function newEtag(): string {
  return `"${randomHex(12)}"`;
}

/** Compares an `If-Match` value with a stored etag: quotes and a `W/` prefix are ignored, `*` matches anything. */
export function etagMatches(ifMatch: string, stored: string): boolean {
  const strip = (value: string): string => value.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  const wanted = strip(ifMatch);
  return wanted === '*' || wanted === strip(stored);
}
