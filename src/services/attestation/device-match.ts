import type { X509Certificate } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap, StoredEnrollment, StoredEnrollmentGroup } from '../../domain/enrollment.js';
import type { HubAuthentication } from '../../hubs/hub-client.js';
import type { InstanceRecord, StoredRegistration } from '../../store/store.js';
import type { ServiceDeps } from '../deps.js';
import type { SymmetricKeyGroups } from '../symmetric-key-groups.js';

/**
 * What a device proves itself with, as the transport received it: a SAS token (HTTP Authorization header, MQTT
 * password, AMQP SASL PLAIN password), the certificate chain of its TLS client certificate, leaf first, or its TPM's
 * endorsement and storage root keys (HTTP register body, AMQP SASL `TPM`) with — once it answered the challenge — a
 * SAS token signed inside the TPM.
 */
export type DeviceCredential =
  | { kind: 'sas'; authorization: string | undefined }
  | { kind: 'x509'; chain: readonly X509Certificate[] }
  | { kind: 'tpm'; endorsementKey: string; storageRootKey: string | undefined; authorization: string | undefined };

export type EnrollmentMatch =
  | { kind: 'individual'; doc: StoredEnrollment }
  | { kind: 'group'; doc: StoredEnrollmentGroup };

/**
 * What every attestation mechanism answers to the one registration flow: the entry the device proved itself
 * against, and what the flow writes to the hub and to the device's registrationState.
 */
export interface DeviceMatch {
  instance: InstanceRecord;
  registrationId: string;
  enrollment: EnrollmentMatch;
  attestationType: 'symmetricKey' | 'x509' | 'tpm';
  deviceId: string;
  hubAuthentication: HubAuthentication;
  /** The attestation part of the device's registrationState. */
  resultSection: JsonMap;
  /** The attestation part of a custom allocation webhook's deviceRuntimeContext (dps-wire.md §7). */
  runtimeContext: JsonMap;
  previous: StoredRegistration | undefined;
}

/** What the attestation mechanisms need from the registration service. */
export interface AttestationDeps extends ServiceDeps {
  groups: SymmetricKeyGroups;
  logger: FastifyBaseLogger;
}
