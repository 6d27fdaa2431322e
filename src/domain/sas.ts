import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Shared access signatures (dps-wire.md §2.1, §4.3, §14). The signature is an HMAC-SHA256 over the resource URI
 * exactly as it appears in the token, a newline and the expiry. Clients disagree on how `sr` is encoded (Node sends
 * it raw, the C SDKs percent-encode it in lower or upper case), so the HMAC is verified over the raw `sr` and the
 * scope check works on its decoded form.
 */
export interface SasToken {
  /** `sr` exactly as sent (signed over). */
  readonly rawResource: string;
  /** `sr` percent-decoded (scope checks). */
  readonly resource: string;
  /** The signature bytes (decoded from URL-encoded base64). */
  readonly signature: Buffer;
  readonly expirySeconds: number;
  readonly keyName: string | undefined;
}

const PREFIX = 'SharedAccessSignature ';

/** Parses an Authorization header value; fields may come in any order. Returns undefined when it is no SAS token. */
export function parseSasToken(header: string | undefined): SasToken | undefined {
  if (header === undefined || !header.startsWith(PREFIX)) return undefined;
  const fields = new Map<string, string>();
  for (const part of header.slice(PREFIX.length).trim().split('&')) {
    const eq = part.indexOf('=');
    if (eq <= 0) return undefined;
    const name = part.slice(0, eq).toLowerCase();
    if (fields.has(name)) return undefined;
    fields.set(name, part.slice(eq + 1));
  }
  const rawResource = fields.get('sr');
  const sig = fields.get('sig');
  const se = fields.get('se');
  if (rawResource === undefined || sig === undefined || se === undefined || !/^\d{1,12}$/.test(se)) return undefined;
  const resource = safeDecode(rawResource);
  const signatureText = safeDecode(sig);
  if (resource === undefined || signatureText === undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(signatureText)) return undefined;
  const skn = fields.get('skn');
  return {
    rawResource,
    resource,
    signature: Buffer.from(signatureText, 'base64'),
    expirySeconds: Number(se),
    keyName: skn === undefined ? undefined : safeDecode(skn),
  };
}

const EXPIRY = /(?:^SharedAccessSignature\s*|&)[sS][eE]=(\d{1,12})\s*(?:&|$)/;

/**
 * The expiry (`se`) of a token its caller has already checked whole (parseSasToken and a signature): one match
 * instead of a second parse of every field (a register made a proof of its token after authenticating with it).
 */
export function sasExpirySeconds(checkedHeader: string): number | undefined {
  const se = EXPIRY.exec(checkedHeader)?.[1];
  return se === undefined ? undefined : Number(se);
}

function safeDecode(value: string): string | undefined {
  try {
    return decodeURIComponent(value);
  } catch {
    return undefined;
  }
}

/**
 * Whether a token's `sr` covers a request path. The part of `sr` after the host is a path prefix: it covers that path
 * and everything under it, by whole segments and case-insensitively — `host/a/b` covers `/a/b/c` but not `/a/bc` — and
 * a bare host name covers everything (dps-wire.md §2.1; IoT Hub scopes its registry tokens the same way).
 */
export function resourceCoversPath(resource: string, requestPath: string): boolean {
  const wanted = resource
    .split('/')
    .slice(1)
    .filter((segment) => segment !== '')
    .map((segment) => segment.toLowerCase());
  const actual = requestPath.split('/').filter((segment) => segment !== '');
  return wanted.every((segment, index) => {
    const part = actual[index];
    if (part === undefined) return false;
    try {
      return decodeURIComponent(part).toLowerCase() === segment;
    } catch {
      return false;
    }
  });
}

export function computeSignature(keyBase64: string, rawResource: string, expirySeconds: number): Buffer {
  return createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(`${rawResource}\n${expirySeconds}`).digest();
}

export function isExpired(token: SasToken, nowMs: number): boolean {
  return token.expirySeconds * 1000 < nowMs;
}

/**
 * True when one of the keys signed the token. Each comparison is timing-safe, and a token no key signed is checked
 * against every key, so a forged token's time says nothing about any key. The first key that signed it ends the check:
 * only a valid token is answered sooner, and its sender holds the key that made it (the answer tells it the token is
 * valid anyway). A registration signed with the primary key computes one HMAC instead of two (the P1 profile: ~4 µs).
 */
export function signedByOneOf(token: SasToken, keysBase64: readonly string[]): boolean {
  for (const key of keysBase64) {
    const expected = computeSignature(key, token.rawResource, token.expirySeconds);
    if (expected.length === token.signature.length && timingSafeEqual(expected, token.signature)) return true;
  }
  return false;
}

export interface NewSasToken {
  resource: string;
  keyBase64: string;
  expirySeconds: number;
  keyName?: string;
  /** Percent-encode `sr` (hub device tokens are encoded; the Node DPS clients send it raw). */
  encodeResource?: boolean;
}

export function createSasToken(options: NewSasToken): string {
  const sr = options.encodeResource === true ? encodeURIComponent(options.resource) : options.resource;
  const sig = encodeURIComponent(computeSignature(options.keyBase64, sr, options.expirySeconds).toString('base64'));
  const skn = options.keyName === undefined ? '' : `&skn=${encodeURIComponent(options.keyName)}`;
  return `${PREFIX}sr=${sr}&sig=${sig}&se=${options.expirySeconds}${skn}`;
}

/** A group device's key: base64(HMAC-SHA256(base64dec(groupKey), registrationId)) (dps-wire.md §4.3). */
export function deriveDeviceKey(groupKeyBase64: string, registrationId: string): string {
  return createHmac('sha256', Buffer.from(groupKeyBase64, 'base64')).update(registrationId, 'utf8').digest('base64');
}
