import { assertRegistrationId } from '../../domain/ids.js';
import type { DeviceReads, InstanceRecord } from '../../store/store.js';
import type { AttestationDeps, DeviceCredential, DeviceMatch } from './device-match.js';
import { authenticateIssuedCertificate } from './issued-certificate.js';
import { authenticateSymmetricKey } from './symmetric-key.js';
import { authenticateTpm } from './tpm.js';
import { authenticateX509 } from './x509.js';

/**
 * Finds the enrollment the credential proves, whichever mechanism the device used (dps-wire.md §4). `reads`: the
 * device's reads in `instance` when the caller made them with the instance's (Store.findDeviceByIdScope), so a
 * token's check does not read them again.
 */
export async function authenticateDevice(
  deps: AttestationDeps,
  instance: InstanceRecord,
  registrationId: string,
  credential: DeviceCredential,
  reads?: DeviceReads,
): Promise<DeviceMatch> {
  assertRegistrationId(registrationId);
  switch (credential.kind) {
    case 'x509':
      // A certificate the instance issued from a CSR first; any other certificate is judged by the enrollments.
      return (await authenticateIssuedCertificate(deps, instance, registrationId, credential.chain)) ?? authenticateX509(deps, instance, registrationId, credential.chain);
    case 'sas':
      return authenticateSymmetricKey(deps, instance, registrationId, credential.authorization, reads);
    case 'tpm':
      return authenticateTpm(deps, instance, registrationId, credential);
  }
}
