import type { JsonMap } from '../../domain/enrollment.js';
import type { IssuedCertificateRecord, Store } from '../../store/store.js';

/**
 * Issued certificates as a customer-data place (docs/certificate-issuance.md, docs/customer-data.md): the
 * certificates the instance's issuing CA signed from a device's CSRs. An export lists them (serial, thumbprints,
 * validity); an erase revokes them — the CRL keeps their serial numbers and revocation times, nothing that names the
 * device stays.
 */
export const ISSUED_CERTIFICATES_PLACE = 'issuedCertificates';

export function issuedCertificateView(record: IssuedCertificateRecord): JsonMap {
  return {
    serialNumber: record.serialNumber,
    registrationId: record.registrationId,
    ...(record.enrollmentGroupId === undefined ? {} : { enrollmentGroupId: record.enrollmentGroupId }),
    ...(record.credentialPolicyName === undefined ? {} : { credentialPolicyName: record.credentialPolicyName }),
    sha256Thumbprint: record.sha256Thumbprint,
    ...(record.sha1Thumbprint === undefined ? {} : { sha1Thumbprint: record.sha1Thumbprint }),
    notBeforeUtc: record.notBeforeUtc,
    notAfterUtc: record.notAfterUtc,
    issuedDateTimeUtc: record.issuedDateTimeUtc,
  };
}

/** Export: every certificate issued to these registration IDs that no erase revoked. */
export async function exportIssuedCertificates(store: Store, instanceId: string, registrationIds: readonly string[]): Promise<JsonMap[]> {
  const found: JsonMap[] = [];
  for (const registrationId of registrationIds) {
    for (const record of await store.listIssuedCertificates(instanceId, registrationId)) found.push(issuedCertificateView(record));
  }
  return found;
}

/** Erase (and its dry run): whether a registration ID has certificates to revoke, and revoking them. */
export async function hasIssuedCertificates(store: Store, instanceId: string, registrationId: string): Promise<boolean> {
  return (await store.listIssuedCertificates(instanceId, registrationId)).length > 0;
}

export function revokeIssuedCertificates(store: Store, instanceId: string, registrationId: string, now: string): Promise<number> {
  return store.revokeIssuedCertificates(instanceId, registrationId, now);
}
