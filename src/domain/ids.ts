import { randomBytes } from 'node:crypto';
import { ProvisioningError } from './errors.js';
import { randomHex, randomUuid } from './random-pool.js';

/**
 * Registration IDs and enrollment group IDs: at most 128 characters, alphanumerics plus `- . _ :`, not starting or
 * ending with a special character (dps-wire.md §3, §13: the spec text, taken as the stricter reading).
 */
const ID_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9\-._:]{0,126}[A-Za-z0-9])?$/;
/** IoT Hub device IDs: up to 128 characters of ASCII letters, digits and `- . + % _ # * ? ! ( ) , : = @ $ '`. */
const DEVICE_ID_PATTERN = /^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$/;

export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}

export function assertRegistrationId(id: string): void {
  if (!isValidId(id)) {
    throw new ProvisioningError(
      'InvalidRegistrationId',
      `The registration ID '${truncate(id)}' is invalid: use 1-128 letters, digits, '-', '.', '_' or ':', starting and ending with a letter or digit.`,
    );
  }
}

export function assertEnrollmentGroupId(id: string): void {
  if (!isValidId(id)) {
    throw new ProvisioningError(
      'InvalidEnrollmentGroupId',
      `The enrollment group ID '${truncate(id)}' is invalid: use 1-128 letters, digits, '-', '.', '_' or ':', starting and ending with a letter or digit.`,
    );
  }
}

export function assertDeviceId(id: string): void {
  if (!DEVICE_ID_PATTERN.test(id)) {
    throw new ProvisioningError('InvalidDeviceId', `The device ID '${truncate(id)}' is invalid: use 1-128 ASCII letters, digits or - . + % _ # * ? ! ( ) , : = @ $ '.`);
  }
}

/** Lower-cased key column: IDs are case-insensitive (dps-wire.md §1). */
export function idKey(id: string): string {
  return id.toLowerCase();
}

export function truncate(text: string, max = 80): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

/** ID scopes look like `0ne` + 8 upper-case hex digits (dps-wire.md §1). */
export function newIdScope(): string {
  return `0ne${randomBytes(4).toString('hex').toUpperCase()}`;
}

/** 64 random bytes, base64: the length DPS generates for symmetric keys (dps-wire.md §2.3). */
export function newSymmetricKey(): string {
  return randomBytes(64).toString('base64');
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const BASE64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * A symmetric key must be canonical base64 of 16 to 64 bytes (dps-wire.md §10): padded, and the bits the padding leaves
 * unused in the last character zero, so the key is exactly what encoding its bytes gives. Checked on the text, without
 * decoding and re-encoding it (a bulk import checks two keys per item: 0.55 → 0.22 µs a key).
 */
export function isValidSymmetricKey(key: string): boolean {
  if (key.length % 4 !== 0 || !BASE64.test(key)) return false;
  const padding = key.endsWith('==') ? 2 : key.endsWith('=') ? 1 : 0;
  const bytes = (key.length / 4) * 3 - padding;
  if (bytes < 16 || bytes > 64) return false;
  // One '=': the last character carries 2 bits of nothing; two: 4 bits.
  return padding === 0 || BASE64_ALPHABET.indexOf(key[key.length - padding - 1] as string) % (padding === 2 ? 16 : 4) === 0;
}

/**
 * DPS operation IDs: `5.` + 16 hex digits + `.` + a UUID (dps-wire.md), from the pooled random source so that a
 * registration does not pay for a `randomBytes` call per ID. The 16 digits are the creation time in milliseconds (12
 * digits) and 2 random bytes: IDs made later sort after earlier ones, so a registration's operation row is added at the
 * end of the operations table's key index instead of on a random page of it (on SQLite each page a commit changes is
 * written to the WAL in full; bench/README.md "session 21"). The random UUID keeps IDs unique and unguessable; the time
 * the ID reveals is the operation's own `createdDateTimeUtc`.
 */
export function newOperationId(): string {
  return `5.${Date.now().toString(16).padStart(12, '0')}${randomHex(2)}.${randomUuid()}`;
}
