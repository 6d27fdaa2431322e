import { TpmChallenge, ProvisioningError } from '../../domain/errors.js';
import type { DeviceProof } from '../../services/attestation/device-proof.js';
import type { DeviceRequest } from '../../services/registrations.js';
import type { Transport } from '../../services/registrations.js';

/**
 * The server side of the SASL mechanism `TPM` (dps-wire.md §6), one instance per connection attempt, driven by rhea's
 * SaslServer (`start`, then `step` per response; a defined `outcome` ends the exchange):
 *  1. init `0x00 {idScope} 0x00 {registrationId} 0x00 {EK}` → a one-byte challenge;
 *  2. `0x00 {SRK}` → the activation blob (the HTTP 401 challenge's), in segments whose first byte is 0x80, the last
 *     0xC0; the device answers each but the last with `0x00`;
 *  3. `0x00 {SAS token}` signed inside the TPM with the key it imported → success or failure.
 */
export interface TpmSaslDeps {
  transport: Transport;
  /** Checks a request with the registration service (a TPM request without a token is answered with a challenge). */
  authenticate(request: DeviceRequest): Promise<DeviceProof | undefined>;
  /** The device the exchange proved, with the proof its requests on this connection carry. */
  onAuthenticated(request: DeviceRequest): void;
  onRefused(reason: string, registrationId: string | undefined): void;
}

/** SASL frames may be as small as 512 bytes (AMQP 1.0 §5.3.1); a segment and its frame overhead stay below that. */
const SEGMENT_BYTES = 400;
const SEGMENT = 0x80;
const LAST_SEGMENT = 0xc0;

export class TpmSaslServer {
  outcome: boolean | undefined = undefined;
  username: string | undefined = undefined;
  readonly #deps: TpmSaslDeps;
  #request: DeviceRequest | undefined;
  #segments: Buffer[] = [];
  #stage: 'srk' | 'segments' | 'token' = 'srk';

  constructor(deps: TpmSaslDeps) {
    this.#deps = deps;
  }

  start(initialResponse: Buffer | undefined): Buffer | undefined {
    const parsed = initialResponse === undefined ? undefined : parseInit(initialResponse);
    if (parsed === undefined) return this.#refuse('the TPM init frame is not 0x00 idScope 0x00 registrationId 0x00 EK', undefined);
    this.#request = {
      idScope: parsed.idScope,
      registrationId: parsed.registrationId,
      credential: { kind: 'tpm', endorsementKey: parsed.endorsementKey.toString('base64'), storageRootKey: undefined, authorization: undefined },
      transport: this.#deps.transport,
    };
    return Buffer.from([0]);
  }

  async step(response: Buffer | undefined): Promise<Buffer | undefined> {
    const request = this.#request;
    if (request === undefined || request.credential.kind !== 'tpm' || response === undefined || response[0] !== 0) {
      return this.#refuse('unexpected TPM SASL response', request?.registrationId);
    }
    const content = response.subarray(1);
    if (this.#stage === 'srk') {
      const credential = { ...request.credential, storageRootKey: content.toString('base64') };
      this.#request = { ...request, credential };
      let blob: Buffer | undefined;
      try {
        await this.#deps.authenticate(this.#request);
      } catch (error) {
        if (!(error instanceof TpmChallenge)) return this.#refuse(error instanceof ProvisioningError ? error.message : String(error), request.registrationId);
        blob = Buffer.from(error.authenticationKey, 'base64');
      }
      if (blob === undefined) return this.#refuse('the TPM device was not challenged', request.registrationId);
      for (let offset = 0; offset < blob.length; offset += SEGMENT_BYTES) {
        const last = offset + SEGMENT_BYTES >= blob.length;
        this.#segments.push(Buffer.concat([Buffer.from([last ? LAST_SEGMENT : SEGMENT]), blob.subarray(offset, offset + SEGMENT_BYTES)]));
      }
      this.#stage = 'segments';
      return this.#segments.shift();
    }
    if (this.#stage === 'segments') {
      const next = this.#segments.shift();
      if (next === undefined) return this.#refuse('unexpected TPM SASL response', request.registrationId);
      if (this.#segments.length === 0) this.#stage = 'token';
      return next;
    }
    const authenticated: DeviceRequest = { ...request, credential: { ...request.credential, authorization: content.toString('utf8') } };
    let proof: DeviceProof | undefined;
    try {
      proof = await this.#deps.authenticate(authenticated);
    } catch (error) {
      return this.#refuse(error instanceof ProvisioningError ? error.message : String(error), request.registrationId);
    }
    this.#deps.onAuthenticated({ ...authenticated, proof });
    this.username = `${request.idScope}/registrations/${request.registrationId}`;
    this.outcome = true;
    return undefined;
  }

  #refuse(reason: string, registrationId: string | undefined): undefined {
    this.#deps.onRefused(reason, registrationId);
    this.outcome = false;
    return undefined;
  }
}

/** `0x00 idScope 0x00 registrationId 0x00 EK`: the EK is binary and may itself hold zero bytes, so only two are split. */
function parseInit(init: Buffer): { idScope: string; registrationId: string; endorsementKey: Buffer } | undefined {
  if (init[0] !== 0) return undefined;
  const second = init.indexOf(0, 1);
  if (second < 0) return undefined;
  const third = init.indexOf(0, second + 1);
  if (third < 0) return undefined;
  const idScope = init.subarray(1, second).toString('utf8');
  const registrationId = init.subarray(second + 1, third).toString('utf8');
  const endorsementKey = init.subarray(third + 1);
  if (idScope === '' || registrationId === '' || endorsementKey.length === 0) return undefined;
  return { idScope, registrationId, endorsementKey };
}
