import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap } from '../domain/enrollment.js';
import { errorBody, ProvisioningError, type ErrorBody } from '../domain/errors.js';
import { dpsTimestamp } from '../domain/time.js';
import { retryAfterOf } from '../services/throttle.js';

/**
 * What the MQTT and AMQP transports share on the way in and out of the registration service: reading a
 * `DeviceRegistration` message body, and turning a failure into the DPS error envelope (dps-wire.md §1.1).
 */

/**
 * The custom payload of a register message. The body may be empty (the C# MQTT client sends nothing when it has no
 * payload) or `DeviceRegistration` JSON whose registrationId, when present, names the connected device
 * (dps-wire.md §5). TPM attestation is not available on these transports here.
 */
export function registrationPayload(body: Uint8Array, registrationId: string): JsonMap | undefined {
  const text = Buffer.from(body).toString('utf8');
  if (text.trim() === '') return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ProvisioningError('InvalidJson');
  }
  if (parsed === null) return undefined;
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ProvisioningError('SchemaViolation', 'The request body must be a DeviceRegistration object.');
  }
  const registration = parsed as { registrationId?: unknown; payload?: unknown; tpm?: unknown };
  if (registration.registrationId !== undefined && registration.registrationId !== null) {
    if (typeof registration.registrationId !== 'string') throw new ProvisioningError('SchemaViolation', "'registrationId' must be a string.");
    if (registration.registrationId.toLowerCase() !== registrationId.toLowerCase()) {
      throw new ProvisioningError(
        'IdMismatch',
        `The registrationId in the body ('${registration.registrationId}') does not match the connection ('${registrationId}').`,
      );
    }
  }
  if (registration.tpm !== undefined && registration.tpm !== null) {
    throw new ProvisioningError('BadRequest', 'TPM attestation is not supported on this transport.');
  }
  const payload = registration.payload;
  if (payload === undefined || payload === null) return undefined;
  if (typeof payload !== 'object' || Array.isArray(payload)) throw new ProvisioningError('SchemaViolation', "'payload' must be a JSON object.");
  return payload as JsonMap;
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
