/** Byte and text encodings the browser has no one-call helper for. */
export function base64ToBytes(base64: string): Uint8Array<ArrayBuffer> {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** A symmetric key as the server takes it: canonical base64 of 16 to 64 bytes. */
export function isBase64Key(text: string): boolean {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return false;
  try {
    const length = base64ToBytes(text).length;
    return length >= 16 && length <= 64;
  } catch {
    return false;
  }
}

/** A fresh random symmetric key, as DPS generates them: 64 random bytes, base64. */
export function randomKey(): string {
  return bytesToBase64(crypto.getRandomValues(new Uint8Array(64)));
}

/** The DER bytes of the first PEM block of a given label (`PUBLIC KEY`, `CERTIFICATE`). */
export function pemToDer(pem: string, label: string): Uint8Array<ArrayBuffer> | undefined {
  const match = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`).exec(pem);
  if (match === null) return undefined;
  return base64ToBytes((match[1] ?? '').replace(/\s+/g, ''));
}

/**
 * Canonical JSON as receipts are signed: object keys sorted by code unit, no whitespace, arrays in order. Values are
 * what JSON.parse produced, so numbers and strings print as JSON.stringify prints them.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, member]) => member !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([key, member]) => `${JSON.stringify(key)}:${canonicalJson(member)}`).join(',')}}`;
}

/** Certificates may be uploaded as PEM text or as DER; the API takes PEM, base64 of PEM or base64 of DER. */
export async function certificateFileText(file: File): Promise<string> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (text.includes('-----BEGIN')) return text.trim();
  return bytesToBase64(bytes);
}

export function formatBytes(count: number): string {
  if (count < 1024) return `${count} B`;
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(1)} KB`;
  return `${(count / 1024 / 1024).toFixed(1)} MB`;
}
