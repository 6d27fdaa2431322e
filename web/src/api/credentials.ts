/**
 * What the portal signs with: a service policy's name and key, and the instance's service host name (the SAS `sr`).
 * They live in this tab's memory and sessionStorage only; signing out removes them.
 */
export interface Credentials {
  hostName: string;
  keyName: string;
  key: string;
}

const STORAGE_KEY = 'provisiond.portal.credentials';

/** `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`, parts in any order, names case-insensitive. */
export function parseConnectionString(text: string): Credentials | { error: string } {
  const parts = new Map<string, string>();
  for (const part of text.trim().split(';')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) return { error: `"${part.trim()}" is not a Name=value pair.` };
    parts.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const hostName = parts.get('hostname');
  const keyName = parts.get('sharedaccesskeyname');
  const key = parts.get('sharedaccesskey');
  const missing = [
    hostName === undefined || hostName === '' ? 'HostName' : undefined,
    keyName === undefined || keyName === '' ? 'SharedAccessKeyName' : undefined,
    key === undefined || key === '' ? 'SharedAccessKey' : undefined,
  ].filter((name) => name !== undefined);
  if (missing.length > 0) return { error: `The connection string has no ${missing.join(', ')}.` };
  return { hostName: hostOnly(hostName ?? ''), keyName: keyName ?? '', key: key ?? '' };
}

/** The server ignores a port in `sr`; dropping it here keeps the signed text exactly what the server looks up. */
export function hostOnly(host: string): string {
  const trimmed = host.trim().toLowerCase();
  if (trimmed.startsWith('[')) return trimmed.slice(1, trimmed.indexOf(']'));
  const colon = trimmed.lastIndexOf(':');
  return colon > 0 && trimmed.indexOf(':') === colon ? trimmed.slice(0, colon) : trimmed;
}

export function isBase64(text: string): boolean {
  return text.length > 0 && text.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(text);
}

export function loadCredentials(): Credentials | undefined {
  try {
    const stored = sessionStorage.getItem(STORAGE_KEY);
    if (stored === null) return undefined;
    const value = JSON.parse(stored) as Partial<Credentials>;
    if (typeof value.hostName !== 'string' || typeof value.keyName !== 'string' || typeof value.key !== 'string') return undefined;
    return { hostName: value.hostName, keyName: value.keyName, key: value.key };
  } catch {
    return undefined;
  }
}

export function storeCredentials(credentials: Credentials | undefined): void {
  if (credentials === undefined) sessionStorage.removeItem(STORAGE_KEY);
  else sessionStorage.setItem(STORAGE_KEY, JSON.stringify(credentials));
}
