import { isExpired, parseSasToken, signedByOneOf } from '../domain/sas.js';
import type { InstanceRecord, Store } from '../store/store.js';
import type { DeviceCredential } from './registrations.js';

/**
 * Why a device's sign-in was refused, for the system log only. On the wire DPS says `401002 Unauthorized` and nothing
 * more (a prober learns nothing); the tenant reading the log needs to tell a device that has no enrollment from one
 * with a wrong key. Worked out after the refusal, from the same store, so the registration flow stays one path.
 */
export async function refusalReason(
  store: Store,
  instance: InstanceRecord,
  request: { registrationId: string; credential: DeviceCredential },
  now: Date,
): Promise<string> {
  if (request.credential.kind === 'x509') return 'the certificate chain matches no enabled enrollment entry (see the server log for the chain check)';
  const token = parseSasToken(request.credential.authorization);
  if (token === undefined) return 'no SAS token, or not a SAS token';
  if (isExpired(token, now.getTime())) return 'the SAS token has expired';
  if (token.resource.toLowerCase() !== `${instance.idScope}/registrations/${request.registrationId}`.toLowerCase()) return 'the SAS token was signed for another resource';
  const individual = await store.getEnrollment(instance.id, request.registrationId);
  if (individual !== undefined) {
    if (individual.attestation.type !== 'symmetricKey') return 'the individual enrollment does not use symmetric keys';
    const { primaryKey, secondaryKey } = individual.attestation.symmetricKey;
    return signedByOneOf(token, [primaryKey, secondaryKey]) ? 'refused' : 'wrong key: the token was not signed by the individual enrollment\'s keys';
  }
  return 'no such enrollment: no individual enrollment for the registration ID, and no enrollment group whose key signed the token';
}
