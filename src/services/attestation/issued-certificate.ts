import { X509Certificate } from 'node:crypto';
import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import { certificateInfo, commonName, thumbprints } from '../../domain/x509.js';
import { validityProblem } from '../../domain/x509-chain.js';
import type { InstanceRecord } from '../../store/store.js';
import type { AttestationDeps, DeviceMatch, EnrollmentMatch } from './device-match.js';

/**
 * A certificate the instance's issuing CA signed from a CSR authenticates the device like any X.509 certificate
 * (docs/certificate-issuance.md): the TLS client certificate, issued by the instance's CA, on record, not revoked,
 * valid now, CN = registration ID, matched to the enrollment it was issued under (the individual enrollment of the
 * registration ID, else the group). Answers undefined for a certificate the issuing CA did not sign: the other X.509
 * rules decide those. Once the CA's signature verifies, this verdict is final.
 */
export async function authenticateIssuedCertificate(
  deps: AttestationDeps,
  instance: InstanceRecord,
  registrationId: string,
  chain: readonly X509Certificate[],
): Promise<DeviceMatch | undefined> {
  const leaf = chain[0];
  if (leaf === undefined) return undefined;
  const store = deps.store;
  const ca = await store.getIssuingCa(instance.id);
  if (ca === undefined) return undefined;
  const caCert = new X509Certificate(ca.certificate);
  if (!leaf.checkIssued(caCert) || !leaf.verify(caCert.publicKey)) return undefined;

  const refuse = (reason: string): ProvisioningError => {
    deps.logger.info({ idScope: instance.idScope, registrationId, reason }, 'issued certificate refused');
    return new ProvisioningError('Unauthorized', 'Invalid certificate.');
  };
  const prints = thumbprints(leaf);
  const [record, previous] = await Promise.all([store.findIssuedCertificate(instance.id, prints.sha256), store.getRegistration(instance.id, registrationId)]);
  if (record === undefined) throw refuse('the certificate was signed by the issuing CA but is not on record');
  if (record.revokedDateTimeUtc !== undefined) throw refuse(`the certificate was revoked at ${record.revokedDateTimeUtc}`);
  const expired = validityProblem(leaf, deps.now(), 'The certificate');
  if (expired !== undefined) throw refuse(expired);
  if (record.registrationId?.toLowerCase() !== registrationId.toLowerCase() || commonName(leaf)?.toLowerCase() !== registrationId.toLowerCase()) {
    throw refuse(`the certificate was issued to another registration ID than '${registrationId}'`);
  }
  const individual = await store.getEnrollment(instance.id, registrationId);
  let enrollment: EnrollmentMatch;
  if (individual !== undefined) {
    enrollment = { kind: 'individual', doc: individual };
  } else {
    const group = record.enrollmentGroupId === undefined ? undefined : await store.getEnrollmentGroup(instance.id, record.enrollmentGroupId);
    if (group === undefined) throw refuse('the enrollment the certificate was issued under is gone');
    enrollment = { kind: 'group', doc: group };
  }
  const section: JsonMap = { certificateInfo: certificateInfo(leaf), ...(enrollment.kind === 'group' ? { enrollmentGroupId: enrollment.doc.enrollmentGroupId } : {}) };
  return {
    instance,
    registrationId,
    previous,
    attestationType: 'x509',
    enrollment,
    deviceId: enrollment.kind === 'individual' ? (enrollment.doc.deviceId ?? registrationId) : registrationId,
    hubAuthentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: prints.sha1 } },
    resultSection: { x509: section },
    runtimeContext: { x509: section },
  };
}
