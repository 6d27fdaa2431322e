import { base64ToBytes, canonicalJson, pemToDer } from './encoding';
import type { ReceiptSigningKey, SignedReceipt } from './types';

/**
 * Checks an erasure receipt in the browser against the key the server publishes (GET /receiptSigningKey): Ed25519
 * over the canonical JSON of `receipt` (docs/customer-data-api.md). The key embedded in a receipt is not trusted on its
 * own — anyone can sign with their own key — only compared with the published one.
 */
export type ReceiptCheck =
  | { verdict: 'verified'; keyId: string }
  | { verdict: 'mismatch'; reason: string }
  | { verdict: 'unsupported'; reason: string };

export function isSignedReceipt(value: unknown): value is SignedReceipt {
  const candidate = value as Partial<SignedReceipt> | null;
  return (
    typeof candidate === 'object' &&
    candidate !== null &&
    typeof candidate.receipt === 'object' &&
    candidate.receipt !== null &&
    typeof candidate.signature === 'object' &&
    candidate.signature !== null &&
    typeof candidate.signature.value === 'string'
  );
}

export async function verifyReceipt(signed: SignedReceipt, published: ReceiptSigningKey): Promise<ReceiptCheck> {
  if (signed.signature.algorithm !== 'Ed25519') return { verdict: 'mismatch', reason: `the receipt is signed with ${signed.signature.algorithm}, not Ed25519` };
  if (signed.signature.keyId !== published.keyId) {
    return { verdict: 'mismatch', reason: `the receipt names signing key ${signed.signature.keyId}, but this server signs with ${published.keyId}` };
  }
  const der = pemToDer(published.publicKeyPem, 'PUBLIC KEY');
  if (der === undefined) return { verdict: 'mismatch', reason: 'the server published no readable public key' };
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey('spki', der, { name: 'Ed25519' }, false, ['verify']);
  } catch (error) {
    if (error instanceof DOMException && error.name === 'NotSupportedError') {
      return { verdict: 'unsupported', reason: 'this browser cannot check Ed25519 signatures; check the file with `provisiond data verify-receipt FILE`' };
    }
    return { verdict: 'mismatch', reason: `the published key could not be read (${(error as Error).message})` };
  }
  let signature: Uint8Array<ArrayBuffer>;
  try {
    signature = base64ToBytes(signed.signature.value);
  } catch {
    return { verdict: 'mismatch', reason: 'the signature is not base64' };
  }
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, signature, new TextEncoder().encode(canonicalJson(signed.receipt)));
  return ok ? { verdict: 'verified', keyId: published.keyId } : { verdict: 'mismatch', reason: 'the signature does not match the receipt' };
}
