import { createHmac } from 'node:crypto';
import type { StoredEnrollment, StoredTpmAttestation } from '../../domain/enrollment.js';
import { newTpmRegistrationKey } from '../../domain/enrollment.js';
import { ProvisioningError, TpmChallenge } from '../../domain/errors.js';
import { isExpired, parseSasToken, signedByOneOf } from '../../domain/sas.js';
import { buildActivationBlob, parseTpmRsaPublic, sameTpmKey, TpmKeyError, type TpmRsaPublic } from '../../domain/tpm.js';
import type { DeviceReads, InstanceRecord } from '../../store/store.js';
import type { AttestationDeps, DeviceMatch } from './device-match.js';

const unauthorized = (): ProvisioningError => new ProvisioningError('Unauthorized');

/** What the device presented: its keys (when the request carried them) and the SAS token, once it has one. */
export interface TpmPresentation {
  endorsementKey: string | undefined;
  storageRootKey: string | undefined;
  authorization: string | undefined;
}

/**
 * TPM attestation (dps-wire.md §4.5; individual enrollments only, as DPS). A device that sends its endorsement key
 * (EK) and storage root key (SRK) without a token is challenged: the enrollment's registration key, sealed to that
 * EK and SRK (domain/tpm.ts). The device imports it in its TPM and signs its next request with it; that token is
 * checked like a symmetric-key token. The device's IoT Hub key travels the same way, sealed in
 * `registrationState.tpm.authenticationKey`, so no key ever leaves the server in clear.
 */
export async function authenticateTpm(
  deps: AttestationDeps,
  instance: InstanceRecord,
  registrationId: string,
  presented: TpmPresentation,
  /** The device's reads, when the caller made them already (a TPM device's token, checked by the symmetric-key path). */
  reads?: DeviceReads,
): Promise<DeviceMatch> {
  const store = deps.store;
  const { enrollment, registration: previous } = reads ?? (await store.getEnrollmentAndRegistration(instance.id, registrationId));
  const refuse = (reason: string): ProvisioningError => {
    deps.logger.info({ idScope: instance.idScope, registrationId, reason }, 'TPM device refused');
    return unauthorized();
  };
  if (enrollment === undefined) throw refuse('no individual enrollment has this registration ID (TPM attestation is individual-only)');
  if (enrollment.attestation.type !== 'tpm') throw refuse(`the enrollment uses ${enrollment.attestation.type} attestation, not TPM`);
  const attestation = await withRegistrationKey(deps, instance, enrollment, enrollment.attestation.tpm);
  const enrolledEk = parseKey(attestation.endorsementKey);
  if (enrolledEk === undefined) throw refuse("the enrollment's endorsement key is not an RSA-2048 TPM2B_PUBLIC");

  let ek = enrolledEk;
  if (presented.endorsementKey !== undefined) {
    const deviceEk = parseKey(presented.endorsementKey);
    if (deviceEk === undefined) throw new ProvisioningError('BadRequest', 'tpm.endorsementKey is not a base64 RSA-2048 TPM2B_PUBLIC.');
    if (!sameTpmKey(deviceEk, enrolledEk)) throw refuse("the endorsement key is not the enrollment's");
    ek = deviceEk;
  }
  // The SRK the blob is sealed to: the one the enrollment pins, else the one the device sends.
  let srk: TpmRsaPublic | undefined;
  if (presented.storageRootKey !== undefined) {
    srk = parseKey(presented.storageRootKey);
    if (srk === undefined) throw new ProvisioningError('BadRequest', 'tpm.storageRootKey is not a base64 RSA-2048 TPM2B_PUBLIC.');
  }
  if (attestation.storageRootKey !== undefined) {
    const pinned = parseKey(attestation.storageRootKey);
    if (pinned === undefined) throw refuse("the enrollment's storage root key is not an RSA-2048 TPM2B_PUBLIC");
    if (srk !== undefined && !sameTpmKey(srk, pinned)) throw refuse("the storage root key is not the one the enrollment names");
    srk ??= pinned;
  }

  const registrationKey = Buffer.from(attestation.registrationKey, 'base64');
  if (presented.authorization === undefined) {
    if (srk === undefined) throw new ProvisioningError('BadRequest', 'TPM attestation needs tpm.storageRootKey to answer the challenge.');
    throw new TpmChallenge(buildActivationBlob(ek, srk, registrationKey).toString('base64'));
  }
  const token = parseSasToken(presented.authorization);
  if (token === undefined || isExpired(token, deps.now().getTime())) throw unauthorized();
  if (token.resource.toLowerCase() !== `${instance.idScope}/registrations/${registrationId}`.toLowerCase()) throw unauthorized();
  if (token.keyName !== undefined && token.keyName !== 'registration') throw unauthorized();
  if (!signedByOneOf(token, [attestation.registrationKey])) throw refuse('the token is not signed with the key of the TPM challenge');

  const hubKeys = hubDeviceKeys(registrationKey);
  const section = srk === undefined ? {} : { authenticationKey: buildActivationBlob(ek, srk, Buffer.from(hubKeys.primaryKey, 'base64')).toString('base64') };
  return {
    instance,
    registrationId,
    previous,
    attestationType: 'tpm',
    enrollment: { kind: 'individual', doc: enrollment },
    deviceId: enrollment.deviceId ?? registrationId,
    hubAuthentication: { type: 'sas', symmetricKey: hubKeys },
    resultSection: { tpm: section },
    runtimeContext: { tpm: { endorsementKey: attestation.endorsementKey, ...(srk === undefined ? {} : { storageRootKey: presented.storageRootKey ?? attestation.storageRootKey }) } },
  };
}

/**
 * The device's IoT Hub keys, derived from its registration key: the same on every registration (re-registering does
 * not rotate a working identity), new when the enrollment's EK changes. The primary travels sealed to the TPM.
 */
function hubDeviceKeys(registrationKey: Buffer): { primaryKey: string; secondaryKey: string } {
  const derive = (label: string): string => createHmac('sha256', registrationKey).update(label).digest('base64');
  return { primaryKey: derive('provisiond hub device primary key'), secondaryKey: derive('provisiond hub device secondary key') };
}

/** Enrollments stored before TPM registration keys existed get theirs on first use. */
async function withRegistrationKey(
  deps: AttestationDeps,
  instance: InstanceRecord,
  enrollment: StoredEnrollment,
  tpm: StoredTpmAttestation,
): Promise<StoredTpmAttestation & { registrationKey: string }> {
  if (tpm.registrationKey !== undefined) return { ...tpm, registrationKey: tpm.registrationKey };
  const keyed = { ...tpm, registrationKey: newTpmRegistrationKey() };
  await deps.store.putEnrollment(instance.id, { ...enrollment, attestation: { type: 'tpm', tpm: keyed } });
  return keyed;
}

function parseKey(base64: string): TpmRsaPublic | undefined {
  try {
    return parseTpmRsaPublic(Buffer.from(base64, 'base64'));
  } catch (error) {
    if (error instanceof TpmKeyError) return undefined;
    throw error;
  }
}
