import type { JsonMap } from '../../domain/enrollment.js';
import type { IssuedCertificateRecord } from '../../store/store.js';

/**
 * Issued certificates as a customer-data place (docs/certificate-issuance.md, docs/customer-data.md): the
 * certificates the instance's issuing CA signed from a device's CSRs. An export lists them (serial, thumbprints,
 * validity); an erase revokes them — the CRL keeps their serial numbers and revocation times, nothing that names the
 * device stays.
 */
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
