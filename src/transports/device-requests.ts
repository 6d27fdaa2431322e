import { randomUUID, type X509Certificate } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap } from '../domain/enrollment.js';
import { errorBody, ProvisioningError, type ErrorBody } from '../domain/errors.js';
import { dpsTimestamp } from '../domain/time.js';
import type { DeviceCredential } from '../services/registrations.js';
import { retryAfterOf } from '../services/throttle.js';

/**
 * What the HTTP, MQTT and AMQP transports share on the way in and out of the registration service: which credential
 * the device presented, the check of a `DeviceRegistration` body, and turning a failure into the DPS error envelope
 * (dps-wire.md §1.1).
 */

/** The TPM keys a register body carries (dps-wire.md §4.1), base64 TPM2B_PUBLIC each. */
export interface BodyTpmKeys {
  endorsementKey: string;
  storageRootKey: string | undefined;
}

/** What a `DeviceRegistration` body says once checked: the custom payload, the TPM keys and the CSR, each may be absent. */
export interface RegistrationBody {
  payload: JsonMap | undefined;
  tpm: BodyTpmKeys | undefined;
  /** Base64 DER PKCS#10 (api-version 2025-07-01-preview; docs/certificate-issuance.md). */
  csr?: string | undefined;
}

/** The first device api-version whose register request takes `csr` (dps-wire.md §0). */
export const CSR_API_VERSION = '2025-07-01-preview';

/**
 * The csr of a register request. An older api-version has no such field: a request that sends one anyway is refused
 * rather than answered without the certificate the device waits for. `apiVersion` is undefined where the transport
 * carries none (AMQP).
 */
export function registerCsr(body: RegistrationBody, apiVersion: string | undefined): string | undefined {
  if (body.csr === undefined) return undefined;
  if (apiVersion !== undefined && apiVersion < '2025-07-01') {
    throw new ProvisioningError('CsrNotAccepted', `csr needs api-version ${CSR_API_VERSION} or later; this request uses ${apiVersion}.`);
  }
  return body.csr;
}

/** DPS answers a csr sent to the status-lookup POST with a 400 (dps-wire.md §0). */
export function refuseLookupCsr(body: RegistrationBody): void {
  if (body.csr !== undefined) throw new ProvisioningError('CsrNotAccepted', 'csr is taken by the register request only, not by the registration status lookup.');
}

/**
 * The one rule for which credential a device presented, on every transport: TPM keys in the body make a TPM request
 * (with the token its TPM signed, once it answered the challenge); otherwise a SAS token wins — a symmetric-key
 * device may still hold a client certificate; otherwise the TLS client certificate chain; otherwise nothing, which
 * is refused as a missing SAS token.
 */
export function deviceCredential(presented: {
  authorization: string | undefined;
  chain: readonly X509Certificate[];
  tpm?: BodyTpmKeys | undefined;
}): DeviceCredential {
  const authorization = presented.authorization === '' ? undefined : presented.authorization;
  if (presented.tpm !== undefined) return { kind: 'tpm', ...presented.tpm, authorization };
  if (authorization === undefined && presented.chain.length > 0) return { kind: 'x509', chain: presented.chain };
  return { kind: 'sas', authorization };
}

/**
 * Reads the `DeviceRegistration` of an MQTT or AMQP register message. The body may be empty (the C# MQTT client
 * sends nothing when it has no payload) or JSON whose registrationId may be missing or null (dps-wire.md §5).
 */
export function parseRegistrationBody(body: Uint8Array, registrationId: string): RegistrationBody {
  const text = Buffer.from(body).toString('utf8');
  if (text.trim() === '') return { payload: undefined, tpm: undefined };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ProvisioningError('InvalidJson');
  }
  return checkRegistrationBody(parsed, registrationId);
}

/**
 * The register-body check every transport applies: a `DeviceRegistration` object whose registrationId, when present,
 * names the device of the path or connection, whose payload is a JSON object and whose tpm carries base64 keys.
 */
export function checkRegistrationBody(parsed: unknown, registrationId: string): RegistrationBody {
  if (parsed === null || parsed === undefined) return { payload: undefined, tpm: undefined };
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ProvisioningError('SchemaViolation', 'The request body must be a DeviceRegistration object.');
  }
  const registration = parsed as { registrationId?: unknown; payload?: unknown; tpm?: unknown; csr?: unknown };
  if (registration.registrationId !== undefined && registration.registrationId !== null) {
    if (typeof registration.registrationId !== 'string') throw new ProvisioningError('SchemaViolation', "'registrationId' must be a string.");
    if (registration.registrationId.toLowerCase() !== registrationId.toLowerCase()) {
      throw new ProvisioningError(
        'IdMismatch',
        `The registrationId in the body ('${registration.registrationId}') does not match the device of the request ('${registrationId}').`,
      );
    }
  }
  let tpm: BodyTpmKeys | undefined;
  if (registration.tpm !== undefined && registration.tpm !== null) {
    const keys = registration.tpm as { endorsementKey?: unknown; storageRootKey?: unknown };
    if (typeof keys !== 'object' || Array.isArray(keys) || typeof keys.endorsementKey !== 'string' || keys.endorsementKey === '') {
      throw new ProvisioningError('SchemaViolation', "'tpm.endorsementKey' must be a base64 string.");
    }
    if (keys.storageRootKey !== undefined && keys.storageRootKey !== null && typeof keys.storageRootKey !== 'string') {
      throw new ProvisioningError('SchemaViolation', "'tpm.storageRootKey' must be a base64 string.");
    }
    tpm = { endorsementKey: keys.endorsementKey, storageRootKey: typeof keys.storageRootKey === 'string' && keys.storageRootKey !== '' ? keys.storageRootKey : undefined };
  }
  let csr: string | undefined;
  if (registration.csr !== undefined && registration.csr !== null) {
    if (typeof registration.csr !== 'string') throw new ProvisioningError('SchemaViolation', "'csr' must be a base64 string.");
    csr = registration.csr;
  }
  const payload = registration.payload;
  if (payload === undefined || payload === null) return { payload: undefined, tpm, csr };
  if (typeof payload !== 'object' || Array.isArray(payload)) throw new ProvisioningError('SchemaViolation', "'payload' must be a JSON object.");
  return { payload: payload as JsonMap, tpm, csr };
}

export interface DeviceFailure {
  error: ProvisioningError;
  body: ErrorBody;
  /** Seconds to wait before retrying (throttling). */
  retryAfterSeconds: number | undefined;
}

/** A ProvisioningError as it goes on the wire; anything else is a logged 500 with a tracking ID, never a stack. */
export function deviceFailure(error: unknown, logger: FastifyBaseLogger, context: Record<string, unknown>): DeviceFailure {
  const trackingId = randomUUID();
  let failure: ProvisioningError;
  if (error instanceof ProvisioningError) {
    failure = error;
  } else {
    logger.error({ err: error, trackingId, ...context }, 'device request failed');
    failure = new ProvisioningError('InternalError');
  }
  return { error: failure, body: errorBody(failure, trackingId, dpsTimestamp(new Date())), retryAfterSeconds: retryAfterOf(failure) };
}
