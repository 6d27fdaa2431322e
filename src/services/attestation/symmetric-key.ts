import { ProvisioningError } from '../../domain/errors.js';
import { isExpired, parseSasToken, signedByOneOf } from '../../domain/sas.js';
import type { DeviceReads, InstanceRecord } from '../../store/store.js';
import type { AttestationDeps, DeviceMatch } from './device-match.js';
import { authenticateTpm } from './tpm.js';

const unauthorized = (): ProvisioningError => new ProvisioningError('Unauthorized');

/**
 * Symmetric key (dps-wire.md §4.3, §8.3): an individual enrollment for the registration ID decides on its own — a
 * wrong key or a disabled enrollment is not rescued by a group — otherwise the symmetric-key group whose derived key
 * signed the token.
 */
export async function authenticateSymmetricKey(
  deps: AttestationDeps,
  instance: InstanceRecord,
  registrationId: string,
  authorization: string | undefined,
  /** The device's reads, when the caller made them with the instance's. */
  reads?: DeviceReads,
): Promise<DeviceMatch> {
  const token = parseSasToken(authorization);
  if (token === undefined || isExpired(token, deps.now().getTime())) throw unauthorized();
  // Devices sign `{idScope}/registrations/{registrationId}`; skn is `registration` or absent (dps-wire.md §14).
  if (token.resource.toLowerCase() !== `${instance.idScope}/registrations/${registrationId}`.toLowerCase()) throw unauthorized();
  if (token.keyName !== undefined && token.keyName !== 'registration') throw unauthorized();
  const store = deps.store;
  // One statement for the reads (issue 11: one round trip on PostgreSQL), the group the record names among them.
  const device = reads ?? (await store.getEnrollmentAndRegistration(instance.id, registrationId));
  const { enrollment: individual, registration: previous, group: named } = device;
  // Each match is one literal, not `{ ...base, … }`: fields added to a spread's copy cost a hidden class per object on
  // this V8 (see audit-log.ts `event`).
  if (individual !== undefined) {
    // A TPM device's later requests (polls) carry only the token its TPM signed: the TPM mechanism checks it.
    if (individual.attestation.type === 'tpm') return authenticateTpm(deps, instance, registrationId, { endorsementKey: undefined, storageRootKey: undefined, authorization }, device);
    if (individual.attestation.type !== 'symmetricKey') throw unauthorized();
    const { primaryKey, secondaryKey } = individual.attestation.symmetricKey;
    if (!signedByOneOf(token, [primaryKey, secondaryKey])) throw unauthorized();
    return {
      instance,
      registrationId,
      attestationType: 'symmetricKey',
      previous,
      enrollment: { kind: 'individual', doc: individual },
      deviceId: individual.deviceId ?? registrationId,
      hubAuthentication: { type: 'sas', symmetricKey: { primaryKey, secondaryKey } },
      resultSection: { symmetricKey: {} },
      runtimeContext: { symmetricKey: {} },
    };
  }
  const hint = previous?.enrollmentGroupId === undefined ? undefined : { groupId: previous.enrollmentGroupId, read: named };
  const matched = await deps.groups.match(instance.id, registrationId, token, hint, device.groupsVersion);
  if (matched === undefined || matched.group.attestation.type !== 'symmetricKey') throw unauthorized();
  const { group, deviceKeys } = matched;
  return {
    instance,
    registrationId,
    attestationType: 'symmetricKey',
    previous,
    enrollment: { kind: 'group', doc: group },
    deviceId: registrationId,
    // The device's keys as the group lookup derived them (each HMAC once per registration).
    hubAuthentication: { type: 'sas', symmetricKey: { primaryKey: deviceKeys.primaryKey, secondaryKey: deviceKeys.secondaryKey } },
    resultSection: { symmetricKey: { enrollmentGroupId: group.enrollmentGroupId } },
    runtimeContext: { symmetricKey: {} },
  };
}
