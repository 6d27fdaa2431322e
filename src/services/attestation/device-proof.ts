import { idKey } from '../../domain/ids.js';
import { sasExpirySeconds } from '../../domain/sas.js';
import type { DeviceCredential, DeviceMatch } from './device-match.js';

/**
 * What a persistent connection proved at sign-in (MQTT CONNECT, AMQP SASL PLAIN or the SASL TPM exchange), carried
 * to its requests so that the register and the polls on that connection are not authenticated a second time (issue
 * 12, P3). Only a token proves anything here: a SAS token (symmetric key, or signed inside a TPM). An X.509 chain
 * depends on CA certificates, issued-certificate revocations and the walk through every group, so it is judged on
 * every request.
 *
 * A proof covers exactly the request that repeats its credential, for the same ID scope and registration ID, until
 * the token expires. It stands for the check of the key, not for the state of the enrollment: the register still
 * reads the enrollment in its own transaction and takes the proof only while that entry's etag is the one proved
 * (a deleted, disabled, rotated or otherwise changed enrollment falls back to a full authentication, which refuses or
 * decides as it does for any request), and the erase fence and the rate limits apply as always.
 *
 * Only the registration service makes one (`#private` fields: a transport cannot forge or alter it).
 */
export class DeviceProof {
  readonly #match: DeviceMatch;
  readonly #idScope: string;
  readonly #registrationKey: string;
  readonly #authorization: string;
  readonly #expiresAtMs: number;

  private constructor(match: DeviceMatch, idScope: string, registrationId: string, authorization: string, expiresAtMs: number) {
    this.#match = match;
    this.#idScope = idScope;
    this.#registrationKey = idKey(registrationId);
    this.#authorization = authorization;
    this.#expiresAtMs = expiresAtMs;
  }

  /** The proof of a sign-in that checked a token, or undefined for a credential that must be judged per request. */
  static of(request: { idScope: string; registrationId: string; credential: DeviceCredential }, match: DeviceMatch): DeviceProof | undefined {
    const authorization = tokenOf(request.credential);
    if (authorization === undefined) return undefined;
    const expirySeconds = sasExpirySeconds(authorization);
    if (expirySeconds === undefined) return undefined;
    return new DeviceProof(match, request.idScope, request.registrationId, authorization, expirySeconds * 1000);
  }

  /** The proved match, when the request repeats the proved credential for the same device and the token is unexpired. */
  matchFor(request: { idScope: string; registrationId: string; credential: DeviceCredential }, nowMs: number): DeviceMatch | undefined {
    if (this.expired(nowMs)) return undefined;
    if (request.idScope !== this.#idScope || idKey(request.registrationId) !== this.#registrationKey) return undefined;
    if (tokenOf(request.credential) !== this.#authorization) return undefined;
    return this.#match;
  }

  /** The token has expired: the proof covers nothing any more. */
  expired(nowMs: number): boolean {
    return nowMs > this.#expiresAtMs;
  }
}

function tokenOf(credential: DeviceCredential): string | undefined {
  return credential.kind === 'x509' ? undefined : credential.authorization;
}
