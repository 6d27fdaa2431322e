import { randomFillSync, randomUUID } from 'node:crypto';

/**
 * Random bytes for identifiers and etags, drawn from one buffer refilled by a single `randomFillSync` call every
 * {@link POOL_BYTES} bytes. A registration makes half a dozen of them (operation ID, event IDs, etags, twin etag,
 * revision, generation ID); one `randomBytes` call each was 5% of the server's CPU (issue 12). Every byte is used
 * once: the values are as unpredictable as before, only cheaper. Keys and secrets do not come from here — they keep
 * their own `randomBytes` call, so no secret ever shares a buffer with a value that is sent on the wire.
 */
const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let offset = POOL_BYTES;

function take(bytes: number): number {
  if (bytes > POOL_BYTES) throw new RangeError(`at most ${POOL_BYTES} pooled random bytes at once`);
  if (offset + bytes > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  const start = offset;
  offset += bytes;
  return start;
}

/** `bytes` random bytes as lower-case hex (2 × `bytes` characters). */
export function randomHex(bytes: number): string {
  const start = take(bytes);
  return pool.toString('hex', start, start + bytes);
}

/** `bytes` random bytes as standard base64 (with padding). */
export function randomBase64(bytes: number): string {
  const start = take(bytes);
  return pool.toString('base64', start, start + bytes);
}

/** A random integer in [0, bound) without modulo bias, for bound ≤ 2^32. */
export function randomBelow(bound: number): number {
  if (!Number.isInteger(bound) || bound < 1 || bound > 2 ** 32) throw new RangeError('bound must be an integer in [1, 2^32]');
  // Rejection sampling: values at or above the largest multiple of `bound` would favour the low results.
  const limit = 2 ** 32 - (2 ** 32 % bound);
  for (;;) {
    const value = pool.readUInt32LE(take(4));
    if (value < limit) return value % bound;
  }
}

/** An RFC 4122 version 4 UUID (Node batches the randomness of these itself). */
export const randomUuid = (): string => randomUUID();
