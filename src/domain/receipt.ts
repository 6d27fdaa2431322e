import { createHash, createHmac, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

/**
 * Signed erase receipts (docs/customer-data.md). The signature covers the canonical JSON of the receipt body: keys
 * sorted at every level, no insignificant whitespace — so any changed byte of the content breaks it, while the file
 * may be pretty-printed.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, member]) => member !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, member]) => `${JSON.stringify(key)}:${canonicalJson(member)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export interface ReceiptSignature {
  algorithm: 'Ed25519';
  keyId: string;
  publicKeyPem: string;
  value: string;
}

export interface SignedReceipt {
  receipt: Record<string, unknown>;
  signature: ReceiptSignature;
}

/** A key's ID: the first 16 hex digits of the SHA-256 of its DER SubjectPublicKeyInfo. */
export function keyIdOf(publicKeyPem: string): string {
  const der = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

/**
 * The signing key of the last PEM seen and its key ID: an instance signs every receipt with one key, and parsing the
 * PEMs (not the Ed25519 signature) was most of a signature's cost (issue 12 P5).
 */
let lastSigner: { privateKeyPem: string; publicKeyPem: string; key: KeyObject; keyId: string } | undefined;

export function signReceipt(receipt: Record<string, unknown>, privateKeyPem: string, publicKeyPem: string): SignedReceipt {
  if (lastSigner?.privateKeyPem !== privateKeyPem || lastSigner.publicKeyPem !== publicKeyPem) {
    lastSigner = { privateKeyPem, publicKeyPem, key: createPrivateKey(privateKeyPem), keyId: keyIdOf(publicKeyPem) };
  }
  const value = sign(null, Buffer.from(canonicalJson(receipt)), lastSigner.key).toString('base64');
  return { receipt, signature: { algorithm: 'Ed25519', keyId: lastSigner.keyId, publicKeyPem, value } };
}

export type ReceiptCheck = { valid: true; keyId: string } | { valid: false; reason: string };

/** Verifies a receipt; with `trustedPublicKeyPem`, also that it was signed by that key (not just by the one it carries). */
export function verifyReceipt(document: unknown, trustedPublicKeyPem?: string): ReceiptCheck {
  if (typeof document !== 'object' || document === null) return { valid: false, reason: 'not a receipt document' };
  const { receipt, signature } = document as Partial<SignedReceipt>;
  if (typeof receipt !== 'object' || receipt === null || typeof signature !== 'object' || signature === null) {
    return { valid: false, reason: 'the document needs "receipt" and "signature"' };
  }
  if (signature.algorithm !== 'Ed25519' || typeof signature.value !== 'string' || typeof signature.publicKeyPem !== 'string') {
    return { valid: false, reason: 'the signature must be Ed25519 with value and publicKeyPem' };
  }
  const publicKeyPem = trustedPublicKeyPem ?? signature.publicKeyPem;
  if (trustedPublicKeyPem !== undefined && keyIdOf(trustedPublicKeyPem) !== keyIdOf(signature.publicKeyPem)) {
    return { valid: false, reason: 'the receipt was signed by a different key than the trusted one' };
  }
  let ok: boolean;
  try {
    ok = verify(null, Buffer.from(canonicalJson(receipt)), createPublicKey(publicKeyPem), Buffer.from(signature.value, 'base64'));
  } catch (error) {
    return { valid: false, reason: `the signature could not be checked: ${(error as Error).message}` };
  }
  return ok ? { valid: true, keyId: keyIdOf(publicKeyPem) } : { valid: false, reason: 'the signature does not match the receipt' };
}

/** The keyed hash a subject is known by once erased: HMAC-SHA256 with the instance's secret, of the lower-cased ID. */
export function subjectHash(keyBase64: string, kind: string, id: string): string {
  return createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(`${kind}:${id.toLowerCase()}`).digest('hex');
}
