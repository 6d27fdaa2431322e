import type { Credentials } from './credentials';
import { base64ToBytes, bytesToBase64 } from './encoding';

/**
 * Service SAS tokens computed in the browser with WebCrypto, exactly as the Azure SDKs make them from a connection
 * string: `sig = base64(HMAC-SHA256(base64decode(key), sr + "\n" + se))`, with `sr` the instance's host name (no port:
 * the server ignores ports). The key never leaves the tab; only the token goes over the wire.
 */
const LIFETIME_SECONDS = 60 * 60;
const RENEW_BEFORE_SECONDS = 5 * 60;

export class SasSigner {
  readonly #credentials: Credentials;
  #cryptoKey: Promise<CryptoKey> | undefined;
  #cached: { token: string; expirySeconds: number } | undefined;

  constructor(credentials: Credentials) {
    this.#credentials = credentials;
  }

  /** A token valid for about an hour, reused until five minutes before it expires. */
  async token(nowMs: number = Date.now()): Promise<string> {
    const now = Math.floor(nowMs / 1000);
    if (this.#cached !== undefined && this.#cached.expirySeconds - RENEW_BEFORE_SECONDS > now) return this.#cached.token;
    const expirySeconds = now + LIFETIME_SECONDS;
    const token = await this.sign(expirySeconds);
    this.#cached = { token, expirySeconds };
    return token;
  }

  async sign(expirySeconds: number): Promise<string> {
    const { hostName, keyName } = this.#credentials;
    this.#cryptoKey ??= crypto.subtle.importKey('raw', base64ToBytes(this.#credentials.key), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const signed = await crypto.subtle.sign('HMAC', await this.#cryptoKey, new TextEncoder().encode(`${hostName}\n${expirySeconds}`));
    const signature = encodeURIComponent(bytesToBase64(new Uint8Array(signed)));
    return `SharedAccessSignature sr=${hostName}&sig=${signature}&se=${expirySeconds}&skn=${encodeURIComponent(keyName)}`;
  }
}
